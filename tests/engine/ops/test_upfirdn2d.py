"""upfirdn2d: the reference against a direct loop definition, its depthwise
layout against the previous single-filter layout to the last bits of rounding, its adjoint
(the rule the fused backward uses), gradients, helpers, errors, and (GPU) the
fused kernel against the reference."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engine.ops import upfirdn2d
from engine.ops.upfirdn2d import adjoint_params
from tests.engine.ops.upfirdn2d_layouts import upfirdn2d_ref_single_filter_layout


def brute_force(x, f, up, down, pad, flip, gain):
    """Literal definition with numpy loops: zero-insert, pad/crop, convolve, decimate."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f = np.outer(f, f)
    n, c, h, w = x.shape
    px0, px1, py0, py1 = pad
    upg = np.zeros((n, c, h * up, w * up))
    upg[:, :, ::up, ::up] = x
    big = np.zeros((n, c, h * up + abs(py0) + abs(py1) + 2, w * up + abs(px0) + abs(px1) + 2))
    oy, ox = max(py0, 0), max(px0, 0)
    big[:, :, oy:oy + h * up, ox:ox + w * up] = upg
    big = big[:, :, max(-py0, 0):, max(-px0, 0):]
    hp, wp = h * up + py0 + py1, w * up + px0 + px1
    big = big[:, :, :hp, :wp]
    fh, fw = f.shape
    k = f if flip else f[::-1, ::-1]
    out = np.zeros((n, c, hp - fh + 1, wp - fw + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = (big[:, :, i:i + fh, j:j + fw] * k).sum(axis=(2, 3))
    return out[:, :, ::down, ::down] * gain


CASES = list(itertools.product([1, 2], [1, 2], [(0, 0, 0, 0), (2, 1, 2, 1), (1, 2, -1, 3)], [(4, 4), (3, 2)], [False, True]))


@pytest.mark.parametrize("up,down,pad,fshape,flip", CASES)
def test_reference_matches_definition(up, down, pad, fshape, flip):
    g = torch.Generator().manual_seed(hash((up, down, pad, fshape, flip)) % 2**31)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64)
    f = torch.randn(*fshape, generator=g)
    ours = upfirdn2d.upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.5)
    ref = brute_force(x.numpy(), f.numpy(), up, down, pad, flip, 1.5)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)


def test_separable_filter_equals_outer_product():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 9, 8, generator=g)
    f1 = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    a = upfirdn2d.upfirdn2d_ref(x, f1, up=2, padding=[2, 1, 2, 1], gain=4)
    b = upfirdn2d.upfirdn2d_ref(x, torch.outer(f1, f1), up=2, padding=[2, 1, 2, 1], gain=4)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


LAYOUT_CASES = [  # x shape, filter shape, up, down, padding
    ((2, 3, 7, 6), (4, 4), 1, 1, [0, 0, 0, 0]),
    ((2, 3, 7, 6), (4, 4), 2, 1, [2, 1, 2, 1]),
    ((1, 16, 16, 16), (4, 4), 1, 2, [1, 1, 1, 1]),
    ((3, 5, 9, 11), (3, 2), (2, 1), (1, 2), [1, 2, -1, 3]),
    ((2, 4, 8, 8), (4,), 2, 1, [2, 1, 2, 1]),
    ((2, 4, 8, 8), (6,), 1, 2, [2, 2, 2, 2]),
    ((1, 32, 12, 10), (5,), 2, 2, [0, 3, -1, 2]),
]


@pytest.mark.parametrize("shape,fshape,up,down,pad", LAYOUT_CASES)
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depthwise_layout_matches_the_single_filter_layout_to_rounding(shape, fshape, up, down, pad, flip, dtype):
    # Bit identity held on AVX2 machines but not on AVX-512 ones, whose float64 convolution
    # sums a 16-channel depthwise layout in another order (seen: 2e-17 relative); a few ulp
    # of the output's scale is the honest bound.
    g = torch.Generator().manual_seed(len(LAYOUT_CASES) * sum(shape) + len(fshape))
    x = torch.randn(*shape, generator=g, dtype=dtype, requires_grad=True)
    f = torch.rand(*fshape, generator=g)
    params = dict(up=up, down=down, padding=pad, flip_filter=flip, gain=1.7)
    ours = upfirdn2d.upfirdn2d_ref(x, f, **params)
    before = upfirdn2d_ref_single_filter_layout(x, f, **params)
    assert_within_ulps(ours, before)
    dy = torch.randn(ours.shape, generator=g, dtype=dtype)
    (grad_ours,) = torch.autograd.grad(ours, x, dy)
    (grad_before,) = torch.autograd.grad(before, x, dy)
    assert_within_ulps(grad_ours, grad_before)


