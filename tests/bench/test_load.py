"""bench/load.py end to end with tiny numbers: two Telegram users and one Discord user
order through the real bots on the fake servers, two engine processes run the stand-in
jobs, the real scheduler regenerates two old packs; the table prints with lost = 0 and
duplicated = 0. On PostgreSQL / S3 too when EMOJI3D_TEST_PG_URL / EMOJI3D_TEST_S3_ENDPOINT
are set (the bench picks them up as its defaults)."""
from __future__ import annotations

import re

import pytest

from tests.bench.run import run_bench

pytestmark = pytest.mark.timeout(240)

ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)/([\d.]+)\s+([\d.]+)/([\d.]+)\s+([\d.]+)/([\d.]+)"
                 r"\s+(\d+)\s+(\d+)\s*$")


def test_load_bench_prints_its_table_with_nothing_lost_or_duplicated(tmp_path):
    out = run_bench("load.py", "--users", "3", "--discord-every", "3", "--orders", "1", "--batch", "2",
                    "--engines", "2", "--job-seconds", "0.05", "--timeout", "120", cwd=tmp_path, timeout=220)
    lines = out.splitlines()
    assert lines[0].startswith("2 Telegram + 1 Discord users x 1 orders via the bots")
    assert "lost" in lines[1] and "dup" in lines[1]
    rows = [m for m in map(ROW.match, lines[2:]) if m]
    assert len(rows) == 1, out
    m, jobs, _rate, *_times, lost, dup = rows[0].groups()
    # 3 orders + 2 regenerations + the 2 Telegram selfies' head starts (bots.head_starts)
    assert (m, jobs, lost, dup) == ("2", "7", "0", "0")
