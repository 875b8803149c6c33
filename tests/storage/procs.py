"""Helpers to run real worker processes against a real SQLite file."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["EMOJI3D_LOG"] = "INFO"
    return env


def start_worker(db_url: str, blob_root: Path, worker_id: str, log_dir: Path, *, lease: float = 2.0,
                 poll: float = 0.1, shutdown: str = "release", extra: list[str] | None = None) -> subprocess.Popen:
    log = open(log_dir / f"{worker_id}.log", "ab")
    cmd = [sys.executable, "-m", "engine.worker", "--db", db_url, "--blobs", str(blob_root),
           "--handlers", "tests.storage.jobhandlers:factory", "--worker-id", worker_id,
           "--lease", str(lease), "--poll", str(poll), "--shutdown", shutdown] + (extra or [])
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


# ---- targets for multiprocessing (spawn) ---------------------------------------------

def proc_migrate(url: str, barrier_path: str) -> None:
    from storage.db import open_database

    _barrier(barrier_path)
    open_database(url).dispose()


def proc_enqueue(url: str, keys: list[str], barrier_path: str, out_path: str) -> None:
    from storage import jobs
    from storage.db import open_database

    db = open_database(url)
    _barrier(barrier_path)
    ids = [jobs.enqueue(db, "k", {"key": k}, k, priority="batch") for k in keys]
    Path(out_path).write_text(" ".join(map(str, ids)))
    db.dispose()


def proc_claim_all(url: str, worker_id: str, barrier_path: str, out_path: str) -> None:
    """Claim and complete jobs until none is left; write the claimed ids."""
    from storage import jobs
    from storage.db import open_database

    db = open_database(url)
    _barrier(barrier_path)
    got = []
    while True:
        job = jobs.claim(db, worker_id, 60)
        if job is None:
            break
        got.append(job.id)
        jobs.complete(db, job.id, job.lease_token, {"by": worker_id})
    Path(out_path).write_text(" ".join(map(str, got)))
    db.dispose()


def _barrier(path: str, timeout: float = 60.0) -> None:
    """Start together: wait until the file ``path`` exists."""
    end = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > end:
            raise TimeoutError(path)
        time.sleep(0.005)


def run_spawned(targets: list[tuple], barrier_path: Path, timeout: float = 120.0) -> None:
    """Start processes (spawn), release them together, join, fail on nonzero exit."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=t[0], args=t[1:]) for t in targets]
    for p in procs:
        p.start()
    time.sleep(0.5)
    barrier_path.write_text("go")
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            raise AssertionError("a spawned process hung")
        if p.exitcode != 0:
            raise AssertionError(f"a spawned process exited with {p.exitcode}")


def proc_scheduler(url: str, schedules: list[dict], engine_version: str, run_until: float, report_path: str,
                   start_at: float = 0.0) -> None:
    """Start a scheduler at the wall-clock time ``start_at`` (imports and the database connection
    come first, so a loaded machine's slow start-up does not move it), run it until ``run_until``,
    then shut down. The report holds the sync's lists and ``started_at``."""
    import json
    import logging

    from emoji3d.schedules import Schedule
    from shell.scheduler import start_scheduler
    from storage.db import open_database

    logging.basicConfig(level=logging.INFO)
    db = open_database(url)
    while time.time() < start_at:
        time.sleep(0.02)
    started_at = time.time()
    sched, report = start_scheduler(db, [Schedule(**s) for s in schedules], engine_version)
    Path(report_path).write_text(json.dumps({**report.__dict__, "started_at": started_at}))
    while time.time() < run_until:
        time.sleep(0.05)
    sched.shutdown(wait=True)
    db.dispose()


def proc_leader(url: str, cron: str, start_at: float, run_until: float, report_path: str) -> None:
    """Run shell.scheduler.run_as_leader from ``start_at`` until ``run_until`` (wall clock);
    write the scheduled times that fired here."""
    import json
    import logging
    import threading

    from apscheduler.events import EVENT_JOB_EXECUTED

    from emoji3d.schedules import Schedule
    from shell.scheduler import run_as_leader
    from storage.db import open_database

    logging.basicConfig(level=logging.INFO)
    db = open_database(url)
    fired: list[float] = []
    stop = threading.Event()

    def listen(scheduler) -> None:
        scheduler.add_listener(lambda ev: fired.append(ev.scheduled_run_time.timestamp()), EVENT_JOB_EXECUTED)

    while time.time() < start_at:
        time.sleep(0.05)
    leader = threading.Thread(target=run_as_leader, args=(db, [Schedule("tick", cron, "regenerate_outdated_packs")],
                                                           "0.1.0", stop),
                              kwargs={"check_seconds": 0.2, "on_scheduler": listen})
    leader.start()
    while time.time() < run_until:
        time.sleep(0.05)
    stop.set()
    leader.join(timeout=30)
    Path(report_path).write_text(json.dumps(fired))
    db.dispose()
