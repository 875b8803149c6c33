"""Network benchmarks: forward and forward+backward time and peak memory.

    python bench/nets.py [--device auto|cpu|cuda] [--only stylegan2 ...] [--preset slim|full] [--repeats N]
                         [--no-layouts | --only-layouts]

Prints one table row per (network, configuration, device, op implementation):
median wall time of the forward pass and of forward+backward (backward of a
scalar loss into every parameter and the input), and the peak memory of each:
on CUDA ``torch.cuda.max_memory_allocated`` above the level before the call;
on CPU the peak of the running sum of tensor allocations recorded by the torch
profiler (tensor memory only, not the Python heap). On a GPU it first prints
how each op runs (``engine.ops.implementations``: fused kernel after its
self-check, or the reference and why); the network rows then compare
``impl='ref'`` with ``impl='auto'`` (the self-checked fused kernels), and it
prints the time ratio of our pure-torch reference ops to the fused CUDA kernels.

Then (StyleGAN2 and EG3D, ``impl='ref'``) the upfirdn2d reference's filter
layout before/after, side by side: the same workloads timed in this process,
interleaved, with ``upfirdn2d_ref``'s previous single-filter layout
(``tests/engine/ops/upfirdn2d_layouts.py``, swapped in for the timing only)
and with its depthwise layout, the ratio, and whether the network outputs are
bit-identical.

Full-size configurations use random weights. On CPU they run forward only
(one repetition); everything runs on a GPU when one is present.

Adding a network: write ``def mynet_rows(ctx: BenchContext) -> list[Row]``
(use ``measure``) and append it to ``NETWORK_BENCHES`` under a name.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable
from unittest import mock

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Run as a script, sys.path[0] is bench/, whose files (e.g. bench/queue.py) would
# shadow standard modules: put the repository root there instead.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

@dataclass
class BenchContext:
    device: torch.device
    repeats: int = 3
    full: bool = True  # include full-size configurations

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Row:
    network: str
    config: str
    device: str
    impl: str
    forward_ms: float
    forward_mib: float
    fwd_bwd_ms: float | None = None
    fwd_bwd_mib: float | None = None
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_cpu_mib(fn: Callable[[], object]) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak / 2 ** 20


def _peak_cuda_mib(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def _time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (and lazy kernel builds)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(ctx: BenchContext, forward: Callable[[], torch.Tensor], backward: bool, repeats: int | None = None):
    """(forward ms, forward MiB, fwd+bwd ms or None, fwd+bwd MiB or None)."""
    repeats = repeats or ctx.repeats

    def fwd():
        with torch.no_grad():
            return forward()

    def fwd_bwd():
        out = forward()
        out.float().square().mean().backward()

    peak = (lambda f: _peak_cuda_mib(f, ctx.device)) if ctx.cuda else _peak_cpu_mib
    f_ms = _time_ms(fwd, ctx.device, repeats)
    f_mib = peak(fwd)
    if not backward:
        return f_ms, f_mib, None, None
    b_ms = _time_ms(fwd_bwd, ctx.device, repeats)
    b_mib = peak(fwd_bwd)
    return f_ms, f_mib, b_ms, b_mib


# --------------------------------------------------------------------------- StyleGAN2


def stylegan2_rows(ctx: BenchContext) -> list[Row]:
    from engine.nets import stylegan2

    rows: list[Row] = []
    dev = ctx.device
    impls = ("ref", "auto") if ctx.cuda else ("ref",)  # 'auto' on CUDA: the kernels that passed their self-check
    for label, cfg, d_cfg, batch in _stylegan2_configs(ctx):
        is_full = label != "slim-256"
        backward = ctx.cuda or not is_full
        repeats = ctx.repeats if (ctx.cuda or not is_full) else 1
        # parameters trainable, so fwd+bwd times include their gradients (fine-tuning)
        G = stylegan2.StyleGAN2Generator.from_config(cfg, seed=0).to(dev).requires_grad_(True)
        D = stylegan2.StyleGAN2Discriminator.from_config(d_cfg, seed=1).to(dev).requires_grad_(True)
        gen = torch.Generator(device=dev).manual_seed(0)
        z = torch.randn(batch, cfg.z_dim, device=dev, generator=gen)
        img = torch.randn(batch, 3, cfg.img_resolution, cfg.img_resolution, device=dev, generator=gen)
        with torch.no_grad():
            ws = G.mapping(z, None)
        for impl in impls:
            note = "" if backward else "CPU: forward only"
            t = measure(ctx, lambda: G(z, None, noise_mode="const", impl=impl), backward, repeats)
            rows.append(Row("StyleGAN2 G (z->img)", f"{label} b{batch}", str(dev), impl, *t, note=note))
            t = measure(ctx, lambda: G.synthesis(ws, noise_mode="const", impl=impl), backward, repeats)
            rows.append(Row("StyleGAN2 synthesis (W+)", f"{label} b{batch}", str(dev), impl, *t, note=note))
            t = measure(ctx, lambda: D(img, impl=impl), backward, repeats)
            rows.append(Row("StyleGAN2 D", f"{label} b{batch}", str(dev), impl, *t, note=note))
        G = D = None  # frees the networks before the next size (the timing lambdas are done with them)
    return rows


def _stylegan2_configs(ctx: BenchContext) -> list[tuple[str, object, object, int]]:
    """(label, generator config, discriminator config, batch): slim-256, and FFHQ-1024 widths
    (random weights) when ``ctx.full``."""
    from engine.nets import stylegan2

    configs = [("slim-256", stylegan2.slim_generator_config(256), stylegan2.slim_discriminator_config(256), 2)]
    if ctx.full:
        configs.append(("ffhq-1024", stylegan2.StyleGAN2GeneratorConfig(img_resolution=1024),
                        stylegan2.StyleGAN2DiscriminatorConfig(img_resolution=1024), 2 if ctx.cuda else 1))
    return configs


# --------------------------------------------------------------------------- EG3D


def _eg3d_configs(ctx: BenchContext) -> list[tuple[str, int]]:
    """(preset, batch): slim128, and the FFHQ-512 architecture (random weights) when ``ctx.full``."""
    return [("slim128", 1)] + ([("ffhq512", 1)] if ctx.full else [])


def eg3d_rows(ctx: BenchContext) -> list[Row]:
    from engine.nets import eg3d
    from engine.nets.camera import conditioning_label

    rows: list[Row] = []
    dev = ctx.device
    for preset, batch in _eg3d_configs(ctx):
        is_full = preset == "ffhq512"
        backward = ctx.cuda or not is_full
        repeats = ctx.repeats if (ctx.cuda or not is_full) else 1
        G = eg3d.slim_generator(preset, seed=0, device=dev)
        c = conditioning_label(batch, device=dev)
        gen = torch.Generator(device=dev).manual_seed(0)
        with torch.no_grad():
            ws = G.mapping(torch.randn(batch, 512, device=dev, generator=gen), c)
        ws = ws.requires_grad_(backward)
        note = "" if backward else "CPU: forward only"
        t = measure(ctx, lambda: G.planes(ws), backward, repeats)
        rows.append(Row("EG3D backbone (tri-planes)", f"{preset} b{batch}", str(dev), "auto", *t, note=note))
        with torch.no_grad():
            planes = G.planes(ws)
        planes = planes.requires_grad_(backward)
        t = measure(ctx, lambda: G.render(planes, ws, c)["image"], backward, repeats)
        rows.append(Row("EG3D render + super-res", f"{preset} b{batch}", str(dev), "auto", *t, note=note))
        G = planes = None  # frees the network before the next size
    return rows


# --------------------------------------------------------------------------- e4e, ArcFace, LPIPS


def encoder_rows(ctx: BenchContext) -> list[Row]:
    import lpips

    from engine.nets import arcface, e4e, progan_classifier

    rows: list[Row] = []
    dev = ctx.device
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(1, 3, 256, 256, device=dev, generator=gen) * 2 - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = [("e4e encoder (IR-SE50, 18 styles)", e4e.Encoder4Editing(), lambda m: m(x), "full size b1"),
                ("ArcFace IR-SE50 (ID crop, 112)", arcface.ArcFaceBackbone(), lambda m: arcface.embed(m, x),
                 "full size b1"),
                ("LPIPS VGG (256)", lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False),
                 lambda m: m(x, x.flip(-1)), "full size b1"),
                # one minibatch-stddev group, as the boundary fitter scores renders
                ("CelebA-HQ attribute classifier (ProGAN D, 256)", _progan_classifier(),
                 lambda m: progan_classifier.score_in_groups(m, x.expand(4, -1, -1, -1)), "full size b4")]
    for name, module, call, config in nets:
        module = module.to(dev).eval().requires_grad_(False)
        x.requires_grad_(True)  # backward into the image, as the losses use them
        t = measure(ctx, lambda: call(module), True, ctx.repeats)
        rows.append(Row(name, config, str(dev), "torch", *t, note="random weights"))
        module = None  # frees the network before the next one
        x.requires_grad_(False)
    return rows


def _progan_classifier() -> torch.nn.Module:
    """The released classifiers' architecture with random N(0, 1) weights (equalised-lr storage)."""
    from engine.nets import progan_classifier

    net = progan_classifier.ProGANClassifier(progan_classifier.ProGANClassifierConfig())
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return net


