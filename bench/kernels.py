"""Our fused kernels on the GPU at the networks' shapes, side by side with what they replace.

    python bench/kernels.py [--repeats 20]

One forward and backward pass per case, timed with CUDA events (the median of
``--repeats`` after two warm-up passes), the implementations interleaved in
the same process:

* upfirdn2d, at the shapes StyleGAN2-1024 and EG3D-512 run it (the 4x4
  [1, 3, 3, 1] filter; float32 and bfloat16 as the stages hand it over; the
  backward is the adjoint upfirdn2d, up and down swapped): ``upfirdn2d_ref``
  (depthwise convolution), the extension's generic kernel (one thread per
  output, taps read from global memory; the only kernel before the tiled one)
  and its tiled kernel (what ``upfirdn2d(impl='auto')`` runs).
* triplane_mean, EG3D FFHQ-512's planes (3 x 32 x 256 x 256) at a 128 px
  render's 48 + 48 samples per ray: ``triplane_mean_ref`` (``grid_sample``
  on [N*3, C, H, W] planes, then the mean) and the fused channels-last kernels.
* lpips_layer, LPIPS's five VGG16 layers at 256 px (a render against a cached
  target, as the inversion and stage 5 compare): ``lpips_layer_ref`` (the
  package's operations: unit normalisation, squared difference, 1x1
  convolution, spatial mean) and the fused per-pixel kernels, float32 and
  bfloat16 features.

* the ray marcher's colour composite (``engine.nets.volume.march_sample_sets``),
  one weight per sample times the colours of each sample set, at a 128 px
  render's 16,384 rays x 48 samples x 32 channels, float32 as the marcher runs it
  (autocast off): the batched product it uses against ``(u * colours).sum(-2)``,
  the two-kernel fallback, with the time each pass's bytes would take at the
  GPU's bandwidth (whether the batched product runs near it).
* memory layout: the networks' 3x3 convolutions, forward and backward, with
  the activations and weights in NCHW, as the engine runs them, against
  channels-last (NHWC), float32 (TF32) and bfloat16, with the part of the NCHW
  time that cuDNN spends converting between the two layouts (kernels named
  ``nchwToNhwc`` / ``nhwcToNchw``, from the profiler). The last H200 profile
  put those conversions at 8.3 ms of a 61 ms stage-5 round and 2.0-2.5 ms of
  an inversion or PTI step. Running the generators channels-last removes them
  only if our fused ``upfirdn2d`` and ``bias_act`` read NHWC. Both have NHWC
  paths (checked against the references by their self-checks and the GPU
  tests), which the networks use under ``[pipeline] channels_last`` (off):
  this table says, layer by layer, whether that pays. A StyleGAN2 synthesis
  layer with upsampling (modulated convolution, ``upfirdn2d``, ``bias_act``) is
  timed as the engine runs it (NCHW, fused kernels), channels-last on the fused
  kernels' NHWC paths, and channels-last on the pure-torch ``upfirdn2d`` and
  ``bias_act`` (cuDNN's depthwise convolution reads NHWC).

The last columns give the new kernel's speed-up over the one it replaces and
the largest difference between their outputs and input gradients relative to
the largest value. Needs a CUDA device (elsewhere it says so and measures nothing;
``layout_table`` also runs on a CPU, for its test).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import types

os.environ.setdefault("OMP_NUM_THREADS", "1")
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

F32, BF16 = torch.float32, torch.bfloat16
# label, x shape, dtype, arguments; the shapes of tests/engine/ops/test_fused_gpu.py's network cases.
UPFIRDN2D_CASES = [
    ("StyleGAN2 G conv0 512->1024, batch 4", (4, 32, 1025, 1025), F32, dict(padding=1, gain=4)),
    ("StyleGAN2 G conv0 256->512, batch 4", (4, 64, 513, 513), F32, dict(padding=1, gain=4)),
    ("StyleGAN2 G ToRGB upsample 512->1024, batch 4", (4, 3, 512, 512), F32, dict(up=2, padding=[2, 1, 2, 1], gain=4)),
    ("StyleGAN2 G conv0 8->16, batch 4", (4, 512, 17, 17), F32, dict(padding=1, gain=4)),
    ("EG3D backbone conv0 128->256", (1, 128, 257, 257), F32, dict(padding=1, gain=4)),
    ("EG3D SR conv0 256->512", (1, 128, 513, 513), F32, dict(padding=1, gain=4)),
    ("EG3D SR image upsample 128->256", (1, 3, 128, 128), F32, dict(up=2, padding=[2, 1, 2, 1], gain=4)),
    ("StyleGAN2 D-style downsample 1024->512", (4, 32, 1024, 1024), F32, dict(down=2, padding=1)),
    ("StyleGAN2 G conv0 512->1024, batch 4, bf16", (4, 32, 1025, 1025), BF16, dict(padding=1, gain=4)),
    ("EG3D SR conv0 256->512, bf16", (1, 128, 513, 513), BF16, dict(padding=1, gain=4)),
]


def time_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after two warm-up runs (CUDA events)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def forward_backward(op, x: torch.Tensor, dy: torch.Tensor | None = None):
    """``(op(x), d op(x) / dx . dy)``; ``dy`` drawn once per case when not given."""
    y = op(x)
    if dy is None:
        dy = torch.randn(y.shape, device=y.device, generator=torch.Generator(y.device).manual_seed(1)).to(y.dtype)
    (grad,) = torch.autograd.grad(y, x, dy)
    return y, grad, dy


def difference(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest |a - b| of the outputs and of the gradients, relative to the largest |b|."""
    pairs = [(u.detach().float(), v.detach().float()) for u, v in zip(a, b)]
    return max(float((u - v).abs().max()) / max(1e-12, float(v.abs().max())) for u, v in pairs)


