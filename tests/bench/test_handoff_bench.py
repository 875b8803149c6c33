"""bench/handoff.py with tiny numbers on SQLite: it runs, prints both hand-offs, and the wake-ups of
now hand a job over faster than the poll of before (whose median over random phases is far from 0)."""
from __future__ import annotations

import re

import pytest

from tests.bench.run import run_bench

pytestmark = pytest.mark.timeout(120)


def test_handoff_bench_wakes_faster_than_it_polled(tmp_path):
    out = run_bench("handoff.py", "--samples", "3", "--poll", "0.4", cwd=tmp_path, env_drop=("EMOJI3D_TEST_PG_URL",))
    rows = re.findall(r"^\| SQLite \| (.+?) \| (\d+) \| \d+ \| ([\d.]+) \| [\d.]+ \| \d+x \|$", out, re.M)
    assert [r[0] for r in rows] == ["order -> engine starts", "finish -> notifier delivers"], out
    for _, before_ms, now_ms in rows:
        assert float(now_ms) < float(before_ms), out
