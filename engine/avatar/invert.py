"""Stages 3 and 4: EG3D inversion (paper Eq. 2) and pivotal tuning (Eq. 3).

Stage 3 optimises the W+ latent ``w_3d`` [1, 14, 512] and the backbone's
noise maps so that the EG3D render at the portrait's camera ``c`` matches the
EG3D crop of the portrait under LPIPS, with the StyleGAN2 projector's noise
regularisation (multi-scale autocorrelation penalty + renormalisation after
each step) and its schedule (latent noise ramp, learning-rate ramp up/down).

Stage 4 (PTI) freezes that pivot and finetunes the generator's weights with
LPIPS + lambda_l2 * MSE + lambda_id * ArcFace identity loss, so the render
reproduces the photo while the latent stays in the well-behaved region. As
PTI, its LPIPS is the AlexNet one (the caller passes it; stage 3 uses VGG16,
as the projector), and it stops once that term reaches ``stop_lpips``
(PTI's ``LPIPS_value_threshold``). PTI breaks before the update of the step
that reached it; here the stage ends one step after that step
(:class:`engine.avatar.steps.StopAt`: a check that never makes the GPU wait),
so the weights have two more small updates than PTI's.

Images are [B, 3, H, W] in [-1, 1]. The generator is reached through a
``RenderFn(params, ws, c, noise) -> image`` callable, so these functions
never touch module state; the RNG is passed in. LPIPS sees images resized
with ``engine.avatar.warp.resize_for_lpips`` (area average, as the projector);
PTI compares at most ``lpips_size`` px too (by default PTI's whole 512 px
render; the mean-squared and identity terms always keep the full render). A
distance to a constant target goes through :func:`distance_to`, so the
target's LPIPS features and ArcFace embedding are computed once per stage, not
once per step. Forward passes and losses run under
``engine.avatar.steps.autocast`` (``precision``). A stage is stopped by an
exception from ``progress`` (see :mod:`engine.avatar.steps`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from emoji3d.pipeline_config import InversionConfig, PivotalTuningConfig
from engine.avatar.branches import Branches
from engine.avatar.params import Params
from engine.avatar.step_graph import SplitStep, adam, set_lr
from engine.avatar.steps import ProgressFn, StageLog, StopAt, autocast, no_progress, ramped_lr, run_steps
from engine.avatar.warp import resize_for_lpips

# (params, ws [B, L, 512], c [B, 25], noise list) -> image [B, 3, H, W]
RenderFn = Callable[[Params, torch.Tensor, torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]
# (a, b) images [B, 3, H, W] in [-1, 1] -> per-sample distance [B] (LPIPS, ArcFace identity loss);
# the one definition of an image distance, used by stages 3-5 and by the pipeline's Networks.
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# image [B, 3, H, W] -> distance to a fixed target (see distance_to)
DistanceToFn = Callable[[torch.Tensor], torch.Tensor]


def distance_to(distance: DistanceFn, target: torch.Tensor) -> DistanceToFn:
    """``x -> distance(x, target)``. A distance with a ``to_target(target)`` method (LPIPS,
    ArcFace) is asked for it, so the constant target's features are extracted once; call
    this inside the stage's autocast context, so they are made at the stage's precision."""
    to_target = getattr(distance, "to_target", None)
    if to_target is not None:
        return to_target(target)
    return lambda x: distance(x, target)


class TargetAndOther(Protocol):
    """``(x, other) -> (distance(x, target), distance(x, other))`` for a constant target, with
    ``other`` also taken in a prepared form: ``prepare_other(other)`` gives what the second
    distance reads of it (LPIPS: its trunk features; otherwise the image itself), and
    ``from_prepared(x, prepared)`` takes that, so an ``other`` that stays the same over many
    calls is prepared once (stage 5's held cartoon). A class may also derive from this one
    for its ``__call__``."""

    def prepare_other(self, other: torch.Tensor) -> list[torch.Tensor]: ...

    def from_prepared(self, x: torch.Tensor, prepared: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __call__(self, x: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_prepared(x, self.prepare_other(other))


class _SeparateDistances(TargetAndOther):
    """:class:`TargetAndOther` for a distance without a method of its own: two calls, the
    image itself as the prepared form."""

    def __init__(self, distance: DistanceFn, target: torch.Tensor) -> None:
        self.distance, self.to_target = distance, distance_to(distance, target)

    def prepare_other(self, other: torch.Tensor) -> list[torch.Tensor]:
        return [other]

    def from_prepared(self, x: torch.Tensor, prepared: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_target(x), self.distance(x, prepared[0])


class _FramedTargetAndOther(TargetAndOther):
    """:class:`TargetAndOther` of a :class:`FramedDistance`: both images framed, then the inner one."""

    def __init__(self, inner: TargetAndOther, frame: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.inner, self.frame = inner, frame

    def prepare_other(self, other: torch.Tensor) -> list[torch.Tensor]:
        return self.inner.prepare_other(self.frame(other))

    def from_prepared(self, x: torch.Tensor, prepared: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.from_prepared(self.frame(x), prepared)


def distances_to_target_and_other(distance: DistanceFn, target: torch.Tensor) -> TargetAndOther:
    """``(x, other) -> (distance(x, target), distance(x, other))`` (a :class:`TargetAndOther`). A
    distance with a ``to_target_and_other(target)`` method (LPIPS) is asked for it, so ``x``'s
    features serve both and ``other``'s can be kept; otherwise as :func:`distance_to` and a second
    call. Call it inside the stage's autocast context, as :func:`distance_to`."""
    both = getattr(distance, "to_target_and_other", None)
    if both is not None:
        return both(target)
    return _SeparateDistances(distance, target)


class FramedDistance:
    """A distance measured after a fixed image transform ``frame`` (image -> image), e.g.
    the ArcFace loss on EG3D renders carried back into the FFHQ frame, or an LPIPS network
    given its images channels-last (:func:`channels_last_image`)."""

    def __init__(self, distance: DistanceFn, frame: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.distance, self.frame = distance, frame

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.frame(a), self.frame(b))

    def to_target(self, target: torch.Tensor) -> DistanceToFn:
        inner = distance_to(self.distance, self.frame(target))
        return lambda x: inner(self.frame(x))

    def to_target_and_other(self, target: torch.Tensor) -> TargetAndOther:
        return _FramedTargetAndOther(distances_to_target_and_other(self.distance, self.frame(target)), self.frame)


def channels_last_image(img: torch.Tensor) -> torch.Tensor:
    """``img`` [B, 3, H, W] channels-last (a small copy of 3 channels), so the network it enters runs
    its convolutions NHWC without cuDNN converting around each (``[pipeline] channels_last``)."""
    return img.contiguous(memory_format=torch.channels_last)


@dataclass
class Inversion:
    ws: torch.Tensor                 # [1, L, 512]
    noise: list[torch.Tensor]        # the backbone's noise maps, each [1, 1, r, r]
    log: StageLog


def noise_regularisation(noise: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over maps and scales of squared one-pixel autocorrelations: each map [1, 1, h, w] (or
    [h, w]) at its own size, then average-pooled by 2 while it is taller than 8 px, as the
    StyleGAN2 projector does.

    The maps of one size are taken as one batch: a map entering the pyramid at a size joins the
    pooled larger maps already there, and both shifts of a batch are one product. The squared
    autocorrelations of all sizes are summed once, at the end. The same sum (up to float
    rounding) in a tenth of the kernels: taken map by map, EG3D's 13 backbone noise maps cost
    1,253 small kernels per inversion step (forward and backward; ``bench/memory_traffic.py``)."""
    at_size: dict[tuple[int, int], list[torch.Tensor]] = {}
    for v in noise:
        v = v[None, None] if v.ndim == 2 else v
        at_size.setdefault(tuple(v.shape[-2:]), []).append(v.reshape(-1, 1, *v.shape[-2:]))  # [n, 1, h, w]
    terms = []
    while at_size:
        size = max(at_size)  # the tallest maps first, so every pooled map meets the maps of its size
        group = at_size.pop(size)
        batch = group[0] if len(group) == 1 else torch.cat(group)  # [n, 1, h, w]
        shifted = torch.stack([torch.roll(batch, 1, dims=3), torch.roll(batch, 1, dims=2)])  # [2, n, 1, h, w]
        terms.append((batch * shifted).mean(dim=(2, 3, 4)).flatten())  # [2n] autocorrelations
        if size[0] > 8:
            pooled = F.avg_pool2d(batch, 2)  # [n, 1, h/2, w/2]
            at_size.setdefault(tuple(pooled.shape[-2:]), []).append(pooled)
    return torch.cat(terms).square().sum()


def latent_statistics(mapping: Callable[[torch.Tensor], torch.Tensor], n: int, w_dim: int,
                      generator: torch.Generator, device) -> tuple[torch.Tensor, float]:
    """Mean W [1, 1, 512] and its scalar spread from ``n`` mapped samples."""
    z = torch.randn(n, w_dim, generator=generator, device=generator.device).to(device)  # [n, 512]
    with torch.no_grad():
        w = mapping(z)[:, :1, :]  # [n, 1, 512]
    w_avg = w.mean(0, keepdim=True)
    w_std = float(((w - w_avg).square().sum() / n).sqrt())
    return w_avg, w_std


def invert_3d(
    target: torch.Tensor,
    c: torch.Tensor,
    render: RenderFn,
    lpips: DistanceFn,
    w_avg: torch.Tensor,
    w_std: float,
    noise_shapes: Sequence[tuple[int, ...]],
    num_ws: int,
    cfg: InversionConfig,
    generator: torch.Generator,
    progress: ProgressFn = no_progress,
    precision: str = "fp32",
    graphs: bool = False,
    concurrent: bool = False,
) -> Inversion:
    """Eq. 2: optimise (w_3d, n). ``target`` [1, 3, H, W] is the EG3D crop. ``graphs``: capture
    the step as a CUDA graph (``engine.avatar.step_graph``). ``concurrent``: the render and the
    noise regularisation on CUDA streams of their own (``engine.avatar.branches``)."""
    device = target.device
    branches = Branches(device, concurrent)
    w_opt = w_avg.detach().clone().repeat(1, num_ws, 1).requires_grad_(True)  # [1, L, 512]
    noise = [torch.randn(s, generator=generator, device=generator.device).to(device).requires_grad_(True)
             for s in noise_shapes]
    opt = adam([w_opt, *noise], cfg.lr, (0.9, 0.999), varying_lr=True)
    with autocast(device, precision):
        lpips_to_target = distance_to(lpips, resize_for_lpips(target, cfg.lpips_size))
    # The latent noise of the step: N(0, 1) draws and their scale, refilled by ``prepare``.
    w_noise = torch.empty_like(w_opt, requires_grad=False)  # [1, L, 512]
    w_noise_scale = torch.empty((), device=device)

    def prepare(i: int) -> None:
        set_lr(opt, ramped_lr(i, cfg.steps, cfg.lr, cfg.lr_rampup, cfg.lr_rampdown))
        t = i / cfg.steps
        w_noise_scale.fill_(w_std * cfg.initial_noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp_length) ** 2)
        # CPU draw (the same stream on any machine), copied without waiting for the queued steps.
        w_noise.copy_(torch.randn(w_opt.shape, generator=generator, device=generator.device), non_blocking=True)

    def compute(_: None) -> dict:
        with branches.fork() as side:
            reg = side(noise_regularisation, noise)
            with autocast(device, precision):
                img = render({}, w_opt + w_noise * w_noise_scale, c, noise)
                dist = lpips_to_target(resize_for_lpips(img, cfg.lpips_size)).float().sum()
        loss = dist + cfg.noise_reg_weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # keep each noise map zero-mean, unit-variance
            for v in noise:
                v -= v.mean()
                v *= v.square().mean().rsqrt()
        return {"total": loss.detach(), "lpips": dist.detach(), "noise_reg": reg.detach()}

    log = run_steps("invert_3d", cfg.steps, SplitStep(prepare, compute), progress, graphs=graphs)
    return Inversion(w_opt.detach(), [v.detach() for v in noise], log)


def pivotal_tuning(
    params: Params,
    target: torch.Tensor,
    pivot: Inversion,
    c: torch.Tensor,
    render: RenderFn,
    lpips: DistanceFn,
    id_loss: DistanceFn | None,
    cfg: PivotalTuningConfig,
    progress: ProgressFn = no_progress,
    precision: str = "fp32",
    graphs: bool = False,
    concurrent: bool = False,
) -> StageLog:
    """Eq. 3: finetune ``params`` (the optimiser's leaves) around the pivot; ``lpips`` is PTI's
    (AlexNet) distance; ``graphs`` as in :func:`invert_3d`; ``concurrent``: the LPIPS and ArcFace
    terms of the render on CUDA streams of their own (``engine.avatar.branches``)."""
    branches = Branches(target.device, concurrent)
    trainable = [p for p in params.values() if p.requires_grad]
    opt = adam(trainable, cfg.lr, (0.9, 0.999))
    lpips_px = min(cfg.lpips_size, target.shape[-1])  # never enlarged: only bigger renders are averaged down
    use_id = id_loss is not None and cfg.lambda_id > 0
    with autocast(target.device, precision):
        lpips_to_target = distance_to(lpips, resize_for_lpips(target, lpips_px))
        id_to_target = distance_to(id_loss, target) if use_id else None

    def compute(_: None) -> dict:
        with autocast(target.device, precision):
            img = render(params, pivot.ws, c, pivot.noise)
            with branches.fork() as side:
                l_lpips = side(lambda im: lpips_to_target(resize_for_lpips(im, lpips_px)).float().mean(), img)
                l_id = side(lambda im: id_to_target(im).float().mean(), img) if id_to_target is not None else None
                l_l2 = F.mse_loss(img.float(), target)
            terms = {"lpips": l_lpips.detach(), "l2": l_l2.detach()}
            loss = cfg.lambda_lpips * l_lpips + cfg.lambda_l2 * l_l2
            if l_id is not None:
                loss = loss + cfg.lambda_id * l_id
                terms["id"] = l_id.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        terms["total"] = loss.detach()
        return terms

    stop = StopAt("lpips", cfg.stop_lpips) if cfg.stop_lpips > 0 else None
    return run_steps("pivotal_tuning", cfg.steps, SplitStep(lambda _: None, compute), progress, graphs=graphs,
                     stop=stop)
