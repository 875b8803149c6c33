"""Seconds per pipeline stage, and in total, for selfie + style -> stylized 3D avatar.

    python bench/pipeline.py [--preset slim|full] [--steps N] [--device auto|cpu|cuda] [--precision bf16|fp32]
    python bench/pipeline.py --full-flops     # FLOPs at the official sizes, before vs now, any CPU

- ``slim`` (default on the CPU): the slim random-weight networks.
- ``full`` (GPU): full-size architectures (StyleGAN2 1024 + D, e4e, EG3D
  FFHQ-512, ArcFace, LPIPS VGG trunk) with random weights; compute cost does
  not depend on the weight values.

Each stage runs ``--steps`` optimiser steps; the table also projects the time
of the configured step counts (config.toml [pipeline.*]) from the measured
seconds per step. The portrait and exemplar are the real face crops of the
bundled sample selfie and 'toon' style. A second call with the style cached
shows what a returning style costs (the product goal: < 60 s on one H100).

Then it counts the FLOPs of one step of each stage (forward + backward) with the
stage code of before issue 17 (bench/stages_before.py: constant targets
re-encoded every step, PTI's LPIPS with the VGG16 trunk on the full render,
stage 5's duplicate renders and full style loss) and with the current code,
side by side, and the per-user totals at the configured step counts
(``--no-flops`` skips it). ``--full-flops`` does the same count at the
official sizes on fake tensors (shapes only, nothing computed: a few minutes
on a CPU), then PTI alone with its previous LPIPS (VGG16 at 256 px) against
PTI's own (AlexNet on the 512 px render), and exits. Measured there: 3,140 ->
1,344 TFLOP per user with the style cached (-57.2 %; PTI at its 350 steps,
which its early stop can only shorten); stage 5 7.10 -> 1.73 TFLOP per round,
PTI 1.43 -> 0.95 (1.02 with VGG16 at 256 px), inversion 1.02 -> 0.98.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import sys
import time
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def every_round_2d(dual_cfg):
    """Stage 5 as it was before its 2D branch went to every ``update_2d_every``-th round: every round,
    at the learning rate that moves it as far (engine/avatar/dual.py)."""
    return dataclasses.replace(dual_cfg, update_2d_every=1, lr_2d=dual_cfg.lr_2d / dual_cfg.update_2d_every)


def flop_steps(dual_cfg) -> int:
    """Steps per stage when counting FLOPs: the first (with the stage's set-up), then one whole cycle
    of stage 5's kinds of round (with and without the 2D update and the style loss)."""
    from engine.avatar.dual import round_cycle

    return 1 + round_cycle(dual_cfg)
STAGES = ("style_finetune", "invert_3d", "pivotal_tuning", "dual_branch")


@contextlib.contextmanager
def earlier_stages():
    """The pipeline with the stage code of before issue 17 (bench/stages_before.py): only for
    the before/after FLOP comparison."""
    from bench import stages_before
    from engine.avatar import pipeline as pipeline_module

    names = ("invert_3d", "pivotal_tuning", "dual_branch_train")
    saved = {n: getattr(pipeline_module, n) for n in names}
    try:
        for n in names:
            setattr(pipeline_module, n, getattr(stages_before, n))
        yield
    finally:
        for n, fn in saved.items():
            setattr(pipeline_module, n, fn)


def count_flops(pipe, portrait, exemplar) -> dict[str, tuple[float, float]]:
    """Per stage: (FLOPs of the first step including the stage's set-up, FLOPs of a later step),
    forward + backward, counted by ``torch.utils.flop_counter.FlopCounterMode`` over one run of
    :func:`flop_steps` steps per stage (the progress callback marks the step boundaries)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    marks: list[tuple[str, int]] = []

    def progress(stage: str, step: int, total: int) -> None:
        marks.append((stage, counter.get_total_flops()))

    with counter:
        pipe(portrait, exemplar, seed=0, progress=progress)
    out, before = {}, 0
    for stage in STAGES:
        totals = [f for s, f in marks if s == stage]
        first, rest = totals[0] - before, (totals[-1] - totals[0]) / max(1, len(totals) - 1)
        out[stage] = (float(first), float(rest))
        before = totals[-1]
    return out


def print_flops(nets, portrait, exemplar, configured) -> None:
    from engine.avatar.pipeline import Pipeline

    reduced = configured.reduced(flop_steps(configured.dual))
    earlier_cfg = dataclasses.replace(reduced, precision="fp32", dual=dataclasses.replace(
        every_round_2d(reduced.dual), style_batch=reduced.style.batch, style_every=1))
    with earlier_stages():  # whose PTI had the VGG16 LPIPS of stages 3 and 5
        before = count_flops(Pipeline(dataclasses.replace(nets, lpips_pti=nets.lpips), earlier_cfg), portrait,
                             exemplar)
    after = count_flops(Pipeline(nets, dataclasses.replace(reduced, precision="fp32")), portrait, exemplar)
    print_flop_table(f"FLOPs (forward + backward, FlopCounterMode), before issue 17 vs now, {nets.preset} "
                     "networks", before, after, configured)


class _Counted(Exception):
    """Raised from the progress callback once enough steps are counted: it leaves the stage
    before its loss terms are read back (fake tensors have no values to read)."""


@contextlib.contextmanager
def full_size_runs(stages):
    """Inside a fake-tensor mode (shapes only: nothing is computed, so it runs on any CPU), yields
    ``(runs, counted_steps)``: ``runs[stage](progress)`` runs one per-user stage at the official
    sizes. ``stages`` holds ``finetune_style``, ``invert_3d``, ``pivotal_tuning``,
    ``dual_branch_train`` (the current ones or bench/stages_before.py's), ``pti_lpips`` (the
    ``Networks`` field PTI's LPIPS comes from) and ``pti`` (changes to the configured
    ``[pipeline.pti]``). Counting :func:`flop_steps` steps covers the first (with the stage's set-up)
    and one whole cycle of stage 5's kinds of round; raise :class:`_Counted` from ``progress`` at
    ``counted_steps`` to leave the stage before its loss terms are read back. Inputs are zeros of
    the right shapes; the crop similarity is a plain 1024 -> 512 scaling (its sampling cost is
    negligible)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from emoji3d.config import load_config
    from engine.avatar import params
    from engine.avatar.dual import DualInputs
    from engine.avatar.invert import Inversion
    from engine.avatar.networks import IdentityDistance, full_configs
    from engine.avatar.pipeline import TUNE_PREFIXES_2D, TUNE_PREFIXES_3D, Networks, Pipeline, PortraitInputs
    from engine.avatar.warp import frame_warp

    cfg = load_config(_HERE.parent / "config.toml").pipeline.reduced(1000)
    cfg = dataclasses.replace(cfg, precision="fp32", pti=dataclasses.replace(cfg.pti, **stages.pti))
    similarity = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)  # FFHQ 1024 -> EG3D 512 px
    warp = frame_warp(similarity.float(), 1024, 512, "cpu")  # real tensors: built before the fake mode
    with FakeTensorMode(allow_non_fake_inputs=True):
        built = {name: cls(config).eval().requires_grad_(False) for name, (cls, config) in full_configs().items()}
        nets = Networks(g2d=built["g2d"], d2d=built["d2d"], e4e=built["e4e"].encoder,
                        e4e_latent_avg=built["e4e"].latent_avg, g3d=built["g3d"], lpips=built["lpips"],
                        lpips_pti=built["lpips_pti"],
                        id_loss=IdentityDistance(built["arcface"]), preset="full", weights_id="full")
        pipe = Pipeline(nets, cfg)
        gen = torch.Generator().manual_seed(0)
        c = torch.zeros(1, 25)
        target = torch.zeros(1, 3, 512, 512)
        pivot = Inversion(torch.zeros(1, nets.g3d.num_ws, 512), [torch.zeros(s) for s in pipe.noise_shapes_3d()],
                          None)
        id_loss = pipe._id_loss_in_3d_frame(PortraitInputs(None, None, c, similarity, "fake"))
        num_ws_2d = nets.g2d.num_ws

        def trainable(module, prefixes):
            return {k: v.requires_grad_(True) for k, v in params.trainable_copy(module, include=prefixes).items()}

        yield {
            "style_finetune": lambda progress: stages.finetune_style(
                trainable(nets.g2d, TUNE_PREFIXES_2D), torch.zeros(num_ws_2d, 512), torch.zeros(1, 3, 1024, 1024),
                pipe.synthesis_2d, pipe.mapping_2d, pipe.features_2d, cfg.style, gen, progress, "fp32"),
            "invert_3d": lambda progress: stages.invert_3d(
                target, c, pipe.render_3d, nets.lpips, torch.zeros(1, 1, 512), 1.0, pipe.noise_shapes_3d(),
                nets.g3d.num_ws, cfg.inversion, gen, progress, "fp32"),
            "pivotal_tuning": lambda progress: stages.pivotal_tuning(
                trainable(nets.g3d, TUNE_PREFIXES_3D), target, pivot, c, pipe.render_3d,
                getattr(nets, stages.pti_lpips), id_loss, cfg.pti, progress, "fp32"),
            "dual_branch": lambda progress: stages.dual_branch_train(
                trainable(nets.g3d, TUNE_PREFIXES_3D), trainable(nets.g2d, TUNE_PREFIXES_2D),
                DualInputs(w_2d=torch.zeros(1, num_ws_2d, 512), w_e=torch.zeros(num_ws_2d, 512),
                           exemplar_2d=torch.zeros(1, 3, 1024, 1024), exemplar_3d=target, pivot=pivot, c=c,
                           warp=warp),
                pipe.render_3d, pipe.synthesis_2d, pipe.mapping_2d, pipe.features_2d, nets.lpips, cfg.dual,
                cfg.style, gen, progress, "fp32"),
        }, flop_steps(cfg.dual)


def run_counted(run, counted_steps: int, mark: Callable[[], object]) -> list:
    """Run one stage of :func:`full_size_runs` for ``counted_steps`` steps; returns ``mark()`` taken at
    the end of each step."""
    marks: list = []

    def progress(name: str, step: int, total: int) -> None:
        marks.append(mark())
        if step == counted_steps:
            raise _Counted

    try:
        run(progress)
    except _Counted:
        pass
    return marks


def full_size_flops(stages, only: tuple[str, ...] = STAGES) -> dict[str, tuple[float, float]]:
    """(first step, later step) FLOPs per stage at the official sizes, counted on fake tensors
    (:func:`full_size_runs`: a minute or two on any CPU). Only the stages named in ``only`` are
    counted."""
    from torch.utils.flop_counter import FlopCounterMode

    out: dict[str, tuple[float, float]] = {}
    with full_size_runs(stages) as (runs, counted_steps):
        for stage, run in runs.items():
            if stage not in only:
                continue
            counter = FlopCounterMode(display=False)
            with counter:
                marks = run_counted(run, counted_steps, counter.get_total_flops)
            out[stage] = (float(marks[0]), float(marks[-1] - marks[0]) / (len(marks) - 1))
            print(f"  counted {stage} at full size", file=sys.stderr, flush=True)
    return out


def print_full_size_flops() -> int:
    from bench import stages_before
    from emoji3d.config import load_config
    from engine.avatar import dual, invert, stylize

    class Now:
        finetune_style, invert_3d = stylize.finetune_style, invert.invert_3d
        pivotal_tuning, dual_branch_train = invert.pivotal_tuning, dual.dual_branch_train
        pti_lpips, pti = "lpips_pti", {}

    class Before(Now):
        invert_3d, pivotal_tuning = stages_before.invert_3d, stages_before.pivotal_tuning
        dual_branch_train = stages_before.dual_branch_train
        pti_lpips = "lpips"  # the first version's PTI: VGG16 LPIPS on the whole render

    class PtiVgg256(Now):
        """PTI before it took PTI's own LPIPS back: VGG16 on the render area-averaged to 256 px."""
        pti_lpips, pti = "lpips", {"lpips_size": 256}

    configured = load_config(_HERE.parent / "config.toml").pipeline
    now = full_size_flops(Now)
    print_flop_table("FLOPs at the official sizes (full preset, fake tensors), before issue 17 vs now",
                     full_size_flops(Before), now, configured)
    print_flop_table("PTI's LPIPS, VGG16 at 256 px (before) vs AlexNet at 512 px (now), at the official sizes",
                     {**now, **full_size_flops(PtiVgg256, only=("pivotal_tuning",))}, now, configured)
    return 0


def print_flop_table(title: str, before: dict, after: dict, configured) -> None:
    steps = {"style_finetune": configured.style.steps, "invert_3d": configured.inversion.steps,
             "pivotal_tuning": configured.pti.steps, "dual_branch": configured.dual.steps}
    print(f"\n# {title}")
    print(f"{'stage':<16} {'GFLOP/step before':>18} {'now':>10} {'ratio':>6} {'GFLOP/user before':>18} {'now':>10}")
    totals = {"before": 0.0, "now": 0.0}
    for stage in STAGES:
        b_first, b_step = before[stage]
        a_first, a_step = after[stage]
        n = steps[stage]
        b_user, a_user = b_first + (n - 1) * b_step, a_first + (n - 1) * a_step
        if stage != "style_finetune":
            totals["before"] += b_user
            totals["now"] += a_user
        print(f"{stage:<16} {b_step / 1e9:>18.2f} {a_step / 1e9:>10.2f} {a_step / max(b_step, 1):>6.2f} "
              f"{b_user / 1e9:>18.0f} {a_user / 1e9:>10.0f}")
    print(f"per user, style cached: {totals['before'] / 1e9:.0f} -> {totals['now'] / 1e9:.0f} GFLOP "
          f"({100 * (1 - totals['now'] / totals['before']):.1f} % less; goal >= 25 %)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["slim", "full"], default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per stage (default: 4 on CPU, 20 on GPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None,
                   help="the stages' arithmetic (default: config.toml [pipeline] precision)")
    p.add_argument("--no-flops", action="store_true", help="skip the before/after FLOP count")
    p.add_argument("--full-flops", action="store_true",
                   help="only count FLOPs at the official sizes, before vs now, on fake tensors (no timing; any CPU)")
    args = p.parse_args(argv)
    if args.full_flops:
        return print_full_size_flops()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    preset = args.preset or ("full" if device.type == "cuda" else "slim")
    steps = args.steps or (20 if device.type == "cuda" else 4)

    from PIL import Image

    from emoji3d.config import load_config
    from engine.face.analyze import analyze_face
    from engine.face.landmarks import LandmarkDetector
    from engine.avatar.networks import full_networks, slim_networks
    from engine.avatar.pipeline import MemoryCache, Pipeline
    from engine.avatar.portrait import portrait_inputs

    repo = _HERE.parent
    configured = load_config(repo / "config.toml").pipeline
    if args.precision:
        configured = dataclasses.replace(configured, precision=args.precision)
    with LandmarkDetector() as det:
        selfie = np.asarray(Image.open(repo / "samples" / "selfie.jpg").convert("RGB"))
        style = np.asarray(Image.open(repo / "styles" / "toon" / "exemplar.png").convert("RGB"))
        t0 = time.perf_counter()
        portrait = portrait_inputs(analyze_face(selfie, detector=det), "selfie")
        face_s = time.perf_counter() - t0
        exemplar = portrait_inputs(analyze_face(style, detector=det), "toon")
    t0 = time.perf_counter()
    nets = full_networks(0, device) if preset == "full" else slim_networks(0, device)
    load_s = time.perf_counter() - t0
    pipe = Pipeline(nets, configured.reduced(steps))
    cache = MemoryCache()
    if device.type == "cuda":
        torch.cuda.synchronize()
    result = pipe(portrait, exemplar, seed=0, cache=cache)
    second = pipe(dataclasses.replace(portrait, key="another-selfie"), exemplar, seed=0, cache=cache)

    full_steps = {"style_finetune": configured.style.steps, "invert_3d": configured.inversion.steps,
                  "pivotal_tuning": configured.pti.steps, "dual_branch": configured.dual.steps}
    print(f"# preset {preset}, device {device}, precision {pipe.precision}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} CPU thread(s)") + f", {steps} steps per stage")
    print(f"# network loading {load_s:.1f} s (once per engine process); face analysis {face_s * 1000:.0f} ms")
    print(f"{'stage':<16} {'steps':>5} {'seconds':>9} {'s/step':>8} {'config steps':>12} {'projected s':>12}")
    total_proj = 0.0
    total_proj_cached = 0.0
    for stage, n_full in full_steps.items():
        log = result.logs[stage]
        per = log.seconds / max(1, log.steps)
        proj = per * n_full
        total_proj += proj
        if stage != "style_finetune":
            total_proj_cached += proj
        print(f"{stage:<16} {log.steps:>5} {log.seconds:>9.2f} {per:>8.3f} {n_full:>12} {proj:>12.1f}")
    print(f"{'total (measured)':<16} {'':>5} {result.logs['total'].seconds:>9.2f}")
    print(f"projected with the configured steps: {total_proj:.1f} s; with the style cached: {total_proj_cached:.1f} s")
    print(f"second selfie, style cached (measured at {steps} steps): {second.logs['total'].seconds:.2f} s, "
          f"style stage skipped = {second.logs['style_finetune'].skipped}")
    if not args.no_flops:
        print_flops(nets, portrait, exemplar, configured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
