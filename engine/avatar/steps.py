"""The step loop shared by every optimisation stage.

Each stage (style finetune, 3D inversion, pivotal tuning, dual-branch
training) is "run N optimiser steps on some tensors, report progress, keep
the loss curve". This module holds that loop once.

Conventions:
- ``progress(stage, step, total)`` is called after every step (step counts
  from 1), so a caller can map it to a fraction.
- Stopping a stage: the progress callback is the *only* channel. It may raise
  (the engine's ``JobContext.progress`` raises ``engine.worker.JobCancelled``,
  ``JobInterrupted`` or ``JobAborted``); the exception leaves the stage after
  the step that just finished, propagates through the pipeline unchanged,
  and the worker maps it to the job's outcome. Stages do not catch it and
  have no cancel flag of their own.
- A step function returns its loss terms as *detached tensors* (or floats)
  and never reads them back itself: turning a device tensor into a Python
  float waits for the device to finish, so doing it every step stalls the
  GPU queue. :class:`StageLog` keeps the tensors and materialises them in one
  transfer every ``LOG_EVERY`` steps and at the end of the stage (as
  nanoGPT reads its loss only at the log interval).
- A stage returns a :class:`StageLog` with every step's loss terms, which the
  pipeline reports and the tests use to check that a loss decreased over the
  whole stage (first vs last window mean, never two noisy single steps).
- Precision: a stage runs its forward passes and losses inside
  :func:`autocast` (``"bf16"``: ``torch.autocast(device_type, torch.bfloat16)``,
  ``"fp32"``: nothing). The trainable tensors stay float32 (master weights),
  ``backward`` runs outside the context as autocast asks, and the optimiser
  steps in float32; bf16 has float32's exponent range, so no loss scaling.
  Loss terms are cast to float32 before they are summed.
- Stopping early on a loss (:class:`StopAt`, PTI's LPIPS threshold): the
  loop reads that one term of every step, one step late. On CUDA the value is
  copied to pinned host memory behind the step that made it, and the host
  waits for that copy only after queuing the next step, so the GPU never runs
  dry for the check. The stage therefore stops after the step *following* the
  first one whose term reached the threshold, on every device alike (the
  same seed gives the same number of steps on the CPU and on a GPU).
- CUDA graphs: a stage whose step is a :class:`engine.avatar.step_graph.SplitStep`
  (host part ``prepare(i)``, device part ``compute(variant)``) has its device
  part captured once per variant and replayed when ``graphs`` is on (see
  that module); a plain ``step_fn(i)`` always runs as it is.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from engine.avatar.step_graph import SplitStep, StepGraphs

# (stage name, step (1-based), total steps) -> None; may raise to stop the stage.
ProgressFn = Callable[[str, int, int], None]
LossTerms = Mapping[str, torch.Tensor | float]

# Steps between two reads of the loss terms from the device: one host sync per
# interval instead of one per step, and a bounded number of pending tensors.
LOG_EVERY = 50


PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class StopAt:
    """Stop a stage once the loss term ``term`` of a step is at most ``at_most`` (see the module notes)."""

    term: str
    at_most: float


class _StopWatch:
    """Reads one loss term per step without making the host wait for the step just queued."""

    def __init__(self, rule: StopAt) -> None:
        self.rule = rule
        self.previous: torch.Tensor | float | None = None  # the last step's value (on the host)
        self.host: torch.Tensor | None = None               # pinned buffer a device value is copied into
        self.copied: torch.cuda.Event | None = None          # recorded behind each copy into ``host``

    def reached(self, terms: LossTerms) -> bool:
        """A step was just queued: whether the step before it reached the rule (then the stage
        ends after this one). Keeps this step's term for the next call."""
        reached = False
        if self.previous is not None:
            if self.copied is not None:
                self.copied.synchronize()  # the step before and its copy; the one just queued stays queued
            reached = float(self.previous) <= self.rule.at_most
        value = terms[self.rule.term]
        if isinstance(value, torch.Tensor) and value.is_cuda:
            if self.host is None:
                self.host = torch.empty((), dtype=torch.float32, pin_memory=True)
                self.copied = torch.cuda.Event()
            self.host.copy_(value.detach().reshape(()), non_blocking=True)
            self.copied.record()
            self.previous = self.host
        else:
            self.previous = value.detach() if isinstance(value, torch.Tensor) else value
        return reached


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The context a stage's forward passes and losses run in (see the module notes)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")


def no_progress(stage: str, step: int, total: int) -> None:
    return None


def _as_floats(values: list[torch.Tensor | float]) -> list[float]:
    """Values of one term as Python floats, in one device-to-host copy when they are
    all tensors on one device (the normal case); the same numbers ``float(v)`` gives."""
    if values and all(isinstance(v, torch.Tensor) for v in values):
        first = values[0]
        if all(v.device == first.device and v.dtype == first.dtype for v in values):
            return torch.stack([v.detach().reshape(()) for v in values]).tolist()
    return [float(v) for v in values]