# --------------------------------------------------------------------------- op ratios (GPU)


def op_ratio_rows(ctx: BenchContext) -> list[tuple[str, float, float | str]]:
    """(op, ref ms, fused ms or why the fused kernel is unavailable) on the GPU for StyleGAN2-1024-like shapes."""
    from engine.ops.dispatch import FusedKernelUnavailable
    from engine.ops import bias_act, upfirdn2d
    from engine.ops.modulated_conv import modulate_weights, modulated_conv2d

    dev = ctx.device
    g = torch.Generator(device=dev).manual_seed(0)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=dev)
    x = torch.randn(4, 128, 256, 256, device=dev, generator=g)
    img = torch.randn(4, 3, 512, 512, device=dev, generator=g)
    b = torch.randn(128, device=dev, generator=g)
    w = torch.randn(512, 512, 3, 3, device=dev, generator=g)
    s = torch.randn(4, 512, device=dev, generator=g)
    xm = torch.randn(4, 512, 32, 32, device=dev, generator=g)
    cases = {
        "upfirdn2d upsample2d 4x128x256^2": lambda impl: upfirdn2d.upsample2d(x, f, impl=impl),
        "upfirdn2d downsample2d 4x3x512^2": lambda impl: upfirdn2d.downsample2d(img, f, impl=impl),
        "bias_act lrelu+clamp 4x128x256^2": lambda impl: bias_act.bias_act(x, b, act="lrelu", clamp=256, impl=impl),
        "modulate_weights 4x512x512x3x3": lambda impl: modulate_weights(w, s, True, impl=impl),
        "modulated_conv2d up2 4x512x32^2": lambda impl: modulated_conv2d(
            xm, w, s, up=2, padding=1, resample_filter=f, flip_weight=False, impl=impl),
    }
    out = []
    for name, fn in cases.items():
        with torch.no_grad():
            ref = _time_ms(lambda: fn("ref"), dev, max(ctx.repeats, 10))
            try:
                fused = _time_ms(lambda: fn("cuda"), dev, max(ctx.repeats, 10))
            except FusedKernelUnavailable as exc:
                fused = str(exc)
        out.append((name, ref, fused))
    return out


