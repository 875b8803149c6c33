"""Where a full-size step's memory-bound work comes from, by the function of ours that issues it.

    python bench/memory_traffic.py [--top N] [--stages invert_3d,pivotal_tuning,...]

With CUDA graphs the GPU is busy 95-99 % of a step, and in the last H200
profile (bench/results/2026-12-04-h200-run6-kernels.md, fp32) the element-wise,
reduction and copy kernels took 11-12 ms of an EG3D inversion or PTI step and
21 ms of a stage-5 round: the largest share the fused kernels have not touched.
Those kernels are memory-bound, so their cost follows the bytes they read and
write, and their number (each launch costs a few microseconds however small).

This runs one step of each per-user stage at the official sizes on fake tensors
(shapes only, any CPU, as ``bench/pipeline.py --full-flops``) under a dispatch
mode that, for every aten op,

- skips views and allocations (no kernel),
- counts convolutions and matrix products as *compute* (their FLOPs are
  ``bench/pipeline.py --full-flops``),
- counts every other op as *memory-bound*: one kernel, and the bytes of its
  tensor inputs and outputs,
- names the innermost function of this repository on the stack: for a
  backward op, the one whose forward op made its autograd node (the node's
  traceback, kept under anomaly mode). Ops issued inside ``engine/ops`` (the
  fused ops' pure-torch references, which run here) are one fused kernel each
  on CUDA, so they are listed under ``fused op`` and left out of the totals;
  so is the optimiser, which runs here as the CPU's per-tensor loop and on
  CUDA as a few multi-tensor kernels (0.6-1.2 ms per step in that profile).

The table per stage: the sources with the most memory-bound bytes, their
kernel count, and a floor on their GPU time (bytes at the H200's 4.8 TB/s plus
2 microseconds per kernel; real kernels reach less). Counted in fp32, as the
profile it is compared with. What it is for: choosing what to fuse next
(by hand or with ``torch.compile``), and checking the model against the next
GPU profile (``bench/step_profile.py --by-source``).
"""
from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
_HERE = pathlib.Path(__file__).resolve().parent
_REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_REPO))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

HBM_BYTES_PER_S = 4.8e12   # H200 HBM3e peak
KERNEL_FLOOR_S = 2e-6      # a launched kernel's least time on the device, however little it does
COMPUTE_OPS = frozenset({
    "convolution", "convolution_backward", "cudnn_convolution", "mm", "addmm", "bmm", "baddbmm", "matmul",
    "_convolution", "conv2d", "linear"})
FREE_OPS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
                      "lift_fresh", "_local_scalar_dense"})
# Frames that say nothing about whose work it is: the step scaffolding, this script, the bench set-up.
SCAFFOLDING = ("engine/avatar/steps.py", "engine/avatar/step_graph.py", "bench/")
FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
# Adam runs here as the CPU's per-tensor loop; on CUDA it is ``foreach`` and ``capturable``, a few
# multi-tensor kernels per step (0.6-1.2 ms per step in the H200 profile): listed apart, not totalled.
OPTIMISER = "(the optimiser)"


def _relative(path: str) -> str | None:
    """``path`` relative to the repository, or None where it is not our code: outside the
    repository, an installed package (any venv's, ``.venv`` or ``make test-torch-floor``'s
    ``.venv-torch-floor`` inside the repository included), or scaffolding."""
    resolved = pathlib.Path(path).resolve()
    if not {"site-packages", "dist-packages"}.isdisjoint(resolved.parts):
        return None
    try:
        rel = resolved.relative_to(_REPO).as_posix()
    except ValueError:
        return None
    return None if rel.startswith(SCAFFOLDING) else rel


def _source_from_frames(frames) -> str:
    """The innermost ``path:function`` of this repository among ``(path, function)``, innermost first."""
    for path, function in frames:
        rel = _relative(path)
        if rel is not None:
            return f"{rel}:{function}"
    return "(outside this repository)"


def _forward_source() -> str:
    frames = []
    frame = sys._getframe(2)
    while frame is not None:
        if f"{os.sep}torch{os.sep}optim{os.sep}" in frame.f_code.co_filename:
            return OPTIMISER
        frames.append((frame.f_code.co_filename, frame.f_code.co_name))
        frame = frame.f_back
    return _source_from_frames(frames)


def _backward_source(node) -> str:
    trace = node.metadata.get("traceback_") if node is not None else None
    if not trace:
        return "(backward, no forward trace)"
    text = "".join(trace) if isinstance(trace, list) else str(trace)
    found = [(m.group(1), m.group(3)) for m in FRAME.finditer(text)]
    return _source_from_frames(reversed(found))


def _nbytes(values) -> int:
    leaves, _ = tree_flatten(values)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


