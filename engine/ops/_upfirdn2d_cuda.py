"""Autograd wrapper around our fused upfirdn2d CUDA kernel.

The gradient of upfirdn2d is another upfirdn2d (``adjoint_params``), so the
backward calls the same Function and gradients of every order stay on the
fused kernel. A 1D (separable) filter runs as two 2D passes, x then y.
"""
from __future__ import annotations

import torch

from engine.ops import _build


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
    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip_filter, gain):
        ext = _build.build("upfirdn2d")
        y = ext.upfirdn2d(x, f, up[0], up[1], down[0], down[1], *padding, flip_filter, float(gain))
        ctx.save_for_backward(f)
        ctx.params = (tuple(x.shape[2:]), tuple(y.shape[2:]), up, down, padding, flip_filter, gain)
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        in_hw, out_hw, up, down, padding, flip_filter, gain = ctx.params
        dx = None
        if ctx.needs_input_grad[0]:
            up2, down2, pad2, flip2 = adjoint_params(in_hw, out_hw, tuple(f.shape), up, down, padding, flip_filter)
            dx = _Upfirdn2d2D.apply(dy.contiguous(), f, up2, down2, pad2, flip2, gain)
            if tuple(dx.shape[2:]) != in_hw:  # cannot happen for consistent params; guard anyway
                raise RuntimeError(f"upfirdn2d adjoint produced {tuple(dx.shape[2:])}, expected {in_hw}")
        return dx, None, None, None, None, None, None


def upfirdn2d_cuda(x, f, up, down, padding, flip_filter=False, gain=1.0):
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    f = f.to(device=x.device, dtype=torch.float32)
    if f.ndim == 2:
        return _Upfirdn2d2D.apply(x, f, tuple(up), tuple(down), list(padding), bool(flip_filter), float(gain))
    px0, px1, py0, py1 = padding
    g = float(gain) ** 0.5
    x = _Upfirdn2d2D.apply(x, f[None, :], (up[0], 1), (down[0], 1), [px0, px1, 0, 0], bool(flip_filter), g)
    return _Upfirdn2d2D.apply(x, f[:, None], (1, up[1]), (1, down[1]), [0, 0, py0, py1], bool(flip_filter), g)
