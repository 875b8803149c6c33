"""Resampling an image from one crop frame into another.

The 2D branch works in the FFHQ-aligned crop, the 3D branch in EG3D's crop of
the same selfie. ``engine.face.analyze`` gives the 2×3 similarity ``M`` that maps a
pixel of the source crop to the destination crop:

    [x_dst, y_dst]^T = M @ [x_src, y_src, 1]^T

Pixel coordinates are continuous with the centre of the top-left pixel at
(0.5, 0.5) and y pointing down; ``M`` is expressed for the sizes given
(``src_size`` and ``dst_size``). ``warp_to_frame`` is differentiable with
respect to the image, so Eq. 5 can push gradients into the 2D branch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _to_normalised(size: int, device, dtype) -> torch.Tensor:
    """3×3 matrix from pixel coordinates to align_corners=False normalised [-1, 1]."""
    s = 2.0 / size
    return torch.tensor([[s, 0, -1.0], [0, s, -1.0], [0, 0, 1.0]], device=device, dtype=dtype)


def warp_to_frame(
    img: torch.Tensor, src_to_dst: torch.Tensor, dst_size: int, mode: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``img`` [B, C, S, S] (source frame) into the destination frame.

    ``src_to_dst``: [2, 3] or [B, 2, 3] similarity in pixels. Returns
    (warped [B, C, dst_size, dst_size], valid mask [B, 1, dst_size, dst_size]),
    the mask being 1 where the destination pixel falls inside the source.
    """
    b, _, h, w = img.shape
    if h != w:
        raise ValueError(f"expected a square crop, got {h}x{w}")
    m = src_to_dst.to(img.device, torch.float32)
    if m.ndim == 2:
        m = m.expand(b, 2, 3)
    full = torch.cat([m, torch.tensor([0, 0, 1.0], device=img.device).expand(b, 1, 3)], dim=1)  # [B,3,3]
    dst_to_src = torch.linalg.inv(full)
    n_src = _to_normalised(h, img.device, torch.float32)
    n_dst_inv = torch.linalg.inv(_to_normalised(dst_size, img.device, torch.float32))
    theta = (n_src @ dst_to_src @ n_dst_inv)[:, :2, :]  # normalised dst -> normalised src
    grid = F.affine_grid(theta.to(img.dtype), [b, 1, dst_size, dst_size], align_corners=False)
    warped = F.grid_sample(img, grid, mode=mode, padding_mode="zeros", align_corners=False)
    inside = (grid.abs() <= 1).all(dim=-1, keepdim=True).permute(0, 3, 1, 2).to(img.dtype)
    return warped, inside


def rescale_similarity(m: torch.Tensor, src_scale: float = 1.0, dst_scale: float = 1.0) -> torch.Tensor:
    """Adapt a pixel similarity to crops resized by ``src_scale`` / ``dst_scale``."""
    m = m.clone().double() if isinstance(m, torch.Tensor) else torch.as_tensor(m, dtype=torch.float64)
    m[:, :2] *= dst_scale / src_scale
    m[:, 2] *= dst_scale
    return m
