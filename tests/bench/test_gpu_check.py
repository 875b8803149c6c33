"""`make gpu-check`'s driver: each part in its own process with its own timeout; one failing or
hanging part is reported and the others still run; the report is on disk after every part."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_hanging_part_is_killed_at_its_timeout_and_the_report_names_every_outcome(tmp_path):
    driver = load_driver()
    py = sys.executable
    hang = driver.Part("hang", "A part that hangs", 10, [[py, "-c", "import time; print('started', flush=True); "
                                                              "time.sleep(60)"]])
    fail = driver.Part("fail", "A part that fails", 30, [[py, "-c", "raise SystemExit(3)"],
                                                          [py, "-c", "print('the other command ran')"]])
    ok = driver.Part("ok", "A part that passes", 30, [[py, "-c", "print('fine')"]])
    outcomes = [driver.run_part(part, part.timeout_s, env={}) for part in (hang, fail, ok)]
    assert outcomes[0].status == "TIMED OUT after 10 s" and 9.5 < outcomes[0].seconds < 30
    assert "started" in outcomes[0].output
    assert outcomes[1].status == "FAILED (exit 3, 0)" and "the other command ran" in outcomes[1].output
    assert outcomes[2].status == "passed"
    report = tmp_path / "report.md"
    driver.write_report(report, ["- machine line"], outcomes, 12.0)
    text = report.read_text()
    assert "| hang | TIMED OUT after 10 s |" in text and "| fail | FAILED (exit 3, 0) |" in text
    assert "| ok | passed |" in text and "- machine line" in text


def test_a_part_with_no_budget_left_is_skipped_not_run():
    driver = load_driver()
    part = driver.Part("late", "Too late", 30, [[sys.executable, "-c", "raise SystemExit(1)"]])
    assert driver.run_part(part, 5, env={}).status == "skipped: the budget is spent"


def test_the_gpu_tests_part_collects_only_files_with_gpu_tests():
    files = load_driver().gpu_test_files()
    assert "tests/engine/ops/test_fused_gpu.py" in files
    assert all("mark.gpu" in (REPO / f).read_text() for f in files)
    assert not any(f.startswith("tests/bots") for f in files)


def test_the_build_part_builds_every_fused_op_extension():
    from engine.ops import _build

    assert sorted(load_driver().OPS) == sorted(_build.EXTENSIONS)


def test_the_device_script_runs_the_named_parts_into_out(tmp_path):
    """bench/gpu_run.sh as a device call runs it (here on the CPU, --quick, no wheels to install):
    the named parts only, the report named after them in $OUT."""
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_ARGS": "--quick", "GPU_WHEELS_DIR": str(tmp_path / "none"),
           "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_run.sh"), "kernels", "encode"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = (tmp_path / "gpu-check-kernels-encode.md").read_text()
    assert "| kernels | passed |" in report and "| encode | passed |" in report and "| pipeline |" not in report


def test_a_part_that_times_something_runs_alone():
    """The commands of one part run at the same time: a bench beside another command would share the GPU
    (and the CPU) with it and report skewed timings."""
    for quick in (False, True):
        for part in load_driver().parts(quick, REPO):
            if any("bench/" in " ".join(command) for command in part.commands):
                assert len(part.commands) == 1, (part.name, part.commands)
