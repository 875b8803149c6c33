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
from engine.avatar.steps import ProgressFn, StageLog, autocast, no_progress, run_steps

# (params, ws [B, L, 512]) -> image [B, 3, H, W]
SynthesisFn = Callable[[Params, torch.Tensor], torch.Tensor]
# z [B, 512] -> ws [B, L, 512] (truncation-free mapping of the base generator)
MappingFn = Callable[[torch.Tensor], torch.Tensor]
# image [B, 3, H, W] -> list of feature maps of the (frozen) discriminator
FeaturesFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def mixed_latents(w_e: torch.Tensor, mapping: MappingFn, n: int, cfg: StyleFinetuneConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """Eq. 1: ``n`` style-mixed W+ latents [n, L, 512] around ``w_e`` [L, 512]."""
    num_layers, w_dim = w_e.shape
    start, stop = cfg.mixed_from, cfg.mixed_to or num_layers
    if not 0 <= start < stop <= num_layers:
        raise ValueError(f"mixed layers [{start}, {stop}) outside the generator's {num_layers} W+ layers")
    # Drawn on the generator's device (the CPU: the same stream on any machine); non_blocking: the copy
    # to the GPU then does not wait for the queued steps to finish.
    z = torch.randn(n, w_dim, generator=generator, device=generator.device)  # [n, 512]
    z = z.to(w_e.device, non_blocking=True)
    w_rand = mapping(z)  # [n, L, 512]
    out = w_e.unsqueeze(0).repeat(n, 1, 1)  # [n, L, 512]
    out[:, start:stop] = cfg.alpha * w_e[start:stop] + (1 - cfg.alpha) * w_rand[:, start:stop]
    return out


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
) -> StageLog:
    """Finetune ``params`` in place (they are the optimiser's leaves).

    ``exemplar``: [1, 3, H, W] aligned exemplar in [-1, 1], same size as the
    synthesis output. Returns the per-step loss log. An exception from
    ``progress`` stops the stage (see :mod:`engine.avatar.steps`); ``precision``
    as there.
    """
    trainable = [p for p in params.values() if p.requires_grad]
    if not trainable:
        raise ValueError("finetune_style needs trainable parameters")
    opt = torch.optim.Adam(trainable, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    with torch.no_grad(), autocast(exemplar.device, precision):
        target_feats = [f.detach() for f in features(exemplar)]

    def step(_: int) -> dict:
        with torch.no_grad():
            ws = mixed_latents(w_e, mapping, cfg.batch, cfg, generator)
        with autocast(exemplar.device, precision):
            img = synthesis(params, ws)
            feats = features(img)
            loss = feature_l1(feats, [t.expand_as(f) for t, f in zip(target_feats, feats)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"total": loss.detach()}

    return run_steps("style_finetune", cfg.steps, step, progress)
