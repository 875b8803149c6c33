"""The fused ops under ``torch.compile``: ``upfirdn2d`` and ``triplane_mean`` trace as
``emoji3d::*`` custom ops that choose kernel or reference when they run; the other ops trace
their reference, which the compiler fuses (``engine.ops.dispatch``'s docstring).

The CPU has no kernels, so the custom ops are driven here by the numpy stand-ins of
``kernel_standins`` (injected with ``dispatch.kernel_loader``), and by a loader that fails, which
leaves the custom ops running the reference. ``aot_eager`` traces forward and backward as
inductor would (fake tensors, the registered shapes and gradients) without generating code."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from engine.ops import bias_act, dispatch, lpips_layer, triplane, upfirdn2d
from engine.ops.modulated_conv import modulate_weights
from tests.engine.ops import kernel_standins


def _compiled(fn, backend="aot_eager"):
    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, fullgraph=True)  # fullgraph: a graph break fails the test


def _no_kernel(extension: str):
    raise OSError(f"no {extension} here")


def _values_and_grads(fn, inputs):
    out = fn(*inputs)
    d_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype).to(out.device)
    if dispatch.channels_last(out):  # as a channels-last network hands it (and AOT tracing lays it out)
        d_out = d_out.contiguous(memory_format=torch.channels_last)
    return [out, *torch.autograd.grad(out, inputs, d_out)]


def _assert_same(compiled, eager, layouts=True):
    assert len(compiled) == len(eager)
    for a, b in zip(compiled, eager):
        assert a.shape == b.shape and (a.stride() == b.stride() or not layouts)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _upfirdn_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=g, requires_grad=True)
    x_last = torch.randn(2, 40, 7, 6, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    return g, x, x_last


UPFIRDN_CASES = [  # label, channels-last input, filter shape, up, down, padding, flip
    ("up=2", False, (4, 4), 2, 1, [2, 1, 2, 1], False),
    ("down=2 flipped", False, (4, 3), 1, 2, [1, 1, 2, 1], True),
    ("separable crop", False, (4,), (2, 1), (1, 2), [1, 2, -1, 2], False),
    ("channels-last up=2", True, (4, 4), 2, 1, [2, 1, 2, 1], False),
]


@pytest.mark.parametrize("label,last,f_shape,up,down,padding,flip", UPFIRDN_CASES, ids=[c[0] for c in UPFIRDN_CASES])
def test_upfirdn2d_compiled_runs_the_kernel_as_a_custom_op(label, last, f_shape, up, down, padding, flip):
    g, x, x_last = _upfirdn_inputs()
    x = x_last if last else x
    f = torch.randn(f_shape, generator=g)
    params = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=1.5)
    kernel = kernel_standins.Upfirdn2dKernel()
    with dispatch.kernel_loader("cpu", kernel_standins.loader(upfirdn2d=kernel)):
        eager = _values_and_grads(lambda t: upfirdn2d.upfirdn2d(t, f, **params), [x])
        calls_eager = kernel.calls
        compiled = _values_and_grads(_compiled(lambda t: upfirdn2d.upfirdn2d(t, f, **params)), [x])
    passes = 2 if len(f_shape) == 1 else 1  # a 1D filter: an x pass and a y pass
    assert kernel.calls - calls_eager == 2 * passes  # compiled: each pass forward and backward on the kernel
    _assert_same(compiled, eager)


def test_upfirdn2d_compiled_on_the_cpu_traces_the_reference():
    """No kernels for the device type: nothing opaque in the graph, the reference's own ops."""
    _, x, _ = _upfirdn_inputs()
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = _values_and_grads(_compiled(lambda t: upfirdn2d.upsample2d(t, f), counter), [x])
    _assert_same(compiled, _values_and_grads(lambda t: upfirdn2d.upfirdn2d_ref(
        t, f, up=2, padding=[2, 1, 2, 1], gain=4), [x]))
    (graph,) = counter.graphs
    assert "emoji3d" not in str(graph.code) and "conv2d" in str(graph.code)


def _triplane_inputs():
    g = torch.Generator().manual_seed(3)
    planes = torch.randn(2, 3, 32, 9, 7, generator=g, requires_grad=True)  # [N, 3, C, H, W]
    grid = torch.rand(2, 3, 50, 2, generator=g) * 2.4 - 1.2  # [N, 3, M, 2], some outside the planes
    return planes, grid


def test_triplane_mean_compiled_runs_the_kernels_as_custom_ops():
    planes, grid = _triplane_inputs()
    kernel = kernel_standins.TriplaneKernel()
    with dispatch.kernel_loader("cpu", kernel_standins.loader(triplane=kernel)):
        eager = _values_and_grads(lambda p: triplane.triplane_mean(p, grid), [planes])
        counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
        calls_before = kernel.calls
        compiled = _values_and_grads(_compiled(lambda p: triplane.triplane_mean(p, grid), counter), [planes])
    assert kernel.calls - calls_before == 2  # forward and planes' gradient
    assert "emoji3d.triplane_mean" in str(counter.graphs[0].code)
    _assert_same(compiled, eager)


