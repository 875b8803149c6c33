"""A step's independent parts on CUDA streams of their own (engine.avatar.branches,
``[pipeline] concurrent_branches``).

On the CPU: the branches run here, in order, and the switch does nothing. On a GPU (``-m gpu``):
a branch runs on a side stream that starts after the work queued before the fork, the current
stream waits for it at the join, the stages give the one-stream results (eager and captured as
CUDA graphs), and a job leaves no more memory behind than with one stream."""
from __future__ import annotations

import dataclasses
import gc

import pytest
import torch

from emoji3d.pipeline_config import PipelineConfig
from engine.avatar.branches import Branches, concurrent_usable
from engine.avatar.dual import round_cycle
from engine.avatar.networks import slim_networks
from engine.avatar.pipeline import Pipeline
from engine.avatar.step_graph import WARMUP
from tests.engine.avatar.loss_curves import STAGES, assert_curves_agree


def test_without_cuda_the_branches_run_here_in_the_order_they_are_given():
    branches = Branches("cpu", enabled=True)
    assert not branches.concurrent
    calls = []
    with branches.fork() as side:
        first = side(lambda x: calls.append(("first", x)) or x * 2, torch.ones(2))
        calls.append(("between", None))
        second = side(lambda: calls.append(("second", None)) or "done")
    assert [c[0] for c in calls] == ["first", "between", "second"]
    assert torch.equal(first, torch.full((2,), 2.0)) and second == "done"


def test_an_error_in_a_branch_reaches_the_caller():
    with pytest.raises(ValueError, match="bad branch"):
        with Branches("cpu", enabled=True).fork() as side:
            side(lambda: (_ for _ in ()).throw(ValueError("bad branch")))


def test_the_switch_counts_on_cuda_only():
    assert concurrent_usable("cuda", True) and concurrent_usable(torch.device("cuda", 0), True)
    assert not concurrent_usable("cuda", False)
    assert not concurrent_usable("cpu", True)
    asked = dataclasses.replace(PipelineConfig(), concurrent_branches=True)
    assert not Pipeline(slim_networks(seed=0), asked).concurrent


# ------------------------------------------------------------------------------------------- GPU


def _spin() -> None:
    """Keep the current stream busy for tens of milliseconds (10^8 GPU clock cycles), so that a
    missing wait shows."""
    torch.cuda._sleep(100_000_000)


@pytest.mark.gpu
def test_a_branch_runs_on_a_side_stream_after_the_work_queued_before_the_fork():
    branches = Branches("cuda", enabled=True)
    origin = torch.cuda.current_stream()
    x = torch.zeros(1 << 20, device="cuda")
    _spin()
    x.fill_(1.0)  # queued on the current stream behind the spin
    seen = []

    def total_of(t: torch.Tensor) -> torch.Tensor:
        seen.append(torch.cuda.current_stream())
        return t.sum()

    with branches.fork() as side:
        total = side(total_of, x)
    assert seen and seen[0] != origin
    assert float(total) == x.numel()  # the branch read the filled tensor, not the zeros


@pytest.mark.gpu
def test_the_join_makes_the_current_stream_wait_for_the_branches():
    branches = Branches("cuda", enabled=True)

    def slow_fill(t: torch.Tensor) -> torch.Tensor:
        _spin()
        return t.fill_(3.0)

    x = torch.zeros(1 << 20, device="cuda")
    with branches.fork() as side:
        side(slow_fill, x)
    after = x.sum()  # queued on the current stream after the join
    assert float(after) == 3.0 * x.numel()


def _run(cfg: PipelineConfig, portrait, style):
    return Pipeline(slim_networks(seed=0, device="cuda"), cfg)(portrait, style, seed=0)


@pytest.mark.gpu
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_concurrent_branches_give_the_one_stream_results(unaligned_faces, graphs):
    """Every stage with enough steps that each of stage 5's kinds of round is captured and replayed
    (with graphs). The branches queue the one-stream step's kernels, so the loss curves agree as
    closely as two one-stream runs agree with each other (the tri-plane gradient's atomic adds
    make those part slightly; see test_step_graph.py): within ten times that, and at least 1e-4."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        portrait, style = unaligned_faces
        base = dataclasses.replace(PipelineConfig().reduced((WARMUP + 1) * round_cycle(PipelineConfig().dual) + 1),
                                   precision="fp32", cuda_graphs=graphs)
        one = _run(base, portrait, style)
        one_again = _run(base, portrait, style)
        concurrent = _run(dataclasses.replace(base, concurrent_branches=True), portrait, style)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    mode = "graphs" if graphs else "eager"
    assert {s: concurrent.logs[s].mode for s in STAGES} == dict.fromkeys(STAGES, mode)
    assert_curves_agree(concurrent, one, one_again, "concurrent vs one stream")


@pytest.mark.gpu
def test_a_concurrent_pipeline_leaves_no_memory_behind(unaligned_faces):
    """The engine runs job after job: tensors that a branch hands across streams (marked with
    ``record_stream``, which under graph capture defers their release) must be freed once the stage
    ends. Three jobs each way, CUDA graphs on as the engine runs: after the first job (which may fill
    caches that stay), a job leaves behind no more with concurrent branches than with one stream."""
    portrait, style = unaligned_faces
    cfg = PipelineConfig().reduced(2 * round_cycle(PipelineConfig().dual) + 1)
    nets = slim_networks(seed=0, device="cuda")

    def left_after_jobs(concurrent: bool) -> list[int]:
        left = []
        for _ in range(3):
            result = Pipeline(nets, dataclasses.replace(cfg, concurrent_branches=concurrent))(portrait, style, seed=0)
            del result
            gc.collect()
            torch.cuda.synchronize()
            left.append(torch.cuda.memory_allocated())
        return left

    one_stream, concurrent = left_after_jobs(False), left_after_jobs(True)
    growth = {"one stream": one_stream[2] - one_stream[1], "concurrent": concurrent[2] - concurrent[1]}
    assert growth["concurrent"] <= growth["one stream"] + (64 << 10), (growth, one_stream, concurrent)
    assert concurrent[1] <= one_stream[2] + (1 << 20), (one_stream, concurrent)  # nothing kept from the switch
