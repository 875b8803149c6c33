"""Running a bench script as a user would, for the tests that check a bench still runs and prints."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def run_bench(script: str, *args: str, cwd: Path, timeout: float = 100, env_drop: tuple[str, ...] = ()) -> str:
    """``bench/<script> args`` in a fresh process (one intra-op thread, the repository importable) in
    ``cwd``, without the environment variables ``env_drop``; its stdout. Fails the test unless it
    exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout
