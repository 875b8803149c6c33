"""The Python side of the fused ops (autograd Functions, separable split,
adjoint backward, bias gradient, higher-order fallbacks), exercised on the CPU
with a stand-in for the compiled extension that computes the kernels' exact
contract with the reference ops. The kernels themselves are compared with the
references by the ``gpu`` tests."""
from __future__ import annotations

import types

import pytest
import torch

from engine.ops import _build, _bias_act_cuda, _modconv_cuda, _upfirdn2d_cuda
from engine.ops import bias_act as B
from engine.ops import upfirdn2d as U
from engine.ops.modulated_conv import modulate_weights_ref


def _kernel_contract(name):
    """Functions with the compiled modules' signatures (see engine/ops/cuda/*.cpp)."""
    acts = {spec.cuda_idx: act for act, spec in B.ACTIVATIONS.items()}
    if name == "upfirdn2d":
        def upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain):
            assert f.ndim == 2, "the kernel takes 2D filters only"
            return U.upfirdn2d_ref(x, f, up=[upx, upy], down=[downx, downy], padding=[px0, px1, py0, py1],
                                   flip_filter=flip, gain=gain)
        return types.SimpleNamespace(upfirdn2d=upfirdn2d)
    if name == "bias_act":
        def forward(x, b, dim, act, alpha, gain, clamp):
            return B.bias_act_ref(x, b if b.numel() else None, dim=dim, act=acts[act], alpha=alpha, gain=gain,
                                  clamp=clamp if clamp >= 0 else None).detach()

        def grad(dy, x, b, dim, act, alpha, gain, clamp):
            return _bias_act_cuda.bias_act_grad_ref(dy, x, b if b.numel() else None, dim, acts[act], alpha, gain,
                                                    clamp).detach()
        return types.SimpleNamespace(forward=forward, grad=grad)
    if name == "modconv":
        def modulate_weights(weight, styles, demodulate, eps):
            return modulate_weights_ref(weight, styles, demodulate).detach()
        return types.SimpleNamespace(modulate_weights=modulate_weights)
    raise KeyError(name)


@pytest.fixture
def contract(monkeypatch):
    monkeypatch.setattr(_build, "build", lambda name, verbose=False: _kernel_contract(name))


@pytest.mark.parametrize("up,down,pad", [(2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1]), (2, 2, [0, 3, -1, 2])])
@pytest.mark.parametrize("separable", [False, True])
def test_upfirdn2d_wrapper_forward_and_gradients(contract, up, down, pad, separable):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    f = U.setup_filter([1, 3, 3, 1], separable=separable)
    ref = U.upfirdn2d_ref(x, f, up=up, down=down, padding=pad, gain=1.3)
    ours = _upfirdn2d_cuda.upfirdn2d_cuda(x, f, (up, up), (down, down), pad, False, 1.3)
    torch.testing.assert_close(ours, ref)
    dy = torch.randn(ref.shape, generator=g, dtype=torch.float64, requires_grad=True)
    (gr,) = torch.autograd.grad(ref, x, dy, create_graph=True)
    (go,) = torch.autograd.grad(ours, x, dy, create_graph=True)
    torch.testing.assert_close(go, gr)
    # Second order: the backward is the adjoint Function, itself differentiable.
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(go, dy, v)[0], torch.autograd.grad(gr, dy, v)[0])


@pytest.mark.parametrize("act", ["lrelu", "swish", "linear"])
@pytest.mark.parametrize("clamp", [-1.0, 0.5])
@pytest.mark.parametrize("dim", [1, 0])
def test_bias_act_wrapper_gradients_first_and_second_order(contract, act, clamp, dim):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(x.shape[dim], generator=g, dtype=torch.float64, requires_grad=True)
    spec = B.ACTIVATIONS[act]
    kw = dict(dim=dim, act=act, alpha=spec.def_alpha, gain=spec.def_gain)
    yr = B.bias_act_ref(x, b, clamp=None if clamp < 0 else clamp, **kw)
    yo = _bias_act_cuda.bias_act_cuda(x, b, dim, act, spec.def_alpha, spec.def_gain, clamp)
    torch.testing.assert_close(yo, yr)
    dy = torch.randn(yr.shape, generator=g, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(yo, (x, b), dy), torch.autograd.grad(yr, (x, b), dy)):
        torch.testing.assert_close(a, r)
    # R1-style double backward
    (gxo,) = torch.autograd.grad(_bias_act_cuda.bias_act_cuda(x, b, dim, act, spec.def_alpha, spec.def_gain, clamp).sum(),
                                 x, create_graph=True)
    (gxr,) = torch.autograd.grad(B.bias_act_ref(x, b, clamp=None if clamp < 0 else clamp, **kw).sum(), x, create_graph=True)
    torch.testing.assert_close(_second(gxo, b), _second(gxr, b))


def _second(gx, wrt):
    """d(sum gx^2)/d wrt, zero where gx does not depend on wrt (piecewise-linear activations)."""
    if not gx.requires_grad:
        return torch.zeros_like(wrt)
    (g,) = torch.autograd.grad(gx.square().sum(), wrt, allow_unused=True)
    return torch.zeros_like(wrt) if g is None else g


def test_bias_act_wrapper_without_bias(contract):
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = _bias_act_cuda.bias_act_cuda(x, None, 1, "relu", 0.0, 2 ** 0.5, -1.0)
    torch.testing.assert_close(y, B.bias_act_ref(x, act="relu"))
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, (x > 0).double() * 2 ** 0.5)


@pytest.mark.parametrize("demod", [True, False])
def test_modconv_wrapper_gradients(contract, demod):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    o = _modconv_cuda.modulate_weights_cuda(w, s, demod)
    r = modulate_weights_ref(w, s, demod)
    torch.testing.assert_close(o, r)
    d = torch.randn(r.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(o, (w, s), d), torch.autograd.grad(r, (w, s), d)):
        torch.testing.assert_close(a, b)
    o = _modconv_cuda.modulate_weights_cuda(w, s, demod)
    (go,) = torch.autograd.grad((o * d).sum(), s, create_graph=True)
    r = modulate_weights_ref(w, s, demod)
    (gr,) = torch.autograd.grad((r * d).sum(), s, create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(go.square().sum(), w)[0], torch.autograd.grad(gr.square().sum(), w)[0])
