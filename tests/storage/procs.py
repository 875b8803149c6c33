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
