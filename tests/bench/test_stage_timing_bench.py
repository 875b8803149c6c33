"""bench/stage_timing.py's run labels: every combination of the side-by-side switches gets a
label of its own, so that no run of a GPU report overwrites another."""
from __future__ import annotations

import itertools

from bench.stage_timing import SWITCH_MODES, run_name


def test_every_combination_of_switches_is_labelled_apart():
    for autotune_modes, layout_modes, branch_modes in itertools.product(SWITCH_MODES.values(), repeat=3):
        names = [run_name(precision, graphs, autotune, autotune_modes, layout, layout_modes, concurrent, branch_modes)
                 for precision in ("fp32", "bf16") for graphs in (False, True) for autotune in autotune_modes
                 for layout in layout_modes for concurrent in branch_modes]
        assert len(set(names)) == len(names), names


def test_the_default_settings_keep_the_plain_label():
    assert run_name("bf16", True, False, (False,)) == "bf16 + CUDA graphs"
    assert run_name("bf16", True, False, (False,), False, (False, True), False, (False, True)) == \
        "bf16 + CUDA graphs (NCHW) (one stream)"
    assert run_name("bf16", True, False, (False,), False, (False,), True, (False, True)) == \
        "bf16 + CUDA graphs + concurrent branches"
