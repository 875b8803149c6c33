"""(GPU) Our real fused CUDA kernels against their pure-torch references at the
shapes StyleGAN2-1024 and EG3D (FFHQ-512) run them: forward and backward, in
float32 and, where the networks use half precision, float16; every kernel
passes its self-check; an EG3D generator end to end. Run on a GPU machine with
``pytest -m gpu tests/engine/ops``."""
from __future__ import annotations

import math

import pytest
import torch

import engine.ops
from engine.ops import bias_act, dispatch, lpips_layer, modulated_conv, triplane, upfirdn2d

pytestmark = pytest.mark.gpu

# Bound on max|cuda - ref| / max(1, max|ref|), the reference computed in float64
# from the same (rounded) inputs, so this is the kernel's own rounding: float
# accumulation, and for float16 the rounding of the result (~5e-4).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)}, reference {tuple(ref.shape)}"
    ours, ref = ours.detach().double(), ref.detach()
    error = float((ours - ref).abs().max()) / max(1.0, float(ref.abs().max()))
    assert error <= TOLERANCE[dtype], f"{what}: max error {error:.3g} > {TOLERANCE[dtype]}"


def _check_against_reference(fn, inputs: list[torch.Tensor], what: str) -> None:
    """``fn(impl, *inputs)`` on the fused kernel (``impl='cuda'``, inputs as given) and on the
    reference (``impl='ref'``, the same values in float64): outputs and input gradients agree."""
    dtype = inputs[0].dtype
    fused_leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    ref_leaves = [t.detach().double().requires_grad_(True) for t in inputs]
    out = fn("cuda", *fused_leaves)
    ref = fn("ref", *ref_leaves)
    assert out.dtype == dtype, what
    dy = torch.randn(ref.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(9)).to(dtype)
    if dispatch.channels_last(out):  # the gradient in the output's layout, as a channels-last network hands it
        dy = dy.contiguous(memory_format=torch.channels_last)
    _assert_close(out, ref, dtype, f"{what}: forward")
    grads = torch.autograd.grad(out, fused_leaves, dy)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy.double())
    for i, (ours, theirs) in enumerate(zip(grads, ref_grads)):
        _assert_close(ours, theirs, dtype, f"{what}: gradient of input {i}")


def test_every_kernel_passes_its_self_check():
    lines = engine.ops.implementations("cuda", dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64))
    for op in ("upfirdn2d", "bias_act"):
        assert lines[op].count("fused CUDA kernel (self-check passed") == 4, lines[op]
    assert lines["triplane_mean"].count("fused CUDA kernel (self-check passed") == 3, lines["triplane_mean"]
    assert lines["lpips_layer"].count("fused CUDA kernel (self-check passed") == 3, lines["lpips_layer"]
    modconv = lines["modulate_weights"]
    assert modconv.startswith("fused CUDA kernel (self-check passed, float32"), modconv


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
UPFIRDN2D_CASES = [  # label, x shape, dtype, arguments (filter: setup_filter([1, 3, 3, 1]), 4x4)
    # conv2d_resample(up=2, 3x3): the transposed conv's output, filtered with padding 1, gain up^2.
    ("StyleGAN2 G conv0 8->16", (4, 512, 17, 17), F32, dict(padding=1, gain=4)),
    ("StyleGAN2 G conv0 512->1024", (2, 32, 1025, 1025), F16, dict(padding=1, gain=4)),
    ("StyleGAN2 G ToRGB skip upsample2d 512->1024", (2, 3, 512, 512), F32, dict(up=2, padding=[2, 1, 2, 1], gain=4)),
    # conv2d_resample(down=2, 3x3): filter with padding 2, then a strided conv.
    ("StyleGAN2 D conv1 1024->512", (2, 32, 1024, 1024), F16, dict(padding=2)),
    ("StyleGAN2 D skip 1x1 1024->512", (2, 32, 1024, 1024), F16, dict(down=2, padding=1)),
    ("StyleGAN2 D conv1 16->8", (4, 512, 16, 16), F32, dict(padding=2)),
    ("EG3D SR image upsample2d 128->256", (1, 3, 128, 128), F32, dict(up=2, padding=[2, 1, 2, 1], gain=4)),
    ("EG3D SR conv0 128->256", (1, 256, 257, 257), F16, dict(padding=1, gain=4)),
    ("EG3D backbone conv0 128->256", (1, 128, 257, 257), F32, dict(padding=1, gain=4)),
    # Under the stages' bf16 autocast the convolutions hand these ops bfloat16.
    ("EG3D SR conv0 128->256 bf16", (1, 256, 257, 257), BF16, dict(padding=1, gain=4)),
    ("StyleGAN2 D conv1 16->8 bf16", (4, 512, 16, 16), BF16, dict(padding=2)),
]


