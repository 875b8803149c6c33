"""Where a stage's step makes the host wait for the GPU, op by op (CUDA only).

    python bench/host_syncs.py [--preset slim|full] [--precision fp32|bf16] [--stages ...]

A host sync inside a step drains the GPU queue every step, and a step with one
cannot be captured as a CUDA graph (engine/avatar/step_graph.py). The test
``test_stage_code_makes_no_host_sync_inside_the_step_loop`` says *that* a
stage syncs; inside ``backward`` it can only name the ``backward()`` line. This
script names the op: for each stage it runs the pipeline (eagerly, graphs off)
with CUDA's sync debug mode set to "error" from the stage's second step on,
and autograd's anomaly mode on, so the first synchronising call raises; for an
op of the backward pass anomaly mode also prints the traceback of the forward
call that made it. One run per stage (each run stops at its stage's first
sync); it prints one line per stage, then the tracebacks.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import pathlib
import sys
import traceback
import warnings
from contextlib import redirect_stderr

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

STAGES = ("style_finetune", "invert_3d", "pivotal_tuning", "dual_branch")


def find_sync(pipe_factory, portrait, exemplar, stage: str) -> tuple[str, str]:
    """(one-line outcome, details) for the first host sync in ``stage``'s steps after its first."""

    def progress(name: str, step: int, total: int) -> None:
        if name == stage:
            torch.cuda.set_sync_debug_mode("error" if step < total else "default")
        elif step == total and name == STAGES[-1]:
            torch.cuda.set_sync_debug_mode("default")

    captured = io.StringIO()
    try:
        with redirect_stderr(captured), warnings.catch_warnings(), torch.autograd.detect_anomaly(check_nan=False):
            warnings.simplefilter("always")
            pipe_factory()(portrait, exemplar, seed=0, progress=progress)
        return "no host sync", ""
    except Exception as exc:  # noqa: BLE001 - the sync's error is what we are after
        details = captured.getvalue() + "".join(traceback.format_exception(exc))
        return f"SYNC: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", details
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["slim", "full"], default="slim")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("host_syncs: no CUDA device here (the sync debug mode is CUDA's)")
        return 0
    from bench.inputs import sample_inputs
    from emoji3d.pipeline_config import PipelineConfig
    from engine.avatar.dual import round_cycle
    from engine.avatar.networks import full_networks, slim_networks
    from engine.avatar.pipeline import Pipeline
    from engine.cuda_math import configure_cuda_math

    # Without cuDNN's autotuning: its once-per-shape timing waits for the device by design, the first
    # time each shape runs, and would be reported as a sync of the step where a shape first appears.
    configure_cuda_math(cudnn_autotune=False)
    nets = (full_networks if args.preset == "full" else slim_networks)(0, "cuda")
    portrait, exemplar = sample_inputs(_HERE.parent)
    # the first step, then one whole cycle of stage 5's kinds of round, each checked
    steps = 1 + round_cycle(PipelineConfig().dual)
    cfg = dataclasses.replace(PipelineConfig().reduced(steps), precision=args.precision, cuda_graphs=False)
    outcomes = {stage: find_sync(lambda: Pipeline(nets, cfg), portrait, exemplar, stage) for stage in args.stages}
    print(f"| stage ({args.preset}, {args.precision}) | first host sync after step 1 |\n|---|---|")
    for stage, (line, _) in outcomes.items():
        print(f"| {stage} | {line} |")
    for stage, (_, details) in outcomes.items():
        if details:
            print(f"\n## {stage}\n{details[-6000:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