def test_custom_ops_that_cannot_load_their_kernel_run_the_reference_forward_and_backward():
    """The custom ops' own reference paths (the planes' gradient spelt out with grid_sample's
    backward) against autograd through the reference."""
    planes, grid = _triplane_inputs()
    _, x, x_last = _upfirdn_inputs()
    f = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "emoji3d: could not load", RuntimeWarning)
        with dispatch.kernel_loader("cpu", _no_kernel):
            tri = _values_and_grads(_compiled(lambda p: triplane.triplane_mean(p, grid)), [planes])
            up = _values_and_grads(_compiled(lambda t: upfirdn2d.upfirdn2d(t, f, up=2, padding=[2, 1, 2, 1])), [x])
            up_last = _values_and_grads(_compiled(lambda t: upfirdn2d.upfirdn2d(t, f, down=2, padding=1)), [x_last])
    # the custom ops give the kernels' layouts (the reference's own are other views)
    _assert_same(tri, _values_and_grads(lambda p: triplane.triplane_mean_ref(p, grid), [planes]), layouts=False)
    assert tri[0].is_contiguous() and tri[1].permute(0, 1, 3, 4, 2).is_contiguous()
    _assert_same(up, _values_and_grads(lambda t: upfirdn2d.upfirdn2d_ref(t, f, up=2, padding=[2, 1, 2, 1]), [x]))
    _assert_same(up_last, _values_and_grads(lambda t: upfirdn2d.upfirdn2d_ref(t, f, down=2, padding=1), [x_last]))


def test_a_grid_that_needs_a_gradient_traces_the_reference():
    planes, grid = _triplane_inputs()
    grid = grid.requires_grad_(True)
    kernel = kernel_standins.TriplaneKernel()
    with dispatch.kernel_loader("cpu", kernel_standins.loader(triplane=kernel)):
        compiled = _values_and_grads(_compiled(lambda p, q: triplane.triplane_mean(p, q)), [planes, grid])
    assert kernel.calls == 0
    _assert_same(compiled, _values_and_grads(triplane.triplane_mean_ref, [planes, grid]), layouts=False)


@pytest.mark.parametrize("impl", ["auto", "ref"])
def test_the_custom_ops_pass_pytorchs_opcheck(impl):
    """Schema, fake-tensor shapes and strides, the autograd registration and AOT tracing, with
    the stand-in kernels and with the reference."""
    g, x, x_last = _upfirdn_inputs()
    planes, grid = _triplane_inputs()
    f = torch.randn(4, 3, generator=g)
    dy = torch.randn(2, 50, 32, generator=g)
    with dispatch.kernel_loader("cpu", kernel_standins.loader()):
        for args in ((x, f, [2, 2], [1, 1], [2, 1, 2, 1], False, 4.0, impl),
                     (x_last, f, [1, 1], [2, 2], [1, 2, 2, 1], True, 1.0, impl)):
            torch.library.opcheck(torch.ops.emoji3d.upfirdn2d_pass.default, args)
        torch.library.opcheck(torch.ops.emoji3d.triplane_mean.default, (planes, grid, impl))
        torch.library.opcheck(torch.ops.emoji3d.triplane_mean_backward.default, (dy, grid, 9, 7, impl))


def test_ops_the_compiler_fuses_trace_their_reference():
    """bias_act, modulate_weights and lpips_layer: no kernel runs under compile, and nothing of
    the dispatcher's (its lock) breaks the graph."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 5, 4, 4, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g)
    weight = torch.randn(6, 5, 3, 3, generator=g)
    styles = torch.randn(2, 5, generator=g)
    feats = torch.randn(1, 5, 4, 4, generator=g)
    lin = torch.rand(5, generator=g)
    kernels = dict(bias_act=kernel_standins.BiasActKernel(), modconv=kernel_standins.ModconvKernel(),
                   lpips_layer=kernel_standins.LPIPSLayerKernel())

    def step(t):
        y = bias_act.bias_act(t, b, act="lrelu", clamp=2.0)
        w = modulate_weights(weight, styles)
        return y.sum() + w.sum() + lpips_layer.lpips_layer(t[:1], feats, lin).sum()

    with dispatch.kernel_loader("cpu", kernel_standins.loader(**kernels)):
        compiled = _values_and_grads(_compiled(step), [x])
    assert [k.calls for k in kernels.values()] == [0, 0, 0]
    reference = _values_and_grads(lambda t: bias_act.bias_act_ref(t, b, act="lrelu", clamp=2.0).sum()
                                  + modulate_weights(weight, styles, impl="ref").sum()
                                  + lpips_layer.lpips_layer_ref(t[:1], feats, lin).sum(), [x])
    _assert_same(compiled, reference)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_the_real_kernels_under_compile(backend):
    """The CUDA kernels as custom ops in a compiled graph with the reference ops around them, against
    the same function eager; the custom ops' checks (opcheck) on the real kernels."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 64, 33, 33, generator=g).cuda().contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    b = torch.randn(64, generator=g).cuda()
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda")
    planes = torch.randn(1, 3, 32, 64, 64, generator=g).cuda().requires_grad_(True)
    grid = (torch.rand(1, 3, 4096, 2, generator=g) * 2 - 1).cuda()

    def step(t, p):
        y = bias_act.bias_act(upfirdn2d.upsample2d(t, f), b, act="lrelu", clamp=256)
        return y.square().mean() + triplane.triplane_mean(p, grid).square().mean()

    eager = _values_and_grads(step, [x, planes])
    compiled = _values_and_grads(_compiled(step, backend), [x, planes])
    for a, b_ in zip(compiled, eager):
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-6)
    torch.library.opcheck(torch.ops.emoji3d.upfirdn2d_pass.default,
                          (x, f, [2, 2], [1, 1], [2, 1, 2, 1], False, 4.0, "cuda"))
    torch.library.opcheck(torch.ops.emoji3d.triplane_mean.default, (planes, grid, "cuda"))
