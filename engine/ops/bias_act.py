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
* ``clamp=None`` disables clamping; otherwise ``clamp >= 0``. Internally (and
  in the kernel's signature) "no clamp" is ``clamp = -1``.

Three parts, one file:

* ``bias_act_ref``: plain differentiable torch, the definition.
* ``bias_act_fused``: the autograd Function around our CUDA kernels
  (``cuda/bias_act.cu``: one pass over memory for bias, activation, gain and
  clamp, and one for the first-order gradient; a channels-last [N, C, H, W]
  input with the bias along C is read in its own memory order, the bias
  channel of element i being i % C, and its output stays channels-last).
  When a graph of the gradient itself is needed (``create_graph=True``, e.g.
  R1 penalties) the backward uses the differentiable formula
  ``bias_act_grad_ref`` instead.
* ``bias_act(..., impl='ref'|'cuda'|'auto')``: the switch; the kernel is used
  only after it passed its self-check (``engine.ops.dispatch``, probe below).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

from engine.ops import dispatch

__all__ = ["ACTIVATIONS", "ActivationSpec", "bias_act", "bias_act_ref", "bias_act_fused", "bias_act_grad_ref", "FUSED"]

SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


@dataclass(frozen=True)
class ActivationSpec:
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    cuda_idx: int  # activation id understood by the CUDA kernel (the enum in cuda/bias_act.cu)


ACTIVATIONS: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, a: x, 0.0, 1.0, 1),
    "relu": ActivationSpec(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 2),
    "lrelu": ActivationSpec(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 3),
    "tanh": ActivationSpec(lambda x, a: torch.tanh(x), 0.0, 1.0, 4),
    "sigmoid": ActivationSpec(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 5),
    "elu": ActivationSpec(lambda x, a: F.elu(x), 0.0, 1.0, 6),
    "selu": ActivationSpec(lambda x, a: F.selu(x), 0.0, 1.0, 7),
    "softplus": ActivationSpec(lambda x, a: F.softplus(x), 0.0, 1.0, 8),
    "swish": ActivationSpec(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 9),
}


def _resolve(x, b, dim, act, alpha, gain, clamp):
    """Validate the arguments; returns (spec, alpha, gain, clamp) with defaults filled, clamp -1 = none."""
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


def _along(b: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """``b`` [C] shaped to broadcast along axis ``dim`` of an ``ndim``-rank tensor."""
    return b.reshape([-1 if i == dim else 1 for i in range(ndim)])


# --------------------------------------------------------------------------- reference


def bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Readable reference; differentiable to any order."""
    spec, alpha, gain, clamp = _resolve(x, b, dim, act, alpha, gain, clamp)
    if b is not None:
        x = x + _along(b.to(x.dtype), dim, x.ndim)
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def bias_act_grad_ref(dy, x, b, dim, act, alpha, gain, clamp):
    """d bias_act / dx applied to ``dy``, in differentiable torch (the rule the gradient kernel implements).

    ``alpha``/``gain`` resolved, ``clamp`` -1 for none; the gradient is zero where the output is clamped."""
    z = x + _along(b, dim, x.ndim) if b is not None else x
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
        d = SELU_SCALE * torch.where(z > 0, torch.ones_like(z), SELU_ALPHA * torch.exp(z))
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


# --------------------------------------------------------------------------- fused kernel


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernel, x, b, dim, act, alpha, gain, clamp):
        b_arg = b if b is not None else x.new_empty([0])  # the kernel's "no bias" is an empty tensor
        y = kernel.forward(x, b_arg, dim, ACTIVATIONS[act].cuda_idx, alpha, gain, clamp)
        ctx.save_for_backward(x, b_arg)
        ctx.kernel = kernel
        ctx.cfg = (dim, act, alpha, gain, clamp, b is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b_arg = ctx.saved_tensors
        dim, act, alpha, gain, clamp, has_b = ctx.cfg
        if torch.is_grad_enabled():  # a graph of the gradient is wanted: differentiable torch formula
            dx = bias_act_grad_ref(dy, x, b_arg if has_b else None, dim, act, alpha, gain, clamp)
        else:
            dx = ctx.kernel.grad(dy, x, b_arg, dim, ACTIVATIONS[act].cuda_idx, alpha, gain, clamp)
        db = dx.sum([i for i in range(dx.ndim) if i != dim]) if has_b else None
        return None, dx, db, None, None, None, None, None


def bias_act_fused(kernel: ModuleType, x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """bias_act on ``kernel`` (a module with the ``cuda/bias_act.cpp`` signatures), differentiable."""
    _, alpha, gain, clamp = _resolve(x, b, dim, act, alpha, gain, clamp)
    if b is not None and b.dtype != x.dtype:
        b = b.to(x.dtype)  # the kernel reads the bias in x's dtype (the reference casts too)
    return _BiasAct.apply(kernel, x, b, dim, act, alpha, gain, clamp)


def _probe(kernel: ModuleType, device: torch.device, dtype: torch.dtype) -> dispatch.ProbeResults:
    """Self-check inputs: every activation on [N, C, H, W] with a bias, StyleGAN2's clamped
    lrelu, a bias along another axis, no bias, and a channels-last input; the gradients w.r.t.
    x and b."""
    draw = dispatch.probe_normal(20240614)
    x4 = draw(2, 5, 3, 4) * 2  # [N, C, H, W]
    b5 = draw(5)  # [C]
    cases = [(act, x4, b5, 1, None) for act in ACTIVATIONS]  # label, x, b, dim, clamp
    b2 = draw(2)  # [N]: a bias along dim 0
    cases += [("lrelu clamp=0.5", x4, b5, 1, 0.5), ("swish dim=0 clamp=1", x4, b2, 0, 1.0),
              ("relu no bias", x4, None, 1, None)]
    # channels-last: the bias channel of element i is i % C in memory order
    x_last = (draw(2, 6, 3, 5) * 2).contiguous(memory_format=torch.channels_last)  # [N, C, H, W]
    b6 = draw(6)  # [C]
    cases += [("lrelu channels-last clamp=0.5", x_last, b6, 1, 0.5), ("linear channels-last", x_last, b6, 1, None)]
    results: dispatch.ProbeResults = []
    for label, x, b, dim, clamp in cases:
        options = dict(dim=dim, act=label.split()[0], clamp=clamp)
        inputs, names = ([x], ("x",)) if b is None else ([x, b], ("x", "b"))
        results += dispatch.compare_with_reference(
            label, lambda t, bias=None, options=options: bias_act_fused(kernel, t, bias, **options),
            lambda t, bias=None, options=options: bias_act_ref(t, bias, **options), inputs, names, device, dtype,
            draw)
    return results


# The dtypes cuda/bias_act.cu dispatches on (AT_DISPATCH_FLOATING_TYPES_AND2 with Half and BFloat16).
FUSED = dispatch.FusedOp(name="bias_act", extension="bias_act",
                         dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64), probe=_probe)


# --------------------------------------------------------------------------- switch


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="auto"):
    """bias_act with an implementation switch (``'ref'|'cuda'|'auto'``, see ``engine.ops.dispatch``)."""
    _resolve(x, b, dim, act, alpha, gain, clamp)
    kernel = dispatch.fused_kernel(FUSED, impl, x.device, x.dtype)
    if kernel is not None:
        return bias_act_fused(kernel, x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    return bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
