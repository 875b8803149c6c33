"""CelebA-HQ attribute classifiers: the progressive-GAN discriminator NVIDIA released with StyleGAN.

The paper's auxiliary classifiers (§2.3, §3: "trained on the labeled CelebA via
a progressive discriminator") are NVIDIA's ``celebahq-classifier-NN-<attr>.pkl``
files, the ones StyleGAN's linear-separability metric uses. Each is a
TensorFlow ``dnnlib.tflib.network.Network`` built by ``D_paper`` (ProGAN's
discriminator) whose single output is the attribute's logit.

Conventions
-----------
* Input: images ``[N, C, R, R]`` float32 in [-1, 1], NCHW, RGB, R = the
  classifier's resolution (256 for the released files). The metric feeds
  generator images box-downsampled to 256 (mean over ``factor x factor``
  blocks); :func:`classifier_input` does the same.
* Output: logits ``[N, 1]``. The metric takes ``softmax([l, -l])`` and only
  needs the two classes apart; which one is the attribute is read the way
  NVIDIA's DiffPure reads these classifiers, ``P(attribute) = softmax([l,
  -l])[1] = sigmoid(-2 l)``: a *negative* logit means the attribute is
  present (a StyleFlow evaluation script that scores these same files
  agrees).
* Weights keep TensorFlow's layouts: ``weight`` is ``[k, k, in, out]`` for
  convolutions and ``[in, out]`` for dense layers, ``bias`` is ``[out]``,
  ``lod`` a scalar. State-dict keys are ours (``from_rgb.<k>``,
  ``blocks.<i>.conv0/conv1``, ``epilogue.conv/dense0/dense1``); the
  TensorFlow variable names map onto them in
  :mod:`engine.weights.progan_layout`.
* Equalised learning rate (``use_wscale``): stored weights are multiplied at
  run time by ``gain / sqrt(fan_in)``, gain sqrt(2) except ``Dense1`` (1).
  Activations are leaky ReLU 0.2. TensorFlow's 'SAME' padding is symmetric
  here (odd kernels at stride 1; the fused 4x4 kernel at stride 2 on even
  sizes pads 1 on each side).
* The minibatch-stddev layer before ``4x4/Conv`` mixes statistics across
  groups of ``mbstd_group_size`` images (4, as the metric's minibatch), so a
  score depends on the other images of its group; the batch must be divisible
  by ``min(group, N)``. :func:`score_in_groups` runs any batch as the metric did.
* ``lod`` (level of detail, 0 for a finished network) blends in a
  lower-resolution ``FromRGB`` path exactly as ``D_paper``'s linear structure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from engine.nets.stylegan2 import MinibatchStdLayer
from engine.weights.pretrained import PretrainedConfig, PretrainedMixin

LRELU_SLOPE = 0.2
METRIC_RESOLUTION = 256
METRIC_GROUP = 4  # StyleGAN's linear-separability metric: minibatch_per_gpu=4


@dataclass(frozen=True)
class ProGANClassifierConfig(PretrainedConfig):
    """``D_paper`` keyword arguments that shape the network (names as in ProGAN)."""

    resolution: int = 256
    num_channels: int = 3
    fmap_base: int = 8192
    fmap_decay: float = 1.0
    fmap_max: int = 512
    use_wscale: bool = True
    mbstd_group_size: int = 4
    fused_scale: bool = True
    out_features: int = 1

    def __post_init__(self) -> None:
        log2 = int(round(math.log2(self.resolution))) if self.resolution > 0 else 0
        if self.resolution < 4 or 2 ** log2 != self.resolution:
            raise ValueError(f"classifier resolution must be a power of two >= 4, got {self.resolution}")

    @property
    def resolution_log2(self) -> int:
        return int(round(math.log2(self.resolution)))

    def nf(self, stage: int) -> int:
        return min(int(self.fmap_base / (2.0 ** (stage * self.fmap_decay))), self.fmap_max)


class _WSConv(nn.Module):
    """TensorFlow-layout conv (+bias, optional leaky ReLU) with run-time weight scaling."""

    def __init__(self, cin: int, cout: int, kernel: int, use_wscale: bool, down: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(kernel, kernel, cin, cout))  # [k, k, in, out], TF layout
        self.bias = nn.Parameter(torch.zeros(cout))
        self.down = down
        self.scale = math.sqrt(2) / math.sqrt(kernel * kernel * cin) if use_wscale else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight * self.scale).permute(3, 2, 0, 1)  # [out, in, k, k]
        k = w.shape[-1]
        if self.down:
            # conv2d_downscale2d: a (k+1)x(k+1) kernel = mean of the 4 shifts of the padded kernel.
            w = functional.pad(w, (1, 1, 1, 1))
            w = (w[..., 1:, 1:] + w[..., :-1, 1:] + w[..., 1:, :-1] + w[..., :-1, :-1]) * 0.25
            x = functional.conv2d(x, w, stride=2, padding=k // 2)
        else:
            x = functional.conv2d(x, w, padding=k // 2)
        return functional.leaky_relu(x + self.bias.view(1, -1, 1, 1), LRELU_SLOPE)


class _WSDense(nn.Module):
    def __init__(self, fin: int, fout: int, use_wscale: bool, gain: float, activate: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(fin, fout))  # [in, out], TF layout
        self.bias = nn.Parameter(torch.zeros(fout))
        self.scale = gain / math.sqrt(fin) if use_wscale else 1.0
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1) @ (self.weight * self.scale) + self.bias
        return functional.leaky_relu(x, LRELU_SLOPE) if self.activate else x


class _Block(nn.Module):
    """``<r>x<r>``: Conv0 then Conv1_down (fused) or Conv1 + 2x box downscale."""

    def __init__(self, cin: int, cmid: int, cout: int, cfg: ProGANClassifierConfig) -> None:
        super().__init__()
        self.conv0 = _WSConv(cin, cmid, 3, cfg.use_wscale)
        self.fused = cfg.fused_scale
        self.conv1 = _WSConv(cmid, cout, 3, cfg.use_wscale, down=cfg.fused_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(x))
        return x if self.fused else functional.avg_pool2d(x, 2)


class _Epilogue(nn.Module):
    """``4x4``: minibatch stddev, Conv, Dense0, Dense1 (the logit)."""

    def __init__(self, cfg: ProGANClassifierConfig) -> None:
        super().__init__()
        cin = cfg.nf(1)
        self.mbstd = MinibatchStdLayer(cfg.mbstd_group_size) if cfg.mbstd_group_size > 1 else None
        self.conv = _WSConv(cin + (1 if self.mbstd else 0), cfg.nf(1), 3, cfg.use_wscale)
        self.dense0 = _WSDense(cfg.nf(1) * 16, cfg.nf(0), cfg.use_wscale, math.sqrt(2), activate=True)
        self.dense1 = _WSDense(cfg.nf(0), cfg.out_features, cfg.use_wscale, 1.0, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        return self.dense1(self.dense0(self.conv(x)))


class ProGANClassifier(PretrainedMixin, nn.Module):
    """Images [N, C, R, R] in [-1, 1] -> logits [N, out_features] (see the module docstring)."""

    config_class = ProGANClassifierConfig

    def __init__(self, cfg: ProGANClassifierConfig) -> None:
        self._check_config(cfg)
        super().__init__()
        self.config = cfg
        top = cfg.resolution_log2
        # FromRGB_lod<k> reads the image at resolution 2^(top-k); D_paper makes one per level.
        self.from_rgb = nn.ModuleList(
            [_WSConv(cfg.num_channels, cfg.nf(res - 1), 1, cfg.use_wscale) for res in range(top, 1, -1)])
        self.blocks = nn.ModuleList(
            [_Block(cfg.nf(res - 1), cfg.nf(res - 1), cfg.nf(res - 2), cfg) for res in range(top, 2, -1)])
        self.epilogue = _Epilogue(cfg)
        self.register_buffer("lod", torch.zeros(()))

    def init_from_seed(self, generator: torch.Generator) -> None:
        """ProGAN's initialisation with equalised learning rate: every weight N(0, 1) (the run-time
        scale does the rest), biases 0. The constructor leaves weights at zero, as the converter
        overwrites them anyway."""
        for name, param in self.named_parameters():
            if name.endswith("weight"):
                param.copy_(torch.randn(param.shape, generator=generator))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if images.ndim != 4 or images.shape[1] != cfg.num_channels or images.shape[-1] != cfg.resolution \
                or images.shape[-2] != cfg.resolution:
            raise ValueError(f"classifier expects [N, {cfg.num_channels}, {cfg.resolution}, {cfg.resolution}] "
                             f"images, got {list(images.shape)}")
        lod = float(self.lod)
        img = images
        x = self.from_rgb[0](img)
        for level, block in enumerate(self.blocks):
            x = block(x)
            img = functional.avg_pool2d(img, 2)
            t = min(max(lod - level, 0.0), 1.0)
            if t > 0:  # still fading in this level (lod > 0): lerp towards the lower-resolution path
                x = x + (self.from_rgb[level + 1](img) - x) * t
        return self.epilogue(x)


# ----------------------------------------------------------------------------- scoring as the metric does

def classifier_input(images: torch.Tensor, resolution: int = METRIC_RESOLUTION) -> torch.Tensor:
    """Generator images [N, 3, S, S] in [-1, 1] -> [N, 3, resolution, resolution]: mean over
    ``S/resolution`` blocks when S is a multiple (the metric's reshape-mean), else area resampling."""
    s = images.shape[-1]
    if s == resolution:
        return images
    if s > resolution and s % resolution == 0:
        return functional.avg_pool2d(images, s // resolution)
    return functional.interpolate(images, size=(resolution, resolution), mode="area" if s > resolution else "bilinear",
                         align_corners=None if s > resolution else False)


def score_in_groups(net: ProGANClassifier, images: torch.Tensor, group: int = METRIC_GROUP) -> torch.Tensor:
    """Logits [N] for any N: images go through in consecutive groups of ``group`` (the last
    one smaller), so minibatch stddev sees the same groups as the metric's minibatches."""
    x = classifier_input(images, net.config.resolution)
    out = [net(x[i:i + group])[:, 0] for i in range(0, x.shape[0], group)]
    return torch.cat(out) if out else x.new_zeros(0)
