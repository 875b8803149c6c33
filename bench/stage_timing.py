"""Per-user GPU cost: seconds per optimisation step after warm-up, achieved TFLOP/s and peak memory
per stage, the pack's render and encode, and the projected selfie-to-pack time, in TF32 and in bf16,
without and with CUDA graphs.

    python bench/stage_timing.py [--preset full|slim] [--device auto|cpu|cuda] [--warmup 2] [--steps 4]
                                 [--precisions fp32 bf16] [--graphs both|on|off] [--cudnn-autotune both|on|off]
                                 [--channels-last both|on|off] [--concurrent-branches both|on|off]
                                 [--compile both|on|off] [--compile-backend inductor|aot_eager|eager]
                                 [--no-dual-schedules] [--no-pack] [--json PATH]

How it measures
---------------
* Networks: the ``full`` preset (official sizes, random weights: the cost does
  not depend on the weight values) by default on a GPU, ``slim`` on a CPU.
* Inputs: the bundled sample selfie and the 'toon' exemplar, centre-cropped and
  resized to the crop sizes, with the frontal camera. They are not face-aligned
  (no MediaPipe needed, so it runs where MediaPipe is not installed); the
  arithmetic per step does not depend on the pixels.
* Each stage runs ``warmup + steps`` steps. The progress callback (called after
  every step) synchronises the device and reads the clock, so a step's time is
  the wall time between two callbacks with the GPU queue drained. Seconds per
  step = the mean over the ``steps`` steps after the warm-up, rounded up to
  whole cycles of stage 5's kinds of round (with and without the 2D update and
  the style loss: 4 rounds as configured). The projection
  multiplies that by the configured step counts (config.toml ``[pipeline.*]``);
  set-up work per stage (e4e, latent statistics) is not in the per-step time.
* "fp32" is float32 with TF32 matmuls and convolutions (as the engine runs on
  CUDA); "bf16" is the ``[pipeline] precision = "bf16"`` autocast.
* cuDNN autotuning (``[engine] cudnn_autotune``, engine/cuda_math.py): off by
  default as in the engine; ``--cudnn-autotune both`` times each run without
  and with it. cuDNN times a convolution shape once per process, as the
  engine's first job does: before the first autotuned run of a precision an
  untimed run of the warm-up length pays for it (its seconds are reported).
* Layout (``[pipeline] channels_last``, off by default as in the engine):
  ``--channels-last both`` times each run with the generators' activations in
  NCHW and channels-last, side by side (engine/nets/stylegan2/synthesis.py):
  whether leaving out cuDNN's layout conversions pays once our fused kernels
  read NHWC.
* Concurrent branches (``[pipeline] concurrent_branches``, off by default as in
  the engine): ``--concurrent-branches both`` times each run with every step's
  kernels on one stream and with its independent parts on CUDA streams of
  their own (engine/avatar/branches.py), side by side: whether the batch-1
  kernels leave enough of the GPU idle for that to pay.
* torch.compile (``[pipeline] compile``, off by default as in the engine):
  ``--compile both`` times each run with the generator passes eager and
  compiled with ``--compile-backend`` (inductor), side by side
  (engine/avatar/compiled.py): whether fusing the element-wise work between
  the kernels pays at batch 1. Before a compiled run, the engine's start-up
  warm-up compiles every pass (engine/avatar/warm_up.py), as a started engine
  does before its first job; its seconds are reported on their own (once per
  process, less with inductor's on-disk cache), and the timed run's
  projection is that of a job on a warmed engine.
* FLOPs per step are counted once (``torch.utils.flop_counter``, fp32 run of the
  same code; autocast does not change the count); achieved TFLOP/s = FLOPs per
  step / seconds per step.
* CUDA graphs (``[pipeline] cuda_graphs``, engine/avatar/step_graph.py): on
  CUDA each precision is timed without and with them, side by side. With
  graphs the warm-up is at least 3 cycles of stage 5's kinds of round (12 steps
  as configured), so that every kind is captured before the timed steps (which
  are replays only); the table's
  last column says how each stage's steps ran.
* Stage 5's schedule (``--no-dual-schedules`` skips it): with the first
  precision (and CUDA graphs when they are timed), stage 5 once more with its
  2D branch on every round, as before ``update_2d_every``, and once as
  configured: seconds and FLOPs per round side by side, and the ratio.
* Pack: the three stills and every sticker of the configured pack rendered
  through the engine's renderer (``engine.render``), with random unit boundary
  directions standing in for the expression file so the expression stickers
  render too ("render alone"); then, when PyAV is installed, the whole Telegram
  pack made as the engine makes it (``make_pack_files``: stills, stickers,
  custom emoji, thumbnail, contact sheet, the encode threads overlapping the
  render) and, side by side in the first run, as it was made before (with the
  preview page),
  with each encode task's start and end: how many, their summed and longest
  time, and when the last ended, so a slow pack shows whether CPU time, one
  long encode or the render loop bounds it.
* Projected selfie to pack, style cached = inversion + PTI + dual-branch (at the
  configured steps) + those stages' time beyond their steps (a stage's measured
  seconds minus its steps at the timed pace: the slower warm-up steps and the
  captures) + the pack files (or the render alone without PyAV). Face analysis (MediaPipe, about
  0.1 s on a CPU: bench/face.py) and the quality report are not included.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import pathlib
import sys
import time
import traceback
from unittest import mock

os.environ.setdefault("OMP_NUM_THREADS", "1")
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

from bench.inputs import sample_inputs  # noqa: E402
from engine.cuda_math import configure_cuda_math  # noqa: E402

STAGES = ("style_finetune", "invert_3d", "pivotal_tuning", "dual_branch")
PER_USER_STAGES = STAGES[1:]  # the style finetune is cached per style


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stages(pipe, portrait, exemplar, warmup: int, device: torch.device) -> dict[str, dict]:
    """Seconds per step after ``warmup`` steps, per stage, from one pipeline run."""
    marks: dict[str, list[float]] = {s: [] for s in STAGES}

    def progress(stage: str, step: int, total: int) -> None:
        synchronize(device)
        marks[stage].append(time.perf_counter())

    synchronize(device)
    result = pipe(portrait, exemplar, seed=0, progress=progress)
    out = {}
    for stage in STAGES:
        t = marks[stage]
        measured = t[warmup - 1:]  # t[k] is the end of step k + 1: from the end of the warm-up on
        per_step = (measured[-1] - measured[0]) / (len(measured) - 1) if len(measured) > 1 else float("nan")
        out[stage] = {"seconds_per_step": per_step, "steps_timed": len(measured) - 1,
                      "stage_seconds": result.logs[stage].seconds}
    return out, result


def random_boundaries(pack_cfg, w_dim: int):
    """Unit random directions for every expression the pack names (cost only: the edit's size is what it is)."""
    from engine.render.edits import Boundary, BoundarySet

    gen = torch.Generator().manual_seed(0)
    names = {e.expression for e in pack_cfg.stickers if e.expression}
    bounds = {}
    for name in sorted(names):
        normal = torch.randn(w_dim, generator=gen)
        bounds[name] = Boundary(name, normal / normal.norm(), d=1.0)
    return BoundarySet(generator_digest="bench", generator_preset="bench", boundaries=bounds)


def time_pack(pipe, result, pack_cfg, device: torch.device, with_page_too: bool = False) -> dict:
    """Render the stills and every configured sticker (``render_seconds``); then, when PyAV is there,
    make the whole Telegram pack as the engine does (``files_seconds``: render and encode overlapped)
    and, with ``with_page_too``, first as it was made before, with the preview page."""
    from engine.render.frames import RenderSettings, render_pack
    from engine.render.pack import AvatarPose, render_stills, sticker_specs

    g3d = pipe.nets.g3d
    pose = AvatarPose(pipe.generator_params(result, 1.0), result.w_3d, result.noise)
    settings = RenderSettings(size=pack_cfg.size, views_per_pass=pack_cfg.views_per_pass or None)
    boundaries = random_boundaries(pack_cfg, result.w_3d.shape[-1])
    specs, _notes = sticker_specs(pack_cfg, boundaries)
    out: dict = {"stickers": len(specs)}
    for attempt in ("warm-up", "timed"):  # the first call pays for kernel selection, once per process
        synchronize(device)
        t0 = time.perf_counter()
        render_stills(g3d, pose, settings)
        with torch.no_grad():
            rendered = render_pack(g3d, pose.params, pose.w_3d, pose.noise, boundaries, specs, fps=pack_cfg.fps,
                                   size=pack_cfg.size, settings=settings)
        synchronize(device)
        out["render_seconds"] = time.perf_counter() - t0
        if device.type != "cuda":
            break
    out["frames"] = sum(len(r.frames) for r in rendered)
    try:
        import av  # noqa: F401
    except ImportError:
        out["files_seconds"] = None
        out["files_note"] = "PyAV is not installed here: the pack files were not made"
        return out
    from emoji3d.orders import CUSTOM_EMOJI_TARGETS, PLATFORM_TARGETS, PREVIEW_PAGE_PLATFORMS, THUMBNAIL_TARGETS
    from engine.render import pack as pack_module
    from engine.render.pack import default_encode_workers, make_pack_files

    def make_files(preview_page: bool) -> tuple[float, list[dict]]:
        """Seconds for the Telegram pack's files, and each encode task's (what, start, end) from the start."""
        t0 = time.perf_counter()
        tasks: list[dict] = []

        def timed(fn, what):
            def run(frames, *args):
                start = time.perf_counter() - t0
                try:
                    return fn(frames, *args)
                finally:
                    tasks.append({"what": what(*args), "start": start, "end": time.perf_counter() - t0})
            return run

        # The encode tasks are timed where the engine's encoder calls them; the files are the engine's own.
        encoded = timed(pack_module._encoded_bytes, lambda target, *_: target)
        preview = timed(pack_module._preview_encode, lambda *_: "preview")
        with mock.patch.object(pack_module, "_encoded_bytes", encoded), \
                mock.patch.object(pack_module, "_preview_encode", preview):
            make_pack_files(g3d, pose, pack_cfg, PLATFORM_TARGETS["telegram"],
                            thumbnail_target=THUMBNAIL_TARGETS["telegram"], boundaries=boundaries,
                            progress=lambda *_: None, emoji_target=CUSTOM_EMOJI_TARGETS["telegram"],
                            preview_page=preview_page)
        synchronize(device)
        return time.perf_counter() - t0, tasks

    # Before and after, side by side: until 2026-12-04 every pack also got the preview page, which only
    # `emoji3d make` reads (emoji3d.orders.PREVIEW_PAGE_PLATFORMS).
    if with_page_too:
        out["files_with_page_seconds"], out["encode_tasks_with_page"] = make_files(True)
    out["files_seconds"], out["encode_tasks"] = make_files("telegram" in PREVIEW_PAGE_PLATFORMS)
    out["files_note"] = (f"Telegram pack as the engine makes it: stills, stickers, custom emoji, thumbnail, "
                         f"contact sheet; render overlapped with {default_encode_workers()} encode threads, "
                         f"{os.cpu_count()} CPU cores" + (f"; {out['files_with_page_seconds']:.1f} s with the "
                                                          f"preview page as before" if with_page_too else ""))
    return out


def encode_summary(tasks: list[dict]) -> str:
    """One line on the pack's encode tasks: how many, their summed and longest time, and when the last ended
    (which of CPU time, one long task or the render loop bounds the pack files' time)."""
    if not tasks:
        return "no encode tasks timed"
    per_kind: dict[str, list[float]] = {}
    for t in tasks:
        per_kind.setdefault(t["what"], []).append(t["end"] - t["start"])
    longest = max(tasks, key=lambda t: t["end"] - t["start"])
    kinds = ", ".join(f"{k} {len(v)} x {sum(v) / len(v):.2f} s" for k, v in sorted(per_kind.items()))
    return (f"{len(tasks)} encode tasks ({kinds}): {sum(t['end'] - t['start'] for t in tasks):.1f} s summed, "
            f"the longest {longest['end'] - longest['start']:.2f} s ({longest['what']}), the first started at "
            f"{min(t['start'] for t in tasks):.1f} s, the last ended at {max(t['end'] for t in tasks):.1f} s")


def graph_warmup(warmup: int, dual_cfg) -> int:
    """Steps before the timed ones with CUDA graphs: each of stage 5's kinds of round (one cycle of
    :func:`engine.avatar.dual.round_cycle` rounds holds each kind) runs ``WARMUP`` times eagerly and
    is captured on its next round, so the timed steps are replays only."""
    from engine.avatar.dual import round_cycle
    from engine.avatar.step_graph import WARMUP

    return max(warmup, round_cycle(dual_cfg) * (WARMUP + 1))


def whole_cycles(steps: int, dual_cfg) -> int:
    """``steps`` rounded up to whole cycles of stage 5's kinds of round, so that the mean step time
    weighs each kind as the configured stage does."""
    from engine.avatar.dual import round_cycle

    cycle = round_cycle(dual_cfg)
    return -(-steps // cycle) * cycle


def measure(preset: str, device: torch.device, warmup: int, steps: int, precisions: list[str],
            json_path: pathlib.Path | None = None,
            graph_modes: tuple[bool, ...] = (False, True), autotune_modes: tuple[bool, ...] = (False,),
            compare_dual_schedules: bool = True, layout_modes: tuple[bool, ...] = (False,),
            branch_modes: tuple[bool, ...] = (False,), time_packs: bool = True,
            compile_modes: tuple[str, ...] = ("off",)) -> dict:
    from bench.pipeline import count_flops, flop_steps
    from emoji3d.config import load_config
    from engine.avatar.networks import full_networks, slim_networks
    from engine.avatar.pipeline import Pipeline
    from engine.avatar.warm_up import warm_up

    repo = _HERE.parent
    cfg = load_config(repo / "config.toml")
    if device.type == "cuda":  # as the engine runs (engine.resources)
        configure_cuda_math(autotune_modes[0])
    portrait, exemplar = sample_inputs(repo)
    t0 = time.perf_counter()
    nets = full_networks(0, device) if preset == "full" else slim_networks(0, device)
    steps = whole_cycles(steps, cfg.pipeline.dual)
    report: dict = {"preset": preset, "device": str(device), "warmup": warmup, "steps": steps,
                    "torch": torch.__version__, "load_seconds": time.perf_counter() - t0,
                    "configured_steps": {"style_finetune": cfg.pipeline.style.steps,
                                         "invert_3d": cfg.pipeline.inversion.steps,
                                         "pivotal_tuning": cfg.pipeline.pti.steps,
                                         "dual_branch": cfg.pipeline.dual.steps}}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    flops = count_flops(Pipeline(nets, dataclasses.replace(cfg.pipeline.reduced(flop_steps(cfg.pipeline.dual)),
                                                           precision="fp32")), portrait, exemplar)
    report["flops_per_step"] = {stage: later for stage, (_first, later) in flops.items()}
    report["runs"] = {}
    # CUDA graphs, cuDNN and streams only exist on CUDA: elsewhere those runs would repeat the plain ones.
    if device.type != "cuda":
        graph_modes, autotune_modes, branch_modes = (False,), (False,), (False,)
    modes = [(graphs, autotune, layout, concurrent, backend) for graphs in graph_modes for autotune in autotune_modes
             for layout in layout_modes for concurrent in branch_modes for backend in compile_modes]
    primed: set[str] = set()  # precisions whose convolution shapes cuDNN has timed
    for precision in precisions:  # one failing run (or the pack after it) keeps what the others measured
        for graphs, autotune, channels_last, concurrent, backend in modes:
            if device.type == "cuda":
                configure_cuda_math(autotune)
                gc.collect()  # the previous run's graphs and tensors
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            skip = graph_warmup(warmup, cfg.pipeline.dual) if graphs else warmup
            run: dict = {"precision": precision, "graphs": graphs, "cudnn_autotune": autotune, "warmup": skip,
                         "channels_last": channels_last, "concurrent_branches": concurrent, "compile": backend}
            report["runs"][run_name(precision, graphs, autotune, autotune_modes, channels_last, layout_modes,
                                    concurrent, branch_modes, backend, compile_modes)] = run
            try:
                switches = {"precision": precision, "cuda_graphs": graphs, "channels_last": channels_last,
                            "concurrent_branches": concurrent, "compile": backend}
                pipe = Pipeline(nets, dataclasses.replace(cfg.pipeline.reduced(skip + steps), **switches))
                if backend != "off":  # as a started engine does before its first job (engine.resources)
                    done = warm_up(pipe)
                    run["compile_warm_up_seconds"] = done.seconds
                    run["compile_failures"] = done.failures
                if autotune and precision not in primed:
                    # cuDNN times each convolution shape once per process: an untimed short run pays that,
                    # as the engine's first job does, and the timed runs see the tuned choice.
                    t0 = time.perf_counter()
                    Pipeline(nets, dataclasses.replace(cfg.pipeline.reduced(skip), **switches))(
                        portrait, exemplar, seed=0)
                    synchronize(device)
                    run["autotune_first_run_seconds"] = time.perf_counter() - t0
                    primed.add(precision)
                run["stages"], result = time_stages(pipe, portrait, exemplar, skip, device)
                run["modes"] = {stage: result.logs[stage].mode for stage in STAGES}
                if device.type == "cuda":
                    run["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                # the pack as made before (with the preview page) once per report: the files do not
                # depend on the precision or the graphs, and each pack costs seconds of CPU
                if time_packs:
                    first_pack = not any("pack" in r for r in report["runs"].values())
                    run["pack"] = time_pack(pipe, result, cfg.pack, device, with_page_too=first_pack)
            except Exception as exc:  # noqa: BLE001 - reported in the table, the traceback on stderr
                traceback.print_exc()
                run["error"] = f"{type(exc).__name__}: {exc}"
            if json_path is not None:
                json_path.write_text(json.dumps(report, indent=2))
            print(f"  timed {precision}{' with CUDA graphs' if graphs else ''}", file=sys.stderr, flush=True)
    if compare_dual_schedules and cfg.pipeline.dual.update_2d_every > 1:
        graphs = graph_modes[-1]
        skip = graph_warmup(warmup, cfg.pipeline.dual) if graphs else warmup
        try:
            report["dual_schedules"] = {
                "precision": precisions[0], "graphs": graphs, "rounds": cfg.pipeline.dual.steps,
                "schedules": time_dual_schedules(nets, cfg.pipeline, portrait, exemplar, skip, steps, precisions[0],
                                                 graphs, device, report["flops_per_step"]["dual_branch"])}
        except Exception as exc:  # noqa: BLE001 - reported, the runs above stand
            traceback.print_exc()
            report["dual_schedules"] = {"error": f"{type(exc).__name__}: {exc}"}
        if json_path is not None:
            json_path.write_text(json.dumps(report, indent=2))
    return report


def time_dual_schedules(nets, pipeline_cfg, portrait, exemplar, skip: int, steps: int, precision: str,
                        graphs: bool, device: torch.device, configured_flops_per_round: float) -> dict:
    """Stage 5's seconds and FLOPs per round with the 2D branch on every round and as configured
    (whose FLOPs the report counted already), one after the other in this process (the other
    stages run as they must, untimed here)."""
    from bench.pipeline import count_flops, every_round_2d, flop_steps
    from engine.avatar.pipeline import Pipeline

    earlier = every_round_2d(pipeline_cfg.dual)
    earlier_cfg = dataclasses.replace(pipeline_cfg, dual=earlier, precision="fp32")
    earlier_flops = count_flops(Pipeline(nets, earlier_cfg.reduced(flop_steps(earlier))), portrait, exemplar)
    out = {}
    for name, dual, flops in (
            ("2D branch every round", earlier, earlier_flops["dual_branch"][1]),
            (f"2D branch every {pipeline_cfg.dual.update_2d_every} rounds (configured)", pipeline_cfg.dual,
             configured_flops_per_round)):
        if device.type == "cuda":
            gc.collect()  # the previous run's graphs and tensors
            torch.cuda.empty_cache()
        cfg = dataclasses.replace(pipeline_cfg, dual=dual, precision=precision, cuda_graphs=graphs)
        stages, _result = time_stages(Pipeline(nets, cfg.reduced(skip + steps)), portrait, exemplar, skip, device)
        out[name] = {"seconds_per_round": stages["dual_branch"]["seconds_per_step"], "flops_per_round": flops}
    return out


def run_name(precision: str, graphs: bool, autotune: bool, autotune_modes: tuple[bool, ...],
             channels_last: bool = False, layout_modes: tuple[bool, ...] = (False,),
             concurrent: bool = False, branch_modes: tuple[bool, ...] = (False,), backend: str = "off",
             compile_modes: tuple[str, ...] = ("off",)) -> str:
    """A run's label; cuDNN autotuning, the layout, the streams and torch.compile are named only when runs
    with and without them are compared (or, for the last three, when they differ from the default)."""
    name = precision + (" + CUDA graphs" if graphs else "")
    if len(autotune_modes) > 1:
        name += " + cuDNN autotune" if autotune else " (cuDNN heuristics)"
    if channels_last:
        name += " + channels-last"
    elif len(layout_modes) > 1:
        name += " (NCHW)"
    if concurrent:
        name += " + concurrent branches"
    elif len(branch_modes) > 1:
        name += " (one stream)"
    if backend != "off":
        name += f" + compiled ({backend})"
    elif len(compile_modes) > 1:
        name += " (eager)"
    return name


def dual_schedule_lines(found: dict | None) -> list[str]:
    if not found:
        return []
    if "error" in found:
        return [f"**Stage 5, 2D branch every round vs as configured**: FAILED: {found['error']}", ""]
    rounds = found["rounds"]
    lines = [f"**Stage 5, 2D branch every round vs as configured** ({found['precision']}"
             f"{' with CUDA graphs' if found['graphs'] else ''}, one after the other in this process)", "",
             f"| schedule | s/round | GFLOP/round | projected s ({rounds} rounds) |", "|---|---:|---:|---:|"]
    for name, m in found["schedules"].items():
        lines.append(f"| {name} | {m['seconds_per_round']:.4f} | {m['flops_per_round'] / 1e9:,.0f} | "
                     f"{m['seconds_per_round'] * rounds:.1f} |")
    before, now = (m["seconds_per_round"] for m in found["schedules"].values())
    return lines + ["", f"- stage 5: {before / now:.2f}x faster as configured", ""]


def summarise(report: dict) -> list[str]:
    """Markdown lines: one table per run (precision, with or without CUDA graphs), the projected
    selfie-to-pack time of each, and the runs side by side."""
    lines = [f"Preset `{report['preset']}` on {report.get('gpu', report['device'])}, torch {report['torch']}; "
             f"{report['steps']} timed steps per stage after the warm-up; networks loaded in "
             f"{report['load_seconds']:.1f} s.", ""]
    configured = report["configured_steps"]
    totals: dict[str, tuple[float, float | None]] = {}
    for name, run in report["runs"].items():
        label = name.replace("fp32", "fp32 (TF32 matmuls and convolutions)" if "gpu" in report else "fp32", 1)
        if "stages" not in run:
            lines += [f"**{label}**: FAILED: {run.get('error', 'no measurement')}", ""]
            continue
        lines += [f"**{label}**, {run['warmup']} warm-up steps" + (
            f", peak GPU memory {run['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in run else "") + (
            f"; cuDNN's once-per-process algorithm timing: an untimed first run of {run['warmup']} steps per "
            f"stage took {run['autotune_first_run_seconds']:.1f} s" if "autotune_first_run_seconds" in run else ""), "",
                  "| stage | s/step | GFLOP/step | TFLOP/s | configured steps | projected s | steps ran |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        per_user = 0.0
        per_user_flop = 0.0
        set_up = 0.0  # a stage's time beyond its steps at the timed pace: warm-up, capture, set-up
        for stage in STAGES:
            s = run["stages"][stage]["seconds_per_step"]
            flop = report["flops_per_step"][stage]
            n = configured[stage]
            mode = run.get("modes", {}).get(stage, "")
            lines.append(f"| {stage} | {s:.4f} | {flop / 1e9:,.0f} | {flop / s / 1e12:.1f} | {n} | {s * n:.1f} | {mode} |")
            if stage in PER_USER_STAGES:
                per_user += s * n
                per_user_flop += flop * n
                ran = run["warmup"] + report["steps"]
                set_up += max(0.0, run["stages"][stage]["stage_seconds"] - ran * s)
        compile_lines = []
        if "compile_warm_up_seconds" in run:
            failed = "; ".join(f"{name} FAILED to compile and ran eagerly: {why}"
                               for name, why in run["compile_failures"].items())
            compile_lines.append(f"- compiled before the first job (the engine's start-up warm-up, once per "
                                 f"process, not in the projection): {run['compile_warm_up_seconds']:.1f} s"
                                 + (f"; {failed}" if failed else ""))
        if "pack" not in run:
            why = f"the pack failed: {run['error']}" if "error" in run else "the pack was not timed (--no-pack)"
            lines += ["", f"- per-user optimisation (style cached): {per_user:.1f} s; {why}",
                      f"- the stages' time beyond their steps (warm-up, capture, compile above the timed pace): "
                      f"{set_up:.1f} s", *compile_lines, ""]
            totals[name] = (per_user, None)
            continue
        pack = run["pack"]
        files_s = pack.get("files_seconds")
        total = per_user + set_up + (files_s if files_s is not None else pack["render_seconds"])
        totals[name] = (per_user, total)
        lines += ["", f"- per-user optimisation (style cached): {per_user:.1f} s for {per_user_flop / 1e12:,.0f} TFLOP "
                  f"({per_user_flop / per_user / 1e12:.1f} TFLOP/s achieved; PTI at its most steps, which its "
                  "early stop shortens for a photo it fits well)",
                  f"- the stages' time beyond their steps (warm-up, capture, compile above the timed pace): "
                  f"{set_up:.1f} s",
                  *compile_lines,
                  f"- pack render alone: {pack['stickers']} stickers, {pack['frames']} frames + 3 stills in "
                  f"{pack['render_seconds']:.1f} s",
                  "- pack files: " + (f"{files_s:.1f} s ({pack['files_note']})" if files_s is not None
                                      else pack["files_note"]),
                  *([f"- pack encode: {encode_summary(pack['encode_tasks'])}"] if "encode_tasks" in pack else []),
                  f"- **projected selfie to pack, style cached: {total:.1f} s** (goal <= 15 s on one H100)", ""]
    lines += dual_schedule_lines(report.get("dual_schedules"))
    if len(totals) > 1:
        first = next(iter(totals))
        lines += ["**Side by side** (one run of this script)", "",
                  f"| run | per-user optimisation s | selfie to pack s | optimisation vs {first} |",
                  "|---|---:|---:|---:|"]
        for name, (opt_s, total) in totals.items():
            lines.append(f"| {name} | {opt_s:.1f} | {'' if total is None else f'{total:.1f}'} | "
                         f"{totals[first][0] / opt_s:.2f}x |")
        lines.append("")
    return lines


# A side-by-side switch's command-line choice -> the settings timed, in order.
SWITCH_MODES = {"both": (False, True), "on": (True,), "off": (False,)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["slim", "full"], default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4,
                   help="timed steps per stage after the warm-up (rounded up to whole cycles of stage 5's rounds)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--json", type=pathlib.Path, help="also write the measurements here")
    p.add_argument("--graphs", choices=["both", "on", "off"], default="both",
                   help="time the steps with CUDA graphs, without, or both side by side (CUDA only)")
    p.add_argument("--cudnn-autotune", choices=["both", "on", "off"], default="off",
                   help="cuDNN's per-shape algorithm timing ([engine] cudnn_autotune, off by default): on, off, or "
                        "both side by side (CUDA only)")
    p.add_argument("--channels-last", choices=["both", "on", "off"], default="off",
                   help="the generators' activations channels-last ([pipeline] channels_last, off by default): on, "
                        "off, or both side by side")
    p.add_argument("--concurrent-branches", choices=["both", "on", "off"], default="off",
                   help="a step's independent parts on CUDA streams of their own ([pipeline] concurrent_branches, "
                        "off by default): on, off, or both side by side (CUDA only)")
    p.add_argument("--compile", choices=["both", "on", "off"], default="off",
                   help="the generator passes under torch.compile ([pipeline] compile, off by default): on, off, "
                        "or both side by side")
    p.add_argument("--compile-backend", choices=["inductor", "aot_eager", "eager"], default="inductor",
                   help="the torch.compile backend of --compile (inductor fuses; the others only trace)")
    p.add_argument("--no-pack", action="store_true",
                   help="time the optimisation stages only (the pack does not depend on the switches compared)")
    p.add_argument("--no-dual-schedules", action="store_true",
                   help="skip timing stage 5 with its 2D branch on every round beside the configured schedule")
    args = p.parse_args(argv)
    if args.steps < 2 or args.warmup < 1:
        p.error("--steps must be >= 2 and --warmup >= 1")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    preset = args.preset or ("full" if device.type == "cuda" else "slim")
    graph_modes, autotune_modes, layout_modes, branch_modes = (
        SWITCH_MODES[choice] for choice in (args.graphs, args.cudnn_autotune, args.channels_last,
                                            args.concurrent_branches))
    report = measure(preset, device, args.warmup, args.steps, args.precisions, args.json, graph_modes,
                     autotune_modes, compare_dual_schedules=not args.no_dual_schedules, layout_modes=layout_modes,
                     branch_modes=branch_modes, time_packs=not args.no_pack,
                     compile_modes=tuple(args.compile_backend if on else "off" for on in SWITCH_MODES[args.compile]))
    print("\n".join(summarise(report)))
    return 1 if any("error" in run for run in report["runs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
