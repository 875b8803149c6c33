"""CUDA-graph capture of the optimisation steps (engine.avatar.step_graph).

On the CPU: every stage's device part obeys the capture rules (checked op by op while the
slim pipeline runs), and the optimiser helpers. On a GPU (``-m gpu``): captured steps give
the eager steps' results, and a step that cannot be captured falls back with a warning."""
from __future__ import annotations

import dataclasses
import traceback
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from emoji3d.pipeline_config import PipelineConfig
from engine.avatar import steps as steps_module
from engine.avatar.dual import round_cycle, update_2d_round
from engine.avatar.networks import slim_networks
from engine.avatar.pipeline import Pipeline
from engine.avatar.step_graph import WARMUP, SplitStep, StepGraphs, adam, graphs_usable, set_lr
from engine.avatar.steps import StopAt, run_steps
from tests.engine.avatar.loss_curves import STAGES, assert_curves_agree


# What a captured step must not do, by aten op: read a device value on the host (a replay never
# returns to Python), build a tensor from Python data (on CUDA a blocking host-to-device copy,
# and a capture would freeze the value), draw random numbers (the draws belong to ``prepare``,
# from the run's generator), or make a tensor whose size depends on the data.
HOST_READS = {"_local_scalar_dense", "is_nonzero", "equal"}
PYTHON_DATA = {"lift_fresh", "lift_fresh_copy"}
RANDOM = {"randn", "rand", "randint", "randperm", "normal", "normal_", "uniform_", "bernoulli", "bernoulli_",
          "multinomial", "exponential_", "random_"}
DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique2", "unique_consecutive", "repeat_interleave"}
FORBIDDEN = HOST_READS | PYTHON_DATA | RANDOM | DATA_DEPENDENT


def _has_mask(args) -> bool:
    """A boolean index (``x[mask]``): the result's size depends on the data."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class CaptureLint(TorchDispatchMode):
    """Records the forbidden ops run while active, with the innermost project frame. The CPU's
    Adam reads its step count on the host: on CUDA the stages' Adam is ``capturable`` and does
    not, so frames inside ``torch/optim`` are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in FORBIDDEN or (name in {"index", "index_put", "index_put_"} and _has_mask(args)):
            stack = traceback.extract_stack()[:-1]
            if not any("torch/optim/" in f.filename for f in stack):
                inner = [f for f in stack if "/engine/" in f.filename or "/tests/" in f.filename]
                where = f"{inner[-1].filename.rsplit('/', 3)[-2:]}:{inner[-1].lineno}" if inner else "?"
                self.found.append(f"{name} at {where}")
        return func(*args, **(kwargs or {}))


class LintedSteps(StepGraphs):
    """The runner with every call of a stage's device part under :class:`CaptureLint`."""

    seen: dict[str, list[str]] = {}

    def __call__(self, variant):
        lint = CaptureLint()
        with lint:
            terms = super().__call__(variant)
        LintedSteps.seen.setdefault(self.name, []).extend(lint.found)
        return terms


def test_the_lint_sees_what_a_capture_cannot_hold():
    """The checker itself: each kind of forbidden op inside a device part is reported."""
    x = torch.ones(3)
    bad_parts = {
        "host read": lambda: float(x.sum()),
        "Python data": lambda: torch.tensor([1.0, 2.0, 3.0]) + x,
        "random draw": lambda: torch.randn(3) + x,
        "data-dependent size": lambda: x[x > 0],
    }
    for label, part in bad_parts.items():
        lint = CaptureLint()
        with lint:
            part()
        assert lint.found, label
    lint = CaptureLint()
    with lint:
        (x * 2 + x.sum()).mean()
    assert not lint.found


