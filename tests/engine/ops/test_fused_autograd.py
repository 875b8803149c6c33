"""The Python side of the fused ops on the CPU: autograd Functions, the
separable split, the adjoint backward, the bias gradient and the higher-order
fall-backs, run on independent numpy stand-ins for the compiled kernels
(``kernel_standins``) and compared with the pure-torch references. The real
kernels are compared with the references by the ``gpu`` tests."""
from __future__ import annotations

import pytest
import torch

from engine.ops import bias_act, dispatch, lpips_layer, triplane, upfirdn2d
from engine.ops.modulated_conv import modulate_weights_fused, modulate_weights_ref
from tests.engine.ops import kernel_standins


@pytest.mark.parametrize("up,down,pad", [(2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1]), (2, 2, [0, 3, -1, 2]),
                                         ((2, 1), (1, 2), [1, 2, 0, 1])])
@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("flip", [False, True])
def test_upfirdn2d_fused_forward_and_gradients(up, down, pad, separable, flip):
    g = torch.Generator().manual_seed(0)
    kernel = kernel_standins.Upfirdn2dKernel()
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    # Asymmetric filters, so a flip or a transposition in the wrapper would show.
    f = torch.randn(4, generator=g) if separable else torch.randn(4, 3, generator=g)
    params = dict(up=up, down=down, padding=pad, flip_filter=flip, gain=1.3)
    ref = upfirdn2d.upfirdn2d_ref(x, f, **params)
    ours = upfirdn2d.upfirdn2d_fused(kernel, x, f, **params)
    assert kernel.calls == (2 if separable else 1)  # a 1D filter runs as an x pass then a y pass
    torch.testing.assert_close(ours, ref)
    dy = torch.randn(ref.shape, generator=g, dtype=torch.float64, requires_grad=True)
    (gr,) = torch.autograd.grad(ref, x, dy, create_graph=True)
    (go,) = torch.autograd.grad(ours, x, dy, create_graph=True)
    torch.testing.assert_close(go, gr)
    # Second order: the backward is the adjoint Function, itself differentiable.
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(go, dy, v)[0], torch.autograd.grad(gr, dy, v)[0])


def test_upfirdn2d_fused_float16_and_no_filter():
    g = torch.Generator().manual_seed(1)
    kernel = kernel_standins.Upfirdn2dKernel()
    x = torch.randn(1, 2, 5, 6, generator=g).half()
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    ours = upfirdn2d.upfirdn2d_fused(kernel, x, f, up=2, padding=[2, 1, 2, 1], gain=4)
    assert ours.dtype == torch.float16
    ref = upfirdn2d.upfirdn2d_ref(x.double(), f, up=2, padding=[2, 1, 2, 1], gain=4)
    torch.testing.assert_close(ours.double(), ref, atol=2e-3, rtol=2e-3)
    # f=None is the 1x1 identity filter: pure zero insertion + padding.
    torch.testing.assert_close(upfirdn2d.upfirdn2d_fused(kernel, x.double(), None, up=2, padding=1),
                               upfirdn2d.upfirdn2d_ref(x.double(), None, up=2, padding=1))