@pytest.mark.parametrize("label,shape,dtype,kwargs", UPFIRDN2D_CASES, ids=[c[0] for c in UPFIRDN2D_CASES])
def test_upfirdn2d_at_network_shapes(label, shape, dtype, kwargs):
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda")
    _check_against_reference(lambda impl, t: upfirdn2d.upfirdn2d(t, f, impl=impl, **kwargs), [x], label)



TILED_CASES = [  # up, down, padding, flip_filter: the tiled kernel's three cases, a crop, both filter orders
    (2, 1, [2, 1, 2, 1], False),
    (1, 2, [1, 2, 2, 1], True),
    (1, 1, [-1, 3, 2, -2], False),
    (1, 1, [1, 1, 1, 1], True),
]


@pytest.mark.parametrize("up,down,padding,flip_filter", TILED_CASES)
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_upfirdn2d_tiled_kernel_with_an_asymmetric_filter_over_ragged_tiles(up, down, padding, flip_filter, dtype):
    """A random 4x4 filter (a flipped or transposed filter would show, which [1, 3, 3, 1] hides) on
    an image of 2 x 3 tiles with ragged last ones and 70000 images (more than a grid's z extent):
    the reference's values and gradient, and the generic kernel's values."""
    g = torch.Generator(device="cuda").manual_seed(3)
    f = torch.randn(4, 4, device="cuda", generator=g)
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=1.5)
    x = torch.randn(2, 3, 45, 70, device="cuda", generator=g).to(dtype)
    _check_against_reference(lambda impl, t: upfirdn2d.upfirdn2d(t, f, impl=impl, **kwargs), [x], "ragged tiles")
    many = torch.randn(70000, 1, 5, 6, device="cuda", generator=g).to(dtype)
    kernel = dispatch.fused_kernel(upfirdn2d.FUSED, "cuda", many.device, dtype)
    args = (*upfirdn2d.parse_scaling(up), *upfirdn2d.parse_scaling(down), *upfirdn2d.parse_padding(padding),
            flip_filter, 1.5)
    torch.testing.assert_close(kernel.upfirdn2d(many, f, *args), kernel.upfirdn2d_generic(many, f, *args),
                               rtol=1e-5 if dtype == F32 else 1e-2, atol=1e-5 if dtype == F32 else 1e-2)


CHANNELS_LAST_CASES = [  # label, x shape, dtype, arguments: the NHWC kernel at the networks' shapes
    ("EG3D backbone conv0 128->256", (1, 128, 257, 257), F32, dict(padding=1, gain=4)),
    ("EG3D SR conv0 128->256 bf16", (1, 256, 257, 257), BF16, dict(padding=1, gain=4)),
    ("EG3D SR image upsample2d 128->256", (1, 3, 128, 128), F32, dict(up=2, padding=[2, 1, 2, 1], gain=4)),
    ("StyleGAN2 D skip 1x1 1024->512", (2, 32, 1024, 1024), F16, dict(down=2, padding=1)),
    ("StyleGAN2 D conv1 16->8", (4, 512, 16, 16), F32, dict(padding=2)),
]