class TrafficMode(TorchDispatchMode):
    """Per (source, kind): [kernels, bytes]. kind: "memory", "compute" or "fused op"."""

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view or name in FREE_OPS or func.namespace == "prim":
            return out
        node = torch._C._current_autograd_node()
        source = _backward_source(node) if node is not None else _forward_source()
        kind = ("compute" if name in COMPUTE_OPS else "fused op" if source.startswith("engine/ops/")
                else "optimiser" if source == OPTIMISER else "memory")
        entry = self.table[(source, kind)]
        entry[0] += 1
        entry[1] += _nbytes((args, kwargs)) + _nbytes(out)
        return out

    def snapshot(self) -> dict[tuple[str, str], tuple[int, int]]:
        return {key: (k, b) for key, (k, b) in self.table.items()}


def per_step(marks: list[dict]) -> dict[tuple[str, str], tuple[float, float]]:
    """Kernels and bytes per later step: from the end of the first step to the end of the last,
    divided by the steps between."""
    first, last, n = marks[0], marks[-1], len(marks) - 1
    return {key: ((k - first.get(key, (0, 0))[0]) / n, (b - first.get(key, (0, 0))[1]) / n)
            for key, (k, b) in last.items() if (k, b) != first.get(key, (0, 0))}


def floor_ms(kernels: float, nbytes: float) -> float:
    return 1e3 * (nbytes / HBM_BYTES_PER_S + kernels * KERNEL_FLOOR_S)


def traffic(only: tuple[str, ...]) -> dict[str, dict[tuple[str, str], tuple[float, float]]]:
    from bench.pipeline import full_size_runs, run_counted
    from engine.avatar import dual, invert, stylize

    class Now:
        finetune_style, invert_3d = stylize.finetune_style, invert.invert_3d
        pivotal_tuning, dual_branch_train = invert.pivotal_tuning, dual.dual_branch_train
        pti_lpips, pti = "lpips_pti", {}

    out = {}
    with torch.autograd.set_detect_anomaly(True, check_nan=False):  # backward nodes keep their forward's trace
        with full_size_runs(Now) as (runs, counted_steps):
            for stage in only:
                mode = TrafficMode()
                with mode:
                    marks = run_counted(runs[stage], counted_steps, mode.snapshot)
                out[stage] = per_step(marks)
                print(f"  counted {stage}", file=sys.stderr, flush=True)
    return out


def print_table(stage: str, rows: dict[tuple[str, str], tuple[float, float]], top: int) -> None:
    by_kind: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for (_, kind), (k, b) in rows.items():
        by_kind[kind][0] += k
        by_kind[kind][1] += b
    mem_k, mem_b = by_kind["memory"]
    print(f"\n# {stage}: one later step at full size, fp32")
    print(f"memory-bound: {mem_k:,.0f} kernels, {mem_b / 1e9:.2f} GB, floor {floor_ms(mem_k, mem_b):.1f} ms; "
          f"fused ops (one kernel each on CUDA): {by_kind['fused op'][0]:,.0f} reference ops; "
          f"the optimiser (foreach on CUDA): {by_kind['optimiser'][0]:,.0f} per-tensor ops here; "
          f"compute: {by_kind['compute'][0]:,.0f} convolutions and matrix products "
          f"({by_kind['compute'][1] / 1e9:.2f} GB of tensors in and out)")
    print(f"{'source (memory-bound ops)':<62} {'kernels':>8} {'GB':>7} {'floor ms':>9} {'share':>6}")
    memory = sorted(((src, k, b) for (src, kind), (k, b) in rows.items() if kind == "memory"),
                    key=lambda r: -floor_ms(r[1], r[2]))
    total = floor_ms(mem_k, mem_b) or 1.0
    for src, k, b in memory[:top]:
        print(f"{src[-62:]:<62} {k:>8.0f} {b / 1e9:>7.3f} {floor_ms(k, b):>9.2f} {floor_ms(k, b) / total:>6.0%}")
    rest = memory[top:]
    if rest:
        k, b = sum(r[1] for r in rest), sum(r[2] for r in rest)
        print(f"{f'({len(rest)} more sources)':<62} {k:>8.0f} {b / 1e9:>7.3f} {floor_ms(k, b):>9.2f} "
              f"{floor_ms(k, b) / total:>6.0%}")


