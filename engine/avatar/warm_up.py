"""Compiling the generator passes before the engine's first job (``[pipeline] compile``).

Why: ``torch.compile`` compiles a pass on its first call with each new kind of
input (shapes, dtypes, autocast, which weights take gradients). Without a
warm-up the first job of every engine process pays for all of them, minutes
with inductor, and a compile that fails is found inside a user's job.
:func:`warm_up` runs the whole pipeline once, a few steps per stage, on
synthetic inputs, so that every pass a job calls has been compiled (and, with
CUDA graphs, captured once) before the engine takes jobs. Inductor keeps what
it compiled in its on-disk cache (``TORCHINDUCTOR_CACHE_DIR``; the engine
points it into the data folder), so a later process warms up faster.

Conventions:

* The warm-up shares the pipeline's compiled passes (a shallow copy of the
  :class:`~engine.avatar.pipeline.Pipeline` with shortened step counts), so
  what it compiles is what the jobs call.
* Steps: each stage runs :func:`warm_up_steps` steps: enough to call every
  pass, and with CUDA graphs, for stage 5 to capture every kind of round (with
  and without a 2D update, with and without the style loss).
* Inputs: seeded noise images in [-1, 1] at the crop sizes, the frontal
  camera and a centred face's crop map. What is compiled depends on shapes and
  settings, not on pixels. Nothing is stored: the run has no cache, and its
  result is dropped.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from emoji3d.pipeline_config import DualConfig
from engine.avatar.dual import round_cycle
from engine.avatar.pipeline import EG3D_FRAME, FFHQ_FRAME, Pipeline, PortraitInputs
from engine.avatar.step_graph import WARMUP
from engine.nets.camera import orbit_label

# FFHQ 1024 frame -> EG3D 512 frame for a face centred in both crops (pixel centres at half-integers)
CENTRED_CROP2D_TO_CROP3D = torch.tensor([[EG3D_FRAME / FFHQ_FRAME, 0.0, 0.0],
                                         [0.0, EG3D_FRAME / FFHQ_FRAME, 0.0]], dtype=torch.float64)


@dataclass(frozen=True)
class WarmUp:
    """What :func:`warm_up` did."""

    seconds: float
    steps: int                  # per stage
    failures: dict[str, str]    # compiled pass -> why it runs eagerly (empty: all compiled)
    modes: dict[str, str]       # stage -> how its steps ran ("graphs", "eager", or why graphs were dropped)


def warm_up_steps(dual: DualConfig, graphs: bool) -> int:
    """Steps per stage that call every variant of every compiled pass. One, without CUDA graphs: stage
    5's first round has a 2D update with the style loss, and so calls every pass that any round calls.
    With them, stage 5 meets each kind of round as often as it takes to capture it, so that a capture
    that fails shows at start too."""
    return round_cycle(dual) * (WARMUP + 1) if graphs else 1


def synthetic_portrait(key: str, generator: torch.Generator) -> PortraitInputs:
    """A portrait with the shapes of the face front end's output and noise for pixels."""
    def image(side: int) -> torch.Tensor:
        return torch.rand(1, 3, side, side, generator=generator) * 2 - 1  # [1, 3, S, S] in [-1, 1]

    return PortraitInputs(image_2d=image(FFHQ_FRAME), image_3d=image(EG3D_FRAME),
                          camera=orbit_label(torch.zeros(1), torch.zeros(1)).float(),  # [1, 25] frontal
                          crop2d_to_crop3d=CENTRED_CROP2D_TO_CROP3D.clone(), key=key)


def warm_up(pipeline: Pipeline) -> WarmUp:
    """Run every stage for :func:`warm_up_steps` steps through ``pipeline``'s compiled passes."""
    steps = warm_up_steps(pipeline.cfg.dual, pipeline.graphs)
    shortened = copy.copy(pipeline)  # the same networks and compiled passes
    shortened.cfg = pipeline.cfg.reduced(steps)
    inputs = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    result = shortened(synthetic_portrait("warm-up portrait", inputs), synthetic_portrait("warm-up style", inputs))
    if pipeline.nets.device.type == "cuda":
        torch.cuda.synchronize(pipeline.nets.device)
    modes = {name: stage.mode for name, stage in result.logs.items() if name != "total"}
    return WarmUp(seconds=time.perf_counter() - t0, steps=steps, failures=pipeline.compile_failures(), modes=modes)
