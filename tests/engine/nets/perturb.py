"""Shared test set-up for StyleGAN2 networks."""
from __future__ import annotations

import torch


def perturb(G, seed=0):
    """Non-zero noise strengths and biases so no term can be skipped unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.copy_(torch.rand([], generator=g) * 0.5 + 0.1)
            elif name.endswith(".bias") and "affine" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return G
