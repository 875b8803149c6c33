"""Autograd wrapper around our fused bias_act CUDA kernels.

First-order gradients use the fused gradient kernel; when a graph of the
gradient itself is needed (``create_graph=True``, e.g. R1 penalties) the
backward is recomputed with the differentiable reference instead.
"""
from __future__ import annotations

import torch

from engine.ops import _build
from engine.ops.bias_act import ACTIVATIONS

_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


def bias_act_grad_ref(dy, x, b, dim, act, alpha, gain, clamp):
    """d bias_act / dx applied to dy, in differentiable torch (same rule as the kernel)."""
    z = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]) if b is not None else x
    if act == "linear":
        d = torch.ones_like(z)
    elif act == "relu":
        d = (z > 0).to(z.dtype)
    elif act == "lrelu":
        d = torch.where(z > 0, torch.ones_like(z), torch.full_like(z, alpha))
    elif act == "tanh":
        d = 1 - torch.tanh(z).square()
    elif act == "sigmoid":
        s = torch.sigmoid(z)
        d = s * (1 - s)
    elif act == "elu":
        d = torch.where(z > 0, torch.ones_like(z), torch.exp(z))
    elif act == "selu":
        d = _SELU_SCALE * torch.where(z > 0, torch.ones_like(z), _SELU_ALPHA * torch.exp(z))
    elif act == "softplus":
        d = torch.sigmoid(z)
    elif act == "swish":
        s = torch.sigmoid(z)
        d = s + z * s * (1 - s)
    else:
        raise ValueError(f"bias_act: unknown activation {act!r}")
    g = dy * d * gain
    if clamp >= 0:
        v = ACTIVATIONS[act].func(z, alpha) * gain
        g = g * ((v >= -clamp) & (v <= clamp)).to(g.dtype)
    return g


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp):
        ext = _build.build("bias_act")
        b_arg = b if b is not None else x.new_empty([0])
        y = ext.forward(x, b_arg, dim, ACTIVATIONS[act].cuda_idx, alpha, gain, clamp)
        ctx.save_for_backward(x, b_arg)
        ctx.cfg = (dim, act, alpha, gain, clamp, b is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b_arg = ctx.saved_tensors
        dim, act, alpha, gain, clamp, has_b = ctx.cfg
        if torch.is_grad_enabled():  # higher-order: differentiable torch formula
            dx = bias_act_grad_ref(dy, x, b_arg if has_b else None, dim, act, alpha, gain, clamp)
            db = dx.sum([i for i in range(dx.ndim) if i != dim]) if has_b else None
        else:
            dx = _build.build("bias_act").grad(dy, x, b_arg, dim, ACTIVATIONS[act].cuda_idx, alpha, gain, clamp)
            db = dx.sum([i for i in range(dx.ndim) if i != dim]) if has_b else None
        return dx, db, None, None, None, None, None


def bias_act_cuda(x, b, dim, act, alpha, gain, clamp):
    if b is not None and b.dtype != x.dtype:
        b = b.to(x.dtype)  # the kernel reads the bias in x's dtype (the reference casts too)
    return _BiasAct.apply(x, b, dim, act, alpha, gain, clamp)
