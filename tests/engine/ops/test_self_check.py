"""The fused-kernel self-check (engine.ops.dispatch) on the CPU: stand-in
kernels (``kernel_standins``) are injected for CPU tensors through the
``dispatch.kernel_loader`` seam, the real probes and comparison run unchanged.
A wrong kernel (slightly wrong output, wrong shape, wrong gradient only,
crashing) is caught with one warning naming the op and dtype, and the op
returns its reference's result from then on; a correct kernel passes and is used."""
from __future__ import annotations

import re
import warnings

import pytest
import torch

import engine.ops
from engine.ops import bias_act, dispatch, lpips_layer, modulated_conv, triplane, upfirdn2d
from tests.engine.ops import kernel_standins


def _upfirdn2d_call(impl="auto"):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    return (upfirdn2d.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4, impl=impl),
            upfirdn2d.upfirdn2d_ref(x, f, up=2, padding=[2, 1, 2, 1], gain=4))


def _bias_act_call(impl="auto"):
    g = torch.Generator().manual_seed(2)
    x, b = torch.randn(2, 4, 3, 3, generator=g) * 3, torch.randn(4, generator=g)
    return (bias_act.bias_act(x, b, act="lrelu", clamp=1.0, impl=impl),
            bias_act.bias_act_ref(x, b, act="lrelu", clamp=1.0))


def _modulate_weights_call(impl="auto"):
    g = torch.Generator().manual_seed(3)
    w, s = torch.randn(5, 4, 1, 1, generator=g), torch.randn(2, 4, generator=g)
    return (modulated_conv.modulate_weights(w, s, demodulate=False, impl=impl),
            modulated_conv.modulate_weights_ref(w, s, demodulate=False))


def _triplane_call(impl="auto"):
    g = torch.Generator().manual_seed(5)
    planes, grid = torch.randn(1, 3, 4, 6, 5, generator=g), torch.rand(1, 3, 20, 2, generator=g) * 2.2 - 1.1
    return triplane.triplane_mean(planes, grid, impl=impl), triplane.triplane_mean_ref(planes, grid)


def _lpips_layer_call(impl="auto"):
    g = torch.Generator().manual_seed(6)
    a, b, weight = torch.randn(2, 6, 5, 4, generator=g), torch.randn(2, 6, 5, 4, generator=g), torch.rand(1, 6, 1, 1)
    return lpips_layer.lpips_layer(a, b, weight, impl=impl), lpips_layer.lpips_layer_ref(a, b, weight)


CALLS = {"upfirdn2d": _upfirdn2d_call, "bias_act": _bias_act_call, "modulate_weights": _modulate_weights_call,
         "triplane_mean": _triplane_call, "lpips_layer": _lpips_layer_call}
EXTENSIONS = {"upfirdn2d": "upfirdn2d", "bias_act": "bias_act", "modulate_weights": "modconv",
              "triplane_mean": "triplane", "lpips_layer": "lpips_layer"}

WRONG_KERNELS = [  # op, wrong stand-in, what the warning must say
    ("upfirdn2d", kernel_standins.Upfirdn2dScaledOutput, r"max error 0\.00\d+ > tolerance 1e-04"),
    ("upfirdn2d", kernel_standins.Upfirdn2dCroppedOutput, r"shape"),
    ("upfirdn2d", kernel_standins.Upfirdn2dCrashes, r"probe raised RuntimeError: CUDA error: an illegal memory access"),
    ("bias_act", kernel_standins.BiasActGradientIgnoresClamp, r"gradient lrelu clamp=0\.5 w\.r\.t\. x: max error"),
    ("modulate_weights", kernel_standins.ModconvAlwaysDemodulates, r"forward 1x1 not demodulated: max error"),
    ("triplane_mean", kernel_standins.TriplaneForgetsTheMean, r"forward C=5: max error"),
    ("lpips_layer", kernel_standins.LPIPSLayerForgetsTheNormGradient, r"gradient C=5 NCHW \(thread per pixel\) w\.r\.t\. a: max error"),
]


def _self_check_warnings(record, op):
    return [w for w in record
            if issubclass(w.category, RuntimeWarning) and f"of {op} failed its self-check" in str(w.message)]


@pytest.mark.parametrize("op,wrong_kernel,detail", WRONG_KERNELS, ids=[w[1].__name__ for w in WRONG_KERNELS])
def test_a_wrong_kernel_is_caught_once_and_the_reference_is_used(op, wrong_kernel, detail):
    kernel = wrong_kernel()
    with dispatch.kernel_loader("cpu", kernel_standins.loader(**{EXTENSIONS[op]: kernel})):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            out, ref = CALLS[op]()
        caught = _self_check_warnings(record, op)
        assert len(caught) == 1, [str(w.message) for w in record]
        message = str(caught[0].message)
        assert "float32" in message
        assert re.search(detail, message), message
        assert torch.equal(out, ref)  # the reference ran, not the wrong kernel
        probe_calls = kernel.calls
        assert probe_calls > 0  # the self-check did run the kernel

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # later calls: silent, and still the reference
            out, ref = CALLS[op]()
        assert torch.equal(out, ref)
        assert kernel.calls == probe_calls
        with pytest.raises(dispatch.FusedKernelUnavailable, match=f"{op}: impl='cuda'.*failed its self-check"):
            CALLS[op](impl="cuda")
        assert "failed its self-check" in engine.ops.implementations("cpu", dtypes=(torch.float32,))[op]