# --------------------------------------------------------------------------- upfirdn2d reference layout


@dataclass
class LayoutRow:
    network: str
    config: str
    passes: str  # "fwd" or "fwd+bwd"
    before_ms: float  # single-filter layout over [N*C, 1, H, W]
    after_ms: float  # depthwise layout, groups=C
    identical: bool  # the network's output is bit-identical under both layouts


@contextlib.contextmanager
def _upfirdn2d_reference_layout(layout: Callable | None):
    """Run the upfirdn2d reference with ``layout`` (a ``upfirdn2d_ref`` stand-in) inside the
    block; None keeps the product's. Only this benchmark swaps it, to time both layouts."""
    from engine.ops import upfirdn2d

    if layout is None:
        yield
        return
    with mock.patch.object(upfirdn2d, "upfirdn2d_ref", layout):
        yield


def _time_layouts(ctx: BenchContext, forward: Callable[[], torch.Tensor], backward: bool, repeats: int):
    """(before ms, after ms, identical) for ``forward`` (or forward+backward), the two layouts
    interleaved repetition by repetition so that machine load affects both alike."""
    from tests.engine.ops.upfirdn2d_layouts import upfirdn2d_ref_single_filter_layout

    layouts = {"before": upfirdn2d_ref_single_filter_layout, "after": None}
    outputs: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {name: [] for name in layouts}

    def run(name: str) -> float:
        with _upfirdn2d_reference_layout(layouts[name]):
            _sync(ctx.device)
            t0 = time.perf_counter()
            if backward:
                out = forward()
                out.float().square().mean().backward()
            else:
                with torch.no_grad():
                    out = forward()
            _sync(ctx.device)
            outputs[name] = out.detach()
            return (time.perf_counter() - t0) * 1e3

    for name in layouts:  # warm-up (allocator, lazy initialisation)
        run(name)
    for _ in range(repeats):
        for name in layouts:
            times[name].append(run(name))
    identical = torch.equal(outputs["before"], outputs["after"])
    return statistics.median(times["before"]), statistics.median(times["after"]), identical


