"""upfirdn2d: upsample, pad, FIR-filter and downsample a batch of 2D images.

Conventions
-----------
* ``x`` is ``[N, C, H, W]`` (any float dtype), ``f`` is a 2D filter ``[fh, fw]``
  or a separable 1D filter ``[fw]`` (applied along x then y), float32.
* Order of operations, per image: insert ``up - 1`` zeros after every pixel
  (both axes), pad by ``padding = [x0, x1, y0, y1]`` pixels (negative values
  crop), convolve with ``f`` (a true convolution; ``flip_filter=True`` makes it
  a correlation, which is the same thing for the symmetric filters StyleGAN
  uses), keep every ``down``-th pixel starting at 0, multiply by ``gain``
  (for a 1D filter the gain is applied as ``sqrt(gain)`` per axis).
* ``up``/``down`` are an int or an ``(x, y)`` pair; ``padding`` an int, an
  ``(x, y)`` pair or ``[x0, x1, y0, y1]``.
* Output size along x: ``(W * up + x0 + x1 - fw) // down + 1``.
* ``setup_filter([1, 3, 3, 1])`` gives the normalised outer-product 2D filter
  (sum 1) used by StyleGAN2 for every resampling step.

Three parts, one file:

* ``upfirdn2d_ref``: the readable pure-torch definition. The filter runs as a
  depthwise convolution (``groups=C``, weight ``[C, 1, fh, fw]``): bit-identical
  to one single-filter convolution over an ``[N*C, 1, H, W]`` view and about
  twice as fast on the CPU (see bench/nets.py).
* ``upfirdn2d_fused``: the autograd Function around our CUDA kernels
  (``cuda/upfirdn2d.cu``: a shared-memory tiled kernel for the 4x4 filter with
  up or down 2 that the networks run, a generic one otherwise, and for a
  channels-last input an NHWC kernel whose output is channels-last too; 2D
  filters only; a 1D filter runs as an x pass then a y pass). The gradient of
  upfirdn2d is again an upfirdn2d (``adjoint_params``:
  filter flipped, up/down swapped, padding transformed), so the backward reuses
  the Function and every gradient order stays on the kernel.
* ``upfirdn2d(..., impl='ref'|'cuda'|'auto')``: the switch; the kernel is used
  only after it passed its self-check (``engine.ops.dispatch``, probe below).
  Under ``torch.compile`` it traces ``upfirdn2d_traced``: the same passes as
  ``emoji3d::upfirdn2d_pass`` custom ops, which choose kernel or reference when
  they run.
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.ops import dispatch

__all__ = ["setup_filter", "upfirdn2d", "upfirdn2d_ref", "upfirdn2d_fused", "upfirdn2d_traced", "adjoint_params",
           "upsample2d", "downsample2d", "filter2d", "parse_padding", "FUSED"]


def parse_scaling(scaling: int | Sequence[int]) -> tuple[int, int]:
    """An up/down factor as ``(x, y)``."""
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = (int(s) for s in scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f"upfirdn2d: up/down factors must be >= 1, got {scaling}")
    return sx, sy


def parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """A padding as ``(x0, x1, y0, y1)``."""
    if isinstance(padding, int):
        padding = [padding, padding]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f"upfirdn2d: padding must have 1, 2 or 4 entries, got {padding}")
    return tuple(padding)  # type: ignore[return-value]


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """``(fw, fh)`` of a 2D or separable 1D filter."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"upfirdn2d: filter must be 1D or 2D, got shape {tuple(f.shape)}")
    return f.shape[-1], f.shape[0]