def test_correct_kernels_pass_the_self_check_and_are_used():
    kernels = {"upfirdn2d": kernel_standins.Upfirdn2dKernel(), "bias_act": kernel_standins.BiasActKernel(),
               "modconv": kernel_standins.ModconvKernel(), "triplane": kernel_standins.TriplaneKernel(),
               "lpips_layer": kernel_standins.LPIPSLayerKernel()}
    with dispatch.kernel_loader("cpu", kernel_standins.loader(**kernels)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lines = engine.ops.implementations("cpu", dtypes=(torch.float32, torch.float16, torch.float64))
        for op in ("upfirdn2d", "bias_act"):
            assert lines[op].count("fused CPU kernel (self-check passed") == 3, lines[op]
        assert lines["modulate_weights"].startswith("fused CPU kernel (self-check passed, float32, max error")
        assert "pure-torch reference for float16 (the fused kernel takes float32 only)" in lines["modulate_weights"]
        assert lines["triplane_mean"].count("fused CPU kernel (self-check passed") == 2, lines["triplane_mean"]
        assert "pure-torch reference for float64 (the fused kernel takes float32, float16, bfloat16 only)" \
            in lines["triplane_mean"]
        assert lines["lpips_layer"].count("fused CPU kernel (self-check passed") == 2, lines["lpips_layer"]
        for op, call in CALLS.items():
            kernel = kernels[EXTENSIONS[op]]
            before = kernel.calls
            out, ref = call(impl="cuda")  # explicit: must not raise
            assert kernel.calls > before, f"{op}: the passing kernel was not used"
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Leaving the block forgets the injected kernels: CPU tensors run the reference again.
    assert engine.ops.implementations("cpu")["upfirdn2d"] == "pure-torch reference (no fused kernels for cpu tensors)"


def test_decisions_are_per_dtype():
    kernel = kernel_standins.Upfirdn2dWrongInHalf()
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(4))
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with dispatch.kernel_loader("cpu", kernel_standins.loader(upfirdn2d=kernel)):
        with pytest.warns(RuntimeWarning, match="upfirdn2d failed its self-check for float16"):
            upfirdn2d.upfirdn2d(x.half(), f, down=2, padding=1)
        before = kernel.calls
        upfirdn2d.upfirdn2d(x, f, down=2, padding=1)  # float32 passes its own self-check and runs the kernel
        assert kernel.calls > before
        line = engine.ops.implementations("cpu", dtypes=(torch.float32, torch.float16))["upfirdn2d"]
        assert "fused CPU kernel (self-check passed, float32" in line
        assert "pure-torch reference for float16 (the fused CPU kernel failed its self-check" in line


def test_the_gradient_is_checked_even_when_first_use_is_under_inference_mode():
    kernel = kernel_standins.BiasActGradientIgnoresClamp()
    with dispatch.kernel_loader("cpu", kernel_standins.loader(bias_act=kernel)):
        with torch.inference_mode(), pytest.warns(RuntimeWarning, match="bias_act failed its self-check"):
            out, ref = _bias_act_call()
        assert torch.equal(out, ref)


def test_a_kernel_that_does_not_load_warns_once_and_cuda_is_a_clear_error():
    def broken(extension):
        raise RuntimeError(f"ninja: build stopped: subcommand failed ({extension})")

    with dispatch.kernel_loader("cpu", broken):
        with pytest.warns(RuntimeWarning, match="could not load the CPU extension 'bias_act' of bias_act"):
            out, ref = _bias_act_call()
        assert torch.equal(out, ref)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _bias_act_call()
            with pytest.raises(dispatch.FusedKernelUnavailable, match="did not load: RuntimeError: ninja"):
                _bias_act_call(impl="cuda")


def test_no_kernels_for_cpu_tensors_by_default_and_impl_is_checked():
    assert "cpu" not in dispatch.KERNEL_LOADERS
    with pytest.raises(dispatch.FusedKernelUnavailable, match="no fused kernels for cpu tensors"):
        _upfirdn2d_call(impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        _upfirdn2d_call(impl="fused")
    out, ref = _upfirdn2d_call(impl="auto")
    assert torch.equal(out, ref)


def test_relative_error_treats_nan_as_failure():
    ref = torch.ones(3)
    assert dispatch.relative_error(ref, ref) == 0
    assert dispatch.relative_error(ref * 1.5, ref) == pytest.approx(0.5)
    assert dispatch.relative_error(torch.tensor([1.0, float("nan"), 1.0]), ref) != dispatch.relative_error(ref, ref)
    assert not dispatch.relative_error(torch.tensor([1.0, float("nan"), 1.0]), ref) <= 1.0
