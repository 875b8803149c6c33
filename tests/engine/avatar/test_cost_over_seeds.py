"""Stage 5's two schedule decisions of issue 17, checked over four seeds from two cached starts (slow).

The default-suite tests (``test_cost.py``) compare each schedule change with how far the earlier
schedule's own result moves under *one* other seed. That yardstick is a poor one: over the pairs of
four seeds it ranges 0.017-0.127 (RMS of the stylized renders) and seems to fall into two clusters,
so a test built on one pair passes or fails with the draw (session 10 saw both tests fail when only
the random streams of stage 5 changed). Here each side is a median:

* the yardstick: how far the unchanged schedule's result moves under another seed, median over the
  six pairs of SEEDS;
* the change: each seed's changed run against its own unchanged run, median over SEEDS;

and the change must stay within 1.5 times the yardstick, from two cached starts of stages 2-4:
``order`` (what an order makes: the style finetuned, then the portrait inverted in the same run) and
``head start`` (the style finetuned by its own job and the portrait by a head start, each from a
fresh generator). Measured (change / yardstick):

| decision | order | head start |
|---|---|---|
| style loss with batch 2 on every 2nd 2D update (was 4, every round) | 0.063 / 0.054 | 0.074 / 0.067 |
| 2D branch on every 2nd round at twice the rate (was every round) | 0.082 / 0.078 | 0.071 / 0.081 |

With stage 5 drawing from an RNG stream of its own (tried in session 10, not adopted: it would make
an order's avatar independent of what was cached), the style schedule measured 0.058 / 0.034 (1.7x:
it fails here) and the 2D schedule passed: the style-schedule decision is borderline, 1.1-1.7x the
seed noise depending on stage 5's draws.
"""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from emoji3d.pipeline_config import PipelineConfig
from engine.avatar.pipeline import MemoryCache, Pipeline

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2, 3)
ROUNDS = 12
EVERY_ROUND_2D = {"update_2d_every": 1, "lr_2d": 2e-4}  # stage 5's 2D branch as it was


@pytest.fixture(scope="module", params=["order", "head start"])
def stage5(request, nets, faces):
    """``stage5(**dual_overrides) -> {seed: stylized render}`` from one cached start of stages 2-4 (the
    portrait artifact of seed 0 serves every seed, so only stage 5 differs between seeds)."""
    portrait, style = faces
    pipe = Pipeline(nets, PipelineConfig().reduced(4))
    cache = MemoryCache()
    if request.param == "order":
        pipe(portrait, style, seed=0, cache=cache)
    else:
        pipe.stylize_2d(style, torch.Generator().manual_seed(0), cache=cache)
        pipe.prepare_portrait(portrait, seed=0, cache=cache)
    for seed in SEEDS[1:]:
        cache.put("portrait_3d", pipe.portrait_key(portrait.key, seed),
                  cache.get("portrait_3d", pipe.portrait_key(portrait.key)))
    made: dict = {}

    def run(**overrides) -> dict[int, torch.Tensor]:
        dual = dataclasses.replace(pipe.cfg.dual, steps=ROUNDS, **overrides)
        if dual not in made:
            configured = Pipeline(nets, dataclasses.replace(pipe.cfg, dual=dual))
            made[dual] = {}
            for seed in SEEDS:
                result = configured(portrait, style, seed=seed, cache=cache)
                assert result.logs["pivotal_tuning"].skipped
                with torch.no_grad():
                    made[dual][seed] = pipe.render_3d(pipe.generator_params(result, 1.0), result.w_3d,
                                                      result.camera, result.noise)
        return made[dual]

    return run


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def closeness(unchanged: dict[int, torch.Tensor], changed: dict[int, torch.Tensor]) -> tuple[float, float]:
    """(the change, the yardstick): medians as in the module docstring."""
    noise = median([rms(unchanged[a], unchanged[b]) for a, b in itertools.combinations(SEEDS, 2)])
    return median([rms(unchanged[s], changed[s]) for s in SEEDS]), noise


def test_the_style_schedule_stays_within_the_seed_noise(stage5):
    earlier = stage5(style_batch=4, style_every=1, **EVERY_ROUND_2D)
    configured = stage5(style_batch=2, style_every=2, **EVERY_ROUND_2D)
    apart, noise = closeness(earlier, configured)
    assert noise > 1e-3 and apart < 1.5 * noise, (apart, noise)
    # a schedule without the style loss moves much further: the yardstick can tell
    without = stage5(style_batch=2, style_every=2, lambda_style_2d=0.0, **EVERY_ROUND_2D)
    assert closeness(earlier, without)[0] > apart


def test_the_2d_branch_on_every_second_round_stays_within_the_seed_noise(stage5):
    every_round = stage5(style_batch=2, style_every=2, **EVERY_ROUND_2D)
    configured = stage5()
    assert (PipelineConfig().dual.update_2d_every, PipelineConfig().dual.lr_2d) == (2, 4e-4)  # what is configured
    apart, noise = closeness(every_round, configured)
    assert noise > 1e-3 and apart < 1.5 * noise, (apart, noise)
