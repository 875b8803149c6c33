"""bias_act: add a per-channel bias, apply an activation, scale and clamp.

``y = clamp(act(x + b, alpha) * gain, -clamp, +clamp)``

Conventions
-----------
* ``x`` is any-rank ``[..]``; ``b`` is ``[x.shape[dim]]`` (broadcast along
  ``dim``, default 1, the channel axis of ``[N, C, H, W]`` / ``[N, C]``).
* ``act`` is a name in ``ACTIVATIONS``; ``alpha`` (slope/scale parameter)
  defaults per activation (0.2 for lrelu); ``gain`` defaults to the
  activation's ``def_gain`` (sqrt(2) for relu/lrelu, 1 otherwise), matching the
  StyleGAN2 "equalised" activations.
* ``clamp=None`` disables clamping; otherwise ``clamp >= 0``.

``impl``: ``'ref'`` | ``'cuda'`` | ``'auto'`` (see ``engine.ops._build``). The
reference is plain differentiable torch; the CUDA kernel fuses bias, activation,
gain and clamp into one pass over memory, with a fused first-order gradient
kernel and a differentiable fallback for higher orders.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from engine.ops import _build

__all__ = ["ACTIVATIONS", "ActivationSpec", "bias_act", "bias_act_ref"]


@dataclass(frozen=True)
class ActivationSpec:
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    cuda_idx: int  # activation id understood by the CUDA kernel
    ref: str  # 'x' or 'y': whether the gradient needs the input or the output


ACTIVATIONS: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, a: x, 0.0, 1.0, 1, ""),
    "relu": ActivationSpec(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 2, "y"),
    "lrelu": ActivationSpec(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 3, "y"),
    "tanh": ActivationSpec(lambda x, a: torch.tanh(x), 0.0, 1.0, 4, "y"),
    "sigmoid": ActivationSpec(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 5, "y"),
    "elu": ActivationSpec(lambda x, a: F.elu(x), 0.0, 1.0, 6, "y"),
    "selu": ActivationSpec(lambda x, a: F.selu(x), 0.0, 1.0, 7, "y"),
    "softplus": ActivationSpec(lambda x, a: F.softplus(x), 0.0, 1.0, 8, "y"),
    "swish": ActivationSpec(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 9, "x"),
}


def _resolve(x, b, dim, act, alpha, gain, clamp):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"bias_act: x must be a tensor, got {type(x)}")
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"bias_act: clamp must be None or >= 0, got {clamp}")
    if b is not None:
        if b.ndim != 1 or not (0 <= dim < x.ndim) or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: bias of shape {tuple(b.shape)} does not match x {tuple(x.shape)} along dim {dim}")
    spec = ACTIVATIONS[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    return spec, alpha, gain, clamp


def bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Readable reference; differentiable to any order."""
    spec, alpha, gain, clamp = _resolve(x, b, dim, act, alpha, gain, clamp)
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="auto"):
    """bias_act with an implementation switch (``'ref'|'cuda'|'auto'``)."""
    spec, alpha_, gain_, clamp_ = _resolve(x, b, dim, act, alpha, gain, clamp)
    if _build.use_cuda(impl, x, "bias_act"):
        from engine.ops import _bias_act_cuda

        return _bias_act_cuda.bias_act_cuda(x, b, dim, act, alpha_, gain_, clamp_)
    return bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
