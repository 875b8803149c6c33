"""triplane_mean: the mean over EG3D's three feature planes of their bilinear samples.

Conventions
-----------
* ``planes`` is ``[N, 3, C, H, W]`` (the backbone's 96 channels viewed as three
  planes of C = 32), ``grid`` is ``[N, 3, M, 2]``: for each plane, M points as
  ``(x, y)`` plane coordinates in ``[-1, 1]`` (``grid_sample``'s, with
  ``align_corners=False``: pixel centres at ``(i + 0.5) / size * 2 - 1``;
  texels outside the plane read as zero). The result is ``[N, M, C]``: per
  point, the mean of its three planes' bilinear samples (what the OSG decoder
  of ``engine.nets.eg3d`` reads).
* Gradients: w.r.t. ``planes``. The renderer's sample positions are constants
  of a step (camera rays, importance samples drawn without gradient), so the
  fused path takes no gradient w.r.t. ``grid``: a ``grid`` that requires one
  runs the reference.

Three parts, one file:

* ``triplane_mean_ref``: ``F.grid_sample`` on the ``[N*3, C, H, W]`` planes,
  then the mean; the definition.
* ``triplane_mean_fused``: the autograd Function around our CUDA kernels
  (``cuda/triplane.cu``). They work on channels-last float32 planes
  ``[N, 3, H, W, C]``: one thread per (point, channel), so a warp reads, and in
  the backward pass adds into, one texel's 32 adjacent features.
  ``grid_sample``'s backward on ``[N, C, H, W]`` planes spreads each sample's 32
  atomic adds over 32 lines ``H*W`` floats apart; on the H200 it was the
  largest single kernel of the EG3D stages' steps (bench/step_profile.py). Other
  dtypes are computed in float32 and rounded back.
* ``triplane_mean(..., impl='ref'|'cuda'|'auto')``: the switch; the kernel is
  used only after it passed its self-check (``engine.ops.dispatch``, probe below).
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F

from engine.ops import dispatch

__all__ = ["triplane_mean", "triplane_mean_ref", "triplane_mean_fused", "FUSED"]

# 32-bit indices in the kernels (cuda/triplane.cpp checks the same bound).
_MAX_ELEMENTS = 2**31 - 1 - 256 * 65535 * 8


def _check(planes: torch.Tensor, grid: torch.Tensor) -> None:
    if not isinstance(planes, torch.Tensor) or planes.ndim != 5 or planes.shape[1] != 3:
        raise ValueError(f"triplane_mean: planes must be [N, 3, C, H, W], got {tuple(getattr(planes, 'shape', ()))}")
    n = planes.shape[0]
    if not isinstance(grid, torch.Tensor) or grid.ndim != 4 or grid.shape[0] != n or grid.shape[1] != 3 \
            or grid.shape[3] != 2:
        raise ValueError(f"triplane_mean: grid must be [{n}, 3, M, 2] to match planes, "
                         f"got {tuple(getattr(grid, 'shape', ()))}")


def triplane_mean_ref(planes: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Pure-torch definition (see module docstring): [N, M, C]."""
    _check(planes, grid)
    n, _, c, h, w = planes.shape
    m = grid.shape[2]
    feats = F.grid_sample(planes.reshape(n * 3, c, h, w), grid.reshape(n * 3, 1, m, 2).to(planes.dtype),
                          mode="bilinear", padding_mode="zeros", align_corners=False)  # [N*3, C, 1, M]
    return feats.view(n, 3, c, m).mean(1).transpose(1, 2)


class _TriplaneMean(torch.autograd.Function):
    """Forward and planes-gradient kernels on channels-last float32 copies of the planes."""

    @staticmethod
    def forward(ctx, kernel, planes, grid):
        n, _, c, h, w = planes.shape
        # One copy: to channels last and to float32 at once.
        planes_last = planes.new_empty((n, 3, h, w, c), dtype=torch.float32).copy_(planes.permute(0, 1, 3, 4, 2))
        grid32 = grid.detach().float().contiguous()
        out = kernel.triplane_mean_forward(planes_last, grid32)  # [N, M, C] float32
        ctx.save_for_backward(grid32)
        ctx.kernel = kernel
        ctx.plane_hw = tuple(planes.shape[3:])
        ctx.dtype = planes.dtype
        return out.to(planes.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (grid32,) = ctx.saved_tensors
        h, w = ctx.plane_hw
        grad_last = ctx.kernel.triplane_mean_backward(dy.float().contiguous(), grid32, h, w)  # [N, 3, H, W, C]
        return None, grad_last.permute(0, 1, 4, 2, 3).to(ctx.dtype), None


def triplane_mean_fused(kernel: ModuleType, planes: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """triplane_mean on ``kernel`` (a module with the ``cuda/triplane.cpp`` signatures); no gradient w.r.t. ``grid``."""
    _check(planes, grid)
    if grid.requires_grad:
        raise ValueError("triplane_mean_fused: no gradient w.r.t. grid (use triplane_mean, which runs the reference)")
    return _TriplaneMean.apply(kernel, planes, grid)


def _probe(kernel: ModuleType, device: torch.device, dtype: torch.dtype) -> dispatch.ProbeResults:
    """Self-check inputs: uneven plane sizes, points inside, on and outside the planes' edges
    (zero padding), C = 5 (the kernels' general path) and C = 32 (the path EG3D runs)."""
    draw = dispatch.probe_normal(20261204)
    results: dispatch.ProbeResults = []
    for c, h, w, m in ((5, 6, 7, 40), (32, 9, 5, 30)):
        planes = draw(2, 3, c, h, w)  # [N, 3, C, H, W]
        # [N, 3, M, 2], about a tenth outside [-1, 1]; rounded to the dtype under test once, so that
        # both sides sample at the same points.
        grid = (0.8 * draw(2, 3, m, 2)).to(device=device, dtype=dtype)
        results += dispatch.compare_with_reference(
            f"C={c}", lambda p, grid=grid: triplane_mean_fused(kernel, p, grid),
            lambda p, grid=grid: triplane_mean_ref(p, grid.to(p.dtype)), [planes], ("planes",), device, dtype, draw)
    return results


# The kernels compute in float32; bfloat16 and float16 planes are converted on the way in and out.
FUSED = dispatch.FusedOp(name="triplane_mean", extension="triplane",
                         dtypes=(torch.float32, torch.float16, torch.bfloat16), probe=_probe)


def triplane_mean(planes: torch.Tensor, grid: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """triplane_mean with an implementation switch (``'ref'|'cuda'|'auto'``, see ``engine.ops.dispatch``).
    A ``grid`` that needs a gradient, or tensors past the kernels' 32-bit indices, run the reference."""
    _check(planes, grid)
    n, _, c, h, w = planes.shape
    fits = max(planes.numel(), n * 3 * grid.shape[2] * c) <= _MAX_ELEMENTS
    if grid.requires_grad or not fits:
        if impl == "cuda":
            raise dispatch.FusedKernelUnavailable("triplane_mean: impl='cuda' cannot run the fused kernel for a grid "
                                                  "that needs a gradient or tensors past 32-bit indices")
        return triplane_mean_ref(planes, grid)
    kernel = dispatch.fused_kernel(FUSED, impl, planes.device, planes.dtype)
    if kernel is not None:
        return triplane_mean_fused(kernel, planes, grid)
    return triplane_mean_ref(planes, grid)
