"""`make gpu-check`: every GPU-only check in one command, written to one Markdown report.

    python bench/gpu_check.py [--out bench/results/gpu-check.md] [--budget 480] [--json-out DIR]
                              [--parts build tests syncs pipeline kernels layout branches nets render
                                       profile encode bytes compile compile-tests] [--quick]

Parts, in this order (the most important first, so a short budget loses the least):

1. ``build``: compile the fused CUDA ops (``python -m engine.ops.prebuild``, one
   process per op, in parallel) and self-check each against its pure-torch
   reference (forward and gradient, float32 and float16).
2. ``tests``: the ``gpu``-marked tests (each fused kernel against its reference
   at the networks' shapes, forward and backward; the networks end to end),
   except those also marked ``slow`` (the ``compile-tests`` part runs those).
3. ``syncs``: ``bench/host_syncs.py``: the op behind the first host
   synchronisation inside each stage's step, if any (one would drain the GPU
   queue every step and keep the step from being captured as a CUDA graph).
4. ``pipeline``: ``bench/stage_timing.py`` at full size: seconds and achieved
   TFLOP/s per stage in TF32 and in bf16, with CUDA graphs as the engine runs
   them (``--graphs both`` adds eager steps; not here, for time), peak GPU
   memory, the pack's render and files, and the projected selfie-to-pack time.
5. ``kernels``: ``bench/kernels.py``: each fused kernel that replaced another
   (the tiled upfirdn2d, the tri-plane sampler) timed side by side with what it
   replaced, at the networks' shapes, the colour composite, and the networks'
   convolutions in NCHW against channels-last (cuDNN's layout conversions).
6. ``layout``: ``bench/stage_timing.py --channels-last both``: the per-user
   stages in bf16 with CUDA graphs, the generators' activations NCHW (as the
   engine runs) and channels-last (``[pipeline] channels_last``), side by side:
   whether to switch it on.
7. ``branches``: ``bench/stage_timing.py --concurrent-branches both``: the same
   stages with every step on one stream (as the engine runs) and with its
   independent parts on CUDA streams of their own (``[pipeline]
   concurrent_branches``), side by side: whether to switch that on.
8. ``nets``: ``bench/nets.py`` at full size (fused kernels vs the reference ops).
9. ``render``: ``bench/render.py`` at full size (multi-view rendering).
10. ``profile``: ``bench/step_profile.py --by-source``: the kernels of each
   stage's steps after the warm-up (fp32 with TF32), in ms per step by kernel
   family, by kernel and by the function of ours they are run for (forward and
   backward). Eager steps, which run the same kernels as the replayed graphs but
   can be traced to their operators; the GPU's busy share is therefore not the
   engine's (run it with ``--graphs on`` for that).
11. ``encode``: ``bench/stickers.py --photographed-pack``: a Telegram pack's
    files encoded as the engine encodes them, from photographed frames (the
    random weights' renders are noise, far harder to encode than a face), on the
    engine's encode workers, by libvpx threads per file (1 and 2) and with the
    searches running candidates ahead on idle workers or not. The CPU side of the
    projected time; the host's cores decide it.
12. ``bytes``: ``bench/job_bytes.py``: the CPU work a make_pack job does between
    its GPU parts (the portrait artifact after pivotal tuning, the avatar file
    after the pack), on the job's thread as before and now beside it, at full
    size with the deltas on the GPU.
13. ``compile``: ``bench/stage_timing.py --compile both``: the per-user stages
    in bf16 with CUDA graphs, the generator passes eager (as the engine runs)
    and under ``torch.compile`` with inductor (``[pipeline] compile``), side by
    side: whether fusing the work between the kernels pays, and what compiling
    costs once per process (the engine's start-up warm-up, timed apart). Inductor
    needs Triton on the GPU machine (PyTorch's CUDA wheels bring it); without it
    the compile fails, each pass warns and runs eagerly, and the two runs match.
14. ``compile-tests``: the ``gpu`` test that compiles the slim pipeline's
    generator passes with inductor inside captured steps (the eager loss
    curves). A part of its own: the commands of one part run at the same time,
    and a test beside the bench would share its GPU and skew its timings.

Each part runs in its own process with its own timeout (a crash or a hang
loses that part only), capped by what is left of ``--budget`` seconds. The
report is rewritten after every part, so whatever finished is on disk even if
the whole command is killed. The parts need torch, ninja, numpy, pillow,
safetensors, scipy and scikit-image; the tests also need SQLAlchemy (the test
suite's storage fixtures), pytest and hypothesis; the configuration reader needs
APScheduler; the sticker encode needs PyAV (skipped without it). MediaPipe is
not needed. It works on torch >= 2.11 (the GPU machines' version). On a
machine without a GPU every part says so and the report is still written
(``--quick`` shrinks the workloads for trying the command out on a CPU).

Exit status: 0 when every part passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parent.parent
# bench/queue.py would shadow the standard library's queue (torch imports it).
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))
# The fused ops' extensions, one per kernel source (engine.ops._build.EXTENSIONS names the same; this
# script imports no torch, so it reads the folder).
OPS = tuple(sorted(p.stem for p in (REPO / "engine" / "ops" / "cuda").glob("*.cu")))
OUTPUT_TAIL_CHARS = 12_000  # per part, in the report


@dataclass
class Part:
    name: str
    title: str
    timeout_s: float
    commands: list[list[str]]   # run together; the part passes when every one exits 0
    result_json: pathlib.Path | None = None


@dataclass
class Outcome:
    part: Part
    status: str = "not run"     # passed / FAILED (exit N) / TIMED OUT after N s / skipped: why
    seconds: float = 0.0
    output: str = ""
    extra: list[str] = field(default_factory=list)  # Markdown lines a part adds (the pipeline's tables)


def parts(quick: bool, json_dir: pathlib.Path) -> list[Part]:
    py = sys.executable
    if quick:  # for trying the command on a CPU: tiny workloads, same code paths
        timing = [py, "bench/stage_timing.py", "--warmup", "1", "--steps", "2"]
        nets = [py, "bench/nets.py", "--preset", "slim", "--repeats", "1", "--no-layouts", "--only", "stylegan2"]
        render = [py, "bench/render.py", "--presets", "slim512", "--frames", "8", "--measure-frames", "2"]
        kernels = [py, "bench/kernels.py", "--repeats", "2"]
        layout = [py, "bench/stage_timing.py", "--warmup", "1", "--steps", "2", "--precisions", "fp32",
                  "--channels-last", "both", "--no-dual-schedules", "--no-pack"]
        branches = [py, "bench/stage_timing.py", "--warmup", "1", "--steps", "2", "--precisions", "fp32",
                    "--concurrent-branches", "both", "--no-dual-schedules", "--no-pack"]
        profile = [py, "bench/step_profile.py", "--steps", "2", "--top", "5", "--by-source"]
        encode = [py, "bench/stickers.py", "--photographed-pack", "--pack-stickers", "2", "--frames", "4",
                  "--pack-workers", "2", "--vp9-threads", "1", "2", "--ahead", "off", "on"]
        job_bytes = [py, "bench/job_bytes.py", "--preset", "slim128", "--repeats", "1"]
        compile_ = [py, "bench/stage_timing.py", "--warmup", "1", "--steps", "2", "--precisions", "fp32",
                    "--compile", "both", "--compile-backend", "aot_eager", "--no-dual-schedules", "--no-pack"]
    else:
        # CUDA graphs only (the engine's default; eager steps were timed side by side in run 5), and
        # one precision in the profile (bf16's kernels were the same): the command stays under 8 minutes
        timing = [py, "bench/stage_timing.py", "--preset", "full", "--device", "cuda", "--graphs", "on"]
        nets = [py, "bench/nets.py", "--device", "cuda", "--preset", "full", "--repeats", "3", "--no-layouts"]
        render = [py, "bench/render.py", "--device", "cuda", "--preset", "full"]
        kernels = [py, "bench/kernels.py"]
        # the engine's precision on CUDA, graphs on; NCHW and channels-last side by side
        # (the pack's files do not depend on the layout or the streams: the pipeline part times them)
        layout = [py, "bench/stage_timing.py", "--preset", "full", "--device", "cuda", "--graphs", "on",
                  "--precisions", "bf16", "--channels-last", "both", "--no-dual-schedules", "--no-pack"]
        # the same, one stream against concurrent branches
        branches = [py, "bench/stage_timing.py", "--preset", "full", "--device", "cuda", "--graphs", "on",
                    "--precisions", "bf16", "--concurrent-branches", "both", "--no-dual-schedules", "--no-pack"]
        # eager steps run the kernels a replay runs, and only they say whose code launched them
        profile = [py, "bench/step_profile.py", "--preset", "full", "--device", "cuda", "--precisions", "fp32",
                   "--graphs", "off", "--by-source"]
        # the engine's encode workers, files on 1 and 2 libvpx threads, searches running ahead or not
        encode = [py, "bench/stickers.py", "--photographed-pack", "--pack-stickers", "7", "--frames", "30", "--fps",
                  "15", "--pack-workers", "0", "--vp9-threads", "1", "2", "--ahead", "off", "on"]
        job_bytes = [py, "bench/job_bytes.py", "--device", "cuda"]
        # the engine's precision on CUDA, graphs on; eager and inductor side by side
        compile_ = [py, "bench/stage_timing.py", "--preset", "full", "--device", "cuda", "--graphs", "on",
                    "--precisions", "bf16", "--compile", "both", "--no-dual-schedules", "--no-pack"]
    timing_json = json_dir / "stage_timing.json"
    return [
        Part("build", "Fused CUDA ops: build and self-check", 300,
             [[py, "-m", "engine.ops.prebuild", "--ops", op] for op in OPS]),
        Part("tests", "GPU tests (`pytest -m 'gpu and not slow'`)", 300,
             [[py, "-m", "pytest", "-m", "gpu and not slow", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               *gpu_test_files()]]),
        Part("syncs", "Host synchronisations inside the steps (bench/host_syncs.py)", 150,
             [[py, "bench/host_syncs.py"]]),
        Part("pipeline", "Per-user pipeline at full size (bench/stage_timing.py)", 300,
             [timing + ["--json", str(timing_json)]], result_json=timing_json),
        Part("kernels", "Fused kernels against what they replaced (bench/kernels.py)", 120, [kernels]),
        Part("layout", "The pipeline with channels-last generators, side by side (bench/stage_timing.py "
             "--channels-last both)", 240, [layout]),
        Part("branches", "The pipeline with a step's independent parts on streams of their own, side by side "
             "(bench/stage_timing.py --concurrent-branches both)", 240, [branches]),
        Part("nets", "Networks at full size (bench/nets.py)", 240, [nets]),
        Part("profile", "Where a step's time goes, by kernel and by our function (bench/step_profile.py)", 240,
             [profile]),
        Part("render", "Multi-view rendering at full size (bench/render.py)", 180, [render]),
        Part("encode", "A Telegram pack's files from photographed frames (bench/stickers.py --photographed-pack)", 150,
             [encode]),
        Part("bytes", "A job's bytes between its GPU parts, on its thread and beside it (bench/job_bytes.py)", 90,
             [job_bytes]),
        Part("compile", "The pipeline with the generator passes under torch.compile (inductor), side by side "
             "(bench/stage_timing.py --compile both)", 480, [compile_]),
        Part("compile-tests", "Inductor-compiled generator passes inside captured steps follow the eager loss "
             "curves (`pytest -m 'gpu and slow'`)", 300,
             [[py, "-m", "pytest", "-m", "gpu and slow", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "tests/engine/avatar/test_compiled.py"]]),
    ]


def gpu_test_files() -> list[str]:
    """The test files with ``gpu``-marked tests: collecting only these keeps the CPU-only
    suites (and their imports: MediaPipe, the chat libraries) out of the GPU run."""
    return sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("test_*.py")
                  if "mark.gpu" in path.read_text(encoding="utf-8"))


def environment() -> list[str]:
    lines = [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU cores"]
    try:
        import torch

        lines.append(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            lines.append(f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                         f"{props.multi_processor_count} SMs, compute capability {props.major}.{props.minor}")
        else:
            lines.append("- GPU: none visible to torch")
    except Exception as exc:  # noqa: BLE001 - the report says what is broken
        lines.append(f"- torch: cannot import ({exc})")
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
        lines.append(f"- driver, max SM clock: {smi.stdout.strip() or smi.stderr.strip()}")
    nvcc = shutil.which("nvcc")
    lines.append(f"- nvcc: {nvcc or 'not on PATH'}")
    for module in ("ninja", "sqlalchemy", "apscheduler", "av", "mediapipe", "skimage"):
        try:
            __import__(module)
            lines.append(f"- {module}: present")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"- {module}: missing ({type(exc).__name__})")
    return lines


def run_part(part: Part, timeout_s: float, env: dict[str, str]) -> Outcome:
    """Run the part's commands at once, each in its own process group, killed together at the timeout."""
    outcome = Outcome(part)
    if timeout_s < 10:
        outcome.status = "skipped: the budget is spent"
        return outcome
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for cmd in part.commands]
    outputs, codes, timed_out = [], [], False
    for cmd, proc in zip(part.commands, procs):
        left = max(1.0, timeout_s - (time.monotonic() - start))
        try:
            out, _ = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        outputs.append(f"$ {' '.join(cmd[1:])}\n{out}")
        codes.append(proc.returncode)
    outcome.seconds = time.monotonic() - start
    outcome.output = "\n".join(outputs)
    if timed_out:
        outcome.status = f"TIMED OUT after {timeout_s:.0f} s"
    elif any(codes):
        outcome.status = f"FAILED (exit {', '.join(str(c) for c in codes)})"
    else:
        outcome.status = "passed"
    if part.result_json is not None and part.result_json.is_file():
        from bench.stage_timing import summarise

        outcome.extra = summarise(json.loads(part.result_json.read_text()))
    return outcome


