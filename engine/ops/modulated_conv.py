"""Modulated (and demodulated) convolution, the core of StyleGAN2 synthesis.

For sample ``n``: ``w'[n,o,i,:,:] = weight[o,i] * styles[n,i]``; with
``demodulate``: ``d[n,o] = rsqrt(sum_{i,ky,kx} w'[n,o,i]^2 + 1e-8)`` and the
output channel ``o`` is scaled by ``d[n,o]``. ``noise`` (broadcastable to the
output) is added after demodulation.

Two equivalent execution paths (NVlabs semantics):

* ``fused_modconv=True``: per-sample weights are built (``modulate_weights``)
  and the batch runs as ONE grouped convolution (groups = batch).
* ``fused_modconv=False``: activations are scaled by the styles before and by
  ``d`` after a shared-weight convolution (cheaper for training and large
  batches).

A channels-last ``x`` of more than one sample takes the second path whatever
``fused_modconv`` says: folding the batch into the channels for the grouped
convolution cannot be a view of NHWC memory, so it would convert the layout
twice per layer; the two paths give the same values up to rounding.

Shapes: ``x`` [N, I, H, W]; ``weight`` [O, I, kh, kw]; ``styles`` [N, I];
returns [N, O, H', W'] where H' follows ``conv2d_resample``.

``modulate_weights`` comes in three parts, one file: the reference
``modulate_weights_ref``; ``modulate_weights_fused``, the autograd Function
around our CUDA kernel (``cuda/modconv.cu``: one pass that modulates, reduces
the demodulation norm and scales; float32 only), whose backward is the
differentiable reference formula (so every gradient order works); and the
switch ``modulate_weights(..., impl='ref'|'cuda'|'auto')``, which uses the
kernel only after it passed its self-check (``engine.ops.dispatch``, probe
below). The convolution itself runs in cuDNN.
"""
from __future__ import annotations

from types import ModuleType

import torch

from engine.ops import dispatch
from engine.ops.conv2d_resample import conv2d_resample

__all__ = ["modulate_weights", "modulate_weights_ref", "modulate_weights_fused", "modulated_conv2d", "FUSED"]

DEMOD_EPS = 1e-8