@dataclass
class StageLog:
    """Loss curve and timing of one stage. ``terms`` is read through a property
    that first materialises the pending (device) values."""

    name: str
    steps: int = 0
    seconds: float = 0.0
    skipped: bool = False  # True when the result came from the cache
    mode: str = "eager"    # how the steps ran: "eager", "graphs", or why graphs were dropped
    planned: int = 0       # steps asked for; ``steps`` is fewer when a StopAt rule ended the stage early
    _terms: dict[str, list[float]] = field(default_factory=dict, repr=False)
    _pending: dict[str, list[torch.Tensor | float]] = field(default_factory=dict, repr=False)

    def record(self, terms: LossTerms) -> None:
        """Keep one step's terms; tensors stay on their device until :meth:`flush`."""
        for key, value in terms.items():
            self._pending.setdefault(key, []).append(value.detach() if isinstance(value, torch.Tensor) else value)

    def flush(self) -> None:
        """Move the pending values to ``terms`` (one host sync per term)."""
        for key, values in self._pending.items():
            self._terms.setdefault(key, []).extend(_as_floats(values))
        self._pending.clear()

    @property
    def terms(self) -> dict[str, list[float]]:
        if self._pending:
            self.flush()
        return self._terms

    @property
    def stopped_early(self) -> bool:
        return not self.skipped and 0 < self.steps < self.planned

    def window_mean(self, term: str = "total", first: bool = True, fraction: float = 0.2) -> float:
        values = self.terms[term]
        n = max(1, int(len(values) * fraction))
        chunk = values[:n] if first else values[-n:]
        return sum(chunk) / len(chunk)

    def decreased(self, term: str = "total") -> bool:
        """Mean of the last 20 % of steps below the mean of the first 20 %."""
        return self.window_mean(term, first=False) < self.window_mean(term, first=True)

    def summary(self) -> dict:
        out = {"steps": self.steps, "seconds": round(self.seconds, 3), "skipped": self.skipped, "mode": self.mode}
        if self.stopped_early:
            out["planned_steps"] = self.planned
        for key, values in self.terms.items():
            if values:
                out[f"{key}_first"] = values[0]
                out[f"{key}_last"] = values[-1]
        return out


def run_steps(
    name: str,
    total: int,
    step_fn: Callable[[int], LossTerms] | SplitStep,
    progress: ProgressFn = no_progress,
    log_every: int = LOG_EVERY,
    graphs: bool = False,
    stop: StopAt | None = None,
) -> StageLog:
    """Run steps i = 0..total-1: ``step_fn(i)``, or for a :class:`SplitStep`
    ``compute(prepare(i))`` (captured as CUDA graphs when ``graphs``). A step returns its
    loss terms (must include ``"total"``), read back every ``log_every`` steps and at the
    end. An exception from ``progress`` stops the loop and propagates. With ``stop``, the
    loop ends after the step following the first whose ``stop.term`` reached
    ``stop.at_most`` (see the module notes), and reports the stage complete to ``progress``."""
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    log = StageLog(name, planned=total)
    watch = _StopWatch(stop) if stop is not None else None
    if isinstance(step_fn, SplitStep):
        split, runner = step_fn, StepGraphs(name, step_fn.compute, graphs)
        step_fn = lambda i: runner(split.prepare(i))  # noqa: E731
    else:
        runner = None
    start = time.perf_counter()
    try:
        for i in range(total):
            terms = step_fn(i)
            if "total" not in terms:
                raise KeyError(f"stage {name}: a step must return a 'total' loss term, got {sorted(terms)}")
            log.record(terms)
            log.steps = i + 1
            if log.steps % log_every == 0:
                log.flush()
            if watch is not None and watch.reached(terms):
                progress(name, total, total)
                break
            progress(name, i + 1, total)
        log.flush()  # also waits for the device, so ``seconds`` covers the queued work
    finally:
        if runner is not None:
            log.mode = runner.mode
            runner.release()
    log.seconds = time.perf_counter() - start
    return log


def ramped_lr(step: int, total: int, base_lr: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """The StyleGAN2/EG3D projector schedule: linear warm-up over the first
    ``rampup`` of the run, cosine decay over the last ``rampdown``.

    The cosine is taken in float32 on a CPU scalar, as the projectors do: a
    float64 cosine moves the learning rate by float32 rounding, and with it
    every result (the same seed must keep giving the same pack). A CPU tensor
    costs no GPU-host sync."""
    t = step / max(1, total)
    down = min(1.0, (1.0 - t) / rampdown)
    down = 0.5 - 0.5 * torch.cos(torch.tensor(down * math.pi, dtype=torch.float32)).item()
    up = min(1.0, t / rampup) if rampup > 0 else 1.0
    return base_lr * down * up
