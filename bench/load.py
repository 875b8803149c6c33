"""Load test: N chat users on the fake Telegram and Discord servers order packs against M engines,
while a schedule regenerates a batch of old packs.

Usage::

    OMP_NUM_THREADS=1 python bench/load.py [--users 8] [--discord-every 4] [--orders 2] [--batch 12]
        [--engines 1,2,4] [--job-seconds 0.25] [--db postgresql+psycopg://...] [--blobs s3://...]
        [--timeout 240]

For each M in ``--engines``: a fresh database (a SQLite file, or the tables of
``--db`` dropped first; default EMOJI3D_TEST_PG_URL when set) and blob store (a
folder, or ``--blobs``: default a fresh prefix of a bucket on EMOJI3D_TEST_S3_ENDPOINT
when set), and M engine processes (``python -m engine.worker``).

* Engines run a stand-in for the GPU work under the real job kinds
  (``make_pack`` and ``regenerate_pack``): ``--job-seconds`` of sleep with
  progress reports, then real sticker files (encoded once by engine.stickers at
  start) stored as a real PackResult, and the pack moved through its life cycle
  as the engine does. So the numbers measure the chat, queue, storage and
  delivery path, not the GPU. (The slim pipeline needs the generator weights
  and minutes per job on a CPU, so it is not an option here.)
* Users (bench/load_chat.py): every ``--discord-every``-th user is on Discord,
  the rest on Telegram; each places ``--orders`` orders one after the other
  through the real bots (selfie upload + style choice), waiting for each pack to
  be published on the fake server.
* Batch: ``--batch`` packs made by an older engine version exist at the start;
  the real scheduler (shell.scheduler.start_scheduler, APScheduler with its job
  store in the database) runs a ``regenerate_outdated_packs`` schedule every
  second, which enqueues their ``regenerate_pack`` jobs at batch priority.

Printed per M: jobs/s; queue wait p50/p95 per priority (claim - enqueue);
end-to-end p50/p95 of chat orders (selfie upload -> result published on the fake
server); lost (orders never published, jobs not succeeded, Telegram sets missing
stickers) and duplicated (a handler that ran to the end twice for one job, a
result delivered twice, extra stickers in a set); both must be 0 (exit status 1
otherwise). Every wait is bounded by ``--timeout``; all traffic is loopback.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script, bench/ is sys.path[0], and bench/queue.py would shadow the standard library's queue.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

_JOB_SECONDS_ENV = "EMOJI3D_LOAD_JOB_SECONDS"
_MARKS_ENV = "EMOJI3D_LOAD_MARKS"
_FILES_ENV = "EMOJI3D_LOAD_FILES"
OLD_ENGINE = "0.0.1"


# ---- sticker files (encoded once per run, read by the engines' stand-in) ----

def write_sticker_files(folder: Path) -> None:
    """Real files from engine.stickers' encoders: Telegram video stickers + thumbnail,
    Discord animated stickers + preview."""
    from engine.stickers.encode import encode
    from tests.engine.stickers.content import cartoon

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        (folder / f"telegram_video.{k}").write_bytes(encode(cartoon(6, 64, 64, period=7 + 5 * k), 10.0,
                                                            "telegram_video").data)
        (folder / f"discord_sticker.{k}").write_bytes(encode(cartoon(4, 320, 320, period=7 + 5 * k), 10.0,
                                                             "discord_sticker").data)
    (folder / "telegram_thumb").write_bytes(encode(cartoon(4, 32, 32), 10.0, "telegram_thumb").data)
    (folder / "preview").write_bytes(encode(cartoon(1, 256, 256), 10.0, "preview").data)


# ---- the engines' stand-in handlers (loaded by engine.worker --handlers bench.load:handlers) ----

_EMOJIS = ("😀", "😮", "😉")


def _stand_in_result(ctx, pack_id: int | None, platform: str) -> dict:
    from emoji3d.orders import QUALITY_KEYS, PackResult, StickerFiles

    seconds = float(os.environ[_JOB_SECONDS_ENV])
    for step in range(5):
        ctx.progress("render", step / 5)
        time.sleep(seconds / 5)
    files = Path(os.environ[_FILES_ENV])
    target = "discord_sticker" if platform == "discord" else "telegram_video"
    stickers = [StickerFiles(k, f"s{k}", _EMOJIS[k], {target: ctx.put_blob((files / f"{target}.{k}").read_bytes())})
                for k in range(3)]
    result = PackResult(
        pack_id=pack_id, preset="stand-in", stickers=stickers,
        thumbnail={} if platform == "discord" else {"telegram_thumb": ctx.put_blob((files / "telegram_thumb").read_bytes())},
        preview_png=ctx.put_blob((files / "preview").read_bytes()),
        quality={**{k: None for k in QUALITY_KEYS}, "weak": [], "notes": []})
    return result.to_dict()


def _mark_done(job) -> None:
    with open(Path(os.environ[_MARKS_ENV]) / f"{os.getpid()}.done", "a") as f:
        f.write(f"{job.id}\n")


def _stand_in_make(job, ctx) -> dict:
    from emoji3d.orders import PackOrder
    from storage import packs

    order = PackOrder.from_payload(job.payload)
    if order.pack_id is not None:
        packs.mark_rendering(ctx.db, order.pack_id)
    result = _stand_in_result(ctx, order.pack_id, order.platform)
    if order.pack_id is not None:  # as engine.tasks: a first make becomes ready, a remake shows this job's result
        packs.mark_made(ctx.db, order.pack_id, job.id)
    _mark_done(job)
    return result


def _stand_in_regenerate(job, ctx) -> dict:
    from emoji3d.orders import ENGINE_VERSION
    from storage import packs

    pack = packs.get_pack(ctx.db, int(job.payload["pack_id"]))
    result = _stand_in_result(ctx, pack.id, pack.platform or "local")
    packs.mark_made(ctx.db, pack.id, job.id)  # the made pack now shows the regeneration's result
    packs.mark_regenerated(ctx.db, pack.id, style_version=pack.style_version, engine_version=ENGINE_VERSION)
    _mark_done(job)
    return result


def _stand_in_prepare(job, ctx) -> dict:
    """A Telegram selfie's head start: the stand-in make above models no inversion, so this one does none."""
    _mark_done(job)
    return {"prepared": False}


