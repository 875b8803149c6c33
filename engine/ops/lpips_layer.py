"""lpips_layer: one layer's term of the LPIPS distance, from two images' raw trunk features.

Conventions
-----------
* ``a`` is ``[N, C, H, W]``, ``b`` is ``[N, C, H, W]`` or ``[1, C, H, W]`` (one
  image compared with each of ``a``'s, e.g. a constant target): the outputs of
  one trunk layer (VGG16 or AlexNet) for two images, before LPIPS's unit
  normalisation. ``weight`` is the layer's calibration, ``[1, C, 1, 1]`` (the
  1x1 convolution ``lin<k>`` of the ``lpips`` package, no bias; a constant).
* The result is ``[N]`` float32 (float64 for float64 features): per image pair, the spatial mean of
  ``sum_c weight_c * (a_c / (|a| + eps) - b_c / (|b| + eps))^2``, where ``|.|``
  is the Euclidean norm over the channels of one pixel and ``eps = 1e-10``,
  as the package's ``normalize_tensor``. LPIPS is the sum over the layers.
* Gradients: w.r.t. ``a`` and ``b`` (stage 5 compares the render with the
  warped cartoon, and both branches learn from it); none w.r.t. ``weight``.

Three parts, one file:

* ``lpips_layer_ref``: the package's own operations in its order (unit
  normalisation, squared difference, the 1x1 convolution, the spatial mean):
  the definition, and bit for bit what ``engine.nets.perceptual`` computed
  before this op.
* ``lpips_layer_fused``: the autograd Function around our CUDA kernels
  (``cuda/lpips_layer.cu``). Why: the reference runs about 30 element-wise and
  reduction kernels per layer, forward and backward, each reading or writing
  whole feature maps (VGG16's first layer at 256 px is 64 x 256 x 256);
  in the per-user stages they were about 230 small kernels and 2.3 GB per
  stage-5 round (``bench/memory_traffic.py``). The forward kernel reads a
  pixel's channels of ``a`` and ``b`` and writes its term, the backward reads
  them again with the term's gradient and writes the features' gradients: one
  thread per pixel for maps of at least ``THREAD_PER_PIXEL_FROM`` pixels,
  one warp per pixel below (a deep layer's few pixels would leave most of the
  GPU idle, one thread each). NCHW or channels-last inputs (the layout the
  trunk gave); accumulation in float32.
* ``lpips_layer(..., impl='ref'|'cuda'|'auto')``: the switch; the kernel is
  used only after it passed its self-check (``engine.ops.dispatch``, probe
  below). A ``b`` of one image that needs a gradient, a ``weight`` that needs
  one, or tensors past the kernels' 32-bit indices run the reference.

One difference at a degenerate point: where all of a pixel's features are
zero (possible after a ReLU), the reference's gradient is NaN (the square
root's derivative at zero, times zero); the kernel gives the derivative of
``a / (|a| + eps)`` there, the term's gradient over ``eps``: finite, if large.
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F

from engine.ops import dispatch

__all__ = ["lpips_layer", "lpips_layer_ref", "lpips_layer_fused", "FUSED", "EPS"]

EPS = 1e-10  # the lpips package's normalize_tensor
# 32-bit indices in the kernels (cuda/lpips_layer.cpp checks the same bound).
_MAX_ELEMENTS = 2**31 - 1 - 256 * 65535
# Pixels (N * H * W) from which each gets a thread of its own rather than a warp: 256 blocks of 256
# threads. VGG16's first layer at 256 px (65,536 pixels of 64 channels) is the first such map.
THREAD_PER_PIXEL_FROM = 65536


def _check(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor) or a.ndim != 4:
        raise ValueError(f"lpips_layer: a must be [N, C, H, W], got {tuple(getattr(a, 'shape', ()))}")
    n, c, h, w = a.shape
    if not isinstance(b, torch.Tensor) or b.ndim != 4 or b.shape[1:] != a.shape[1:] or b.shape[0] not in (1, n):
        raise ValueError(f"lpips_layer: b must be [{n} or 1, {c}, {h}, {w}] to match a, "
                         f"got {tuple(getattr(b, 'shape', ()))}")
    if not isinstance(weight, torch.Tensor) or weight.numel() != c:
        raise ValueError(f"lpips_layer: weight must hold {c} values ([1, {c}, 1, 1]), "
                         f"got {tuple(getattr(weight, 'shape', ()))}")


def _unit(features: torch.Tensor) -> torch.Tensor:
    """The lpips package's ``normalize_tensor``: each pixel's channel vector over its norm + eps."""
    return features / (torch.sqrt(torch.sum(features ** 2, dim=1, keepdim=True)) + EPS)


def lpips_layer_ref(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Pure-torch definition (see module docstring): [N] float32 (float64 for float64 features)."""
    _check(a, b, weight)
    diff = (_unit(a) - _unit(b)) ** 2
    terms = F.conv2d(diff, weight.reshape(1, -1, 1, 1)).mean([2, 3], keepdim=True).reshape(-1)
    return terms if terms.dtype == torch.float64 else terms.float()