def test_every_stage_step_obeys_the_capture_rules(unaligned_faces, monkeypatch):
    """The whole slim pipeline with each stage's device part under the lint: nothing it runs
    would break (or silently freeze in) a CUDA graph. Stage 5 runs each kind of round."""
    portrait, style = unaligned_faces
    LintedSteps.seen = {}
    monkeypatch.setattr(steps_module, "StepGraphs", LintedSteps)
    pipe = Pipeline(slim_networks(seed=0, device="cpu"), PipelineConfig().reduced(3))
    result = pipe(portrait, style, seed=0)
    assert set(LintedSteps.seen) == set(STAGES)  # every stage's step went through the runner
    assert {stage: found for stage, found in LintedSteps.seen.items() if found} == {}
    # rounds 0 (2D update with the style loss), 1 (no 2D update), 2 (2D update without it)
    assert [update_2d_round(i, pipe.cfg.dual) for i in range(3)] == [True, False, True]
    assert len(result.logs["dual_branch"].terms["style_2d"]) == 1 and result.logs["dual_branch"].steps == 3
    assert all(result.logs[s].mode == "eager" for s in STAGES)  # no graphs on the CPU


def test_graphs_are_used_on_cuda_only_when_asked_for():
    assert not graphs_usable("cpu", True)
    assert not graphs_usable("cuda", False)
    assert graphs_usable("cuda:0", True)


def test_set_lr_fills_a_device_rate_in_place_and_assigns_a_float():
    p = torch.nn.Parameter(torch.zeros(2))
    plain = adam([p], 0.1, (0.9, 0.999), varying_lr=True)  # on the CPU: plain Adam, a float rate
    assert plain.param_groups[0]["lr"] == 0.1 and not plain.defaults.get("capturable")
    set_lr(plain, 0.25)
    assert plain.param_groups[0]["lr"] == 0.25
    rate = torch.tensor(0.1)
    with_tensor = torch.optim.Adam([p], lr=rate)  # a device-tensor rate, as adam(varying_lr=True) makes on CUDA
    set_lr(with_tensor, 0.25)
    assert with_tensor.param_groups[0]["lr"] is rate and float(rate) == 0.25


@pytest.mark.skipif(torch.cuda.is_available(), reason="about a machine without CUDA")
def test_a_split_step_runs_prepare_then_compute_each_step_without_graphs():
    calls = []

    def prepare(i):
        calls.append(("prepare", i))
        return i % 2

    def compute(variant):
        calls.append(("compute", variant))
        return {"total": torch.tensor(float(len(calls)))}

    log = run_steps("s", 3, SplitStep(prepare, compute), graphs=True)  # asked for, on a machine without CUDA
    assert calls == [("prepare", 0), ("compute", 0), ("prepare", 1), ("compute", 1), ("prepare", 2), ("compute", 0)]
    assert log.terms["total"] == [2.0, 4.0, 6.0] and log.mode == "eager"


# ------------------------------------------------------------------------------------------- GPU


def _run(cfg: PipelineConfig, portrait, style, device: str = "cuda"):
    pipe = Pipeline(slim_networks(seed=0, device=device), cfg)
    return pipe(portrait, style, seed=0)


