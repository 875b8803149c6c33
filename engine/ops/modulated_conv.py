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

Shapes: ``x`` [N, I, H, W]; ``weight`` [O, I, kh, kw]; ``styles`` [N, I];
returns [N, O, H', W'] where H' follows ``conv2d_resample``.

``modulate_weights`` has a fused CUDA twin (``cuda/modconv.cu``: one pass that
modulates, reduces the demodulation norm and scales), selected with ``impl``;
the convolution itself runs in cuDNN.
"""
from __future__ import annotations

import torch

from engine.ops import _build
from engine.ops.conv2d_resample import conv2d_resample

__all__ = ["modulate_weights", "modulate_weights_ref", "modulated_conv2d"]

DEMOD_EPS = 1e-8


def modulate_weights_ref(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True) -> torch.Tensor:
    """Per-sample weights [N, O, I, kh, kw] (modulated, optionally demodulated)."""
    w = weight.unsqueeze(0) * styles.reshape(styles.shape[0], 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        d = (w.square().sum(dim=[2, 3, 4]) + DEMOD_EPS).rsqrt()  # [N, O]
        w = w * d.reshape(d.shape[0], -1, 1, 1, 1)
    return w


def modulate_weights(weight, styles, demodulate=True, impl="auto"):
    """``modulate_weights_ref`` with an implementation switch."""
    _check_shapes(None, weight, styles)
    if weight.dtype == torch.float32 and styles.dtype == torch.float32 and _build.use_cuda(impl, weight, "modconv"):
        from engine.ops import _modconv_cuda

        return _modconv_cuda.modulate_weights_cuda(weight, styles, demodulate)
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
