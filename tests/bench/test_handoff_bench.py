"""bench/handoff.py with tiny numbers on SQLite: it runs, prints both hand-offs, and the wake-ups of
now hand a job over faster than the poll of before (whose median over random phases is far from 0)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(120)


def test_handoff_bench_wakes_faster_than_it_polled(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EMOJI3D_TEST_PG_URL"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "handoff.py"), "--samples", "3", "--poll", "0.4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = re.findall(r"^\| SQLite \| (.+?) \| (\d+) \| \d+ \| ([\d.]+) \| [\d.]+ \| \d+x \|$", proc.stdout, re.M)
    assert [r[0] for r in rows] == ["order -> engine starts", "finish -> notifier delivers"], proc.stdout
    for _, before_ms, now_ms in rows:
        assert float(now_ms) < float(before_ms), proc.stdout