@pytest.mark.parametrize("label,shape,dtype,kwargs", CHANNELS_LAST_CASES, ids=[c[0] for c in CHANNELS_LAST_CASES])
def test_upfirdn2d_keeps_channels_last_and_matches_the_reference(label, shape, dtype, kwargs):
    """A channels-last input runs the NHWC kernel: its output is channels-last (no layout
    conversion for the next convolution), and it and its gradient (channels-last too) match."""
    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device="cuda")
    assert dispatch.channels_last(upfirdn2d.upfirdn2d(x, f, impl="cuda", **kwargs)), label
    _check_against_reference(lambda impl, t: upfirdn2d.upfirdn2d(t, f, impl=impl, **kwargs), [x], label)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_bias_act_keeps_channels_last_and_matches_the_reference(dtype):
    g = torch.Generator(device="cuda").manual_seed(6)
    x = torch.randn(1, 128, 512, 512, device="cuda", generator=g).mul(100).round().to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(128, device="cuda", generator=g).mul(4).round().add(0.5).to(dtype)
    kwargs = dict(act="lrelu", clamp=256)
    assert dispatch.channels_last(bias_act.bias_act(x, b, impl="cuda", **kwargs))
    _check_against_reference(lambda impl, t, c: bias_act.bias_act(t, c, impl=impl, **kwargs), [x, b],
                             "EG3D SR conv lrelu clamp 256, 512px, channels-last")


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_triplane_mean_at_the_eg3d_shape(dtype):
    """EG3D FFHQ-512's planes (3 x 32 channels, 256 px) at a twelfth of a 128 px render's 96 samples
    per ray, points up to 10 % past the planes' edges: values and the planes' gradient."""
    g = torch.Generator(device="cuda").manual_seed(4)
    planes = torch.randn(1, 3, 32, 256, 256, device="cuda", generator=g).to(dtype)
    grid = (torch.rand(1, 3, 128 * 128 * 8, 2, device="cuda", generator=g) * 2.2 - 1.1).to(dtype)
    _check_against_reference(lambda impl, p: triplane.triplane_mean(p, grid.to(p.dtype), impl=impl), [planes],
                             "EG3D tri-planes")

LPIPS_CASES = [  # label, features shape (one trunk layer as the stages run it), b's batch, dtype, layout
    ("VGG16 layer 1 at 256 px, bf16", (1, 64, 256, 256), 1, BF16, torch.contiguous_format),
    ("VGG16 layer 3 at 256 px", (1, 256, 64, 64), 1, F32, torch.contiguous_format),
    ("VGG16 layer 5 at 256 px, channels-last, bf16", (1, 512, 16, 16), 1, BF16, torch.channels_last),
    ("AlexNet layer 1 at 512 px", (1, 64, 127, 127), 1, F32, torch.contiguous_format),
    ("VGG16 layer 2, two images against a cached target", (2, 128, 128, 128), 0, F32, torch.contiguous_format),
]


@pytest.mark.parametrize("label,shape,b_batch,dtype,layout", LPIPS_CASES, ids=[c[0] for c in LPIPS_CASES])
def test_lpips_layer_at_the_trunks_shapes(label, shape, b_batch, dtype, layout):
    """Post-ReLU feature maps of the LPIPS trunks at the stages' sizes: the distance (float32) and
    the features' gradients (both sides where ``b`` has a's batch, as the render against the cartoon
    in stage 5; ``a``'s alone against a cached target of one image)."""
    g = torch.Generator(device="cuda").manual_seed(11)
    a = torch.randn(shape, device="cuda", generator=g).relu().to(dtype).contiguous(memory_format=layout)
    b = torch.randn((b_batch or 1,) + shape[1:], device="cuda", generator=g).relu().to(dtype)
    b = b.contiguous(memory_format=layout)
    weight = torch.rand(1, shape[1], 1, 1, device="cuda", generator=g)
    learns_b = b_batch != 0
    fused = [a.clone().requires_grad_(True), b.clone().requires_grad_(learns_b)]
    ref = [a.double().requires_grad_(True), b.double().requires_grad_(learns_b)]
    out = lpips_layer.lpips_layer(*fused, weight, impl="cuda")
    expected = lpips_layer.lpips_layer_ref(*ref, weight.double())
    assert out.dtype == torch.float32

    def assert_relative(ours, theirs, tolerance, what):
        # relative to the largest value: a pixel's gradient is a 1 / (H * W) share of the distance's
        error = float((ours.detach().double() - theirs).abs().max()) / float(theirs.abs().max())
        assert error <= tolerance, f"{label}: {what}: max error {error:.3g} relative > {tolerance}"

    assert_relative(out, expected, TOLERANCE[F32], "forward")  # accumulated in float32 from the rounded features
    dy = torch.rand(out.shape, device="cuda", generator=g) + 0.5
    leaves = (0, 1) if learns_b else (0,)
    grads = torch.autograd.grad(out, [fused[i] for i in leaves], dy)
    ref_grads = torch.autograd.grad(expected, [ref[i] for i in leaves], dy.double())
    for i, ours, theirs in zip(leaves, grads, ref_grads):
        assert ours.dtype == dtype and dispatch.channels_last(ours) == dispatch.channels_last(fused[i])
        assert_relative(ours, theirs, TOLERANCE[dtype], f"gradient w.r.t. {'ab'[i]}")