def compare(label: str, shape: str, dtype: torch.dtype, x: torch.Tensor, ops: dict, repeats: int) -> str:
    """A table row: the ops of ``ops`` (reference, replaced kernel, new kernel) timed interleaved."""
    _, _, dy = forward_backward(next(iter(ops.values())), x)
    ms = {name: time_ms(lambda op=op: forward_backward(op, x, dy), repeats) for name, op in ops.items()}
    old, new = list(ops)[-2:]
    diff = difference(forward_backward(ops[new], x, dy)[:2], forward_backward(ops[old], x, dy)[:2])
    return (f"| {label} | {shape} | {str(dtype).removeprefix('torch.')} | "
            + " | ".join(f"{ms[name]:.3f}" for name in ops) + f" | {ms[old] / ms[new]:.2f}x | {diff:.1e} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():  # as bench/host_syncs.py: `make bench` runs every bench anywhere
        print("bench/kernels.py: no CUDA device here (the kernels are CUDA's); nothing measured")
        return 0
    from engine.ops import dispatch, lpips_layer, triplane, upfirdn2d

    device = torch.device("cuda")
    module = dispatch.fused_kernel(upfirdn2d.FUSED, "cuda", device, torch.float32)
    generic = types.SimpleNamespace(upfirdn2d=module.upfirdn2d_generic)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    print(f"# Fused kernels, forward + backward, on {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"median of {args.repeats}\n")
    print("## upfirdn2d\n")
    print("| case | x shape | dtype | reference ms | generic kernel ms | tiled kernel ms | tiled vs generic "
          "| max difference |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for label, shape, dtype, kwargs in UPFIRDN2D_CASES:
        x = torch.randn(shape, device=device, generator=torch.Generator(device).manual_seed(0)).to(dtype)
        ops = {"ref": lambda t, kw=kwargs: upfirdn2d.upfirdn2d_ref(t, f, **kw),
               "generic": lambda t, kw=kwargs: upfirdn2d.upfirdn2d_fused(generic, t, f, **kw),
               "tiled": lambda t, kw=kwargs: upfirdn2d.upfirdn2d_fused(module, t, f, **kw)}
        print(compare(label, "x".join(map(str, shape)), dtype, x.requires_grad_(True), ops, args.repeats), flush=True)

    print("\n## triplane_mean\n")
    print("| case | planes, points | dtype | grid_sample + mean ms | fused kernels ms | fused vs grid_sample "
          "| max difference |")
    print("|---|---|---|---:|---:|---:|---:|")
    points = 128 * 128 * 96
    for dtype in (F32, BF16):
        g = torch.Generator(device).manual_seed(2)
        planes = torch.randn(1, 3, 32, 256, 256, device=device, generator=g).to(dtype)
        grid = (torch.rand(1, 3, points, 2, device=device, generator=g) * 2.2 - 1.1).to(dtype)
        ops = {"grid_sample": lambda t, grid=grid: triplane.triplane_mean(t, grid, impl="ref"),
               "fused": lambda t, grid=grid: triplane.triplane_mean(t, grid, impl="cuda")}
        print(compare("EG3D FFHQ-512, 128 px render", f"1x3x32x256x256, {points:,}", dtype,
                      planes.requires_grad_(True), ops, args.repeats), flush=True)

    print("\n## lpips_layer\n")
    print("| case | features | dtype | package operations ms | fused kernels ms | fused vs package operations "
          "| max difference |")
    print("|---|---|---|---:|---:|---:|---:|")
    for dtype in (F32, BF16):
        g = torch.Generator(device).manual_seed(3)
        # post-ReLU trunk features of the render (learning) and of the target, one tensor per layer, flattened
        # into one input so that the table's forward-backward helper differentiates all five at once
        layers = [(c, side) for c, side in VGG16_LPIPS_LAYERS_256]
        sizes = [c * side * side for c, side in layers]
        targets = [torch.randn(1, c, side, side, device=device, generator=g).relu().to(dtype) for c, side in layers]
        weights = [torch.rand(1, c, 1, 1, device=device, generator=g) for c, _side in layers]

        def distance(flat, impl, targets=targets, weights=weights):
            parts = [t.view(1, c, side, side) for t, (c, side) in zip(flat.split(sizes), layers)]
            return sum(lpips_layer.lpips_layer(x, t, w, impl=impl) for x, t, w in zip(parts, targets, weights))

        flat = torch.randn(sum(sizes), device=device, generator=g).relu().to(dtype)
        ops = {"ref": lambda t: distance(t, "ref"), "fused": lambda t: distance(t, "cuda")}
        print(compare("LPIPS VGG16, 256 px, 5 layers", "64x256² ... 512x16²", dtype, flat.requires_grad_(True), ops,
                      args.repeats), flush=True)

    print("\n## colour composite of one sample set\n")
    print(composite_table(device, args.repeats))
    print("\n## memory layout: NCHW against channels-last\n")
    print(layout_table(device, LAYOUT_CASES, args.repeats))
    return 0


# label, x shape, weight shape, groups, up. The shapes the stages run: EG3D's backbone and
# super-resolution at batch 1, LPIPS VGG16 at 256 px, StyleGAN2-1024's 2D branch at batch 4 (a grouped
# convolution, as the fused modulated convolution runs it), and an upsampling synthesis layer.
LAYOUT_CASES = [
    ("EG3D backbone 3x3 conv, 256 px", (1, 128, 256, 256), (128, 128, 3, 3), 1, 1),
    ("EG3D super-resolution 3x3 conv, 512 px", (1, 64, 512, 512), (64, 64, 3, 3), 1, 1),
    ("LPIPS VGG16 3x3 conv, 256 px", (1, 64, 256, 256), (64, 64, 3, 3), 1, 1),
    ("StyleGAN2 3x3 conv, 1024 px, batch 4 (grouped)", (1, 128, 1024, 1024), (128, 32, 3, 3), 4, 1),
    ("EG3D super-resolution layer, 256 -> 512 px", (1, 128, 256, 256), (64, 128, 3, 3), 1, 2),
]
LAYOUT_CONVERSION_KERNELS = ("nchwtonhwc", "nhwctonchw")
# LPIPS's VGG16 layers at 256 px: (channels, side).
VGG16_LPIPS_LAYERS_256 = ((64, 256), (128, 128), (256, 64), (512, 32), (512, 16))


def _elapsed_ms(fn, repeats: int, device: torch.device) -> float:
    """Median milliseconds of ``fn()``: CUDA events on a GPU, the wall clock elsewhere (its test)."""
    if device.type == "cuda":
        return time_ms(fn, repeats)
    import time

    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _conversion_ms(fn, device: torch.device, runs: int = 3) -> float | None:
    """Milliseconds per ``fn()`` in cuDNN's layout conversion kernels (None off CUDA)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize(device)
    total_us = sum(getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)
                   for e in prof.key_averages() if any(k in e.key.lower() for k in LAYOUT_CONVERSION_KERNELS))
    return total_us / 1e3 / runs


def layout_table(device: torch.device, cases: list, repeats: int) -> str:
    """Each case forward + backward (gradients to the input and the weight) in NCHW and channels-last,
    float32 (TF32, as ``engine.cuda_math`` sets it) and bfloat16. A case with ``up`` 2 is a StyleGAN2
    synthesis layer (modulated convolution with upsampling, then bias and leaky ReLU), timed three
    ways: NCHW (the engine's path), channels-last as ``impl='auto'`` runs it (on CUDA our fused
    kernels' NHWC paths) and channels-last on the pure-torch ``upfirdn2d`` and ``bias_act``."""
    from engine.cuda_math import configure_cuda_math
    from engine.ops.bias_act import bias_act
    from engine.ops.modulated_conv import modulated_conv2d
    from engine.ops.upfirdn2d import setup_filter

    configure_cuda_math(cudnn_autotune=False)
    f = setup_filter([1, 3, 3, 1], device=device)
    lines = ["| case | dtype | NCHW ms | of which layout conversion ms | channels-last ms "
             "| channels-last, pure-torch upfirdn2d and bias_act ms | NCHW vs channels-last | max difference |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, x_shape, w_shape, groups, up in cases:
        for dtype in (F32, BF16):
            g = torch.Generator(device).manual_seed(4)
            x0 = torch.randn(x_shape, device=device, generator=g).to(dtype)
            w0 = (torch.randn(w_shape, device=device, generator=g) / (w_shape[1] * 9) ** 0.5).to(dtype)
            styles = torch.randn(x_shape[0], w_shape[1], device=device, generator=g).to(dtype) + 1
            bias = torch.randn(w_shape[0], device=device, generator=g).to(dtype)

            def step(channels_last: bool, impl: str = "auto", x0=x0, w0=w0, styles=styles, bias=bias, groups=groups,
                     up=up):
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                x = x0.contiguous(memory_format=fmt).requires_grad_(True)
                w = w0.contiguous(memory_format=fmt).requires_grad_(True)
                if up == 1:
                    y = torch.nn.functional.conv2d(x, w, padding=1, groups=groups)
                else:
                    y = modulated_conv2d(x, w, styles, up=up, padding=1, resample_filter=f, impl=impl)
                    y = bias_act(y, bias, act="lrelu", impl=impl)
                dy = torch.ones_like(y)
                return (y, *torch.autograd.grad(y, (x, w), dy))

            ms_nchw = _elapsed_ms(lambda: step(False), repeats, device)
            ms_last = _elapsed_ms(lambda: step(True), repeats, device)
            ms_last_ref = _elapsed_ms(lambda: step(True, "ref"), repeats, device) if up > 1 else None
            conversion = _conversion_ms(lambda: step(False), device)
            nchw = step(False)
            others = [step(True)] + ([step(True, "ref")] if up > 1 else [])
            diff = max(float((a.detach().float() - b.detach().float()).abs().max())
                       / max(1e-12, float(b.detach().float().abs().max()))
                       for other in others for a, b in zip(other, nchw))
            conv_text = f"{conversion:.3f}" if conversion is not None else "-"
            ref_text = f"{ms_last_ref:.3f}" if ms_last_ref is not None else "-"
            lines.append(f"| {label} | {str(dtype).removeprefix('torch.')} | {ms_nchw:.3f} | {conv_text} | "
                         f"{ms_last:.3f} | {ref_text} | {ms_nchw / ms_last:.2f}x | {diff:.1e} |")
    return "\n".join(lines)


def composite_table(device: torch.device, repeats: int, rays: int = 128 * 128, samples: int = 48,
                    channels: int = 32) -> str:
    """The marcher's per-set colour composite, sum_j u_j c_j, forward + backward (gradients to both the
    weights and the colours): the batched product against the element-wise product and sum."""
    g = torch.Generator(device).manual_seed(3)
    u = torch.rand(1, rays, samples, 1, device=device, generator=g).requires_grad_(True)  # [N,M,S,1]
    c = torch.rand(1, rays, samples, channels, device=device, generator=g).requires_grad_(True)  # [N,M,S,C]
    dy = torch.randn(1, rays, channels, device=device, generator=g)
    forms = {"batched product": lambda: (u.transpose(-1, -2) @ c).squeeze(-2),
             "(u * c).sum(-2)": lambda: (u * c).sum(-2)}

    def forward_backward_both(form):
        y = form()
        return (y, *torch.autograd.grad(y, (u, c), dy))

    # float32 bytes moved at least: forward reads u and c and writes y; backward reads dy, u and c and
    # writes du and dc
    least = 4 * (3 * (u.numel() + c.numel()) + 2 * rays * channels)
    bandwidth = gpu_bandwidth_bytes_per_s(device)
    reference = forward_backward_both(forms["(u * c).sum(-2)"])
    lines = [f"{rays:,} rays x {samples} samples x {channels} channels, float32; at least {least / 1e6:.0f} MB moved "
             f"forward + backward" + (f", {least / bandwidth * 1e3:.3f} ms at {bandwidth / 1e12:.2f} TB/s"
                                       if bandwidth else ""), "",
             "| form | ms | bandwidth reached (least bytes / ms) | max difference |", "|---|---:|---:|---:|"]
    for name, form in forms.items():
        ms = time_ms(lambda form=form: forward_backward_both(form), repeats)
        diff = max(float((a - b).abs().max()) / max(1e-12, float(b.abs().max()))
                   for a, b in zip((t.detach() for t in forward_backward_both(form)), (t.detach() for t in reference)))
        share = f"{least / bandwidth * 1e3 / ms:.0%}" if bandwidth else "-"
        lines.append(f"| {name} | {ms:.3f} | {share} | {diff:.1e} |")
    return "\n".join(lines)


def gpu_bandwidth_bytes_per_s(device: torch.device) -> float | None:
    """The GPU's peak memory bandwidth from its clock and bus width (None where torch does not say)."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8  # double data rate

if __name__ == "__main__":
    sys.exit(main())