def assert_within_ulps(actual: torch.Tensor, expected: torch.Tensor, ulps: int = 8) -> None:
    scale = expected.detach().abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=ulps * torch.finfo(expected.dtype).eps * scale)


@pytest.mark.parametrize("up,down,pad,fshape,flip", CASES)
def test_adjoint_is_the_gradient(up, down, pad, fshape, flip):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.randn(*fshape, generator=g)
    y = upfirdn2d.upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=0.7)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x, dy)
    up2, down2, pad2, flip2 = adjoint_params(x.shape[2:], y.shape[2:], tuple(f.shape), (up, up), (down, down), pad,
                                             flip)
    gx2 = upfirdn2d.upfirdn2d_ref(dy, f, up=up2, down=down2, padding=pad2, flip_filter=flip2, gain=0.7)
    assert gx2.shape == gx.shape
    torch.testing.assert_close(gx2, gx, atol=1e-10, rtol=0)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert torch.autograd.gradcheck(lambda t: upfirdn2d.upfirdn2d_ref(t, f, up=2, down=1, padding=[2, 1, 2, 1]), (x,))
    assert torch.autograd.gradgradcheck(lambda t: upfirdn2d.upfirdn2d_ref(t, f, down=2, padding=1), (x,))


def test_setup_filter_and_resampling_helpers():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and abs(float(f.sum()) - 1) < 1e-6
    x = torch.ones(1, 1, 8, 8)
    up = upfirdn2d.upsample2d(x, f, impl="ref")
    down = upfirdn2d.downsample2d(x, f, impl="ref")
    assert up.shape == (1, 1, 16, 16) and down.shape == (1, 1, 4, 4)
    # Interior of a constant image stays constant (gain up**2 keeps the mean).
    torch.testing.assert_close(up[..., 3:-3, 3:-3], torch.ones_like(up[..., 3:-3, 3:-3]))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))
    assert upfirdn2d.filter2d(x, f, impl="ref").shape == x.shape


def test_errors_are_specific():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        upfirdn2d.upfirdn2d(torch.zeros(3, 4, 4), f)
    with pytest.raises(ValueError, match="float32"):
        upfirdn2d.upfirdn2d(torch.zeros(1, 1, 4, 4), f.double())
    with pytest.raises(ValueError, match="padding"):
        upfirdn2d.upfirdn2d(torch.zeros(1, 1, 4, 4), f, padding=[1, 2, 3])
    with pytest.raises(ValueError, match="impl"):
        upfirdn2d.upfirdn2d(torch.zeros(1, 1, 4, 4), f, impl="fast")


@pytest.mark.gpu
@pytest.mark.parametrize("up,down,pad,fshape,flip", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_reference(up, down, pad, fshape, flip, dtype):
    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(2, 5, 13, 11, generator=g, device="cuda").to(dtype).requires_grad_(True)
    f = torch.randn(*fshape, generator=g, device="cuda")
    y_ref = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.3, impl="ref")
    y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.3, impl="cuda")
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.float(), y_ref.float(), atol=tol * max(1.0, float(y_ref.abs().max())), rtol=0)
    dy = torch.randn(y.shape, generator=g, device="cuda").to(dtype)
    (gr,) = torch.autograd.grad(y_ref, x, dy)
    (gc,) = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(gc.float(), gr.float(), atol=tol * max(1.0, float(gr.abs().max())), rtol=0)


@pytest.mark.gpu
def test_cuda_separable_and_second_order():
    g = torch.Generator(device="cuda").manual_seed(6)
    x = torch.randn(1, 2, 9, 9, generator=g, device="cuda", dtype=torch.float64, requires_grad=True)
    f1 = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda", separable=True)
    torch.testing.assert_close(upfirdn2d.upfirdn2d(x, f1, up=2, padding=[2, 1, 2, 1], impl="cuda"),
                               upfirdn2d.upfirdn2d(x, f1, up=2, padding=[2, 1, 2, 1], impl="ref"))
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda")
    assert torch.autograd.gradgradcheck(lambda t: upfirdn2d.upfirdn2d(t, f, down=2, padding=1, impl="cuda"), (x,))
