"""bench/stage_timing.py's run labels: every combination of the side-by-side switches gets a
label of its own, so that no run of a GPU report overwrites another."""
from __future__ import annotations

import itertools

from bench.stage_timing import SWITCH_MODES, run_name, summarise


def test_every_combination_of_switches_is_labelled_apart():
    compile_choices = [("off",), ("inductor",), ("off", "inductor")]
    for (autotune_modes, layout_modes, branch_modes), compile_modes in itertools.product(
            itertools.product(SWITCH_MODES.values(), repeat=3), compile_choices):
        names = [run_name(precision, graphs, autotune, autotune_modes, layout, layout_modes, concurrent, branch_modes,
                          backend, compile_modes)
                 for precision in ("fp32", "bf16") for graphs in (False, True) for autotune in autotune_modes
                 for layout in layout_modes for concurrent in branch_modes for backend in compile_modes]
        assert len(set(names)) == len(names), names


def test_the_default_settings_keep_the_plain_label():
    assert run_name("bf16", True, False, (False,)) == "bf16 + CUDA graphs"
    assert run_name("bf16", True, False, (False,), False, (False, True), False, (False, True)) == \
        "bf16 + CUDA graphs (NCHW) (one stream)"
    assert run_name("bf16", True, False, (False,), False, (False,), True, (False, True)) == \
        "bf16 + CUDA graphs + concurrent branches"
    assert run_name("bf16", True, False, (False,), backend="off", compile_modes=("off", "inductor")) == \
        "bf16 + CUDA graphs (eager)"
    assert run_name("bf16", True, False, (False,), backend="inductor", compile_modes=("inductor",)) == \
        "bf16 + CUDA graphs + compiled (inductor)"


def test_a_run_without_its_pack_says_so_and_still_projects_the_optimisation():
    stage = {"seconds_per_step": 0.02, "stage_seconds": 1.0}
    report = {"preset": "full", "device": "cuda", "gpu": "H200", "torch": "2.11", "steps": 4, "load_seconds": 1.0,
              "configured_steps": {"style_finetune": 300, "invert_3d": 500, "pivotal_tuning": 350, "dual_branch": 300},
              "flops_per_step": dict.fromkeys(("style_finetune", "invert_3d", "pivotal_tuning", "dual_branch"), 1e12),
              "runs": {"bf16 + CUDA graphs (one stream)": {"warmup": 12, "stages": dict.fromkeys(
                  ("style_finetune", "invert_3d", "pivotal_tuning", "dual_branch"), stage)}}}
    text = "\n".join(summarise(report))
    assert "per-user optimisation (style cached): 23.0 s; the pack was not timed (--no-pack)" in text
    assert "FAILED" not in text and "the pack failed" not in text


def test_a_compiled_run_reports_its_start_up_compile_apart_from_the_projection():
    stage = {"seconds_per_step": 0.02, "stage_seconds": 1.0}
    stages = ("style_finetune", "invert_3d", "pivotal_tuning", "dual_branch")
    compiled = {"warmup": 12, "stages": dict.fromkeys(stages, stage), "compile_warm_up_seconds": 95.25,
                "compile_failures": {"the StyleGAN2 synthesis": "BackendCompilerFailed: no Triton"}}
    report = {"preset": "full", "device": "cuda", "gpu": "H100", "torch": "2.11", "steps": 4, "load_seconds": 1.0,
              "configured_steps": {"style_finetune": 300, "invert_3d": 500, "pivotal_tuning": 350, "dual_branch": 300},
              "flops_per_step": dict.fromkeys(stages, 1e12),
              "runs": {"bf16 (eager)": {"warmup": 12, "stages": dict.fromkeys(stages, stage)},
                       "bf16 + compiled (inductor)": compiled}}
    text = "\n".join(summarise(report))
    assert text.count("compiled before the first job") == 1
    assert ("- compiled before the first job (the engine's start-up warm-up, once per process, not in the "
            "projection): 95.2 s; the StyleGAN2 synthesis FAILED to compile and ran eagerly: "
            "BackendCompilerFailed: no Triton") in text
    assert text.count("per-user optimisation (style cached): 23.0 s") == 2  # the same projection for both
