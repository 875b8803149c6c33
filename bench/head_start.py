"""Head start bench: the time from a Telegram order to its made pack, with and without the selfie's
inversion started at upload (``[engine] head_start``), side by side in one run.

Usage::

    OMP_NUM_THREADS=1 python bench/head_start.py [--steps 12] [--think 0 2 1000] [--repeats 2]

Measured here: the real bot core (``bots.core.accept_selfie`` with the real MediaPipe face check,
``place_order``) and one real engine (``engine.worker.Worker`` with ``engine.tasks``' handlers, the slim
networks on this CPU, every stage cut to ``--steps`` steps, a one-sticker pack) on a SQLite database and
a blob folder. A user sends a selfie, takes ``--think`` seconds to pick a style and a strength (1000:
longer than the head start takes), and orders with the house style, whose finetune is made before the
timed runs (a house style is finetuned by its own job), and one untimed order warms the engine up. Each
row is the median over ``--repeats`` users, each with their own photo (one pixel changed), so nothing is
cached across users. "before" is the same flow with ``head_start=False``; the two alternate, so both see
the same machine.

Printed: seconds from the order to the made pack (the job's finish; delivery comes on top either way),
and the share of the before time that the head start took off. The saving is at most what the user's
choice takes and at most the inversion's own time (stages 1, 3 and 4).

Then, projected (not measured here): the same arithmetic with the per-stage times measured on an
H200 (``bench/results/2026-12-04-h200-run6-stage_timing.json``, fp32 + CUDA graphs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]  # bench/queue.py
sys.path.insert(0, str(REPO))

H200_TIMING = REPO / "bench" / "results" / "2026-12-04-h200-run6-stage_timing.json"
H200_SELFIE_TO_PACK_S = 46.5  # the same run's projection (README, "GPU check"), the style cached


def _engine_config(folder: Path, steps: int):
    from emoji3d.config import Config, EngineConfig, PackConfig, PathsConfig, StickerEntry

    return dataclasses.replace(
        Config(), root=folder, paths=PathsConfig(data_dir="data"),
        engine=EngineConfig(device="cpu", preset="slim", poll_seconds=1.0),
        pipeline=Config().pipeline.reduced(steps),
        pack=PackConfig(fps=5.0, size=64, stickers=(StickerEntry("turn", "😎", motion="orbit", seconds=0.4),)))


def _selfie_png(variant: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut())
    rgb[0, 0] = [variant % 256, (variant // 256) % 256, 7]  # a distinct photo per user: nothing cached across users
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _wait_done(db, job_id: int, timeout: float) -> float:
    from storage import jobs

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = jobs.get_job(db, job_id)
        if job.done:
            if job.status != "succeeded":
                raise RuntimeError(f"job {job_id} {job.status}: {job.error}")
            return job.finished_at
        time.sleep(0.01)
    raise TimeoutError(f"job {job_id} not done within {timeout} s")


def measure(steps: int, thinks: list[float], repeats: int, timeout: float) -> list[dict]:
    from bots import core
    from engine.tasks import build_handlers
    from engine.worker import Worker
    from storage import jobs, users
    from storage import styles as st
    from storage.blobs import BlobStore
    from storage.db import open_database
    from storage.wakeups import JobWakeups

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _engine_config(Path(tmp), steps)
        db = open_database(cfg.database_url)
        blobs = BlobStore(db, cfg.blob_dir)
        face_check, close_faces = core.default_face_check(cfg)
        bot = core.BotResources(cfg, db, blobs, face_check)
        style = st.add_style(db, "toon", blobs.put_bytes((REPO / "styles" / "toon" / "exemplar.png").read_bytes()),
                             status="ready")
        # The house style's finetune is made by its own job before any order (as `/housestyle add` does).
        jobs.enqueue(db, "style_finetune", {"style_id": style.id, "version": style.version}, "finetune-toon",
                     priority="batch")
        handlers = build_handlers(cfg)
        wakeups = JobWakeups(db)
        worker = Worker(db, blobs, handlers, "bench-engine", float(cfg.engine.lease_seconds),
                        poll_interval=cfg.engine.poll_seconds, wakeups=wakeups)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            _wait_done(db, jobs.find_by_key(db, "finetune-toon").id, timeout)
            variant = 0
            for think in [None, *thinks]:  # None: one untimed order first (the process's first job warms up)
                seconds = {False: [], True: []}
                for _ in range(1 if think is None else repeats):
                    for head_start in ((False,) if think is None else (False, True)):
                        variant += 1
                        user = core.ensure_user(bot, "telegram", f"user-{variant}")
                        core.give_consent(bot, user)
                        user = users.get_user(db, user.id)
                        core.accept_selfie(bot, user, _selfie_png(variant), head_start=head_start)
                        uploaded = time.time()
                        if think is not None and think >= 1000:  # longer than the head start: order once it is done
                            preps = jobs.list_jobs(db, user_id=user.id, kind="prepare_portrait")
                            if preps:
                                _wait_done(db, preps[0].id, timeout)
                        else:
                            time.sleep(max(0.0, uploaded + (think or 0.0) - time.time()))
                        placed = core.place_order(bot, user, "telegram", preset="medium", style_id=style.id,
                                                  seed=cfg.engine.seed)
                        ordered = time.time()
                        seconds[head_start].append(_wait_done(db, placed.job_id, timeout) - ordered)
                if think is None:
                    continue
                before, now = statistics.median(seconds[False]), statistics.median(seconds[True])
                rows.append({"think": think, "before": before, "now": now, "runs": seconds})
        finally:
            worker.request_stop()
            thread.join(60)
            wakeups.close()
            close_faces()
            db.dispose()
    return rows


def projected(thinks: list[float]) -> tuple[float, list[tuple[float, float]]]:
    """(the H200 run's seconds for stages 3 + 4, [(think, order-to-pack seconds)]) from the measured per-step
    times at the configured step counts; stage 1 (e4e, one forward pass) is not in that run and is left out."""
    timing = json.loads(H200_TIMING.read_text())
    run = timing["runs"]["fp32 + CUDA graphs (cuDNN heuristics)"]
    head = sum(run["stages"][s]["seconds_per_step"] * timing["configured_steps"][s]
               for s in ("invert_3d", "pivotal_tuning"))
    return head, [(t, H200_SELFIE_TO_PACK_S - min(t, head)) for t in thinks]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="steps of every optimisation stage")
    ap.add_argument("--think", type=float, nargs="+", default=[0.0, 2.0, 1000.0],
                    help="seconds between the selfie and the order (1000: after the head start is done)")
    ap.add_argument("--repeats", type=int, default=2, help="users per row and flow")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    rows = measure(args.steps, args.think, args.repeats, args.timeout)
    print(f"# Order to made pack, slim networks on this CPU, {args.steps} steps per stage, "
          f"median of {args.repeats} users per cell\n")
    print("| user's choice takes | before (no head start) s | now (head start) s | taken off |")
    print("|---|---:|---:|---:|")
    for r in rows:
        think = "longer than the head start" if r["think"] >= 1000 else f"{r['think']:.0f} s"
        print(f"| {think} | {r['before']:.2f} | {r['now']:.2f} | {1 - r['now'] / r['before']:.0%} |")
    head, proj = projected([3.0, 5.0, 10.0, 20.0, 30.0])
    print(f"\n# Projected on one H200 (not measured here): stages 3 + 4 take {head:.1f} s of the "
          f"{H200_SELFIE_TO_PACK_S} s from selfie to pack\n")
    print("| user's choice takes | order to pack before s | order to pack now s |")
    print("|---|---:|---:|")
    for think, now in proj:
        print(f"| {think:.0f} s | {H200_SELFIE_TO_PACK_S:.1f} | {now:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
