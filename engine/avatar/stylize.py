"""Stage 2: one-shot style finetune of the 2D StyleGAN2 (paper Eq. 1 and 4).

Given the exemplar's W+ latent ``w_e`` [18, 512] (from e4e) and the aligned
exemplar image ``y_e``, build a paired set by style mixing (Eq. 1)

    w_i[l] = alpha * w_e[l] + (1 - alpha) * Mapping(z_i)[l]   for l in mixed layers
    w_i[l] = w_e[l]                                            otherwise

and finetune the synthesis weights so that every ``g(w_i)`` matches ``y_e``
under an L1 loss between discriminator features (Eq. 4), as JoJoGAN does:
the coarse layers keep the exemplar's identity-free structure, the mixed fine
layers vary, and the generator learns to map all of them to the exemplar's
look.

Everything here is a pure function of tensors and callables; the RNG is a
``torch.Generator`` passed in. Images are [B, 3, H, W] in [-1, 1]. The
stage callables' types (``SynthesisFn``, ``MappingFn``, ``FeaturesFn``) are
defined here and shared by stage 5.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from emoji3d.pipeline_config import StyleFinetuneConfig
from engine.avatar.params import Params
from engine.avatar.step_graph import SplitStep, adam
from engine.avatar.steps import ProgressFn, StageLog, autocast, no_progress, run_steps

# (params, ws [B, L, 512]) -> image [B, 3, H, W]
SynthesisFn = Callable[[Params, torch.Tensor], torch.Tensor]
# z [B, 512] -> ws [B, L, 512] (truncation-free mapping of the base generator)
MappingFn = Callable[[torch.Tensor], torch.Tensor]
# image [B, 3, H, W] -> list of feature maps of the (frozen) discriminator
FeaturesFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def draw_z(n: int, w_dim: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` latent draws z [n, w_dim], on the generator's device (the CPU: the same stream on any machine)."""
    return torch.randn(n, w_dim, generator=generator, device=generator.device)


def mixed_layers(num_layers: int, cfg: StyleFinetuneConfig) -> tuple[int, int]:
    """The W+ layers [start, stop) that Eq. 1 mixes."""
    start, stop = cfg.mixed_from, cfg.mixed_to or num_layers
    if not 0 <= start < stop <= num_layers:
        raise ValueError(f"mixed layers [{start}, {stop}) outside the generator's {num_layers} W+ layers")
    return start, stop


def mix_latents(w_e: torch.Tensor, w_rand: torch.Tensor, cfg: StyleFinetuneConfig) -> torch.Tensor:
    """Eq. 1: W+ latents [n, L, 512] that take ``w_rand`` [n, L, 512] (mapped draws) into the
    mixed layers of ``w_e`` [L, 512]."""
    start, stop = mixed_layers(w_e.shape[0], cfg)
    out = w_e.unsqueeze(0).repeat(w_rand.shape[0], 1, 1)  # [n, L, 512]
    out[:, start:stop] = cfg.alpha * w_e[start:stop] + (1 - cfg.alpha) * w_rand[:, start:stop]
    return out


class MixedLatents:
    """Eq. 1 in a step's two parts (``engine.avatar.step_graph``): :meth:`draw` (host) copies ``n``
    fresh draws into a device buffer that lives across steps; :meth:`latents` (device) maps and
    mixes whatever the buffer holds."""

    def __init__(self, w_e: torch.Tensor, mapping: MappingFn, n: int, cfg: StyleFinetuneConfig,
                 generator: torch.Generator) -> None:
        mixed_layers(w_e.shape[0], cfg)  # a bad layer range is refused before the first step
        self.w_e, self.mapping, self.cfg, self.generator = w_e, mapping, cfg, generator
        self.z = torch.empty(n, w_e.shape[1], device=w_e.device)  # [n, 512], refilled every step

    def draw(self) -> None:
        # non_blocking: the copy does not wait for the queued steps to finish
        self.z.copy_(draw_z(self.z.shape[0], self.z.shape[1], self.generator), non_blocking=True)

    def latents(self) -> torch.Tensor:
        """[n, L, 512] from the current draws (no gradient)."""
        with torch.no_grad():
            return mix_latents(self.w_e, self.mapping(self.z), self.cfg)


def feature_l1(fa: Sequence[torch.Tensor], fb: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over D blocks of the mean absolute difference of their features (JoJoGAN), in float32."""
    return sum(F.l1_loss(a.float(), b.float()) for a, b in zip(fa, fb))


def finetune_style(
    params: Params,
    w_e: torch.Tensor,
    exemplar: torch.Tensor,
    synthesis: SynthesisFn,
    mapping: MappingFn,
    features: FeaturesFn,
    cfg: StyleFinetuneConfig,
    generator: torch.Generator,
    progress: ProgressFn = no_progress,
    precision: str = "fp32",
    graphs: bool = False,
) -> StageLog:
    """Finetune ``params`` in place (they are the optimiser's leaves).

    ``exemplar``: [1, 3, H, W] aligned exemplar in [-1, 1], same size as the
    synthesis output. Returns the per-step loss log. An exception from
    ``progress`` stops the stage (see :mod:`engine.avatar.steps`); ``precision``
    as there; ``graphs``: capture the step as a CUDA graph (``engine.avatar.step_graph``).
    """
    trainable = [p for p in params.values() if p.requires_grad]
    if not trainable:
        raise ValueError("finetune_style needs trainable parameters")
    opt = adam(trainable, cfg.lr, (cfg.beta1, cfg.beta2))
    with torch.no_grad(), autocast(exemplar.device, precision):
        target_feats = [f.detach() for f in features(exemplar)]
    mixed = MixedLatents(w_e, mapping, cfg.batch, cfg, generator)

    def prepare(_: int) -> None:
        mixed.draw()

    def compute(_: None) -> dict:
        ws = mixed.latents()
        with autocast(exemplar.device, precision):
            img = synthesis(params, ws)
            feats = features(img)
            loss = feature_l1(feats, [t.expand_as(f) for t, f in zip(target_feats, feats)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"total": loss.detach()}

    return run_steps("style_finetune", cfg.steps, SplitStep(prepare, compute), progress, graphs=graphs)