def setup_filter(
    f: Sequence[float] | np.ndarray | torch.Tensor | None,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1.0,
    separable: bool | None = None,
) -> torch.Tensor:
    """Build the float32 filter tensor: a 1D list becomes its outer product
    (``[fw, fw]``) unless ``separable``; normalised to sum 1, times ``gain``."""
    if f is None:
        f = [1]
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: expected a non-empty 1D or 2D filter, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = f.outer(f)  # [fw, fw]
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _check(x: torch.Tensor, f: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be a [N, C, H, W] tensor, got {getattr(x, 'shape', type(x))}")
    if f is not None and (not isinstance(f, torch.Tensor) or f.dtype != torch.float32):
        raise ValueError("upfirdn2d: filter must be a float32 tensor (use setup_filter)")


# --------------------------------------------------------------------------- reference


def upfirdn2d_ref(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Pure-torch definition (see module docstring); differentiable to any order. The output has
    the input's layout, as the fused kernels' (channels-last in, channels-last out)."""
    _check(x, f)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    keep_last = dispatch.channels_last(x)
    n, c, h, w = x.shape
    upx, upy = parse_scaling(up)
    downx, downy = parse_scaling(down)
    px0, px1, py0, py1 = parse_padding(padding)

    # Upsample by inserting zeros.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)  # [N, C, H*up, W*up]

    # Pad (positive) then crop (negative).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # Convolve (conv2d correlates, so flip unless a correlation is asked for) with one
    # filter copy per channel (depthwise, groups=C): bit-identical to one filter over
    # an [N*C, 1, H, W] view, and faster on the CPU.
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)  # weight [C, 1, fh, fw]
    else:
        x = F.conv2d(x, f[None, None, None, :].repeat(c, 1, 1, 1), groups=c)  # along x: [C, 1, 1, fw]
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)  # along y: [C, 1, fh, 1]

    # Downsample by taking every down-th pixel.
    x = x[:, :, ::downy, ::downx]
    return x.contiguous(memory_format=torch.channels_last) if keep_last else x


# --------------------------------------------------------------------------- fused kernel


def adjoint_params(in_hw, out_hw, f_hw, up, down, padding, flip_filter):
    """Parameters of the upfirdn2d that computes the gradient w.r.t. the input.

    ``in_hw``/``out_hw``/``f_hw`` are (h, w) pairs; ``up``/``down`` (x, y)
    pairs; ``padding`` [x0, x1, y0, y1]. Returns (up, down, padding, flip_filter)."""
    (ih, iw), (oh, ow), (fh, fw) = in_hw, out_hw, f_hw
    (upx, upy), (downx, downy) = up, down
    px0, _, py0, _ = padding
    p = [
        fw - px0 - 1,
        iw * upx - ow * downx + px0 - upx + 1,
        fh - py0 - 1,
        ih * upy - oh * downy + py0 - upy + 1,
    ]
    return (downx, downy), (upx, upy), p, not flip_filter


class _Upfirdn2d2D(torch.autograd.Function):
    """One kernel pass with a 2D filter; its backward is the adjoint pass (same Function)."""

    @staticmethod
    def forward(ctx, kernel, x, f, up, down, padding, flip_filter, gain):
        y = kernel.upfirdn2d(x, f, up[0], up[1], down[0], down[1], *padding, flip_filter, float(gain))
        ctx.save_for_backward(f)
        ctx.kernel = kernel
        ctx.params = (tuple(x.shape[2:]), tuple(y.shape[2:]), up, down, padding, flip_filter, gain)
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        in_hw, out_hw, up, down, padding, flip_filter, gain = ctx.params
        dx = None
        if ctx.needs_input_grad[1]:
            up2, down2, pad2, flip2 = adjoint_params(in_hw, out_hw, tuple(f.shape), up, down, padding, flip_filter)
            dx = _Upfirdn2d2D.apply(ctx.kernel, dispatch.dense(dy), f, up2, down2, pad2, flip2, gain)
            if tuple(dx.shape[2:]) != in_hw:  # cannot happen for consistent params; a wrong kernel could
                raise RuntimeError(f"upfirdn2d adjoint produced {tuple(dx.shape[2:])}, expected {in_hw}")
        return None, dx, None, None, None, None, None, None


# One pass of a 2D filter: (x, f [fh, fw], up (x, y), down (x, y), padding [x0, x1, y0, y1], flip_filter, gain) -> y
PassFn = Callable[[torch.Tensor, torch.Tensor, tuple[int, int], tuple[int, int], list[int], bool, float], torch.Tensor]


def _in_passes(one_pass: PassFn, x, f, up, down, padding, flip_filter, gain) -> torch.Tensor:
    """upfirdn2d as passes of a 2D filter: one, or for a 1D filter an x pass then a y pass."""
    up, down, padding = parse_scaling(up), parse_scaling(down), parse_padding(padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    f = f.to(device=x.device, dtype=torch.float32)
    if f.ndim == 2:
        return one_pass(x, f, up, down, list(padding), bool(flip_filter), float(gain))
    px0, px1, py0, py1 = padding
    axis_gain = float(gain) ** 0.5
    x = one_pass(x, f[None, :], (up[0], 1), (down[0], 1), [px0, px1, 0, 0], bool(flip_filter), axis_gain)
    return one_pass(x, f[:, None], (1, up[1]), (1, down[1]), [0, 0, py0, py1], bool(flip_filter), axis_gain)


def upfirdn2d_fused(kernel: ModuleType, x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0) -> torch.Tensor:
    """upfirdn2d on ``kernel`` (a module with the ``cuda/upfirdn2d.cpp`` signature), differentiable."""
    _check(x, f)
    return _in_passes(lambda *args: _Upfirdn2d2D.apply(kernel, *args), x, f, up, down, padding, flip_filter, gain)


def _probe(kernel: ModuleType, device: torch.device, dtype: torch.dtype) -> dispatch.ProbeResults:
    """Self-check inputs: asymmetric 2D filters (a flip or transposition shows), a separable
    filter, up/down/padding as StyleGAN2 uses them plus uneven ones and crops. The 4x4 cases
    run the kernel's tiled path on an image wider and taller than one tile (32 outputs), so
    the tiles' edges and the image's ragged last tile are checked too; the others its generic path.
    Channels-last inputs run its NHWC kernel."""
    draw = dispatch.probe_normal(20240613)
    x = draw(2, 3, 7, 6)  # [N, C, H, W]
    x_tiles = draw(1, 2, 37, 45)  # [N, C, H, W]
    x_last = draw(2, 40, 9, 11).contiguous(memory_format=torch.channels_last)  # [N, C, H, W], memory [N, H, W, C]
    f2d = draw(4, 3)  # [fh, fw]
    f4x4 = draw(4, 4)  # [fh, fw]
    f1d = draw(4)  # [fw]
    cases = [  # label, input, filter, up, down, padding, flip_filter, gain
        ("up=2", x, f2d, 2, 1, [2, 1, 2, 1], False, 4.0),
        ("down=2 flipped", x, f2d, 1, 2, [1, 1, 2, 1], True, 1.0),
        ("separable up=(2,1) down=(1,2) crop", x, f1d, (2, 1), (1, 2), [1, 2, -1, 2], False, 1.5),
        ("4x4 up=2 tiled", x_tiles, f4x4, 2, 1, [2, 1, 2, 1], False, 4.0),
        ("4x4 down=2 flipped tiled", x_tiles, f4x4, 1, 2, [1, 2, 2, 1], True, 1.0),
        ("4x4 crop and pad tiled", x_tiles, f4x4, 1, 1, [-1, 3, 2, -2], False, 1.0),
        # channels-last input: the NHWC kernel, output and gradient channels-last (40 channels: a warp's
        # 32 lanes span two pixels), at the networks' factors and at run-time ones
        ("4x4 up=2 channels-last", x_last, f4x4, 2, 1, [2, 1, 2, 1], False, 4.0),
        ("4x4 down=2 flipped channels-last", x_last, f4x4, 1, 2, [1, 2, 2, 1], True, 1.0),
        ("4x4 crop and pad channels-last", x_last, f4x4, 1, 1, [-1, 3, 2, -2], False, 1.0),
        ("up=2 down=(1,2) channels-last", x_last, f2d, 2, (1, 2), [2, 1, 1, 2], False, 2.0),
    ]
    results: dispatch.ProbeResults = []
    for label, inp, f, up, down, padding, flip_filter, gain in cases:
        params = dict(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
        f = f.to(device)
        results += dispatch.compare_with_reference(
            label, lambda t, f=f, params=params: upfirdn2d_fused(kernel, t, f, **params),
            lambda t, f=f, params=params: upfirdn2d_ref(t, f, **params), [inp], ("x",), device, dtype, draw)
    return results


# The dtypes cuda/upfirdn2d.cu dispatches on (AT_DISPATCH_FLOATING_TYPES_AND2 with Half and BFloat16).
FUSED = dispatch.FusedOp(name="upfirdn2d", extension="upfirdn2d",
                         dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64), probe=_probe)


# --------------------------------------------------------------------------- under torch.compile


@torch.library.custom_op("emoji3d::upfirdn2d_pass", mutates_args=())
def _pass_op(x: torch.Tensor, f: torch.Tensor, up: list[int], down: list[int], padding: list[int],
             flip_filter: bool, gain: float, impl: str) -> torch.Tensor:
    """One 2D-filter pass, decided when it runs (the fused kernel or the reference): an opaque node of a
    compiled graph, so the compiler keeps the tiled kernel (``engine.ops.dispatch``'s docstring)."""
    x = dispatch.dense(x)
    kernel = dispatch.fused_kernel(FUSED, impl, x.device, x.dtype)
    if kernel is not None:
        y = kernel.upfirdn2d(x, f, up[0], up[1], down[0], down[1], *padding, flip_filter, gain)
    else:
        y = upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain)  # a strided view where down > 1
    return y.contiguous(memory_format=_layout_of(x))  # what the fake promises (no copy for the kernel's)


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    """The output's layout for input ``x``: the kernels' (channels-last in, channels-last out)."""
    return torch.channels_last if dispatch.channels_last(x) else torch.contiguous_format


@_pass_op.register_fake
def _pass_shape(x, f, up, down, padding, flip_filter, gain, impl):
    n, c, h, w = x.shape
    fh, fw = f.shape
    out = x.new_empty((n, c, (h * up[1] + padding[2] + padding[3] - fh) // down[1] + 1,
                       (w * up[0] + padding[0] + padding[1] - fw) // down[0] + 1))  # [N, C, H', W']
    return out.contiguous(memory_format=_layout_of(x))


def _pass_op_setup(ctx, inputs, output) -> None:
    x, f, up, down, padding, flip_filter, gain, impl = inputs
    ctx.save_for_backward(f)
    ctx.params = (tuple(x.shape[2:]), tuple(output.shape[2:]), tuple(up), tuple(down), list(padding), flip_filter,
                  gain, impl)


def _pass_op_backward(ctx, dy):
    (f,) = ctx.saved_tensors
    in_hw, out_hw, up, down, padding, flip_filter, gain, impl = ctx.params
    up2, down2, pad2, flip2 = adjoint_params(in_hw, out_hw, tuple(f.shape), up, down, padding, flip_filter)
    return _pass_op(dy, f, list(up2), list(down2), pad2, flip2, gain, impl), None, None, None, None, None, None, None


_pass_op.register_autograd(_pass_op_backward, setup_context=_pass_op_setup)


def upfirdn2d_traced(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0, impl="auto") -> torch.Tensor:
    """upfirdn2d as ``emoji3d::upfirdn2d_pass`` custom ops, what ``torch.compile`` traces; differentiable
    (the backward is the adjoint pass, the same op)."""
    _check(x, f)
    return _in_passes(lambda x, f, up, down, padding, flip_filter, gain: _pass_op(
        x, f, list(up), list(down), padding, flip_filter, gain, impl), x, f, up, down, padding, flip_filter, gain)


# --------------------------------------------------------------------------- switch and helpers


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
    impl: str = "auto",
) -> torch.Tensor:
    """upfirdn2d with an implementation switch (``'ref'|'cuda'|'auto'``, see ``engine.ops.dispatch``)."""
    _check(x, f)
    if torch.compiler.is_compiling() and dispatch.custom_op_traced(impl, x.device):
        return upfirdn2d_traced(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain, impl=impl)
    kernel = dispatch.fused_kernel(FUSED, impl, x.device, x.dtype)
    if kernel is not None:
        return upfirdn2d_fused(kernel, x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    return upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def filter2d(x, f, padding=0, flip_filter=False, gain=1.0, impl="auto"):
    """Filter with ``f`` keeping the size (padding centred on the filter)."""
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1.0, impl="auto"):
    """Upsample by ``up`` with filter ``f``; gain ``up**2`` keeps the mean."""
    upx, upy = parse_scaling(up)
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1.0, impl="auto"):
    """Low-pass with ``f`` then keep every ``down``-th pixel."""
    downx, downy = parse_scaling(down)
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
