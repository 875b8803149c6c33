"""LPIPS perceptual distance (Zhang et al. 2018) as a savable network around the ``lpips`` package.

Conventions
- Images [B,3,H,W] float RGB in [-1, 1]; :class:`LPIPSNetwork` returns distances [B].
- Nets: ``"vgg"`` (VGG16 trunk, the PTI/e4e choice) and ``"alex"`` (AlexNet).
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
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

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
