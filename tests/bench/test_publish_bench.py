"""bench/publish.py with tiny numbers: both deliveries leave the same two sets, and the one of now
makes no getFile call and takes fewer seconds than the one before once each call is a round trip."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(120)


def test_publish_bench_leaves_the_same_sets_with_fewer_calls(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "publish.py"), "--stickers", "3", "--latency", "0.05",
                           "--repeat", "1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = {m[1]: m for m in re.finditer(r"^\| (before|now) \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \|",
                                          proc.stdout, re.M)}
    assert set(rows) == {"before", "now"}, proc.stdout
    assert rows["before"][3] == rows["now"][3] == "6"  # 3 stickers + 3 emoji uploaded either way
    assert rows["before"][4] == "6" and rows["now"][4] == "0"
    assert float(rows["now"][5]) < float(rows["before"][5])
    assert "same sets (files in order, emoji): yes" in proc.stdout
