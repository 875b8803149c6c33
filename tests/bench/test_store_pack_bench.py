"""bench/store_pack.py on the local store only (the remote rows start PostgreSQL and S3): it runs
and prints both local rows, with the default of one put at a time there."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(120)


def test_store_pack_bench_runs_locally(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "store_pack.py"), "--repeat", "1", "--local-only"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = re.findall(r"^\| (local[^|]*) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| [\d.]+x \|$", proc.stdout, re.M)
    assert [(r[0].split(":")[0].split(",")[0], r[1]) for r in rows] == [("local", "1"), ("local", "8")], proc.stdout
