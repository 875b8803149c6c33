"""bench/artifact_reads.py on the local store only (the remote row starts PostgreSQL and S3): it runs,
reads the same digests both ways (the bench checks), and a job of now reads less than one of before."""
from __future__ import annotations

import re

import pytest

from tests.bench.run import run_bench

pytestmark = pytest.mark.timeout(120)


def test_artifact_reads_bench_runs_locally(tmp_path):
    out = run_bench("artifact_reads.py", "--jobs", "1", "--local-only", cwd=tmp_path)
    row = re.search(r"^\| local: SQLite \+ blob folder \| ([\d.]+) \| ([\d.]+) \| \d+x \|$", out, re.M)
    assert row is not None, out
    assert float(row[2]) < float(row[1])
