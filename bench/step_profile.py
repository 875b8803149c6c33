"""Where a replayed step's device time goes, stage by stage: the kernels of the steady-state steps.

    python bench/step_profile.py [--preset full|slim] [--device auto|cuda|cpu] [--steps 4]
                                 [--precisions fp32 bf16] [--graphs on|off] [--top 15] [--by-source]

How it measures
---------------
* One pipeline run per precision with ``warmup + steps`` steps per stage
  (``warmup`` as bench/stage_timing.py: with CUDA graphs, enough for every
  variant of a stage to be captured, so the profiled steps are replays only).
* The progress callback (called after every step) starts ``torch.profiler``
  after the warm-up step of each stage and stops it after the last step, the
  device drained at both ends. So each stage's window holds exactly ``steps``
  steady-state steps and nothing of the capture or of the other stages.
* Per stage it prints: wall ms per step; device-busy ms per step (the union of
  the kernels' and copies' time intervals; on a CPU, of the operators' own time) and its share of the wall time; the
  kernel time per family (convolution, matrix multiply, grid sample, fused ops,
  element-wise, reduction, optimiser, copy) and the top kernels by name, in ms
  per step. A busy share near 100 % means the device is the limit (make the
  kernels do less); a low one means the host or a wait is (graphs, syncs).
* ``--by-source`` (eager steps: a replayed graph has no operators to follow)
  also says which of our functions the time comes from: each operator's own
  device time (on a CPU, its own CPU time) goes to the innermost function of
  this repository on its Python stack, a backward operator's to the forward
  operator it differentiates (the autograd node's sequence number), and is
  summed per function (named by the line that defines it: the profiler
  names Python frames by their code, not by the calling line) and direction
  (forward, backward). The kernels of eager
  steps are those a replay runs, so this says whose the element-wise and
  reduction kernels are.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import sys
import time
from collections import defaultdict

os.environ.setdefault("OMP_NUM_THREADS", "1")
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402

from bench.inputs import sample_inputs  # noqa: E402
from bench.stage_timing import STAGES, graph_warmup, synchronize, whole_cycles  # noqa: E402
from engine.cuda_math import configure_cuda_math  # noqa: E402

# Kernel families, first match wins: (family, pattern on the kernel's name).
FAMILIES = (
    ("optimiser (Adam)", re.compile(r"multi_tensor|adam|Adam|foreach", re.I)),
    ("grid sample", re.compile(r"grid_sampler", re.I)),
    ("fused upfirdn2d", re.compile(r"upfirdn", re.I)),
    ("fused bias_act", re.compile(r"bias_act", re.I)),
    ("fused modulation", re.compile(r"modulat|demod", re.I)),
    ("layout conversion", re.compile(r"nchwToNhwc|nhwcToNchw|transpose", re.I)),
    ("depthwise convolution", re.compile(r"depthwise", re.I)),
    ("convolution", re.compile(r"conv|cudnn|xmma|implicit_gemm|wgrad|dgrad|fprop|winograd|fft", re.I)),
    ("matrix multiply", re.compile(r"gemm|cutlass|sm90|sm80|cublas|ampere|hopper", re.I)),
    ("reduction", re.compile(r"reduce|norm|softmax|cumsum|cumprod|scan", re.I)),
    ("copy / fill", re.compile(r"copy|Memcpy|Memset|fill|cat|index", re.I)),
    ("element-wise", re.compile(r"elementwise|vectorized|unrolled|pointwise", re.I)),
)


def family(name: str) -> str:
    for label, pattern in FAMILIES:
        if pattern.search(name):
            return label
    return "other"


def short_name(name: str) -> str:
    """A kernel's name without its template arguments and parameter list, at most 70 characters."""
    name = re.sub(r"^void ", "", name)
    depth, out = 0, []
    for ch in name:
        if ch in "<(":
            if depth == 0:
                out.append("<>" if ch == "<" else "")
            depth += 1
        elif ch in ">)":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    return "".join(out)[:70]


def busy_union(intervals: list[tuple[int, int]]) -> int:
    """Microseconds covered by the union of [start, end) intervals."""
    total, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s >= end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


BACKWARD_NODE = "autograd::engine::evaluate_function: "
# A Python frame as the profiler names it, "path(line): function"; paths of this repository are relative.
PYTHON_FRAME = re.compile(r"^(?P<path>[^()<>]+\.py)\((?P<line>\d+)\): (?P<function>.+)$")
REPO_PACKAGES = ("engine/", "bench/", "emoji3d/")


