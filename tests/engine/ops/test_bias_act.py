"""bias_act: the reference against explicit formulas, the gradient rule used by
the CUDA backward, gradcheck, errors, and (GPU) the fused kernel."""
from __future__ import annotations

import math

import pytest
import torch

from engine.ops.bias_act import ACTIVATIONS, bias_act, bias_act_grad_ref, bias_act_ref


def test_lrelu_formula_with_gain_and_clamp():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=g) * 3
    b = torch.randn(4, generator=g)
    y = bias_act(x, b, act="lrelu", clamp=1.5, impl="ref")
    z = x + b.view(1, 4, 1, 1)
    expect = torch.where(z > 0, z, 0.2 * z) * math.sqrt(2)
    torch.testing.assert_close(y, expect.clamp(-1.5, 1.5))
    assert float(y.abs().max()) <= 1.5


def test_bias_along_other_dim_and_linear_default():
    x = torch.arange(6.0).reshape(2, 3)
    b = torch.tensor([10.0, 20.0])
    y = bias_act(x, b, dim=0, impl="ref")
    torch.testing.assert_close(y, x + b[:, None])


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("clamp", [None, 0.4])
def test_gradient_rule_matches_autograd(act, clamp):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    y = bias_act_ref(x, b, act=act, clamp=clamp)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x, dy)
    spec = ACTIVATIONS[act]
    ours = bias_act_grad_ref(dy, x.detach(), b, 1, act, spec.def_alpha, spec.def_gain, -1 if clamp is None else clamp)
    torch.testing.assert_close(ours, gx, atol=1e-12, rtol=0)


def test_gradcheck_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, c: bias_act_ref(t, c, act="swish"), (x, b))


def test_errors_are_specific():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown activation"):
        bias_act(x, act="gelu2")
    with pytest.raises(ValueError, match="bias of shape"):
        bias_act(x, torch.zeros(4))
    with pytest.raises(ValueError, match="clamp"):
        bias_act(x, clamp=-1)


@pytest.mark.gpu
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("clamp", [None, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_reference(act, clamp, dtype):
    g = torch.Generator(device="cuda").manual_seed(3)
    x = (torch.randn(4, 16, 9, 7, generator=g, device="cuda") * 2).to(dtype).requires_grad_(True)
    b = torch.randn(16, generator=g, device="cuda").to(dtype).requires_grad_(True)
    # The reference in float64 from the same values: a float16 reference would round
    # x + b itself and could clamp an element the kernel (float inside) does not.
    x64, b64 = (t.detach().double().requires_grad_(True) for t in (x, b))
    yr = bias_act(x64, b64, act=act, clamp=clamp, impl="ref")
    yc = bias_act(x, b, act=act, clamp=clamp, impl="cuda")
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(yc.double(), yr, atol=tol * max(1.0, float(yr.abs().max())), rtol=0)
    dy = torch.randn(yr.shape, generator=g, device="cuda").to(dtype)
    gr = torch.autograd.grad(yr, (x64, b64), dy.double())
    gc = torch.autograd.grad(yc, (x, b), dy)
    for a, r in zip(gc, gr):
        torch.testing.assert_close(a.double(), r, atol=tol * 10 * max(1.0, float(r.abs().max())), rtol=0)


@pytest.mark.gpu
def test_cuda_second_order():
    g = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn(2, 3, 4, generator=g, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t, c: bias_act(t, c, act="softplus", impl="cuda"), (x, b))
