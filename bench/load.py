"""Load test: N users ordering packs against M engine processes, with scheduled batch work.

Usage::

    OMP_NUM_THREADS=1 python bench/load.py [--users 16] [--orders 3] [--batch 24]
        [--engines 1,2,4] [--job-seconds 0.25] [--db postgresql+psycopg://...] [--timeout 300]

For each M in ``--engines``: a fresh database (a SQLite file, or the tables of
``--db`` dropped first) and blob folder; M engine processes (``python -m
engine.worker``) run a stand-in for the GPU job (``--job-seconds`` of sleep with
progress, one result blob) under the real job kinds; ``--batch`` scheduled
regeneration jobs (priority batch) are queued at the start, as a nightly
schedule would; N simulated users (threads) each place ``--orders`` interactive
orders through :func:`storage.packs.order_pack` (the call the chat bots make),
one after the other, waiting for each pack before the next.

Orders go straight to storage.packs.order_pack rather than through the fake
Telegram/Discord servers in tests/fakes: this measures the queue and the
engines, not the chat front ends.

Printed per M: jobs/s; queue wait p50/p95 per priority (claim - enqueue);
end-to-end p50/p95 of interactive orders (done - enqueue); lost (jobs not
succeeded) and duplicated (jobs whose handler ran to the end more than once),
both must be 0 (exit status 1 otherwise). Every loop is bounded by ``--timeout``;
all traffic is local (a file or the given database URL).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_JOB_SECONDS_ENV = "EMOJI3D_LOAD_JOB_SECONDS"
_MARKS_ENV = "EMOJI3D_LOAD_MARKS"


# ---- the engines' stand-in handler (loaded by engine.worker --handlers bench.load:handlers) ----

def _stand_in(job, ctx) -> dict:
    seconds = float(os.environ[_JOB_SECONDS_ENV])
    for step in range(5):
        ctx.progress("stand-in", step / 5)
        time.sleep(seconds / 5)
    digest = ctx.put_blob(f"result of job {job.id}".encode())
    with open(Path(os.environ[_MARKS_ENV]) / f"{os.getpid()}.done", "a") as f:
        f.write(f"{job.id}\n")
    return {"digest": digest}


def handlers() -> dict:
    from emoji3d.orders import JOB_KIND, REGENERATE_KIND

    return {JOB_KIND: _stand_in, REGENERATE_KIND: _stand_in}


# ---- one scenario ----

def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_scenario(engines: int, args, work: Path) -> dict:
    from emoji3d.orders import PackOrder, REGENERATE_KIND
    from storage import jobs, packs, users
    from storage.blobs import BlobStore
    from storage.db import open_database

    url = args.db or f"sqlite:///{work / 'load.sqlite3'}"
    if args.db:
        from tests.conftest import reset_pg

        reset_pg(args.db)
    marks = work / "marks"
    marks.mkdir()
    db = open_database(url)
    blob_root = work / "blobs"
    blobs = BlobStore(db, blob_root)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", EMOJI3D_LOG="WARNING",
               **{_JOB_SECONDS_ENV: str(args.job_seconds), _MARKS_ENV: str(marks)})
    for i in range(args.batch):  # what a nightly regeneration schedule enqueues
        jobs.enqueue(db, REGENERATE_KIND, {"pack_id": 0, "reason": "load test", "n": i}, f"load:regen:{i}",
                     priority="batch")
    procs = [subprocess.Popen([sys.executable, "-m", "engine.worker", "--db", url, "--blobs", str(blob_root),
                               "--handlers", "bench.load:handlers", "--worker-id", f"engine-{i}",
                               "--lease", "30", "--poll", "0.05"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(work / f"engine-{i}.log", "wb"))
             for i in range(engines)]
    deadline = time.monotonic() + args.timeout
    errors: list[str] = []

    def user(n: int) -> None:
        try:
            u = users.get_or_create_user(db, "telegram", f"load-{n}")
            selfie = blobs.put_bytes(f"selfie of user {n}".encode())
            style = blobs.put_bytes(f"style image of user {n}".encode())
            for k in range(args.orders):
                order = PackOrder(user_id=u.id, selfie_digest=selfie, exemplar_digest=style, platform="telegram",
                                  seed=k)
                _pack, job_id = packs.order_pack(db, order)
                while jobs.get_job(db, job_id).status not in ("succeeded", "failed", "cancelled"):
                    if time.monotonic() > deadline:
                        errors.append(f"user {n}: order {k} not done before --timeout")
                        return
                    time.sleep(0.05)
        except Exception as exc:  # reported, and the scenario counts as failed
            errors.append(f"user {n}: {type(exc).__name__}: {exc}")

    started = time.time()
    threads = [threading.Thread(target=user, args=(n,)) for n in range(args.users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()))
    def pending() -> bool:
        return any(j.status in ("queued", "running") for j in jobs.list_jobs(db, limit=1_000_000))

    while time.monotonic() < deadline and pending():
        time.sleep(0.1)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    all_jobs = jobs.list_jobs(db, limit=1_000_000)
    db.dispose()
    done_counts: dict[int, int] = {}
    for f in marks.glob("*.done"):
        for line in f.read_text().split():
            done_counts[int(line)] = done_counts.get(int(line), 0) + 1
    wait = {"interactive": [], "batch": []}
    e2e = []
    for j in all_jobs:
        if j.started_at is not None:
            wait[j.priority].append(j.started_at - j.created_at)
        if j.priority == "interactive" and j.finished_at is not None:
            e2e.append(j.finished_at - j.created_at)
    finished = [j.finished_at for j in all_jobs if j.finished_at is not None]
    span = (max(finished) - started) if finished else float("nan")
    return {
        "engines": engines, "jobs": len(all_jobs), "jobs_per_s": len(finished) / span if finished else 0.0,
        "wait_i": (_pct(wait["interactive"], 0.5), _pct(wait["interactive"], 0.95)),
        "wait_b": (_pct(wait["batch"], 0.5), _pct(wait["batch"], 0.95)),
        "e2e": (_pct(e2e, 0.5), _pct(e2e, 0.95)),
        "lost": sum(1 for j in all_jobs if j.status != "succeeded"),
        "duplicated": sum(1 for c in done_counts.values() if c > 1),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--orders", type=int, default=3, help="interactive orders per user, one after the other")
    ap.add_argument("--batch", type=int, default=24, help="scheduled batch regeneration jobs queued at the start")
    ap.add_argument("--engines", default="1,2,4", help="comma-separated engine counts M")
    ap.add_argument("--job-seconds", type=float, default=0.25, help="stand-in GPU time per job")
    ap.add_argument("--db", default="", help="PostgreSQL URL (its tables are dropped!); default a fresh SQLite file")
    ap.add_argument("--timeout", type=float, default=300.0, help="bound per scenario, seconds")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.engines.split(",") if x.strip()]
    if not counts or min(counts) < 1 or args.users < 1 or args.orders < 1 or args.batch < 0:
        ap.error("--engines, --users and --orders must be positive, --batch >= 0")
    print(f"{args.users} users x {args.orders} interactive orders, {args.batch} batch jobs, "
          f"{args.job_seconds}s per job, db: {'PostgreSQL' if args.db else 'SQLite'}")
    print(f"{'M':>2} {'jobs':>5} {'jobs/s':>7} {'wait int p50/p95 s':>19} {'wait batch p50/p95 s':>21} "
          f"{'e2e int p50/p95 s':>18} {'lost':>5} {'dup':>4}")
    bad = False
    for m in counts:
        with tempfile.TemporaryDirectory(prefix="emoji3d-load-") as tmp:
            r = run_scenario(m, args, Path(tmp))
        print(f"{m:>2} {r['jobs']:>5} {r['jobs_per_s']:>7.2f} {r['wait_i'][0]:>9.2f}/{r['wait_i'][1]:<9.2f}"
              f" {r['wait_b'][0]:>10.2f}/{r['wait_b'][1]:<10.2f} {r['e2e'][0]:>8.2f}/{r['e2e'][1]:<9.2f}"
              f" {r['lost']:>5} {r['duplicated']:>4}", flush=True)
        for e in r["errors"]:
            print(f"   error: {e}")
        bad |= bool(r["lost"] or r["duplicated"] or r["errors"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