def _unserved(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> str:
    """Why the kernels cannot take these inputs ("" when they can)."""
    if weight.requires_grad:
        return "no gradient w.r.t. weight"
    if b.requires_grad and b.shape[0] != a.shape[0]:
        return "no gradient for a b of one image compared with several"
    if b.dtype != a.dtype:
        return f"a and b must have one dtype, got {a.dtype} and {b.dtype}"
    if a.numel() > _MAX_ELEMENTS:
        return "tensors past the kernels' 32-bit indices"
    return ""


class _LPIPSLayer(torch.autograd.Function):
    """Per-pixel terms [N, H*W] float32 and the features' gradients, on our kernels."""

    @staticmethod
    def forward(ctx, kernel, thread_per_pixel, a, b, weight):
        a, b = dispatch.dense(a), dispatch.dense(b)
        weight32 = weight.detach().reshape(-1).float().contiguous()  # [C]
        terms = kernel.lpips_layer_forward(a, b, weight32, thread_per_pixel)  # [N, H*W] float32
        ctx.save_for_backward(a, b, weight32)
        ctx.kernel, ctx.thread_per_pixel = kernel, thread_per_pixel
        return terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_terms):
        a, b, weight32 = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        grad_a, grad_b = ctx.kernel.lpips_layer_backward(a, b, weight32, d_terms.float().contiguous(), need_a, need_b,
                                                         ctx.thread_per_pixel)
        return None, None, grad_a if need_a else None, grad_b if need_b else None, None


def lpips_layer_fused(kernel: ModuleType, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor,
                      thread_per_pixel: bool | None = None) -> torch.Tensor:
    """lpips_layer on ``kernel`` (a module with the ``cuda/lpips_layer.cpp`` signatures);
    ``thread_per_pixel`` picks the kernels' form (None: from the pixel count, see the module docstring)."""
    _check(a, b, weight)
    why = _unserved(a, b, weight)
    if why:
        raise ValueError(f"lpips_layer_fused: {why} (lpips_layer runs the reference for these)")
    if thread_per_pixel is None:
        thread_per_pixel = a.shape[0] * a.shape[2] * a.shape[3] >= THREAD_PER_PIXEL_FROM
    return _LPIPSLayer.apply(kernel, bool(thread_per_pixel), a, b, weight).mean(1)


def _probe(kernel: ModuleType, device: torch.device, dtype: torch.dtype) -> dispatch.ProbeResults:
    """Self-check inputs, each through both forms of the kernels (a thread and a warp per pixel):
    NCHW and channels-last features, C = 5 (fewer than a warp's lanes) and 70 (more, not a
    multiple), both sides with gradients, and a constant ``b`` of one image against two (the cached
    target)."""
    draw = dispatch.probe_normal(20261205)
    results: dispatch.ProbeResults = []
    for form, per_thread in (("thread", True), ("warp", False)):
        for label, c, h, w, layout in (("C=5 NCHW", 5, 3, 4, torch.contiguous_format),
                                       ("C=70 channels-last", 70, 6, 5, torch.channels_last)):
            weight = draw(1, c, 1, 1).abs().to(device)
            a, b = (draw(2, c, h, w).contiguous(memory_format=layout) for _ in range(2))
            results += dispatch.compare_with_reference(
                f"{label} ({form} per pixel)",
                lambda x, y, weight=weight, per_thread=per_thread: lpips_layer_fused(kernel, x, y, weight, per_thread),
                lambda x, y, weight=weight: lpips_layer_ref(x, y, weight.double()), [a, b], ("a", "b"), device, dtype,
                draw)
        weight = draw(1, 7, 1, 1).abs().to(device)
        target = draw(1, 7, 4, 3).to(device=device, dtype=dtype)  # a constant, rounded to the dtype under test once
        results += dispatch.compare_with_reference(
            f"b of one image ({form} per pixel)",
            lambda x, weight=weight, target=target, per_thread=per_thread: lpips_layer_fused(
                kernel, x, target, weight, per_thread),
            lambda x, weight=weight, target=target: lpips_layer_ref(x, target.double(), weight.double()),
            [draw(2, 7, 4, 3)], ("a",), device, dtype, draw)
    return results


# The kernels accumulate in float32; float16 and bfloat16 features are read and their gradients written
# in their own dtype.
FUSED = dispatch.FusedOp(name="lpips_layer", extension="lpips_layer",
                         dtypes=(torch.float32, torch.float16, torch.bfloat16), probe=_probe)


def lpips_layer(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """lpips_layer with an implementation switch (``'ref'|'cuda'|'auto'``, see ``engine.ops.dispatch``)."""
    _check(a, b, weight)
    why = _unserved(a, b, weight)
    if why:
        if impl == "cuda":
            raise dispatch.FusedKernelUnavailable(f"lpips_layer: impl='cuda' cannot run the fused kernel: {why}")
        return lpips_layer_ref(a, b, weight)
    kernel = dispatch.fused_kernel(FUSED, impl, a.device, a.dtype)
    if kernel is not None:
        return lpips_layer_fused(kernel, a, b, weight)
    return lpips_layer_ref(a, b, weight)