def layout_rows(ctx: BenchContext, networks: list[str]) -> list[LayoutRow]:
    """The upfirdn2d-heavy networks with ``impl='ref'``: StyleGAN2 synthesis and D, EG3D
    backbone and super-resolution; full-size configurations forward only on the CPU."""
    rows: list[LayoutRow] = []
    dev = ctx.device
    if "stylegan2" in networks:
        from engine.nets import stylegan2

        for label, cfg, d_cfg, batch in _stylegan2_configs(ctx):
            is_full = label != "slim-256"
            passes = [False, True] if (ctx.cuda or not is_full) else [False]
            repeats = ctx.repeats if (ctx.cuda or not is_full) else 1
            G = stylegan2.StyleGAN2Generator.from_config(cfg, seed=0).to(dev).requires_grad_(True)
            D = stylegan2.StyleGAN2Discriminator.from_config(d_cfg, seed=1).to(dev).requires_grad_(True)
            gen = torch.Generator(device=dev).manual_seed(0)
            ws = G.mapping(torch.randn(batch, cfg.z_dim, device=dev, generator=gen), None).detach()
            img = torch.randn(batch, 3, cfg.img_resolution, cfg.img_resolution, device=dev, generator=gen)
            for name, forward in (("StyleGAN2 synthesis (W+)", lambda: G.synthesis(ws, noise_mode="const", impl="ref")),
                                  ("StyleGAN2 D", lambda: D(img, impl="ref"))):
                for backward in passes:
                    t = _time_layouts(ctx, forward, backward, repeats)
                    rows.append(LayoutRow(name, f"{label} b{batch}", "fwd+bwd" if backward else "fwd", *t))
            del G, D
    if "eg3d" in networks:
        from engine.nets import eg3d
        from engine.nets.camera import conditioning_label

        for preset, batch in _eg3d_configs(ctx):
            is_full = preset == "ffhq512"
            passes = [False, True] if (ctx.cuda or not is_full) else [False]
            repeats = ctx.repeats if (ctx.cuda or not is_full) else 1
            G = eg3d.slim_generator(preset, seed=0, device=dev)
            c = conditioning_label(batch, device=dev)
            gen = torch.Generator(device=dev).manual_seed(0)
            with torch.no_grad():
                ws = G.mapping(torch.randn(batch, 512, device=dev, generator=gen), c)
                planes = G.planes(ws, impl="ref")
            for backward in passes:
                ws.requires_grad_(backward)
                planes.requires_grad_(backward)
                t = _time_layouts(ctx, lambda: G.planes(ws, impl="ref"), backward, repeats)
                rows.append(LayoutRow("EG3D backbone (tri-planes)", f"{preset} b{batch}",
                                      "fwd+bwd" if backward else "fwd", *t))
                t = _time_layouts(ctx, lambda: G.render(planes, ws, c, impl="ref")["image"], backward, repeats)
                rows.append(LayoutRow("EG3D render + super-res", f"{preset} b{batch}",
                                      "fwd+bwd" if backward else "fwd", *t))
            G = planes = None  # frees the network before the next size
    return rows


