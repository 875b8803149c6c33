"""LPIPS perceptual distance (Zhang et al. 2018) as a savable network around the ``lpips`` package.

Conventions
- Images [B,3,H,W] float RGB in [-1, 1]; :class:`LPIPSNetwork` returns distances [B].
- Nets: ``"vgg"`` (VGG16 trunk, as the StyleGAN2 / EG3D projector's LPIPS) and
  ``"alex"`` (AlexNet, as PTI's and e4e's).
- :class:`LPIPSNetwork` holds an ``lpips.LPIPS`` as ``model``, so its state-dict
  keys are the package's under ``model.``: the input scaling
  (``model.scaling_layer.*``), the trunk slices (``model.net.slice<k>.<i>.*``,
  torchvision's ``features.<i>`` layers) and the linear calibration layers
  (``model.lin<k>.model.1.weight``, listed a second time as
  ``model.lins.<k>.*`` because the package keeps them in a list too).
- The ``lpips`` package is only used as an architecture: it is built with a
  random trunk and uncalibrated linear layers, so it never downloads or reads
  a file; the weights come from a pretrained folder, which ``emoji3d weights
  convert`` makes from the torchvision ImageNet trunk (``vgg16-397923af.pth``
  / ``alexnet-owt-7be5be79.pth``) and the calibration shipped inside the
  package (:mod:`engine.weights.convert`).
- A constant target (the photo in stages 3-4, the exemplar in stage 5) is
  compared with many images: :meth:`LPIPSNetwork.to_target` extracts its
  features once and returns a one-argument distance that only runs the trunk
  on the other image. It computes the package's ``forward`` term by term
  (scaling, trunk, then per layer unit-normalise, squared difference, linear
  layer and spatial mean, :mod:`engine.ops.lpips_layer`, summed over the
  layers), so it gives the same numbers (float32 ones).
  :meth:`LPIPSNetwork.to_target_and_other` also compares the image with a
  second, changing one, running the trunk over the image once for both, and
  over the second image only when it changes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from engine.ops.lpips_layer import lpips_layer
from engine.weights.pretrained import PretrainedConfig, PretrainedMixin

NETS = ("vgg", "alex")


@dataclass(frozen=True)
class LPIPSConfig(PretrainedConfig):
    net: str = "vgg"  # "vgg" or "alex"
    version: str = "0.1"

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"LPIPS: net must be one of {list(NETS)}, got {self.net!r}")


class LPIPSNetwork(PretrainedMixin, torch.nn.Module):
    """(a, b) images [B,3,H,W] in [-1,1] → LPIPS distance [B]."""

    config_class = LPIPSConfig
    # lpips makes its input-scaling constants on the CPU whatever the device, and building on
    # the meta device saves no measurable time here: build normally.
    build_on_meta = False

    def __init__(self, config: LPIPSConfig = LPIPSConfig()) -> None:
        self._check_config(config)
        super().__init__()
        import lpips

        self.config = config
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation notice
            self.model = lpips.LPIPS(pretrained=False, net=config.net, version=config.version, pnet_rand=True,
                                     verbose=False)

    def init_from_seed(self, generator: torch.Generator) -> None:
        """Non-negative linear layers (as the calibrated ones are), so a random network's
        distances are >= 0 like real LPIPS'."""
        for lin in self.model.lins:
            weight = lin.model[-1].weight  # [1, C, 1, 1]
            weight.copy_(0.1 * torch.randn(weight.shape, generator=generator).abs())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS: expected two [B,3,H,W] batches of equal shape, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        return self.model(a, b).reshape(a.shape[0])  # [B]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Trunk features of ``x`` [B,3,H,W] in [-1,1] before LPIPS's unit normalisation (which
        :func:`engine.ops.lpips_layer.lpips_layer` applies), one [B,C_k,H_k,W_k] per layer."""
        model = self.model
        inputs = model.scaling_layer(x) if model.version == "0.1" else x
        return list(model.net.forward(inputs))

    def distance_from_features(self, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS [B] float32 between two images given their :meth:`features` (B broadcasts): per layer,
        unit normalisation, squared difference, the calibration layer and the spatial mean, in one
        fused op on CUDA (``engine.ops.lpips_layer``)."""
        total = 0
        for k, lin in enumerate(self.model.lins):
            total = total + lpips_layer(feats_a[k], feats_b[k], lin.model[-1].weight)  # [B]
        return total

    def _target_features(self, target: torch.Tensor) -> list[torch.Tensor]:
        """A constant target's :meth:`features`, extracted without gradients."""
        if target.ndim != 4 or target.shape[1] != 3:
            raise ValueError(f"LPIPS: expected a [B,3,H,W] target, got {tuple(target.shape)}")
        with torch.no_grad():
            return [f.detach() for f in self.features(target)]

    def to_target(self, target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> LPIPS(x, target)`` [B] with the target's features extracted once, now, without
        gradients (the target is a constant of the optimisation)."""
        target_feats = self._target_features(target)

        def distance(x: torch.Tensor) -> torch.Tensor:
            if x.shape[1:] != target.shape[1:]:
                raise ValueError(f"LPIPS: image {tuple(x.shape)} does not match the target {tuple(target.shape)}")
            return self.distance_from_features(self.features(x), target_feats)

        return distance

    def to_target_and_other(self, target: torch.Tensor) -> "DistancesToTargetAndOther":
        """``(x, other) -> (LPIPS(x, target), LPIPS(x, other))``, each [B]: the target's features
        extracted once, now, and ``x``'s once per call for both distances (stage 5 compares each
        render with the exemplar and with the cartoon; the trunk's pass over ``x`` and its backward
        are the costly part). ``other``'s features can be made once and passed for many ``x``
        (:meth:`DistancesToTargetAndOther.prepare_other`)."""
        return DistancesToTargetAndOther(self, self._target_features(target), tuple(target.shape[1:]))


class DistancesToTargetAndOther:
    """LPIPS of an image ``x`` to a constant target and to a second image ``other``, with ``x``'s
    trunk features serving both. ``prepare_other(other)`` is what the second distance reads of
    ``other`` (its trunk features, [B,C_k,H_k,W_k] per layer); ``from_prepared(x, prepared)``
    takes that, so a caller comparing many images with one ``other`` (stage 5's held cartoon)
    runs the trunk over it once. ``(x, other)`` does both."""

    def __init__(self, net: LPIPSNetwork, target_features: list[torch.Tensor], image_shape: tuple[int, ...]) -> None:
        self.net, self.target_features, self.image_shape = net, target_features, image_shape

    def _check(self, image: torch.Tensor, what: str) -> None:
        if tuple(image.shape[1:]) != self.image_shape:
            raise ValueError(f"LPIPS: {what} {tuple(image.shape)} does not match the target's "
                             f"[B,{','.join(map(str, self.image_shape))}]")

    def prepare_other(self, other: torch.Tensor) -> list[torch.Tensor]:
        self._check(other, "the other image")
        return self.net.features(other)

    def from_prepared(self, x: torch.Tensor, other_features: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "image")
        if other_features[0].shape[0] != x.shape[0]:
            raise ValueError(f"LPIPS: image batch {x.shape[0]} does not match the other image's "
                             f"{other_features[0].shape[0]}")
        feats = self.net.features(x)
        return (self.net.distance_from_features(feats, self.target_features),
                self.net.distance_from_features(feats, other_features))

    def __call__(self, x: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_prepared(x, self.prepare_other(other))
