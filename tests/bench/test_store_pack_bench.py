"""bench/store_pack.py on the local store only (the remote rows start PostgreSQL and S3): it runs
and prints both local rows, with the default of one put at a time there."""
from __future__ import annotations

import re

import pytest

from tests.bench.run import run_bench

pytestmark = pytest.mark.timeout(120)


def test_store_pack_bench_runs_locally(tmp_path):
    out = run_bench("store_pack.py", "--repeat", "1", "--local-only", cwd=tmp_path)
    rows = re.findall(r"^\| (local[^|]*) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| [\d.]+x \|$", out, re.M)
    assert [(r[0].split(":")[0].split(",")[0], r[1]) for r in rows] == [("local", "1"), ("local", "8")], out
