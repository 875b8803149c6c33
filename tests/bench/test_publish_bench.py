"""bench/publish.py with tiny numbers: both deliveries leave the same two sets, and the one of now
makes no getFile call and takes fewer seconds than the one before once each call is a round trip."""
from __future__ import annotations

import re

import pytest

from tests.bench.run import run_bench

pytestmark = pytest.mark.timeout(120)


def test_publish_bench_leaves_the_same_sets_with_fewer_calls(tmp_path):
    out = run_bench("publish.py", "--stickers", "3", "--latency", "0.05", "--repeat", "1", cwd=tmp_path)
    rows = {m[1]: m for m in re.finditer(r"^\| (before|now) \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \|", out, re.M)}
    assert set(rows) == {"before", "now"}, out
    assert rows["before"][3] == rows["now"][3] == "6"  # 3 stickers + 3 emoji uploaded either way
    assert rows["before"][4] == "6" and rows["now"][4] == "0"
    assert float(rows["now"][5]) < float(rows["before"][5])
    assert "same sets (files in order, emoji): yes" in out