def modulate_weights_ref(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True) -> torch.Tensor:
    """Per-sample weights [N, O, I, kh, kw] (modulated, optionally demodulated)."""
    w = weight.unsqueeze(0) * styles.reshape(styles.shape[0], 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        d = (w.square().sum(dim=[2, 3, 4]) + DEMOD_EPS).rsqrt()  # [N, O]
        w = w * d.reshape(d.shape[0], -1, 1, 1, 1)
    return w


class _ModulateWeights(torch.autograd.Function):
    """Forward on the kernel; backward through the reference formula (any order)."""

    @staticmethod
    def forward(ctx, kernel, weight, styles, demodulate):
        out = kernel.modulate_weights(weight, styles, bool(demodulate), DEMOD_EPS)
        ctx.save_for_backward(weight, styles)
        ctx.demodulate = demodulate
        return out

    @staticmethod
    def backward(ctx, dout):
        weight, styles = ctx.saved_tensors
        create = torch.is_grad_enabled()  # a graph of the gradient is wanted (double backward)
        with torch.enable_grad():
            w = weight if weight.requires_grad and create else weight.detach().requires_grad_(True)
            s = styles if styles.requires_grad and create else styles.detach().requires_grad_(True)
            out = modulate_weights_ref(w, s, ctx.demodulate)
        dw, ds = torch.autograd.grad(out, [w, s], dout, create_graph=create)
        return None, (dw if ctx.needs_input_grad[1] else None), (ds if ctx.needs_input_grad[2] else None), None


def modulate_weights_fused(kernel: ModuleType, weight: torch.Tensor, styles: torch.Tensor,
                           demodulate: bool = True) -> torch.Tensor:
    """``modulate_weights_ref`` on ``kernel`` (a module with the ``cuda/modconv.cpp`` signature), differentiable."""
    _check_shapes(None, weight, styles)
    return _ModulateWeights.apply(kernel, weight, styles, demodulate)


def _probe(kernel: ModuleType, device: torch.device, dtype: torch.dtype) -> dispatch.ProbeResults:
    """Self-check inputs: a demodulated 3x3 conv whose weight row (I*kh*kw = 360) is longer
    than the kernel's 256-thread block, and a ToRGB-like 1x1 conv without demodulation."""
    draw = dispatch.probe_normal(20240615)
    cases = [  # label, weight [O, I, kh, kw], styles [N, I], demodulate
        ("3x3 demodulated", draw(4, 40, 3, 3), draw(2, 40) + 1, True),
        ("1x1 not demodulated", draw(3, 6, 1, 1), draw(2, 6), False),
    ]
    results: dispatch.ProbeResults = []
    for label, weight, styles, demodulate in cases:
        results += dispatch.compare_with_reference(
            label, lambda w, s, demodulate=demodulate: modulate_weights_fused(kernel, w, s, demodulate),
            lambda w, s, demodulate=demodulate: modulate_weights_ref(w, s, demodulate), [weight, styles],
            ("weight", "styles"), device, dtype, draw)
    return results


# cuda/modconv.cpp accepts float32 only.
FUSED = dispatch.FusedOp(name="modulate_weights", extension="modconv", dtypes=(torch.float32,), probe=_probe)


def modulate_weights(weight, styles, demodulate=True, impl="auto"):
    """``modulate_weights_ref`` with an implementation switch (``'ref'|'cuda'|'auto'``).

    The kernel runs in the dtype the reference's type promotion gives."""
    _check_shapes(None, weight, styles)
    dtype = torch.promote_types(weight.dtype, styles.dtype)
    kernel = dispatch.fused_kernel(FUSED, impl, weight.device, dtype)
    if kernel is not None:
        return modulate_weights_fused(kernel, weight.to(dtype), styles.to(dtype), demodulate)
    return modulate_weights_ref(weight, styles, demodulate)


def _check_shapes(x, weight, styles):
    if weight.ndim != 4:
        raise ValueError(f"modulated_conv2d: weight must be [O, I, kh, kw], got {tuple(weight.shape)}")
    if styles.ndim != 2 or styles.shape[1] != weight.shape[1]:
        raise ValueError(f"modulated_conv2d: styles must be [N, {weight.shape[1]}], got {tuple(styles.shape)}")
    if x is not None:
        if x.ndim != 4 or x.shape[1] != weight.shape[1] or x.shape[0] != styles.shape[0]:
            raise ValueError(
                f"modulated_conv2d: x {tuple(x.shape)} does not match weight {tuple(weight.shape)} / styles {tuple(styles.shape)}"
            )


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
    impl: str = "auto",
) -> torch.Tensor:
    _check_shapes(x, weight, styles)
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if fused_modconv and batch > 1 and dispatch.channels_last(x):
        fused_modconv = False  # see the module notes

    # FP16: pre-normalise to avoid overflow (scale-invariant under demodulation).
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / (in_channels * kh * kw) ** 0.5 / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    if not fused_modconv:
        dcoefs = None
        if demodulate:
            w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # [N, O, I, kh, kw]
            dcoefs = (w.square().sum(dim=[2, 3, 4]) + DEMOD_EPS).rsqrt()  # [N, O]
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight, impl=impl)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    w = modulate_weights(weight, styles, demodulate=demodulate, impl=impl)  # [N, O, I, kh, kw]
    x = x.reshape(1, batch * in_channels, *x.shape[2:])  # [1, N*I, H, W]
    w = w.reshape(batch * out_channels, in_channels, kh, kw)  # [N*O, I, kh, kw]
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding, groups=batch,
                        flip_weight=flip_weight, impl=impl)
    x = x.reshape(batch, out_channels, *x.shape[2:])  # [N, O, H', W']
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x
