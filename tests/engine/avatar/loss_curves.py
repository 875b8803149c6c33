"""Comparing two pipeline runs' loss curves against the run-to-run noise of a third (the GPU tests
of CUDA graphs and of concurrent branches: the same arithmetic, only the order of atomic adds and
of kernels changes)."""
from __future__ import annotations

import torch

STAGES = ("style_finetune", "invert_3d", "pivotal_tuning", "dual_branch")


def relative_gap(a: list[float], b: list[float]) -> float:
    """Largest |a - b| over a loss curve, relative to the curve's largest |b|."""
    a_t, b_t = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a_t - b_t).abs().max()) / max(1e-12, float(b_t.abs().max()))


def assert_curves_agree(candidate, reference, reference_again, what: str) -> None:
    """Every stage's every loss curve of ``candidate`` within ten times the gap between two runs of the
    reference's settings (and at least 1e-4): a step that read a stale or unfinished input moves a curve
    by far more than run-to-run rounding does."""
    for stage in STAGES:
        for term, values in reference.logs[stage].terms.items():
            noise = relative_gap(reference_again.logs[stage].terms[term], values)
            gap = relative_gap(candidate.logs[stage].terms[term], values)
            assert gap <= max(1e-4, 10 * noise), f"{stage}.{term}: {what} {gap:.2e}, run to run {noise:.2e}"