@pytest.mark.parametrize("act", ["lrelu", "swish", "linear", "softplus", "selu"])
@pytest.mark.parametrize("clamp", [None, 0.5])
@pytest.mark.parametrize("dim", [1, 0])
def test_bias_act_fused_gradients_first_and_second_order(act, clamp, dim):
    g = torch.Generator().manual_seed(1)
    kernel = kernel_standins.BiasActKernel()
    x = (torch.randn(3, 4, 5, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    b = torch.randn(x.shape[dim], generator=g, dtype=torch.float64, requires_grad=True)
    yr = bias_act.bias_act_ref(x, b, dim=dim, act=act, clamp=clamp)
    yo = bias_act.bias_act_fused(kernel, x, b, dim=dim, act=act, clamp=clamp)
    torch.testing.assert_close(yo, yr)
    dy = torch.randn(yr.shape, generator=g, dtype=torch.float64)
    calls = kernel.calls
    for ours, theirs in zip(torch.autograd.grad(yo, (x, b), dy), torch.autograd.grad(yr, (x, b), dy)):
        torch.testing.assert_close(ours, theirs)
    assert kernel.calls == calls + 1  # first order: the fused gradient kernel
    # R1-style double backward: the backward switches to the differentiable formula.
    (gxo,) = torch.autograd.grad(bias_act.bias_act_fused(kernel, x, b, dim=dim, act=act, clamp=clamp).sum(), x,
                                 create_graph=True)
    (gxr,) = torch.autograd.grad(bias_act.bias_act_ref(x, b, dim=dim, act=act, clamp=clamp).sum(), x,
                                 create_graph=True)
    torch.testing.assert_close(_second(gxo, b), _second(gxr, b))


def _second(gx, wrt):
    """d(sum gx^2)/d wrt, zero where gx does not depend on wrt (piecewise-linear activations)."""
    if not gx.requires_grad:
        return torch.zeros_like(wrt)
    (g,) = torch.autograd.grad(gx.square().sum(), wrt, allow_unused=True)
    return torch.zeros_like(wrt) if g is None else g


def test_bias_act_fused_without_bias_and_with_a_float32_bias_on_float16():
    kernel = kernel_standins.BiasActKernel()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = bias_act.bias_act_fused(kernel, x, None, act="relu")
    torch.testing.assert_close(y, bias_act.bias_act_ref(x, act="relu"))
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, (x > 0).double() * 2 ** 0.5)
    # The kernel reads the bias in x's dtype; the wrapper casts it (and the gradient flows back).
    xh = torch.randn(2, 3, 4).half()
    b = torch.randn(3, requires_grad=True)
    yh = bias_act.bias_act_fused(kernel, xh, b, act="lrelu")
    assert yh.dtype == torch.float16
    (gb,) = torch.autograd.grad(yh.float().sum(), b)
    assert gb.dtype == torch.float32 and gb.shape == (3,)


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulate_weights_fused_gradients(demodulate):
    g = torch.Generator().manual_seed(2)
    kernel = kernel_standins.ModconvKernel()
    w = torch.randn(4, 3, 3, 3, generator=g, requires_grad=True)  # [O, I, kh, kw]
    s = torch.randn(2, 3, generator=g, requires_grad=True)  # [N, I]
    o = modulate_weights_fused(kernel, w, s, demodulate)
    r = modulate_weights_ref(w, s, demodulate)
    torch.testing.assert_close(o, r)
    d = torch.randn(r.shape, generator=g)
    for a, b in zip(torch.autograd.grad(o, (w, s), d), torch.autograd.grad(r, (w, s), d)):
        torch.testing.assert_close(a, b)
    # Double backward (path-length-style): the backward is the differentiable reference.
    o = modulate_weights_fused(kernel, w, s, demodulate)
    (go,) = torch.autograd.grad((o * d).sum(), s, create_graph=True)
    r = modulate_weights_ref(w, s, demodulate)
    (gr,) = torch.autograd.grad((r * d).sum(), s, create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(go.square().sum(), w)[0],
                               torch.autograd.grad(gr.square().sum(), w)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triplane_mean_fused_forward_and_planes_gradient(dtype):
    """Two images, C = 32 and points inside, on and past the planes' edges: the fused wrapper's
    channels-last copy and its gradient's way back to [N, 3, C, H, W] agree with grid_sample."""
    g = torch.Generator().manual_seed(6)
    kernel = kernel_standins.TriplaneKernel()
    planes = torch.randn(2, 3, 32, 7, 9, generator=g).to(dtype).requires_grad_(True)
    grid = (torch.rand(2, 3, 50, 2, generator=g) * 2.4 - 1.2).to(dtype)
    planes64 = planes.detach().double().requires_grad_(True)  # the reference from the same rounded inputs
    ours = triplane.triplane_mean_fused(kernel, planes, grid)
    ref = triplane.triplane_mean_ref(planes64, grid.double())
    assert ours.shape == ref.shape == (2, 50, 32) and ours.dtype == dtype and kernel.calls == 1
    # bfloat16: the result is rounded to 8 bits (values up to about 3 here).
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=0)
    torch.testing.assert_close(ours.double(), ref, **tol)
    dy = torch.randn(ref.shape, generator=g).to(dtype)
    (go,) = torch.autograd.grad(ours, planes, dy)
    (gr,) = torch.autograd.grad(ref, planes64, dy.double())
    assert go.dtype == dtype and go.shape == planes.shape
    torch.testing.assert_close(go.double(), gr, **tol)


def test_triplane_mean_runs_the_reference_when_the_grid_needs_a_gradient():
    g = torch.Generator().manual_seed(7)
    planes = torch.randn(1, 3, 4, 5, 5, generator=g, requires_grad=True)
    grid = (torch.rand(1, 3, 10, 2, generator=g) * 2 - 1).requires_grad_(True)
    with pytest.raises(ValueError, match="no gradient w.r.t. grid"):
        triplane.triplane_mean_fused(kernel_standins.TriplaneKernel(), planes, grid)
    out = triplane.triplane_mean(planes, grid)  # CPU tensors: the reference, gradients for both
    gp, gg = torch.autograd.grad(out.sum(), (planes, grid))
    assert gp.shape == planes.shape and float(gg.abs().sum()) > 0
    with pytest.raises(ValueError, match=r"grid must be \[1, 3, M, 2\]"):
        triplane.triplane_mean(planes, grid[:, :2])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "channels-last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lpips_layer_fused_forward_and_both_gradients(layout, dtype):
    """Two pairs of feature maps (the render and the cartoon of stage 5: both sides learn): the
    wrapper's per-pixel terms, their spatial mean and the features' gradients, in their layout and
    dtype, agree with the package's operations."""
    g = torch.Generator().manual_seed(8)
    kernel = kernel_standins.LPIPSLayerKernel()
    a, b = (torch.randn(2, 16, 6, 7, generator=g).to(dtype).contiguous(memory_format=layout).requires_grad_(True)
            for _ in range(2))
    weight = torch.rand(1, 16, 1, 1, generator=g)
    a64, b64 = (t.detach().double().requires_grad_(True) for t in (a, b))
    ours = lpips_layer.lpips_layer_fused(kernel, a, b, weight)
    ref = lpips_layer.lpips_layer_ref(a64, b64, weight.double())
    assert ours.shape == (2,) and ours.dtype == torch.float32 and kernel.calls == 1
    torch.testing.assert_close(ours.double(), ref, atol=1e-6, rtol=1e-5)
    da, db = torch.autograd.grad(ours, (a, b), torch.tensor([1.0, -2.0]))
    ra, rb = torch.autograd.grad(ref, (a64, b64), torch.tensor([1.0, -2.0], dtype=torch.float64))
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-3, rtol=2e-2)
    for got, want, like in ((da, ra, a), (db, rb, b)):
        assert got.dtype == dtype and dispatch.channels_last(got) == dispatch.channels_last(like)
        torch.testing.assert_close(got.double(), want, **tol)


