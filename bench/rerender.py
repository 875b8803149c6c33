"""A re-render (another strength or sticker selection, from the stored avatar) against a full remake.

    python bench/rerender.py [--steps N] [--device auto|cpu|cuda] [--repeats R]

Both run in one process, side by side, through the engine's own job handlers
(``engine.tasks``) on a throw-away data folder with the slim preset (random
weights: the compute is what counts): the bundled sample selfie and the 'toon'
style, the configured ``[[pack.stickers]]`` and ``[pack]`` sizes, each stage of
the remake cut to ``--steps`` optimiser steps (default: 4 on the CPU, the
configured counts on a GPU). The remake of the first pack is ordered with
another seed, as the bots' "try again" button does, so the style's finetune
and the selfie's inversion are served from the cache as they are for a user;
the re-render changes the strength. Each is timed ``--repeats`` times (a new
seed / strength each time) and the table prints the median seconds and the
ratio. On the CPU the remake is also projected to the configured step counts
(config.toml [pipeline.*]) from its measured seconds per stage, as
bench/pipeline.py does. The networks load once, before anything is timed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

ROOT = _HERE.parent


def run_job(db, blobs, handlers, job_id: int) -> float:
    """Seconds the worker takes to run the job ``job_id`` (it must succeed)."""
    from engine.worker import Worker
    from storage import jobs

    worker = Worker(db, blobs, handlers, f"bench:{os.getpid()}", 3600.0, poll_interval=0.05, only_jobs=[job_id])
    began = time.perf_counter()
    while not jobs.get_job(db, job_id).done:
        worker.run_once()
    seconds = time.perf_counter() - began
    job = jobs.get_job(db, job_id)
    if job.status != "succeeded":
        raise SystemExit(f"job {job_id} ({job.kind}) {job.status}: {job.error}")
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per stage of the remake")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    from emoji3d.config import PathsConfig, load_config
    from emoji3d.images import DecodeLimits
    from emoji3d.orders import RERENDER_KIND, PackOrder, RerenderOrder
    from engine.face.analyze import FaceConfig, analyze_face
    from engine.face.landmarks import LandmarkDetector
    from engine.tasks import build_handlers
    from storage import jobs, packs, selfies, users
    from storage import styles as st
    from storage.connect import open_storage
    from storage.style_catalog import sync_global_styles
    from emoji3d.images import clean_image

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bench-rerender-"))
    cfg = load_config(ROOT / "config.toml")
    cfg = dataclasses.replace(cfg, root=ROOT, paths=dataclasses.replace(PathsConfig(), data_dir=str(folder)),
                              engine=dataclasses.replace(cfg.engine, device=device, preset="slim"))
    steps = args.steps if args.steps is not None else (None if device == "cuda" else 4)
    configured = {"style_finetune": cfg.pipeline.style.steps, "invert_3d": cfg.pipeline.inversion.steps,
                  "pivotal_tuning": cfg.pipeline.pti.steps, "dual_branch": cfg.pipeline.dual.steps}
    if steps is not None:
        cfg = dataclasses.replace(cfg, pipeline=cfg.pipeline.reduced(steps))

    db, blobs = open_storage(cfg)
    limits = DecodeLimits.from_config(cfg.limits)
    detector = LandmarkDetector()
    check = lambda rgb: analyze_face(rgb, FaceConfig(), detector)  # noqa: E731
    sync_global_styles(db, blobs, cfg.styles_dir, limits, face_check=check)
    detector.close()
    style = st.find_style(db, "toon")
    user = users.get_or_create_user(db, "local", "bench")
    selfie = blobs.put_bytes(clean_image((ROOT / "samples" / "selfie.jpg").read_bytes(), limits).png)
    selfies.add_selfie(db, user.id, selfie)
    print(f"loading the networks (slim preset, {device})...", file=sys.stderr)
    handlers = build_handlers(cfg)

    def order(seed: int, pack_id: int | None) -> PackOrder:
        return PackOrder(user_id=user.id, selfie_digest=selfie, exemplar_digest=style.exemplar_digest,
                         strength=1.0, platform="telegram", style_id=style.id, style_version=style.version,
                         seed=seed, pack_id=pack_id, regenerate=pack_id is not None,
                         settings=cfg.pipeline.digest("style", "inversion", "pti", "dual"))

    pack, first = packs.order_pack(db, order(0, None))
    print("the first pack (fills the style and selfie caches; not timed)...", file=sys.stderr)
    run_job(db, blobs, handlers, first)
    remakes, rerenders, projected = [], [], []
    for r in range(args.repeats):
        _, job_id = packs.order_pack(db, order(r + 1, pack.id))
        remakes.append(run_job(db, blobs, handlers, job_id))
        result = packs.result_of(jobs.get_job(db, job_id))
        # the optimisation stages that ran, scaled from the measured steps to the configured ones
        extra = sum(result.timings.get(stage, 0.0) * (n / steps - 1) for stage, n in configured.items()
                    if stage not in result.skipped) if steps else 0.0
        projected.append(remakes[-1] + extra)
        source = packs.get_pack(db, pack.id).job_id
        rr = RerenderOrder(user_id=user.id, pack_id=pack.id, source_job_id=source, strength=0.35 + 0.1 * r,
                           platform="telegram")
        job_id = jobs.enqueue(db, RERENDER_KIND, rr.to_payload(), rr.idempotency_key(), user_id=user.id)
        rerenders.append(run_job(db, blobs, handlers, job_id))
    db.dispose()

    remake, rerender = statistics.median(remakes), statistics.median(rerenders)
    n_stickers = len(cfg.pack.stickers)
    print(f"slim preset on {device}, {torch.get_num_threads()} thread(s); remake at "
          f"{steps if steps is not None else 'the configured'} steps per stage; {n_stickers} stickers, "
          f"{cfg.pack.size} px, {cfg.pack.fps:g} fps; median of {args.repeats}")
    print(f"{'job':<34} {'seconds':>9} {'vs remake':>10}")
    print(f"{'remake (another seed, caches warm)':<34} {remake:>9.2f} {1.0:>10.2f}")
    print(f"{'re-render (another strength)':<34} {rerender:>9.2f} {rerender / remake:>10.2f}")
    if steps:
        full = statistics.median(projected)
        print(f"{'remake, projected at config steps':<34} {full:>9.2f} {full / remake:>10.2f}")
        print(f"re-render / remake: {rerender / remake:.2f} measured at {steps} steps per stage, "
              f"{rerender / full:.3f} projected at the configured steps ({full / rerender:.0f}x faster)")
    else:
        print(f"re-render / remake: {rerender / remake:.3f} ({remake / rerender:.1f}x faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