def format_layout_rows(rows: list[LayoutRow]) -> str:
    header = ["network", "config", "pass", "before ms", "after ms", "before/after", "identical output"]
    table = [header] + [[r.network, r.config, r.passes, f"{r.before_ms:,.1f}", f"{r.after_ms:,.1f}",
                         f"{r.before_ms / r.after_ms:.2f}x", "yes" if r.identical else "NO"] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in table)


NETWORK_BENCHES: dict[str, Callable[[BenchContext], list[Row]]] = {
    "stylegan2": stylegan2_rows,
    "eg3d": eg3d_rows,
    "encoders": encoder_rows,
}


def format_rows(rows: list[Row]) -> str:
    def num(v):
        return "-" if v is None else f"{v:,.1f}"

    header = ["network", "config", "device", "impl", "fwd ms", "fwd MiB", "fwd+bwd ms", "fwd+bwd MiB", "note"]
    table = [header] + [[r.network, r.config, r.device, r.impl, num(r.forward_ms), num(r.forward_mib),
                         num(r.fwd_bwd_ms), num(r.fwd_bwd_mib), r.note] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 4 or i == 8 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="forward / forward+backward time and peak memory per network")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--only", nargs="*", choices=sorted(NETWORK_BENCHES), help="networks to run (default: all)")
    p.add_argument("--preset", choices=["slim", "full"], default="full",
                   help="slim: the slim configurations only; full (default): also the official sizes, random weights")
    p.add_argument("--no-full", action="store_true", help="the same as --preset slim")
    p.add_argument("--repeats", type=int, default=3)
    layouts = p.add_mutually_exclusive_group()
    layouts.add_argument("--no-layouts", action="store_true", help="skip the upfirdn2d layout before/after rows")
    layouts.add_argument("--only-layouts", action="store_true", help="only the upfirdn2d layout before/after rows")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/nets.py: --device cuda asked for but no CUDA device is visible", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    ctx = BenchContext(device=device, repeats=args.repeats, full=not args.no_full and args.preset == "full")
    print(f"# torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if ctx.cuda else f", {torch.get_num_threads()} CPU thread(s)"))
    if ctx.cuda:
        import engine.ops

        for name, how in engine.ops.implementations(device).items():
            print(f"# {name}: {how}")
    networks = args.only or sorted(NETWORK_BENCHES)
    if not args.no_layouts and {"stylegan2", "eg3d"} & set(networks):
        print("# upfirdn2d_ref layout, impl='ref': before = one filter over [N*C, 1, H, W], "
              "after = depthwise (groups=C); interleaved medians")
        print(format_layout_rows(layout_rows(ctx, networks)))
        print()
    if args.only_layouts:
        return 0
    rows: list[Row] = []
    for name in networks:
        rows.extend(NETWORK_BENCHES[name](ctx))
    print(format_rows(rows))
    if ctx.cuda:
        print("\n# op time, pure-torch reference vs our fused CUDA kernel")
        for name, ref, fused in op_ratio_rows(ctx):
            if isinstance(fused, str):
                print(f"{name:<40} ref {ref:8.3f} ms  fused: {fused}")
            else:
                print(f"{name:<40} ref {ref:8.3f} ms  fused {fused:8.3f} ms  ref/fused {ref / fused:6.2f}x")
    else:
        print("\n# ref/fused op ratios need a CUDA device (not measured here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
