"""Random generator deltas and render comparisons shared by the compact-storage tests.

Deltas are random Gaussian perturbations of each tuned EG3D tensor, scaled to that tensor's std
(the magnitudes ``bench/avatar_bytes.py`` uses at full size: PTI 2 %, the stylized residual 5 %).
"""
from __future__ import annotations

import math

import torch

from engine.avatar import params
from engine.avatar.pipeline import TUNE_PREFIXES_3D


def random_delta(g3d, relative_std: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in g3d.named_parameters():
        if name.startswith(TUNE_PREFIXES_3D):
            scale = float(p.detach().float().std()) if p.numel() > 1 else 1.0
            out[name] = (relative_std * scale * torch.randn(p.shape, generator=gen)).half()
    return out


def render(g3d, delta, w_3d, noise, cameras) -> torch.Tensor:
    """[V, 3, S, S] views of ``w_3d`` with the base weights plus ``delta``."""
    weights = params.apply_delta(g3d, delta)
    with torch.no_grad():
        return torch.cat([params.call_with(g3d, weights, lambda g, c: g.synthesis(w_3d, c, noise_inputs=noise),
                                           cam[None])["image"] for cam in cameras])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())  # images in [-1, 1]: peak-to-peak 2
    return 10 * math.log10(4.0 / mse) if mse > 0 else math.inf
