"""bench/kernels.py's memory-layout table on the CPU, with tiny shapes: both layouts compute the same
thing (the GPU run's numbers are only worth reading if they do)."""
from __future__ import annotations

import importlib.util
import re

import torch

from tests.conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("kernels_bench", REPO / "bench" / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_layout_table_times_both_layouts_of_each_case_and_they_agree():
    bench = _bench()
    cases = [("conv", (1, 8, 12, 12), (8, 8, 3, 3), 1, 1), ("grouped conv", (1, 8, 12, 12), (8, 4, 3, 3), 2, 1),
             ("synthesis layer", (1, 8, 6, 6), (4, 8, 3, 3), 1, 2)]
    table = bench.layout_table(torch.device("cpu"), cases, repeats=1)
    rows = re.findall(r"^\| ([^|]+) \| (float32|bfloat16) \| ([\d.]+) \| - \| ([\d.]+) \| ([\d.]+|-) \| "
                      r"([\d.]+)x \| ([\d.e+-]+) \|$", table, re.M)
    assert [(label, dtype) for label, dtype, *_ in rows] == [
        (label, dtype) for label, *_ in cases for dtype in ("float32", "bfloat16")], table
    for label, dtype, _nchw, _last, last_ref, _ratio, diff in rows:
        assert (last_ref == "-") == (label != "synthesis layer"), table  # the pure-torch ops: the layer only
        assert float(diff) < (1e-5 if dtype == "float32" else 5e-2), table