def print_side_by_side(title: str, make_inputs, forms, modelled: tuple[tuple[str, int, int], ...] = ()
                       ) -> dict[str, tuple[int, int]]:
    """One change before and now: each of ``forms`` (name, ``fn(*args) -> outputs``) runs forward
    and backward on fake tensors from ``make_inputs() -> (args, leaves)``, differentiated with
    respect to ``leaves``. Kernels and bytes of every op, products included (the optimiser has none).
    ``modelled``: rows (name, kernels, bytes) of a form that cannot run here (a CUDA kernel),
    counted from what its kernels read and write. Returns each form's (kernels, bytes)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    print(f"\n# {title}, forward + backward")
    print(f"{'form':<44} {'kernels':>8} {'GB':>8} {'floor ms':>9}")
    counted = {}
    for name, fn in forms:
        with FakeTensorMode():
            args, leaves = make_inputs()
            mode = TrafficMode()
            with mode:
                torch.autograd.grad([out if out.ndim == 0 else out.sum() for out in fn(*args)], leaves)
        counted[name] = (sum(k for k, _b in mode.table.values()), sum(b for _k, b in mode.table.values()))
        print_row(name, *counted[name])
    for name, kernels, nbytes in modelled:
        print_row(name, kernels, nbytes)
    return counted


def print_row(name: str, kernels: int, nbytes: int) -> None:
    print(f"{name:<44} {kernels:>8} {nbytes / 1e9:>8.3f} {floor_ms(kernels, nbytes):>9.2f}")


def fused_lpips_traffic(layers: tuple[tuple[int, int], ...], images: int, learns_b: bool) -> tuple[int, int]:
    """Kernels and bytes of ``engine.ops.lpips_layer``'s CUDA path, forward + backward, for float32
    features of ``images`` image pairs: per layer, the forward kernel (reads a and b, writes the
    per-pixel terms), their spatial mean and its backward, the backward kernel (reads a, b and the
    terms' gradient, writes a's gradient and, when ``learns_b``, b's); then the sum over layers.
    Each kernel's second and third pass over a pixel's channels are counted as cache hits."""
    kernels = nbytes = 0
    for channels, side in layers:
        features, terms = 4 * images * channels * side * side, 4 * images * side * side
        kernels += 4
        nbytes += (2 * features + terms) + (terms + 4 * images) + (4 * images + terms)
        nbytes += 2 * features + terms + features * (2 if learns_b else 1)
    return kernels + 2 * (len(layers) - 1), nbytes


def compare_changes() -> None:
    """The rewrites this bench led to, each beside the form it replaced (bench/stages_before.py)."""
    from bench import stages_before
    from engine.avatar.invert import noise_regularisation
    from engine.nets.arcface import ArcFaceBackbone, FoldedArcFace, embed
    from engine.nets.eg3d import COLOUR_SCALE, COLOUR_SHIFT, DECODER_HIDDEN, PLANE_CHANNELS, OSGDecoder
    from engine.nets.volume import map_composite, march_sample_sets, ray_march
    from bench.kernels import VGG16_LPIPS_LAYERS_256
    from engine.ops.lpips_layer import lpips_layer_ref

    def noise_maps():
        maps = [torch.zeros(shape, requires_grad=True)
                for shape in [(1, 1, 4, 4)] + [(1, 1, s, s) for s in (8, 16, 32, 64, 128, 256) for _ in range(2)]]
        return [maps], maps

    print_side_by_side("the EG3D inversion's noise regularisation, 13 maps of 4-256 px", noise_maps, (
        ("map by map (before)", lambda maps: [stages_before.noise_regularisation(maps)]),
        ("batched by size, shifts as one product (now)", lambda maps: [noise_regularisation(maps)])))

    def sample_sets():  # depths, colours, densities of the 48 coarse and the 48 fine samples of 16,384 rays
        leaves = [torch.zeros(1, 16384, 48, c, requires_grad=True) for c in (1, 32, 1, 1, 32, 1)]
        return leaves, leaves

    def unified_midpoints(d_c, c_c, s_c, d_f, c_f, s_f):
        depths, colors, densities = stages_before.unify_samples(d_c, c_c, s_c, d_f, c_f, s_f)
        return stages_before.ray_march_midpoints(colors, densities, depths)

    def two_sets(d_c, c_c, s_c, d_f, c_f, s_f):
        rgb, _depth, weights = march_sample_sets([c_c, c_f], torch.cat([s_c, s_f], -2), torch.cat([d_c, d_f], -2))
        return rgb, weights

    print_side_by_side("the importance renderer's final pass, 16,384 rays x (48 + 48) samples x 32 channels",
                       sample_sets, (("concatenate, sort, midpoints (before)", unified_midpoints),
                                     ("two sets, per-sample weights (now)", two_sets)))

    def decoder_inputs():  # its weights tuned, as in PTI and stage 5
        decoder = OSGDecoder(PLANE_CHANNELS, DECODER_HIDDEN, PLANE_CHANNELS)
        x = torch.zeros(1, 16384 * 96, PLANE_CHANNELS, requires_grad=True)
        return [decoder, x], [x, *decoder.parameters()]

    print_side_by_side("the EG3D decoder, 16,384 rays x 96 samples", decoder_inputs, (
        ("two slices (before)", stages_before.decode_sliced),
        ("one split (now)", lambda decoder, x: decoder.decode(x))))

    def marched_inputs():  # the decoder's output marched along 16,384 rays of 96 depth-sorted samples
        decoder, x = decoder_inputs()[0]
        return [decoder, x, torch.zeros(1, 16384, 96, 1)], [x, *decoder.parameters()]

    def marched(decoder, x, depths, map_colours):
        sigma, rgb = decoder.decode(x, map_colours=map_colours)
        features, _depth, weights = ray_march(rgb.reshape(1, 16384, 96, -1), sigma.reshape(1, 16384, 96, 1), depths)
        if map_colours:
            return [features]
        return [map_composite(features, weights.sum(2), COLOUR_SCALE, COLOUR_SHIFT)]

    print_side_by_side("the decoder's colour map (x 1.002 - 0.001), 16,384 rays x 96 samples, through the marcher",
                       marched_inputs, (
                           ("on the samples' colours (before)", lambda d, x, depths: marched(d, x, depths, True)),
                           ("on the rays' composites (now)", lambda d, x, depths: marched(d, x, depths, False))))

    def lpips_features():  # a render's trunk features (learning) and a cached target's (constant)
        feats = [torch.zeros(1, c, s, s, requires_grad=True) for c, s in VGG16_LPIPS_LAYERS_256]
        target = [torch.zeros(1, c, s, s) for c, s in VGG16_LPIPS_LAYERS_256]
        weights = [torch.zeros(1, c, 1, 1) for c, _s in VGG16_LPIPS_LAYERS_256]
        return [feats, target, weights], feats

    kernels, nbytes = fused_lpips_traffic(VGG16_LPIPS_LAYERS_256, images=1, learns_b=False)
    print_side_by_side(
        "LPIPS's layer terms, VGG16 at 256 px, a render against a cached target (the inversion; stage 5 twice)",
        lpips_features, (
            ("package ops, unit target cached (before)",
             lambda feats, target, weights: [stages_before.lpips_against_unit_target(feats, target, weights)]),
            ("reference (now, on a CPU or as fallback)",
             lambda feats, target, weights: [sum(map(lpips_layer_ref, feats, target, weights))])),
        modelled=(("CUDA kernels (now, modelled)", kernels, nbytes),))

    def arcface_inputs():  # PTI's identity loss: a 512 px render's ID crop through the frozen network
        net = ArcFaceBackbone().eval().requires_grad_(False)
        image = torch.zeros(1, 3, 512, 512, requires_grad=True)
        return [net, FoldedArcFace(net), image], [image]

    now = "batch norms folded, shortcuts dropped (now)"
    counted = print_side_by_side("ArcFace IR-SE50 on a 512 px render (PTI's identity loss, every step)",
                                 arcface_inputs, (
                                     ("batch norms as loaded (before)", lambda net, _f, image: [embed(net, image)]),
                                     (now, lambda _net, folded, image: [embed(folded, image)])))
    adds = arcface_bias_adds(arcface_inputs)
    print_row("folded, with cuDNN's bias adds (now, CUDA)", counted[now][0] + adds[0], counted[now][1] + adds[1])


def arcface_bias_adds(make_inputs) -> tuple[int, int]:
    """Kernels and bytes on CUDA that :func:`print_side_by_side`'s count of ``FoldedArcFace`` cannot
    see: cuDNN's convolution takes no bias, so PyTorch adds a folded convolution's bias to its float32
    output in a kernel of its own (reading and writing the output). The frozen bias needs no
    gradient, so the backward pass adds nothing."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from engine.nets.arcface import embed

    with FakeTensorMode():
        (_net, folded, image), _leaves = make_inputs()
        outputs: list[int] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
                 for m in folded.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None]
        with torch.no_grad():
            embed(folded, image)
        for hook in hooks:
            hook.remove()
    return len(outputs), sum(2 * 4 * n for n in outputs)


def main(argv=None) -> int:
    from bench.pipeline import STAGES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--top", type=int, default=12, help="sources listed per stage")
    p.add_argument("--stages", default=",".join(s for s in STAGES if s != "style_finetune"),
                   help=f"comma-separated, of {', '.join(STAGES)} (default: the per-user ones)")
    args = p.parse_args(argv)
    only = tuple(s for s in args.stages.split(",") if s)
    unknown = sorted(set(only) - set(STAGES))
    if unknown:
        p.error(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    for stage, rows in traffic(only).items():
        print_table(stage, rows, args.top)
    compare_changes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
