"""The stage code as it was before issue 17 (commit 9da89ac), kept only so that the benches
(``bench/pipeline.py``'s FLOPs, ``bench/memory_traffic.py``'s kernels and bytes) can count the
earlier per-user work side by side with the current code in one run, and the tests can check
that a rewrite computes what the earlier form did. Nothing in the product imports it.

What differs from ``engine/avatar``: the LPIPS / ArcFace features of the constant target are
extracted again at every step; PTI's LPIPS runs on the full render (512 px at full size);
stage 5 renders the 2D cartoon twice and EG3D once more (without gradients) per round, and
runs the style loss at stage 2's batch every round; the inversion's noise regularisation takes
the maps one by one. From ``engine.nets.volume``: the official importance renderer's final pass
(concatenate and sort the coarse and fine samples, colours included, then composite interval
midpoints); from ``engine.nets.eg3d``: the decoder's two output slices; from
``engine.nets.perceptual``: LPIPS's per-layer terms as the package's operations, before
``engine.ops.lpips_layer``. Float32 only, without CUDA graphs or side streams (the
``precision``, ``graphs`` and ``concurrent`` arguments the current pipeline passes are accepted
and ignored).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from emoji3d.pipeline_config import DualConfig, InversionConfig, PivotalTuningConfig, StyleFinetuneConfig
from engine.avatar.dual import DualInputs, masked_mse
from engine.avatar.invert import DistanceFn, Inversion, RenderFn
from engine.avatar.params import Params
from engine.avatar.steps import ProgressFn, StageLog, no_progress, ramped_lr, run_steps
from engine.avatar.stylize import FeaturesFn, MappingFn, SynthesisFn, draw_z, feature_l1, mix_latents
from engine.avatar.warp import resize_for_lpips


def noise_regularisation(noise: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over maps and scales of squared one-pixel autocorrelations, map by map."""
    reg = torch.zeros((), device=noise[0].device)
    for v in noise:
        v = v[None, None] if v.ndim == 2 else v
        while True:
            reg = reg + (v * torch.roll(v, 1, dims=3)).mean() ** 2 + (v * torch.roll(v, 1, dims=2)).mean() ** 2
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, 2)
    return reg


def ray_march_midpoints(colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The colour composite [N,M,C] and the weights [N,M,S-1,1] of MipRayMarcher2 as the official
    marcher writes them: each interval's colour is the mean of its two samples."""
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    alpha = 1 - torch.exp(-F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1) * deltas)
    shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    weights = alpha * torch.cumprod(shifted, -2)[:, :, :-1]
    return torch.sum(weights * colors_mid, -2) * 2 - 1, weights


def unify_samples(d1, c1, s1, d2, c2, s2):
    """Concatenate two sample sets along S and sort by depth (the official importance renderer)."""
    depths = torch.cat([d1, d2], dim=-2)
    colors = torch.cat([c1, c2], dim=-2)
    dens = torch.cat([s1, s2], dim=-2)
    _, idx = torch.sort(depths, dim=-2)
    depths = torch.gather(depths, -2, idx)
    colors = torch.gather(colors, -2, idx.expand(-1, -1, -1, colors.shape[-1]))
    dens = torch.gather(dens, -2, idx.expand(-1, -1, -1, 1))
    return depths, colors, dens


