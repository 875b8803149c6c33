"""bench/job_bytes.py on the slim EG3D: it runs, stores the same tensors both ways (the table says), and the
job's own thread and beside it are timed (the times themselves are not checked: no timed unit tests)."""
from __future__ import annotations

import re

import pytest

from tests.bench.run import run_bench

pytestmark = pytest.mark.timeout(120)


def test_job_bytes_bench_prints_both_places_with_the_same_stored_tensors(tmp_path):
    out = run_bench("job_bytes.py", "--preset", "slim128", "--repeats", "3", cwd=tmp_path)
    rows = re.findall(r"^\| (after [^|]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \| (\w+) \|$", out, re.M)
    assert [r[0].split(":")[0] for r in rows] == ["after pivotal tuning", "after the pack files"], out
    assert all(r[4] == "yes" for r in rows), out
    assert "off the job's thread per order" in out