BIAS_ACT_CASES = [  # label, x shape, dtype, arguments
    ("StyleGAN2 G conv lrelu clamp 256, 1024px", (2, 32, 1024, 1024), F16, dict(act="lrelu", clamp=256)),
    ("StyleGAN2 G conv lrelu, 64px", (4, 512, 64, 64), F32, dict(act="lrelu")),
    ("StyleGAN2 G ToRGB linear clamp 256", (2, 3, 1024, 1024), F16, dict(clamp=256)),
    ("StyleGAN2 mapping fc lrelu", (4, 512), F32, dict(act="lrelu", gain=0.01 * math.sqrt(2))),
    ("StyleGAN2 D epilogue fc", (4, 512), F32, dict(act="lrelu")),
    ("EG3D backbone ToRGB linear, 256px", (1, 96, 256, 256), F32, dict()),
    ("EG3D SR conv lrelu clamp 256, 512px", (1, 128, 512, 512), F16, dict(act="lrelu", clamp=256)),
    ("EG3D SR conv lrelu clamp 256, 512px bf16", (1, 128, 512, 512), BF16, dict(act="lrelu", clamp=256)),
    ("StyleGAN2 G conv lrelu, 64px bf16", (4, 512, 64, 64), BF16, dict(act="lrelu")),
]


@pytest.mark.parametrize("label,shape,dtype,kwargs", BIAS_ACT_CASES, ids=[c[0] for c in BIAS_ACT_CASES])
def test_bias_act_at_network_shapes(label, shape, dtype, kwargs):
    g = torch.Generator(device="cuda").manual_seed(2)
    # Half-integer inputs, exact in float16: x + b stays >= 0.4 away from every clamp
    # boundary (256 / gain), where float16 and float rounding could decide differently.
    x = torch.randn(shape, device="cuda", generator=g).mul(100).round().to(dtype)  # some values reach the clamp
    b = torch.randn(shape[1], device="cuda", generator=g).mul(4).round().add(0.5).to(dtype)  # [C], cast as the nets do
    _check_against_reference(lambda impl, t, c: bias_act.bias_act(t, c, impl=impl, **kwargs), [x, b], label)


MODULATE_CASES = [  # label, weight [O, I, kh, kw], batch, demodulate
    ("StyleGAN2 conv 512x512x3x3", (512, 512, 3, 3), 4, True),
    ("StyleGAN2 conv 32x64x3x3 (1024px)", (32, 64, 3, 3), 4, True),
    ("StyleGAN2 ToRGB 3x32x1x1", (3, 32, 1, 1), 4, False),
    ("EG3D backbone ToRGB 96x128x1x1", (96, 128, 1, 1), 1, False),
    ("EG3D SR conv 128x256x3x3", (128, 256, 3, 3), 1, True),
]


@pytest.mark.parametrize("label,shape,batch,demodulate", MODULATE_CASES, ids=[c[0] for c in MODULATE_CASES])
def test_modulate_weights_at_network_shapes(label, shape, batch, demodulate):
    g = torch.Generator(device="cuda").manual_seed(3)
    weight = torch.randn(shape, device="cuda", generator=g)
    styles = torch.randn(batch, shape[1], device="cuda", generator=g) + 1
    _check_against_reference(lambda impl, w, s: modulated_conv.modulate_weights(w, s, demodulate, impl=impl),
                             [weight, styles], label)


def test_eg3d_generator_end_to_end():
    from engine.nets import eg3d
    from engine.nets.camera import conditioning_label

    G = eg3d.slim_generator("slim512", seed=0, device="cuda")  # FFHQ-512 layout, float16 super-resolution
    c = conditioning_label(2, device="cuda")
    z = torch.randn(2, 512, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    ws = G.mapping(z, c, impl="ref").detach()
    out = {}
    for impl in ("ref", "cuda"):
        leaf = ws.clone().requires_grad_(True)
        planes = G.planes(leaf, impl=impl)
        image = G.render(planes, leaf, c, impl=impl)["image"]
        (grad,) = torch.autograd.grad(image.square().mean() + planes.square().mean(), leaf)
        out[impl] = (planes.detach(), image.detach(), grad)
    # Both sides run the network in its own dtypes (float16 super-resolution), so the
    # bound is looser than the op-level ones.
    for name, ours, ref in zip(("planes", "image", "d/dws"), out["cuda"], out["ref"]):
        error = float((ours - ref).abs().max()) / max(1.0, float(ref.abs().max()))
        assert error <= 2e-2, f"{name}: max error {error:.3g}"