def write_report(path: pathlib.Path, env_lines: list[str], outcomes: list[Outcome], total_s: float) -> None:
    lines = ["# emoji3d GPU check", "", "Written by `make gpu-check` (bench/gpu_check.py).", "", "## Machine", "",
             *env_lines, "", "## Summary", "", "| part | status | seconds |", "|---|---|---:|"]
    lines += [f"| {o.part.name} | {o.status} | {o.seconds:.0f} |" for o in outcomes]
    lines += ["", f"Total: {total_s:.0f} s.", ""]
    for o in outcomes:
        lines += [f"## {o.part.title}", "", f"Status: {o.status} ({o.seconds:.0f} s).", ""]
        if o.extra:
            lines += o.extra
        if o.output:
            tail = o.output[-OUTPUT_TAIL_CHARS:]
            lines += ["<details><summary>output</summary>", "", "```", tail.rstrip(), "```", "", "</details>", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=pathlib.Path, default=REPO / "bench" / "results" / "gpu-check.md")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all parts together")
    p.add_argument("--parts", nargs="+", choices=[part.name for part in parts(True, REPO)],
                   default=None)
    p.add_argument("--json-out", type=pathlib.Path, default=None,
                   help="folder for the pipeline part's measurements (default: beside the report)")
    p.add_argument("--quick", action="store_true", help="tiny workloads, for trying the command on a CPU")
    args = p.parse_args(argv)
    json_dir = args.json_out or args.out.parent
    json_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x])}
    env.setdefault("MAX_JOBS", str(max(1, (os.cpu_count() or 2) // len(OPS))))
    start = time.monotonic()
    env_lines = environment()
    chosen = [part for part in parts(args.quick, json_dir) if args.parts is None or part.name in args.parts]
    outcomes = [Outcome(part) for part in chosen]
    write_report(args.out, env_lines, outcomes, 0.0)
    for i, part in enumerate(chosen):
        left = args.budget - (time.monotonic() - start)
        print(f"== {part.name} (timeout {min(part.timeout_s, left):.0f} s)", flush=True)
        outcomes[i] = run_part(part, min(part.timeout_s, left), env)
        print(f"   {outcomes[i].status} in {outcomes[i].seconds:.0f} s", flush=True)
        write_report(args.out, env_lines, outcomes, time.monotonic() - start)
    print(f"report: {args.out}")
    return 0 if all(o.status == "passed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
