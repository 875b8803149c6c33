"""Autograd wrapper around our fused weight-modulation CUDA kernel.

Forward: one kernel builds the per-sample (de)modulated weights. Backward:
the gradient is recomputed with the differentiable reference formula
(``modulate_weights_ref``), which also supports higher orders.
"""
from __future__ import annotations

import torch

from engine.ops import _build
from engine.ops.modulated_conv import DEMOD_EPS, modulate_weights_ref


class _ModulateWeights(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, styles, demodulate):
        out = _build.build("modconv").modulate_weights(weight, styles, bool(demodulate), DEMOD_EPS)
        ctx.save_for_backward(weight, styles)
        ctx.demodulate = demodulate
        return out

    @staticmethod
    def backward(ctx, dout):
        weight, styles = ctx.saved_tensors
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            w = weight if weight.requires_grad and create else weight.detach().requires_grad_(True)
            s = styles if styles.requires_grad and create else styles.detach().requires_grad_(True)
            out = modulate_weights_ref(w, s, ctx.demodulate)
        dw, ds = torch.autograd.grad(out, [w, s], dout, create_graph=create)
        return (dw if ctx.needs_input_grad[0] else None), (ds if ctx.needs_input_grad[1] else None), None


def modulate_weights_cuda(weight, styles, demodulate):
    return _ModulateWeights.apply(weight, styles, demodulate)