def lpips_against_unit_target(feats: Sequence[torch.Tensor], unit_target: Sequence[torch.Tensor],
                              weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """LPIPS [B] from an image's trunk features and a cached target's unit-normalised ones, as
    ``engine.nets.perceptual`` computed it with the package's operations (its ``normalize_tensor``,
    the squared difference, the ``lin<k>`` 1x1 convolution, the spatial mean), layer by layer."""
    total = 0
    for f, t, w in zip(feats, unit_target, weights):
        unit = f / (torch.sqrt(torch.sum(f ** 2, dim=1, keepdim=True)) + 1e-10)
        total = total + F.conv2d((unit - t) ** 2, w).mean([2, 3], keepdim=True)
    return total.reshape(-1)


def decode_sliced(decoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``OSGDecoder.decode`` taking density and colour from the output as two slices, as the
    official decoder does (their backward fills two zero tensors of the output's size and adds them)."""
    n, m, c = x.shape
    x = decoder.net(x.reshape(n * m, c)).reshape(n, m, -1)
    rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001
    sigma = x[..., 0:1]
    return sigma, rgb


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
    """Eq. 2: optimise (w_3d, n). ``target`` [1, 3, H, W] is the EG3D crop."""
    device = target.device
    w_opt = w_avg.detach().clone().repeat(1, num_ws, 1).requires_grad_(True)  # [1, L, 512]
    noise = [torch.randn(s, generator=generator, device=generator.device).to(device).requires_grad_(True)
             for s in noise_shapes]
    opt = torch.optim.Adam([w_opt, *noise], lr=cfg.lr, betas=(0.9, 0.999))
    target_small = resize_for_lpips(target, cfg.lpips_size)

    def step(i: int) -> dict:
        t = i / cfg.steps
        lr = ramped_lr(i, cfg.steps, cfg.lr, cfg.lr_rampup, cfg.lr_rampdown)
        for g in opt.param_groups:
            g["lr"] = lr
        w_noise_scale = w_std * cfg.initial_noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp_length) ** 2
        # CPU draw, copied without waiting for the queued steps (as stylize.MixedLatents.draw).
        w_noise = torch.randn(w_opt.shape, generator=generator, device=generator.device).to(
            device, non_blocking=True) * w_noise_scale
        img = render({}, w_opt + w_noise, c, noise)
        dist = lpips(resize_for_lpips(img, cfg.lpips_size), target_small).sum()
        reg = noise_regularisation(noise)
        loss = dist + cfg.noise_reg_weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # keep each noise map zero-mean, unit-variance
            for v in noise:
                v -= v.mean()
                v *= v.square().mean().rsqrt()
        return {"total": loss.detach(), "lpips": dist.detach(), "noise_reg": reg.detach()}

    log = run_steps("invert_3d", cfg.steps, step, progress)
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
    """Eq. 3: finetune ``params`` (the optimiser's leaves) around the pivot."""
    trainable = [p for p in params.values() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=cfg.lr)

    def step(_: int) -> dict:
        img = render(params, pivot.ws, c, pivot.noise)
        l_lpips = lpips(img, target).mean()
        l_l2 = F.mse_loss(img, target)
        terms = {"lpips": l_lpips.detach(), "l2": l_l2.detach()}
        loss = cfg.lambda_lpips * l_lpips + cfg.lambda_l2 * l_l2
        if id_loss is not None and cfg.lambda_id > 0:
            l_id = id_loss(img, target).mean()
            loss = loss + cfg.lambda_id * l_id
            terms["id"] = l_id.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        terms["total"] = loss.detach()
        return terms

    return run_steps("pivotal_tuning", cfg.steps, step, progress)


def dual_branch_train(
    params_3d: Params,
    params_2d: Params,
    inputs: DualInputs,
    render_3d: RenderFn,
    synthesis_2d: SynthesisFn,
    mapping_2d: MappingFn,
    features_2d: FeaturesFn,
    lpips: DistanceFn,
    cfg: DualConfig,
    style_cfg: StyleFinetuneConfig,
    generator: torch.Generator,
    progress: ProgressFn = no_progress,
    precision: str = "fp32",
    graphs: bool = False,
    concurrent: bool = False,
) -> StageLog:
    """Alternate updates of both branches; both params dicts are updated in place."""
    opt_3d = torch.optim.Adam([p for p in params_3d.values() if p.requires_grad], lr=cfg.lr_3d, betas=(0.0, 0.99))
    trainable_2d = [p for p in params_2d.values() if p.requires_grad]
    opt_2d = torch.optim.Adam(trainable_2d, lr=cfg.lr_2d, betas=(0.0, 0.99)) if cfg.update_2d and trainable_2d else None
    exemplar_small = resize_for_lpips(inputs.exemplar_3d, cfg.lpips_size)
    with torch.no_grad():
        ex_feats = [f.detach() for f in features_2d(inputs.exemplar_2d)]

    def eq5(img_3d: torch.Tensor, img_2d_warped: torch.Tensor, mask: torch.Tensor) -> dict:
        small_3d = resize_for_lpips(img_3d, cfg.lpips_size)
        mse = masked_mse(img_2d_warped, img_3d, mask)
        l_e = lpips(small_3d, exemplar_small).mean()
        l_2d = lpips(small_3d, resize_for_lpips(img_2d_warped * mask, cfg.lpips_size)).mean()
        return {"mse": mse, "lpips_exemplar": l_e, "lpips_2d": l_2d,
                "total": mse + cfg.lambda_1 * l_e + cfg.lambda_2 * l_2d}

    def step(_: int) -> dict:
        # 3D branch: the 2D cartoon is the target.
        with torch.no_grad():
            target, mask = inputs.warp(synthesis_2d(params_2d, inputs.w_2d))
        for _k in range(cfg.steps_3d):
            img_3d = render_3d(params_3d, inputs.pivot.ws, inputs.c, inputs.pivot.noise)
            terms = eq5(img_3d, target, mask)
            opt_3d.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt_3d.step()
        out = {k: v.detach() for k, v in terms.items()}
        # 2D branch: same Eq. 5 with the render fixed, plus its style loss.
        if opt_2d is not None:
            with torch.no_grad():
                img_3d = render_3d(params_3d, inputs.pivot.ws, inputs.c, inputs.pivot.noise)
            warped, mask = inputs.warp(synthesis_2d(params_2d, inputs.w_2d))
            loss_2d = eq5(img_3d, warped, mask)["total"]
            with torch.no_grad():
                z = draw_z(style_cfg.batch, inputs.w_e.shape[1], generator).to(inputs.w_e.device)
                ws = mix_latents(inputs.w_e, mapping_2d(z), style_cfg)
            feats = features_2d(synthesis_2d(params_2d, ws))
            style = feature_l1(feats, [t.expand_as(f) for t, f in zip(ex_feats, feats)])
            opt_2d.zero_grad(set_to_none=True)
            (loss_2d + cfg.lambda_style_2d * style).backward()
            opt_2d.step()
            out["style_2d"] = style.detach()
        return out

    return run_steps("dual_branch", cfg.steps, step, progress)