def python_event(name: str) -> bool:
    """A Python call the profiler's stack tracer recorded (``--by-source``), not an operator."""
    return bool(PYTHON_FRAME.match(name)) or name.startswith(("<built-in", "nn.Module: "))


def profile_with_sources(activities):
    """A ``torch.profiler.profile`` that records each operator's Python stack. Torch 2.14 puts the
    Python calls into the event tree (an operator's ``cpu_parent`` chain); torch 2.11, the GPU
    machines' torch, records neither those events nor ``stack`` unless the profiler is verbose, and
    then lists the frames in the operator's ``stack``. :func:`repo_frame` reads either."""
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import profile

    return profile(activities=activities, with_stack=True, experimental_config=_ExperimentalConfig(verbose=True))


def repo_frame(event, packages: tuple[str, ...] = REPO_PACKAGES) -> str | None:
    """The innermost Python frame under ``packages`` above ``event``, as ``path(line): function``
    (the line is where the function is defined: the profiler names frames by their code): from
    the Python calls among its ancestors, else from the innermost stack recorded on it or an
    ancestor (see :func:`profile_with_sources`)."""
    stack, node = None, event
    while node is not None:
        found = PYTHON_FRAME.match(node.name)
        if found and found["path"].startswith(packages):
            return node.name
        stack = stack or node.stack
        node = node.cpu_parent
    for frame in stack or ():
        found = PYTHON_FRAME.match(frame)
        if found and found["path"].startswith(packages):
            return frame
    return None


def by_source(events, on_device: bool,
              packages: tuple[str, ...] = REPO_PACKAGES) -> dict[tuple[str, str], float]:
    """Microseconds per (our function, "forward" | "backward") over ``events`` (see the module
    notes); our functions are those in files under ``packages``."""
    def backward_node(e):
        while e is not None and not e.name.startswith(BACKWARD_NODE):
            e = e.cpu_parent
        return e

    # The operators that made autograd nodes: aten ops, and our autograd Functions' forward (named
    # by their class); the outermost one per node.
    forward_ops: dict[tuple[int, int], object] = {}
    for e in events:
        if e.sequence_nr >= 0 and not python_event(e.name) and backward_node(e) is None:
            parent = e.cpu_parent
            if parent is None or parent.sequence_nr != e.sequence_nr:
                forward_ops.setdefault((e.sequence_nr, e.thread), e)
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        if on_device:
            spent = e.self_device_time_total if e.device_type == DeviceType.CPU else 0.0
        else:
            operator = e.name.startswith(("aten::", BACKWARD_NODE)) or e.sequence_nr >= 0  # not the profiler's own
            spent = e.self_cpu_time_total if operator else 0.0
        if spent <= 0:
            continue
        node = backward_node(e)
        if node is None:
            key = (repo_frame(e, packages) or "(outside this repository)", "forward")
        elif node.sequence_nr < 0:  # AccumulateGrad and the engine's own work
            key = ("(gradient accumulation)", "backward")
        else:
            forward = forward_ops.get((node.sequence_nr, node.fwd_thread))
            where = repo_frame(forward, packages) if forward is not None else None
            key = (where or f"(outside this repository: {node.name[len(BACKWARD_NODE):]})", "backward")
        totals[key] += spent
    return totals


