"""bench/head_start.py end to end with tiny numbers: the real bot core and one real slim engine on this CPU
(one step per stage), an order placed after its selfie's head start finished and one without; the table
prints both, and the H200 projection is computed from the committed stage timings."""
from __future__ import annotations

import re

import pytest

from tests.bench.run import run_bench

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]  # about 30 s: out of the default run


def test_head_start_bench_prints_both_flows_and_the_projection(tmp_path):
    out = run_bench("head_start.py", "--steps", "1", "--think", "1000", "--repeats", "1", "--timeout", "300",
                    cwd=tmp_path, timeout=380)
    row = re.search(r"^\| longer than the head start \| ([\d.]+) \| ([\d.]+) \| -?\d+% \|$", out, re.M)
    assert row, out
    assert float(row[1]) > 0 and float(row[2]) > 0
    projected = re.findall(r"^\| (\d+) s \| 46\.5 \| ([\d.]+) \|$", out, re.M)
    # at most the inversion's 20.8 s come off, and never more than the user's choice takes
    assert [(int(t), float(now)) for t, now in projected] == [(3, 43.5), (5, 41.5), (10, 36.5), (20, 26.5), (30, 25.7)]
