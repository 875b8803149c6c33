"""bench/head_start_queue.py with tiny numbers: the real engine and queue under each head-start policy,
and the discrete-event model, which must agree with the real runs on the same draws."""
from __future__ import annotations

import re

import pytest

from tests.bench.run import run_bench

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # about 30 s each: out of the default run

ROW = re.compile(r"^\| ((?:no head start|head start|speculative)[^|]*) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| "
                 r"([\d.]+) \| (\d+) \| (\d+) \| (\d+) \|(?: ([\d.]+) \|)?$", re.M)


def test_head_start_queue_bench_measures_the_policies_and_the_model_agrees(tmp_path):
    out = run_bench("head_start_queue.py", "--users", "8", "--runs", "1", "--scale", "0.01", "--model-runs", "40",
                    cwd=tmp_path, timeout=280)
    measured_part, modelled_part = out.split("## Modelled")
    measured = {m[1]: m for m in ROW.finditer(measured_part)}
    modelled = {m[1]: m for m in ROW.finditer(modelled_part)}
    assert list(measured) == ["no head start", "head start, interactive", "head start, speculative"], out
    assert list(modelled) == [*measured, "speculative, yields (dropped)",
                              "speculative, yields in its first half (dropped)"], out
    for policy, m in measured.items():
        real_mean, model_mean = float(m[2]), float(m[9])
        # the model leaves out the queue's and the database's own seconds, a few at this scale
        assert model_mean - 1 <= real_mean <= model_mean * 1.15 + 3, (policy, out)
    assert int(measured["no head start"][6]) == int(measured["no head start"][7]) == 0
    assert int(modelled["head start, speculative"][6]) > 0


def test_with_two_engines_an_order_waits_for_its_head_start_in_the_queue_not_on_an_engine(tmp_path):
    out = run_bench("head_start_queue.py", "--users", "8", "--runs", "1", "--scale", "0.01", "--model-runs", "40",
                    "--engines", "2", "--gap", "40", cwd=tmp_path, timeout=280)
    measured = {m[1]: m for m in ROW.finditer(out.split("## Modelled")[0])}
    assert list(measured) == ["no head start", "head start, interactive",
                              "head start, speculative; its order waits on an engine", "head start, speculative"], out
    assert int(measured["head start, speculative"][8]) == 0  # no engine held by a waiting order
    for policy, m in measured.items():
        assert float(m[9]) - 1 <= float(m[2]) <= float(m[9]) * 1.15 + 3, (policy, out)
