"""bench/memory_traffic.py: every memory-bound op of a full-size step is counted once, under the
function of ours that issued it, a backward op under the function whose forward op it
differentiates."""
from __future__ import annotations

import pytest
import torch

from bench.memory_traffic import TrafficMode, traffic


def scale(x: torch.Tensor) -> torch.Tensor:
    return x * 3


def test_a_backward_op_counts_for_the_function_whose_forward_made_it():
    x = torch.ones(1000, requires_grad=True)
    mode = TrafficMode()
    with torch.autograd.set_detect_anomaly(True, check_nan=False), mode:
        torch.autograd.grad(scale(x).sum(), x)
    ours = {key: value for key, value in mode.table.items() if key[0].endswith("test_memory_traffic.py:scale")}
    # the forward product and its backward one, each reading 4 kB and writing 4 kB
    assert ours == {("tests/bench/test_memory_traffic.py:scale", "memory"): [2, 2 * (4000 + 4000)]}


@pytest.mark.slow
def test_the_inversion_step_names_its_sources():
    """One full-size inversion step on fake tensors (about 20 s): the renderer's and the noise
    regularisation's kernels are theirs, and nothing memory-bound goes unattributed."""
    rows = traffic(("invert_3d",))["invert_3d"]
    memory = {source: kernels for (source, kind), (kernels, _bytes) in rows.items() if kind == "memory"}
    assert 100 < memory["engine/avatar/invert.py:noise_regularisation"] < 300
    assert memory["engine/nets/volume.py:march_sample_sets"] > 0 and memory["engine/nets/eg3d.py:decode"] > 0
    unattributed = sum(k for source, k in memory.items() if source.startswith("("))
    assert unattributed < 0.02 * sum(memory.values()), {s: k for s, k in memory.items() if s.startswith("(")}