def handlers() -> dict:
    from emoji3d.orders import JOB_KIND, PREPARE_KIND, REGENERATE_KIND

    return {JOB_KIND: _stand_in_make, REGENERATE_KIND: _stand_in_regenerate, PREPARE_KIND: _stand_in_prepare}


# ---- one scenario ----

def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _face_check():
    from engine.face.analyze import FaceConfig, analyze_face
    from engine.face.landmarks import LandmarkDetector

    det = LandmarkDetector(max_faces=4)
    return (lambda rgb: analyze_face(rgb, FaceConfig(), det)), det


def default_blob_location() -> str | None:
    """A fresh prefix of bucket ``emoji3d-load`` on EMOJI3D_TEST_S3_ENDPOINT, if that is set."""
    endpoint = os.environ.get("EMOJI3D_TEST_S3_ENDPOINT")
    if not endpoint:
        return None
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket="emoji3d-load")
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return f"s3://emoji3d-load/{uuid.uuid4().hex}?endpoint_url={endpoint}&region=us-east-1"


def run_scenario(engines: int, args, work: Path, files: Path, base_rgb, face_check) -> dict:
    from bench.load_chat import ChatOutcome, run_users, selfie_variant
    from bots.core import BotResources
    from emoji3d.config import Config
    from emoji3d.orders import ENGINE_VERSION, PREPARE_KIND
    from emoji3d.schedules import Schedule
    from shell.scheduler import start_scheduler
    from storage import jobs, packs, users
    from storage import styles as st
    from storage.blobs import BlobStore
    from storage.db import open_database

    url = args.db or f"sqlite:///{work / 'load.sqlite3'}"
    if args.db:
        from tests.conftest import reset_pg

        reset_pg(args.db)
    location = args.blobs or default_blob_location() or str(work / "blobs")
    marks = work / "marks"
    marks.mkdir()
    db = open_database(url)
    blobs = BlobStore(db, location)
    style = st.add_style(db, "toon", blobs.put_bytes(selfie_variant(base_rgb, 999_999_999)), status="ready")
    for i in range(args.batch):  # packs an older engine made: the schedule's work
        owner = users.get_or_create_user(db, "telegram", f"batch-{i}")
        pack = packs.create_pack(db, owner.id, style.id, style.version, 0.7, OLD_ENGINE, platform="local")
        assert packs.mark_rendering(db, pack.id) and packs.mark_ready(db, pack.id)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", EMOJI3D_LOG="WARNING",
               **{_JOB_SECONDS_ENV: str(args.job_seconds), _MARKS_ENV: str(marks), _FILES_ENV: str(files)})
    procs = [subprocess.Popen([sys.executable, "-m", "engine.worker", "--db", url, "--blobs", location,
                               "--handlers", "bench.load:handlers", "--worker-id", f"engine-{i}",
                               "--lease", "30", "--poll", "0.05"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(work / f"engine-{i}.log", "wb"))
             for i in range(engines)]
    started = time.time()
    deadline = time.monotonic() + args.timeout
    scheduler = None
    chat_db = open_database(url)
    outcome = ChatOutcome()
    try:
        schedule = Schedule(id="load-regenerate", cron="* * * * * *", action="regenerate_outdated_packs",
                            selector={"limit": max(1, args.batch)})
        scheduler, _ = start_scheduler(db, [schedule], ENGINE_VERSION)
        # Simulated users order again at once: the anti-abuse cooldown between orders is off.
        cfg = dataclasses.replace(Config(), discord=dataclasses.replace(Config().discord, cooldown_seconds=0))
        res = BotResources(cfg, chat_db, BlobStore(chat_db, location), face_check)
        discord_users = args.users // args.discord_every if args.discord_every else 0
        asyncio.run(run_users(res, style, base_rgb, args.users - discord_users, discord_users, args.orders,
                              deadline, outcome))

        def pending() -> bool:
            regen = jobs.list_jobs(db, kind="regenerate_pack", limit=1_000_000)
            return (len(regen) < args.batch or any(j.status not in jobs.FINAL for j in regen)
                    or any(j.status not in jobs.FINAL for j in jobs.list_jobs(db, limit=1_000_000)))

        while time.monotonic() < deadline and pending():
            time.sleep(0.1)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        chat_db.dispose()
    all_jobs = jobs.list_jobs(db, limit=1_000_000)
    db.dispose()
    done_counts: dict[int, int] = {}
    for f in marks.glob("*.done"):
        for line in f.read_text().split():
            done_counts[int(line)] = done_counts.get(int(line), 0) + 1
    wait: dict[str, list[float]] = {"interactive": [], "batch": []}
    for j in all_jobs:
        if j.started_at is not None:
            wait[j.priority].append(j.started_at - j.created_at)
    e2e = [r.published - r.started for r in outcome.orders if r.published is not None]
    finished = [j.finished_at for j in all_jobs if j.finished_at is not None]
    span = (max(finished) - started) if finished else float("nan")
    expected_orders = args.users * args.orders
    return {
        "engines": engines, "jobs": len(all_jobs), "jobs_per_s": len(finished) / span if finished else 0.0,
        "wait_i": (_pct(wait["interactive"], 0.5), _pct(wait["interactive"], 0.95)),
        "wait_b": (_pct(wait["batch"], 0.5), _pct(wait["batch"], 0.95)),
        "e2e": (_pct(e2e, 0.5), _pct(e2e, 0.95)),
        # a head start cancelled by its order (no engine had taken it) is not lost: the order did its work
        "lost": (expected_orders - len(e2e)) + sum(1 for j in all_jobs if j.status != "succeeded" and not (
            j.kind == PREPARE_KIND and j.status == "cancelled"))
                + (args.batch - sum(1 for j in all_jobs if j.kind == "regenerate_pack")) + outcome.incomplete_sets,
        "duplicated": sum(1 for c in done_counts.values() if c > 1) + outcome.duplicated,
        "errors": outcome.errors,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=8, help="simulated chat users")
    ap.add_argument("--discord-every", type=int, default=4, help="every k-th user is on Discord (0: none)")
    ap.add_argument("--orders", type=int, default=2, help="orders per user, one after the other")
    ap.add_argument("--batch", type=int, default=12, help="old packs the regeneration schedule remakes")
    ap.add_argument("--engines", default="1,2,4", help="comma-separated engine counts M")
    ap.add_argument("--job-seconds", type=float, default=0.25, help="stand-in GPU time per job")
    ap.add_argument("--db", default=os.environ.get("EMOJI3D_TEST_PG_URL", ""),
                    help="PostgreSQL URL (its tables are dropped!); default EMOJI3D_TEST_PG_URL, else SQLite")
    ap.add_argument("--blobs", default="", help="blob location (s3://bucket/prefix?endpoint_url=...); default "
                    "a prefix on EMOJI3D_TEST_S3_ENDPOINT when set, else a fresh folder")
    ap.add_argument("--timeout", type=float, default=240.0, help="bound per scenario, seconds")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.engines.split(",") if x.strip()]
    if (not counts or min(counts) < 1 or args.users < 1 or args.orders < 1 or args.batch < 0
            or args.discord_every < 0):
        ap.error("--engines, --users and --orders must be positive, --batch and --discord-every >= 0")
    import numpy as np
    from skimage import data as skdata

    base_rgb = np.ascontiguousarray(skdata.astronaut())  # (512, 512, 3) uint8: a face the real check accepts
    face_check, detector = _face_check()
    discord_users = args.users // args.discord_every if args.discord_every else 0
    where = ("PostgreSQL" if args.db else "SQLite") + (", S3" if args.blobs.startswith("s3://") or
                                                        (not args.blobs and os.environ.get("EMOJI3D_TEST_S3_ENDPOINT"))
                                                        else ", blob folder")
    print(f"{args.users - discord_users} Telegram + {discord_users} Discord users x {args.orders} orders via the bots"
          f" on the fake servers, {args.batch} scheduled batch regenerations, stand-in jobs of {args.job_seconds}s;"
          f" {where}")
    print(f"{'M':>2} {'jobs':>5} {'jobs/s':>7} {'wait int p50/p95 s':>19} {'wait batch p50/p95 s':>21} "
          f"{'e2e chat p50/p95 s':>19} {'lost':>5} {'dup':>4}", flush=True)
    bad = False
    try:
        with tempfile.TemporaryDirectory(prefix="emoji3d-load-files-") as files_tmp:
            files = Path(files_tmp)
            write_sticker_files(files)
            for m in counts:
                with tempfile.TemporaryDirectory(prefix="emoji3d-load-") as tmp:
                    r = run_scenario(m, args, Path(tmp), files, base_rgb, face_check)
                print(f"{m:>2} {r['jobs']:>5} {r['jobs_per_s']:>7.2f} {r['wait_i'][0]:>9.2f}/{r['wait_i'][1]:<9.2f}"
                      f" {r['wait_b'][0]:>10.2f}/{r['wait_b'][1]:<10.2f} {r['e2e'][0]:>9.2f}/{r['e2e'][1]:<9.2f}"
                      f" {r['lost']:>5} {r['duplicated']:>4}", flush=True)
                for e in r["errors"]:
                    print(f"   error: {e}")
                bad |= bool(r["lost"] or r["duplicated"] or r["errors"])
    finally:
        detector.close()
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