class StageProfiler:
    """A progress callback that profiles each stage's steps after the warm-up (see the module notes)."""

    def __init__(self, device: torch.device, warmup: int, steps: int, sources: bool = False) -> None:
        self.device, self.warmup, self.steps, self.sources = device, warmup, steps, sources
        self.active = None
        self.t0 = 0.0
        self.results: dict[str, dict] = {}

    def __call__(self, stage: str, step: int, total: int) -> None:
        from torch.profiler import ProfilerActivity, profile

        if step == self.warmup and self.active is None:
            synchronize(self.device)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.active = profile_with_sources(activities) if self.sources else profile(activities=activities)
            self.active.start()
            self.t0 = time.perf_counter()
        elif step == total and self.active is not None:
            synchronize(self.device)
            wall = time.perf_counter() - self.t0
            self.active.stop()
            self.results[stage] = self._summary(self.active, wall, step - self.warmup)
            if self.sources:
                self.results[stage]["sources"] = by_source(self.active.events(), self.device.type == "cuda")
            self.active = None

    @staticmethod
    def _summary(prof, wall: float, steps: int) -> dict:
        events = prof.events()
        kernels = [(e.name, e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA]
        if not kernels:  # a CPU run: the operators' own time, without their children's (or the Python frames')
            kernels = [(e.name, e.time_range.start, e.time_range.start + e.self_cpu_time_total) for e in events
                       if e.device_type == DeviceType.CPU and e.self_cpu_time_total > 0 and not python_event(e.name)]
        intervals = [(start, end) for _, start, end in kernels]
        by_name: dict[str, float] = defaultdict(float)
        by_family: dict[str, float] = defaultdict(float)
        for name, start, end in kernels:
            by_name[short_name(name)] += end - start
            by_family[family(name)] += end - start
        calls = len(kernels)
        return {"steps": steps, "wall_ms": 1e3 * wall / steps, "busy_ms": busy_union(intervals) / 1e3 / steps,
                "kernels_per_step": calls / steps,
                "families": {k: v / 1e3 / steps for k, v in by_family.items()},
                "names": {k: v / 1e3 / steps for k, v in by_name.items()}}


def source_table(sources: dict[tuple[str, str], float], steps: int, top: int) -> list[str]:
    total_us = sum(sources.values())
    lines = [f"Whose time ({total_us / 1e3 / steps:.1f} ms/step attributed; a function is named by the line "
             "that defines it):", "", "| function | direction | ms/step | share |", "|---|---|---:|---:|"]
    for (where, direction), us in sorted(sources.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| `{where}` | {direction} | {us / 1e3 / steps:.2f} | {100 * us / total_us:.0f} % |")
    return lines


def report(results: dict[str, dict], top: int) -> list[str]:
    lines = []
    for stage in STAGES:
        if stage not in results:
            lines += [f"### {stage}: not profiled", ""]
            continue
        r = results[stage]
        kernel_ms = sum(r["families"].values())
        lines += [f"### {stage}", "",
                  f"{r['steps']} steps: wall {r['wall_ms']:.1f} ms/step, device busy {r['busy_ms']:.1f} ms/step "
                  f"({100 * r['busy_ms'] / r['wall_ms']:.0f} %), {r['kernels_per_step']:.0f} kernels and copies "
                  f"per step ({kernel_ms:.1f} ms summed)", "",
                  "| family | ms/step | share |", "|---|---:|---:|"]
        for name, ms in sorted(r["families"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {ms:.2f} | {100 * ms / kernel_ms:.0f} % |")
        lines += ["", "| kernel | family | ms/step |", "|---|---|---:|"]
        for name, ms in sorted(r["names"].items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"| `{name}` | {family(name)} | {ms:.2f} |")
        if "sources" in r:
            lines += [""] + source_table(r["sources"], r["steps"], top)
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["slim", "full"], default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, default=4,
                   help="profiled steps per stage after the warm-up (rounded up to whole cycles of stage 5's rounds)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    p.add_argument("--graphs", choices=["on", "off"], default="on")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--by-source", action="store_true",
                   help="also attribute the time to this repository's functions (needs --graphs off on CUDA)")
    args = p.parse_args(argv)
    if args.by_source and args.graphs == "on" and torch.cuda.is_available() and args.device != "cpu":
        p.error("--by-source follows operators, which a replayed CUDA graph has none of: add --graphs off")

    from emoji3d.config import load_config
    from engine.avatar.networks import full_networks, slim_networks
    from engine.avatar.pipeline import Pipeline

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    preset = args.preset or ("full" if device.type == "cuda" else "slim")
    if device.type == "cuda":  # as the engine runs by default (engine.resources)
        configure_cuda_math(cudnn_autotune=False)
    repo = _HERE.parent
    cfg = load_config(repo / "config.toml")
    portrait, exemplar = sample_inputs(repo)
    nets = full_networks(0, device) if preset == "full" else slim_networks(0, device)
    graphs = args.graphs == "on" and device.type == "cuda"
    warmup = graph_warmup(2, cfg.pipeline.dual) if graphs else 2
    steps = whole_cycles(args.steps, cfg.pipeline.dual)
    print(f"# Step profile: preset `{preset}` on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}, "
          f"{'CUDA graphs' if graphs else 'eager'}; {warmup} warm-up steps, {steps} profiled steps per stage\n")
    for precision in args.precisions:
        pipe = Pipeline(nets, dataclasses.replace(cfg.pipeline.reduced(warmup + steps), precision=precision,
                                                  cuda_graphs=graphs))
        profiler = StageProfiler(device, warmup, steps, sources=args.by_source)
        pipe(portrait, exemplar, seed=0, progress=profiler)
        tf32 = " (TF32 matmuls and convolutions)" if precision == "fp32" and device.type == "cuda" else ""
        print(f"## {precision}{tf32}\n")
        print("\n".join(report(profiler.results, args.top)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