def test_lpips_layer_compares_one_constant_image_with_each():
    """A cached target's features ([1, C, H, W], no gradient) against two images."""
    g = torch.Generator().manual_seed(9)
    a = torch.randn(2, 8, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target, weight = torch.randn(1, 8, 5, 5, generator=g, dtype=torch.float64), torch.rand(1, 8, 1, 1, generator=g)
    ours = lpips_layer.lpips_layer_fused(kernel_standins.LPIPSLayerKernel(), a, target, weight)
    ref = lpips_layer.lpips_layer_ref(a, target, weight.double())
    torch.testing.assert_close(ours.double(), ref)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), a)[0], torch.autograd.grad(ref.sum(), a)[0])


def test_lpips_layer_runs_the_reference_where_the_kernel_takes_no_gradient():
    g = torch.Generator().manual_seed(10)
    a = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    one = torch.randn(1, 4, 3, 3, generator=g, requires_grad=True)
    weight = torch.rand(1, 4, 1, 1, generator=g)
    kernel = kernel_standins.LPIPSLayerKernel()
    with pytest.raises(ValueError, match="no gradient for a b of one image compared with several"):
        lpips_layer.lpips_layer_fused(kernel, a, one, weight)
    with pytest.raises(ValueError, match="no gradient w.r.t. weight"):
        lpips_layer.lpips_layer_fused(kernel, a, one.detach(), weight.clone().requires_grad_(True))
    with dispatch.kernel_loader("cpu", kernel_standins.loader(lpips_layer=kernel)):
        out = lpips_layer.lpips_layer(a, one, weight)  # the reference: gradients for both
        ga, gb = torch.autograd.grad(out.sum(), (a, one))
        assert ga.shape == a.shape and gb.shape == one.shape and float(gb.abs().sum()) > 0
        assert kernel.calls == 0  # nothing was asked of the kernel, not even its self-check
        with pytest.raises(dispatch.FusedKernelUnavailable, match="impl='cuda' cannot run the fused kernel: no "
                                                                  "gradient for a b of one image"):
            lpips_layer.lpips_layer(a, one, weight, impl="cuda")
        lpips_layer.lpips_layer(a, one.detach(), weight, impl="cuda")  # served: the kernel runs
        assert kernel.calls > 0
    with pytest.raises(ValueError, match=r"b must be \[2 or 1, 4, 3, 3\]"):
        lpips_layer.lpips_layer(a, a[:, :3], weight)
