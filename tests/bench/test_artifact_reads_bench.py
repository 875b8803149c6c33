"""bench/artifact_reads.py on the local store only (the remote row starts PostgreSQL and S3): it runs,
reads the same digests both ways (the bench checks), and a job of now reads less than one of before."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(120)


def test_artifact_reads_bench_runs_locally(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "artifact_reads.py"), "--jobs", "1", "--local-only"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    row = re.search(r"^\| local: SQLite \+ blob folder \| ([\d.]+) \| ([\d.]+) \| \d+x \|$", proc.stdout, re.M)
    assert row is not None, proc.stdout
    assert float(row[2]) < float(row[1])
