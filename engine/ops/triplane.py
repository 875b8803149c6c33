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
  Under ``torch.compile`` it traces ``triplane_mean_traced``: the
  ``emoji3d::triplane_mean`` custom op and its backward, which choose kernel
  or reference when they run.
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F

from engine.ops import dispatch

__all__ = ["triplane_mean", "triplane_mean_ref", "triplane_mean_fused", "triplane_mean_traced", "FUSED"]

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


def _forward_on(kernel: ModuleType, planes: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel: ([N, M, C] in the planes' dtype, the float32 grid the backward reads)."""
    n, _, c, h, w = planes.shape
    # One copy: to channels last and to float32 at once.
    planes_last = planes.new_empty((n, 3, h, w, c), dtype=torch.float32).copy_(planes.permute(0, 1, 3, 4, 2))
    grid32 = grid.detach().float().contiguous()
    return kernel.triplane_mean_forward(planes_last, grid32).to(planes.dtype), grid32


def _backward_on(kernel: ModuleType, dy: torch.Tensor, grid32: torch.Tensor, h: int, w: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """The planes' gradient [N, 3, C, H, W] (a view of channels-last memory [N, 3, H, W, C]) from the kernel."""
    grad_last = kernel.triplane_mean_backward(dy.float().contiguous(), grid32, h, w)  # [N, 3, H, W, C]
    return grad_last.permute(0, 1, 4, 2, 3).to(dtype)


class _TriplaneMean(torch.autograd.Function):
    """Forward and planes-gradient kernels on channels-last float32 copies of the planes."""

    @staticmethod
    def forward(ctx, kernel, planes, grid):
        out, grid32 = _forward_on(kernel, planes, grid)
        ctx.save_for_backward(grid32)
        ctx.kernel = kernel
        ctx.plane_hw = tuple(planes.shape[3:])
        ctx.dtype = planes.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (grid32,) = ctx.saved_tensors
        return None, _backward_on(ctx.kernel, dy, grid32, *ctx.plane_hw, ctx.dtype), None


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


# Under torch.compile: the forward and the planes' gradient as custom ops, decided when they run
# (``engine.ops.dispatch``'s docstring). Both paths give the same layouts: the forward a contiguous
# [N, M, C], the gradient [N, 3, C, H, W] over channels-last memory, as the kernels make them.


@torch.library.custom_op("emoji3d::triplane_mean", mutates_args=())
def _mean_op(planes: torch.Tensor, grid: torch.Tensor, impl: str) -> torch.Tensor:
    kernel = dispatch.fused_kernel(FUSED, impl, planes.device, planes.dtype)
    if kernel is not None:
        return _forward_on(kernel, planes, grid)[0]
    return triplane_mean_ref(planes, grid).contiguous()


@_mean_op.register_fake
def _mean_shape(planes, grid, impl):
    return planes.new_empty((planes.shape[0], grid.shape[2], planes.shape[2]))  # [N, M, C]


@torch.library.custom_op("emoji3d::triplane_mean_backward", mutates_args=())
def _mean_backward_op(dy: torch.Tensor, grid: torch.Tensor, height: int, width: int, impl: str) -> torch.Tensor:
    kernel = dispatch.fused_kernel(FUSED, impl, dy.device, dy.dtype)
    if kernel is not None:
        return _backward_on(kernel, dy, grid.float().contiguous(), height, width, dy.dtype)
    # The reference's gradient, spelt out: a custom op runs below autograd. grid_sample is linear in
    # its input, so the planes' values do not matter (zeros of their shape); the mean spreads dy / 3.
    n, m, c = dy.shape
    d_samples = (dy.transpose(1, 2) / 3).unsqueeze(1).expand(n, 3, c, m).reshape(n * 3, c, 1, m)
    grad, _ = torch.ops.aten.grid_sampler_2d_backward(
        d_samples, dy.new_zeros((n * 3, c, height, width)), grid.reshape(n * 3, 1, m, 2).to(dy.dtype),
        0, 0, False, [True, False])  # bilinear, zero padding, align_corners=False: as triplane_mean_ref
    return grad.view(n, 3, c, height, width).permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


@_mean_backward_op.register_fake
def _mean_backward_shape(dy, grid, height, width, impl):
    n, _, c = dy.shape
    return dy.new_empty((n, 3, height, width, c)).permute(0, 1, 4, 2, 3)  # [N, 3, C, H, W]


def _mean_op_setup(ctx, inputs, output) -> None:
    planes, grid, impl = inputs
    ctx.save_for_backward(grid)
    ctx.params = (planes.shape[3], planes.shape[4], impl)


def _mean_op_backward(ctx, dy):
    (grid,) = ctx.saved_tensors
    return _mean_backward_op(dy, grid, *ctx.params), None, None


_mean_op.register_autograd(_mean_op_backward, setup_context=_mean_op_setup)


def triplane_mean_traced(planes: torch.Tensor, grid: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """triplane_mean as the ``emoji3d::triplane_mean`` custom op, what ``torch.compile`` traces; no
    gradient w.r.t. ``grid``."""
    _check(planes, grid)
    if grid.requires_grad:
        raise ValueError("triplane_mean_traced: no gradient w.r.t. grid (use triplane_mean, which runs the reference)")
    return _mean_op(planes, grid, impl)


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
    if torch.compiler.is_compiling() and dispatch.custom_op_traced(impl, planes.device):
        return triplane_mean_traced(planes, grid, impl)
    kernel = dispatch.fused_kernel(FUSED, impl, planes.device, planes.dtype)
    if kernel is not None:
        return triplane_mean_fused(kernel, planes, grid)
    return triplane_mean_ref(planes, grid)
