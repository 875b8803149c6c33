"""e4e encoder (Encoder4Editing, Tov et al. 2021): FFHQ-aligned image → StyleGAN2 W+.

Conventions
- Input: ``x`` [B,3,256,256] float RGB in [-1, 1] (e4e's transform: resize to 256,
  ``ToTensor``, ``Normalize(0.5, 0.5)``); :func:`preprocess_uint8` does this from
  uint8 HWC images. Other sizes are refused (the official model is fixed at 256).
- Output of :class:`Encoder4Editing`: codes [B, n_styles, 512] *before*
  ``latent_avg`` is added (the official ``encoder(x)``). :func:`encode` adds
  ``latent_avg`` [n_styles,512] or [512] as e4e's pSp wrapper does with
  ``start_from_latent_avg``, giving W+ for the rosinality generator.
- n_styles = 2·log2(stylegan_size) − 2 (18 for the 1024 FFHQ generator).
- All progressive stages are on (the released checkpoint is evaluated with
  ``ProgressiveStage.Inference``): w = styles[0](c3) repeated, plus a delta from
  ``styles[i]`` for every i ≥ 1, fed by the coarse (c3), FPN middle (p2) or FPN
  fine (p1) map.
- State-dict keys of :class:`Encoder4Editing` equal the official module's
  (``input_layer.*``, ``body.*``, ``styles.<i>.convs.*``, ``styles.<i>.linear.*``,
  ``latlayer1/2.*``). :class:`E4EModel`, the savable network, holds it as
  ``encoder`` beside the ``latent_avg`` buffer: the keys ``encoder.*`` and
  ``latent_avg`` of ``e4e_ffhq_encode.pt`` (whose ``decoder.*`` StyleGAN2 we
  do not keep: the generator comes from its own file).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from engine.nets.irse import make_body, make_input_layer
from engine.weights.pretrained import PretrainedConfig, PretrainedMixin

INPUT_SIZE = 256
# body indices whose outputs feed the style heads (official e4e hard-codes these)
C1_INDEX, C2_INDEX, C3_INDEX = 6, 20, 23
COARSE_END, MIDDLE_END = 3, 7


@dataclass(frozen=True)
class E4EConfig(PretrainedConfig):
    num_layers: int = 50
    mode: str = "ir_se"
    stylegan_size: int = 1024  # output resolution of the generator the codes are for

    def __post_init__(self) -> None:
        if self.stylegan_size < 4 or self.stylegan_size & (self.stylegan_size - 1):
            raise ValueError(f"stylegan_size must be a power of two >= 4, got {self.stylegan_size}")

    @property
    def n_styles(self) -> int:
        return 2 * int(math.log2(self.stylegan_size)) - 2


class EqualLinear(nn.Module):
    """StyleGAN2 equalised linear layer (lr_mul 1, no activation): x·(W/√in)ᵀ + b."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)  # [out,in]
        self.bias = nn.Parameter(torch.zeros(out_dim))  # [out]
        self.scale = (1.0 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class GradualStyleBlock(nn.Module):
    """Strided 3x3 convs (each halving, LeakyReLU 0.01) down to 1x1, then EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int) -> None:
        super().__init__()
        self.out_c = out_c
        n_down = int(math.log2(spatial))
        layers: list[nn.Module] = [nn.Conv2d(in_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(out_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)  # [B,out_c,1,1]
        return self.linear(x.reshape(-1, self.out_c))  # [B,out_c]


def upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FPN merge: bilinear (align_corners=True) resize of x to y's size, plus y."""
    return functional.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    def __init__(self, cfg: E4EConfig = E4EConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_layer = make_input_layer()
        self.body = make_body(cfg.num_layers, cfg.mode)
        self.style_count = cfg.n_styles
        self.styles = nn.ModuleList()
        for i in range(self.style_count):
            spatial = 16 if i < COARSE_END else 32 if i < MIDDLE_END else 64
            self.styles.append(GradualStyleBlock(512, 512, spatial))
        self.latlayer1 = nn.Conv2d(256, 512, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(128, 512, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,256,256] in [-1,1] → codes [B,n_styles,512] (without latent_avg)."""
        check_input(x)
        x = self.input_layer(x)  # [B,64,256,256]
        c1 = c2 = c3 = None
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == C1_INDEX:
                c1 = x  # [B,128,64,64]
            elif i == C2_INDEX:
                c2 = x  # [B,256,32,32]
            elif i == C3_INDEX:
                c3 = x  # [B,512,16,16]
        w0 = self.styles[0](c3)  # [B,512]
        deltas = []
        features = c3
        p2 = None
        for i in range(1, self.style_count):
            if i == COARSE_END:
                p2 = upsample_add(c3, self.latlayer1(c2))  # [B,512,32,32]
                features = p2
            elif i == MIDDLE_END:
                features = upsample_add(p2, self.latlayer2(c1))  # [B,512,64,64]
            deltas.append(self.styles[i](features))
        # codes[:, 0] = w0, codes[:, i] = w0 + delta_i
        base = w0.unsqueeze(1).expand(-1, self.style_count, -1)  # [B,n,512]
        delta = torch.stack([torch.zeros_like(w0)] + deltas, dim=1)  # [B,n,512]
        return base + delta


def check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"e4e: expected images [B,3,{INPUT_SIZE},{INPUT_SIZE}], got {tuple(getattr(x, 'shape', ()))}")
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"e4e: images must be {INPUT_SIZE}x{INPUT_SIZE} FFHQ-aligned crops, got {tuple(x.shape[-2:])}")
    if not x.is_floating_point():
        raise ValueError(f"e4e: images must be float in [-1, 1], got dtype {x.dtype}")


def preprocess_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] or [H,W,3] RGB → float [B,3,256,256] in [-1,1] (bilinear resize when needed).

    e4e's own transform resizes a PIL image with bilinear filtering; at the
    native 256 no resampling happens and the result is exact.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"e4e: preprocess_uint8 wants uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"e4e: expected [B,H,W,3] RGB, got {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float() / 255.0  # [B,3,H,W] in [0,1]
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = functional.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x * 2.0 - 1.0


def encode(encoder: Encoder4Editing, x: torch.Tensor, latent_avg: torch.Tensor) -> torch.Tensor:
    """W+ [B,n_styles,512] = encoder(x) + latent_avg (broadcast over batch, and over styles if [512])."""
    codes = encoder(x)
    if latent_avg.ndim == 1:
        latent_avg = latent_avg.unsqueeze(0)
    if latent_avg.shape[-1] != codes.shape[-1] or latent_avg.shape[0] not in (1, codes.shape[1]):
        raise ValueError(f"e4e: latent_avg of shape {tuple(latent_avg.shape)} does not fit codes {tuple(codes.shape)}")
    return codes + latent_avg.to(codes).unsqueeze(0)


class E4EModel(PretrainedMixin, nn.Module):
    """The released e4e model: :class:`Encoder4Editing` (``encoder``) and its
    ``latent_avg`` [n_styles, 512] buffer (zeros in a new model). ``forward`` is W+."""

    config_class = E4EConfig

    def __init__(self, config: E4EConfig = E4EConfig()) -> None:
        self._check_config(config)
        super().__init__()
        self.config = config
        self.encoder = Encoder4Editing(config)
        self.register_buffer("latent_avg", torch.zeros(config.n_styles, 512))  # [n_styles, 512]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,256,256] in [-1,1] → W+ [B,n_styles,512]."""
        return encode(self.encoder, x, self.latent_avg)
