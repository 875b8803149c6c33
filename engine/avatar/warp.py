"""Resampling images: from one crop frame into another, and to another size.

The 2D branch works in the FFHQ-aligned crop, the 3D branch in EG3D's crop of
the same selfie. ``engine.face.analyze`` gives the 2×3 similarity ``M`` that maps a
pixel of the source crop to the destination crop:

    [x_dst, y_dst]^T = M @ [x_src, y_src, 1]^T

Pixel coordinates are continuous with the centre of the top-left pixel at
(0.5, 0.5) and y pointing down; ``M`` is expressed for the sizes given
(``src_size`` and ``dst_size``). ``warp_to_frame`` is differentiable with
respect to the image, so Eq. 5 can push gradients into the 2D branch;
``frame_warp`` is the same warp with its transform built once, for step loops.

Resizing a square image [B, C, S, S] to [B, C, size, size] comes in two
filters, each the one its reference uses (both are differentiable):

- :func:`resize_bilinear`: bilinear, antialiased when shrinking, the filter
  of the PIL / torchvision resize that prepares the networks' inputs (e4e's
  256 px input, the crops at the generators' resolutions); also used for the
  rendered frames and the alpha matte.
- :func:`resize_for_lpips`: area average when shrinking, what the StyleGAN2
  and EG3D projectors feed LPIPS (``F.interpolate(..., mode='area')``);
  bilinear when enlarging. The inversion's, the pivotal tuning's and the
  dual branch's LPIPS inputs go through it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _to_normalised(size: int, device, dtype) -> torch.Tensor:
    """3×3 matrix from pixel coordinates to align_corners=False normalised [-1, 1]."""
    s = 2.0 / size
    return torch.tensor([[s, 0, -1.0], [0, s, -1.0], [0, 0, 1.0]], device=device, dtype=dtype)


def _sampling_transform(src_to_dst: torch.Tensor, batch: int, src_size: int, dst_size: int,
                        device) -> torch.Tensor:
    """theta [batch, 2, 3]: normalised destination -> normalised source coordinates, for ``affine_grid``."""
    m = src_to_dst.to(device, torch.float32)
    if m.ndim == 2:
        m = m.expand(batch, 2, 3)
    full = torch.cat([m, torch.tensor([0, 0, 1.0], device=device).expand(batch, 1, 3)], dim=1)  # [B,3,3]
    dst_to_src = torch.linalg.inv(full)
    n_src = _to_normalised(src_size, device, torch.float32)
    n_dst_inv = torch.linalg.inv(_to_normalised(dst_size, device, torch.float32))
    return (n_src @ dst_to_src @ n_dst_inv)[:, :2, :]


def _sample(img: torch.Tensor, theta: torch.Tensor, dst_size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    b = img.shape[0]
    grid = F.affine_grid(theta.to(img.dtype), [b, 1, dst_size, dst_size], align_corners=False)
    warped = F.grid_sample(img, grid, mode=mode, padding_mode="zeros", align_corners=False)
    inside = (grid.abs() <= 1).all(dim=-1, keepdim=True).permute(0, 3, 1, 2).to(img.dtype)
    return warped, inside


def _check_square(img: torch.Tensor) -> int:
    h, w = img.shape[-2:]
    if h != w:
        raise ValueError(f"expected a square crop, got {h}x{w}")
    return int(h)


def warp_to_frame(
    img: torch.Tensor, src_to_dst: torch.Tensor, dst_size: int, mode: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``img`` [B, C, S, S] (source frame) into the destination frame.

    ``src_to_dst``: [2, 3] or [B, 2, 3] similarity in pixels. Returns
    (warped [B, C, dst_size, dst_size], valid mask [B, 1, dst_size, dst_size]),
    the mask being 1 where the destination pixel falls inside the source.
    Builds the transform on every call; a step loop uses :func:`frame_warp`.
    """
    size = _check_square(img)
    theta = _sampling_transform(src_to_dst, img.shape[0], size, dst_size, img.device)
    return _sample(img, theta, dst_size, mode)


def frame_warp(src_to_dst: torch.Tensor, src_size: int, dst_size: int, device,
               mode: str = "bilinear") -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """:func:`warp_to_frame` for one fixed [2, 3] similarity, prepared once.

    Building the transform copies small matrices to the device and inverts
    them with a singularity check, each a host-device synchronisation; a
    stage calls its warp every step, so the transform is built here, once,
    on ``device``, and the returned ``warp(img [B, C, src_size, src_size])``
    runs device work only. Same numbers as :func:`warp_to_frame` for B = 1.
    """
    if src_to_dst.ndim != 2:
        raise ValueError(f"frame_warp takes one [2, 3] similarity, got {tuple(src_to_dst.shape)}")
    theta = _sampling_transform(src_to_dst, 1, src_size, dst_size, device)  # [1, 2, 3]

    def warp(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if _check_square(img) != src_size:
            raise ValueError(f"this warp takes {src_size} px crops, got {img.shape[-1]} px")
        return _sample(img, theta.expand(img.shape[0], 2, 3), dst_size, mode)

    return warp


def rescale_similarity(m: torch.Tensor, src_scale: float = 1.0, dst_scale: float = 1.0) -> torch.Tensor:
    """Adapt a pixel similarity to crops resized by ``src_scale`` / ``dst_scale``."""
    m = m.clone().double() if isinstance(m, torch.Tensor) else torch.as_tensor(m, dtype=torch.float64)
    m[:, :2] *= dst_scale / src_scale
    m[:, 2] *= dst_scale
    return m


def resize_bilinear(img: torch.Tensor, size: int) -> torch.Tensor:
    """img [B, C, H, W] -> [B, C, size, size], bilinear (antialiased when shrinking);
    returned unchanged when it already has that size."""
    if img.shape[-2:] == (size, size):
        return img
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=img.shape[-1] > size)


def resize_for_lpips(img: torch.Tensor, size: int) -> torch.Tensor:
    """img [B, C, S, S] -> [B, C, size, size]: area average when shrinking (as the
    projectors do before LPIPS), bilinear when enlarging; unchanged at that size."""
    if img.shape[-1] == size:
        return img
    if img.shape[-1] > size:
        return F.adaptive_avg_pool2d(img, size)
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