@pytest.fixture
def exact_float32():
    """float32 convolutions and matmuls without TF32, whose coarser rounding would let the
    replays' and the eager steps' last-bit differences grow through the steps."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
def test_captured_steps_give_the_eager_steps_results(unaligned_faces, exact_float32):
    """13 steps per stage: 2 eager warm-up runs per variant, the capture, replays after (stage 5's
    three kinds of round, one cycle of 4 rounds, are each captured and replayed). Same Adam
    (capturable on CUDA either way), same kernels: the loss curves agree as closely as two eager
    runs agree with each other.

    Two eager runs are not bit-identical: the tri-plane gradient is summed with atomic adds in no
    fixed order, and Adam turns a rounding-size change in a near-zero gradient into a full
    learning-rate step, so the curves part by up to about 1e-3 within a few steps (H200: 1.0e-3
    in PTI's L2 term at step 3). So the bound per curve is ten times the gap between two eager
    runs, and at least 1e-4: a replay that read a stale input (a learning rate, a draw, a noise
    scale) moves a curve by far more than run-to-run rounding does."""
    portrait, style = unaligned_faces
    cycle = round_cycle(PipelineConfig().dual)
    base = dataclasses.replace(PipelineConfig().reduced((WARMUP + 1) * cycle + 1), precision="fp32")
    eager = _run(dataclasses.replace(base, cuda_graphs=False), portrait, style)
    eager_again = _run(dataclasses.replace(base, cuda_graphs=False), portrait, style)
    graphed = _run(dataclasses.replace(base, cuda_graphs=True), portrait, style)
    assert {s: graphed.logs[s].mode for s in STAGES} == dict.fromkeys(STAGES, "graphs")
    assert {s: eager.logs[s].mode for s in STAGES} == dict.fromkeys(STAGES, "eager")
    assert_curves_agree(graphed, eager, eager_again, "graphed vs eager")


@pytest.mark.gpu
def test_bf16_steps_are_captured_and_their_losses_fall(unaligned_faces):
    portrait, style = unaligned_faces
    result = _run(dataclasses.replace(PipelineConfig().reduced(12), precision="bf16", cuda_graphs=True),
                  portrait, style)
    assert {s: result.logs[s].mode for s in STAGES} == dict.fromkeys(STAGES, "graphs")
    for stage in ("invert_3d", "pivotal_tuning", "dual_branch"):
        assert result.logs[stage].decreased(), stage


@pytest.mark.gpu
def test_a_step_that_cannot_be_captured_runs_eagerly_with_a_warning():
    """The fallback, and the process after it: random draws on the device still work (a failed
    capture leaves PyTorch's default generator marked as capturing until it is reset)."""
    x = torch.nn.Parameter(torch.ones(4, device="cuda"))
    opt = adam([x], 0.1, (0.9, 0.999))

    def compute(_):
        loss = (x * x).sum()
        if float(loss) < 0:  # a host read: cannot be captured
            raise AssertionError
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"total": loss.detach()}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = run_steps("s", 5, SplitStep(lambda _: None, compute), graphs=True)
    assert log.mode.startswith("eager (capture failed") and len(log.terms["total"]) == 5
    assert any("CUDA graph capture failed" in str(w.message) for w in caught)
    assert log.decreased()
    assert torch.rand(8, device="cuda").isfinite().all()


@pytest.mark.gpu
def test_a_stop_rule_stops_captured_steps_where_it_stops_eager_ones():
    """The stop rule reads a term one step late through pinned memory: with graphs and without,
    on the GPU, the stage ends one step after the first step whose term reached the threshold."""
    def make_step():
        x = torch.nn.Parameter(torch.full((4,), 2.0, device="cuda"))
        opt = adam([x], 0.05, (0.9, 0.999))

        def compute(_):
            loss = (x * x).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"total": loss.detach(), "lpips": loss.detach()}

        return SplitStep(lambda _: None, compute)

    full = run_steps("s", 60, make_step(), graphs=True)
    values = full.terms["lpips"]
    threshold = (values[19] + values[20]) / 2  # between two steps: rounding cannot move it a step
    assert all(a > b for a, b in zip(values[:21], values[1:21]))  # the loss falls: first reached at step 20
    for graphs in (False, True):
        log = run_steps("s", 60, make_step(), graphs=graphs, stop=StopAt("lpips", threshold))
        assert log.mode == ("graphs" if graphs else "eager")
        assert (log.steps, log.stopped_early) == (22, True), graphs


@pytest.mark.gpu
def test_the_stop_rule_does_not_wait_for_the_step_just_queued():
    """Reading step i-1's term must not wait for step i: a long kernel stands in for step i, and
    the read returns while it still runs. (The terms are made on the device beforehand: a copy
    from the host would itself wait behind the long kernel.)"""
    from engine.avatar.steps import _StopWatch

    first, second, third = (torch.tensor(v, device="cuda") for v in (1.0, 0.25, 1.0))
    watch = _StopWatch(StopAt("lpips", 0.5))
    torch.cuda.synchronize()
    assert not watch.reached({"lpips": first})  # step 0: nothing before it
    torch.cuda._sleep(2_000_000_000)  # step 1: about a second of GPU time
    assert not watch.reached({"lpips": second})  # reads step 0's 1.0
    assert not torch.cuda.current_stream().query()  # step 1 is still running: the read did not wait
    assert watch.reached({"lpips": third})  # step 1's 0.25 reached the rule
    torch.cuda.synchronize()
