"""The step loop shared by every optimisation stage.

Each stage (style finetune, 3D inversion, pivotal tuning, dual-branch
training) is "run N optimiser steps on some tensors, report progress, stop if
cancelled, keep the loss curve". This module holds that loop once.

Conventions:
- ``progress(stage, step, total)`` is called after every step (step counts
  from 1), so a caller can map it to a fraction.
- ``should_cancel()`` is consulted *between* steps; a True answer raises
  :class:`Cancelled` before the next step starts, so cancellation lands within
  one step.
- A stage returns a :class:`StageLog` with every step's loss terms, which the
  pipeline reports and the tests use to check that a loss decreased over the
  whole stage (first vs last window mean, never two noisy single steps).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]


class Cancelled(Exception):
    """The job was cancelled between two steps."""


def no_progress(stage: str, step: int, total: int) -> None:
    return None


def never_cancel() -> bool:
    return False


@dataclass
class StageLog:
    name: str
    steps: int = 0
    seconds: float = 0.0
    skipped: bool = False  # True when the result came from the cache
    terms: dict[str, list[float]] = field(default_factory=dict)

    def record(self, terms: Mapping[str, torch.Tensor | float]) -> None:
        for key, value in terms.items():
            self.terms.setdefault(key, []).append(float(value))

    def window_mean(self, term: str = "total", first: bool = True, fraction: float = 0.2) -> float:
        values = self.terms[term]
        n = max(1, int(len(values) * fraction))
        chunk = values[:n] if first else values[-n:]
        return sum(chunk) / len(chunk)

    def decreased(self, term: str = "total") -> bool:
        """Mean of the last 20 % of steps below the mean of the first 20 %."""
        return self.window_mean(term, first=False) < self.window_mean(term, first=True)

    def summary(self) -> dict:
        out = {"steps": self.steps, "seconds": round(self.seconds, 3), "skipped": self.skipped}
        for key, values in self.terms.items():
            if values:
                out[f"{key}_first"] = values[0]
                out[f"{key}_last"] = values[-1]
        return out


def run_steps(
    name: str,
    total: int,
    step_fn: Callable[[int], Mapping[str, torch.Tensor | float]],
    progress: ProgressFn = no_progress,
    should_cancel: CancelFn = never_cancel,
) -> StageLog:
    """Call ``step_fn(i)`` for i in 0..total-1; it returns the step's loss terms
    (must include ``"total"``). Raises Cancelled between steps when asked."""
    log = StageLog(name)
    start = time.perf_counter()
    for i in range(total):
        if should_cancel():
            log.seconds = time.perf_counter() - start
            raise Cancelled(f"cancelled during {name} at step {i}/{total}")
        terms = step_fn(i)
        log.record(terms)
        log.steps = i + 1
        progress(name, i + 1, total)
    log.seconds = time.perf_counter() - start
    return log


def ramped_lr(step: int, total: int, base_lr: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """The StyleGAN2/EG3D projector schedule: linear warm-up over the first
    ``rampup`` of the run, cosine decay over the last ``rampdown``."""
    t = step / max(1, total)
    down = min(1.0, (1.0 - t) / rampdown)
    down = 0.5 - 0.5 * torch.cos(torch.tensor(down * torch.pi)).item()
    up = min(1.0, t / rampup) if rampup > 0 else 1.0
    return base_lr * down * up
