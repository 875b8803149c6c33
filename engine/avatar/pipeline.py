"""The one-shot dual-branch pipeline (paper §2.1–2.2): selfie + style → stylized 3D avatar.

:class:`Pipeline` holds the networks, loaded once, and exposes one call::

    result = pipeline(portrait, exemplar, seed=..., progress=..., cache=...)

which runs, in order (stage names as reported to ``progress`` and in ``logs``),

1. :meth:`Pipeline.encode` (e4e) — W+ latents of the exemplar (w_e) and the portrait (w_2d);
2. ``style_finetune`` (``engine.avatar.stylize.finetune_style``) — Eq. 1 + 4 on the 2D
   StyleGAN2 (cached per style);
3. ``invert_3d`` (``engine.avatar.invert.invert_3d``) — Eq. 2, (w_3d, noise) at the
   portrait's camera (cached per selfie);
4. ``pivotal_tuning`` (``engine.avatar.invert.pivotal_tuning``) — Eq. 3 on EG3D (cached per
   selfie, with stage 3, in ``engine.avatar.portrait_artifact``; the PTI delta is stored
   compactly and the later stages use the decoded one);
5. ``dual_branch`` (``engine.avatar.dual.dual_branch_train``) — Eq. 5, alternate 2D/3D updates;

and returns an :class:`AvatarResult`: latents, the compact generator deltas
(fp16, against the base weights), the camera, per-stage loss logs and
timings. :meth:`Pipeline.generator_params` turns a result and a style
strength s ∈ [0, 1] into EG3D weights: s = 0 is the pivot-tuned (photo-real)
generator, s = 1 the stylized one, exactly.

Frames: the 2D branch works on the FFHQ-aligned crop at the 2D generator's
resolution, the 3D branch on EG3D's crop at the 3D generator's output
resolution; ``PortraitInputs.crop2d_to_crop3d`` is the pixel similarity
between the 1024 FFHQ frame and the 512 EG3D frame (``engine.face.analyze``), which
is rescaled here to the generators' sizes. Images are [1, 3, S, S] in [-1, 1];
input crops are brought to a network's size with
``engine.avatar.warp.resize_bilinear`` (the PIL-style filter the networks were
trained with).

The base networks are never modified: every variant is a parameter dict
applied with ``torch.func.functional_call`` (see ``engine.avatar.params``).

A ``portrait_3d`` artifact that cannot be read back (damaged) is computed
again from the photo and overwritten; without the photo its error
(``PortraitArtifactError``) propagates.

Stopping: ``progress`` is the only channel; an exception it raises (the
worker's ``JobCancelled`` and friends) leaves the running stage after its
current step and propagates out of the call unchanged; nothing is written to
the cache for a stage that did not finish (see ``engine.avatar.steps``).
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn

from emoji3d.orders import ENGINE_VERSION
from emoji3d.pipeline_config import PipelineConfig
from engine.avatar import params, portrait_artifact
from engine.avatar.compiled import CompiledPass, compiled
from engine.avatar.tensor_file import pack_tensors, split_prefixed, unpack_tensors  # the style_2d artifact
from engine.avatar.branches import concurrent_usable
from engine.avatar.dual import DualInputs, dual_branch_train
from engine.avatar.invert import (DistanceFn, FramedDistance, Inversion, channels_last_image, invert_3d,
                                  latent_statistics, pivotal_tuning)
from engine.avatar.step_graph import graphs_usable
from engine.avatar.steps import ProgressFn, StageLog, no_progress
from engine.avatar.stylize import finetune_style
from engine.avatar.warp import frame_warp, rescale_similarity, resize_bilinear


log = logging.getLogger("emoji3d.avatar")

FFHQ_FRAME = 1024  # the 2D crop frame in which crop2d_to_crop3d is expressed
EG3D_FRAME = 512   # the 3D crop frame

# What the per-style and per-user stages tune: the whole synthesis side, as
# JoJoGAN (2D) and PTI (3D) do; the mapping networks stay fixed.
TUNE_PREFIXES_2D = ("synthesis.",)
TUNE_PREFIXES_3D = ("backbone.synthesis.", "decoder.", "superresolution.")


@dataclass
class Networks:
    """The loaded networks. ``preset`` is "pretrained", "slim" or "full" (random weights at full size)."""

    g2d: nn.Module                     # StyleGAN2 Generator (mapping + synthesis)
    d2d: nn.Module                     # its Discriminator (features for Eq. 4)
    e4e: nn.Module                     # Encoder4Editing
    e4e_latent_avg: torch.Tensor       # [n_styles, 512] or [512]
    g3d: nn.Module                     # EG3D TriPlaneGenerator
    lpips: DistanceFn                  # (a, b) in [-1, 1] -> [B]: LPIPS VGG16 (stages 3 and 5, the quality report)
    lpips_pti: DistanceFn              # LPIPS AlexNet, as PTI (stage 4); the slim preset has one AlexNet for both
    id_loss: DistanceFn | None         # ArcFace identity loss, or None
    preset: str
    weights_id: str                    # identifies the base weights (cache keys)

    @property
    def device(self) -> torch.device:
        return next(self.g3d.parameters()).device


@dataclass
class PortraitInputs:
    """A face prepared by ``engine.face.analyze`` for both branches.

    The images are None for a portrait rebuilt from its per-selfie artifact
    after the photo itself was deleted (``Pipeline.cached_portrait``): stages
    3 and 4 come from the cache then, and stage 5 never reads the photo.
    """

    image_2d: torch.Tensor | None  # [1, 3, S, S] FFHQ-aligned crop, any S (resized here)
    image_3d: torch.Tensor | None  # [1, 3, S', S'] EG3D crop, any S'
    camera: torch.Tensor           # [1, 25] EG3D label estimated from the photo
    crop2d_to_crop3d: torch.Tensor  # [2, 3] pixels, FFHQ 1024 frame -> EG3D 512 frame
    key: str                       # digest of the source image (cache key)


@dataclass
class AvatarResult:
    w_e: torch.Tensor               # [L2, 512]
    w_2d: torch.Tensor              # [1, L2, 512]
    w_3d: torch.Tensor              # [1, L3, 512]
    noise: dict[str, torch.Tensor]  # EG3D backbone noise maps
    camera: torch.Tensor            # [1, 25]
    delta_2d: dict[str, torch.Tensor]        # style finetune, fp16
    delta_pti: dict[str, torch.Tensor]       # pivotal tuning, fp16
    delta_stylized: dict[str, torch.Tensor]  # after dual-branch training, fp16
    logs: dict[str, StageLog] = field(default_factory=dict)
    preset: str = "slim"
    engine_version: str = ENGINE_VERSION

    @property
    def timings(self) -> dict[str, float]:
        return {k: v.seconds for k, v in self.logs.items()}

    def skipped(self) -> list[str]:
        return [k for k, v in self.logs.items() if v.skipped]


# Given the portrait artifact the later stages continue from (Pipeline.invert_portrait).
PortraitFn = Callable[[portrait_artifact.PortraitArtifact], None]


class ArtifactCache(Protocol):
    def get(self, kind: str, key: str) -> bytes | None: ...
    def put(self, kind: str, key: str, data: bytes) -> None: ...

    def put_later(self, kind: str, key: str, make: Callable[[], bytes]) -> None:
        """``put(kind, key, make())``, which may still run after this returns, on another thread: ``make``
        does CPU work only (no CUDA call, as a stage may be capturing a CUDA graph meanwhile). A ``get`` or
        ``digest`` of that artifact waits for it; whoever owns the cache waits for the rest."""

    def digest(self, kind: str, key: str) -> str | None: ...  # sha256 hex of the bytes; None when absent


class MemoryCache:
    """An in-process ArtifactCache (tests, one-off CLI runs)."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], bytes] = {}

    def get(self, kind: str, key: str) -> bytes | None:
        return self.store.get((kind, key))

    def put(self, kind: str, key: str, data: bytes) -> None:
        self.store[(kind, key)] = data

    def put_later(self, kind: str, key: str, make: Callable[[], bytes]) -> None:
        self.put(kind, key, make())

    def digest(self, kind: str, key: str) -> str | None:
        data = self.store.get((kind, key))
        return None if data is None else hashlib.sha256(data).hexdigest()


def _with_prefix(prefix: str, d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in d.items()}


class Pipeline:
    def __init__(self, nets: Networks, cfg: PipelineConfig = PipelineConfig(),
                 compile_backend: str | Callable | None = None) -> None:
        """``compile_backend``: the generator passes' ``torch.compile`` backend, when not ``cfg.compile``'s
        (a backend callable, in tests)."""
        self.nets = nets
        self.cfg = cfg
        backend = cfg.compile if compile_backend is None else compile_backend
        self._synthesis_3d = compiled(_synthesis, backend, "the EG3D generator")
        self._synthesis_2d = compiled(_forward, backend, "the StyleGAN2 synthesis")

    def compile_failures(self) -> dict[str, str]:
        """Compiled pass -> why it runs eagerly in this process (empty: none failed, or nothing compiled)."""
        return {p.name: p.failure for p in (self._synthesis_3d, self._synthesis_2d)
                if isinstance(p, CompiledPass) and p.failure is not None}

    # -- bound network calls ----------------------------------------------------------
    @property
    def res_2d(self) -> int:
        return int(self.nets.g2d.img_resolution)

    @property
    def res_3d(self) -> int:
        return int(self.nets.g3d.config.img_resolution)

    def synthesis_2d(self, weights: params.Params, ws: torch.Tensor) -> torch.Tensor:
        """StyleGAN2 image [B, 3, S, S] of W+ ``ws`` [B, L, 512] with the 2D generator ``weights``."""
        return params.call_with(self.nets.g2d.synthesis, split_prefixed("synthesis.", weights), self._synthesis_2d, ws,
                                noise_mode="const", **self._layout())

    def mapping_2d(self, z: torch.Tensor) -> torch.Tensor:
        return self.nets.g2d.mapping(z, None)

    def features_2d(self, img: torch.Tensor) -> list[torch.Tensor]:
        return self.nets.d2d.features(img)

    def noise_names_3d(self) -> list[str]:
        return self.nets.g3d.backbone.synthesis.noise_layer_names()

    def noise_shapes_3d(self) -> list[tuple[int, ...]]:
        """[1, 1, r, r] per noise layer name 'b<r>.convK'."""
        return [(1, 1, int(n[1:].split(".")[0]), int(n[1:].split(".")[0])) for n in self.noise_names_3d()]

    def render_3d(self, weights: params.Params, ws: torch.Tensor, c: torch.Tensor, noise) -> torch.Tensor:
        """EG3D image [B, 3, S, S] for W+ ``ws`` at camera ``c`` with the given weights and noise."""
        noise_inputs = noise if isinstance(noise, dict) else dict(zip(self.noise_names_3d(), noise))
        return params.call_with(self.nets.g3d, weights, self._synthesis_3d, ws, c, noise_inputs,
                                self._layout())["image"]

    def _layout(self) -> dict:
        """The generators' layout argument: channels-last activations where the config asks for them."""
        return {"channels_last": True} if self.cfg.channels_last else {}

    def _laid_out(self, distance: DistanceFn) -> DistanceFn:
        """A loss network's distance, given its images channels-last where the config asks for it."""
        return FramedDistance(distance, channels_last_image) if self.cfg.channels_last else distance

    @property
    def precision(self) -> str:
        """"bf16" or "fp32": the optimisation stages' autocast on this pipeline's device."""
        return self.cfg.resolved_precision(self.nets.device.type)

    @property
    def graphs(self) -> bool:
        """Whether the optimisation stages capture their steps as CUDA graphs (CUDA and ``cuda_graphs``)."""
        return graphs_usable(self.nets.device, self.cfg.cuda_graphs)

    @property
    def concurrent(self) -> bool:
        """Whether the optimisation stages run their steps' independent parts on CUDA streams of their
        own (CUDA and ``concurrent_branches``)."""
        return concurrent_usable(self.nets.device, self.cfg.concurrent_branches)

    def _precision_key(self) -> str:
        # fp32 keys are those of the code before precision was a setting (their caches stay valid)
        return "" if self.precision == "fp32" else f":{self.precision}"

    # -- stages -------------------------------------------------------------------------
    def encode(self, image_2d: torch.Tensor) -> torch.Tensor:
        """e4e W+ [B, L, 512] of an FFHQ-aligned crop in [-1, 1]."""
        from engine.nets.e4e import encode

        with torch.no_grad():  # the crops arrive on the CPU (engine.avatar.portrait)
            ws = encode(self.nets.e4e, resize_bilinear(image_2d.to(self.nets.device), 256), self.nets.e4e_latent_avg)
        expected = self.nets.g2d.num_ws
        if ws.shape[1] != expected:
            raise ValueError(f"e4e gives {ws.shape[1]} styles but the 2D generator takes {expected}")
        return ws

    def style_key(self, exemplar: PortraitInputs) -> str:
        return (f"{exemplar.key}:{self.cfg.digest('style')}:{self.nets.weights_id}:{ENGINE_VERSION}"
                f"{self._precision_key()}")

    def portrait_key(self, portrait_key: str, seed: int = 0) -> str:
        """The per-selfie artifact's cache key. The seed is part of it: inversion and PTI draw from the
        run's generator, so another seed (a retry of a weak pack) inverts the photo again."""
        return (f"{portrait_key}:{self.cfg.digest('inversion', 'pti')}:{self.nets.weights_id}:{ENGINE_VERSION}"
                f"{self._precision_key()}" + (f":seed{int(seed)}" if seed else ""))

    def cached_portrait(self, portrait_key: str, cache: ArtifactCache, seed: int = 0) -> PortraitInputs | None:
        """The portrait as far as stages 5+ need it (camera, crop transform), from its
        per-selfie artifact alone; None when nothing is cached for it."""
        blob = cache.get("portrait_3d", self.portrait_key(portrait_key, seed))
        if blob is None:
            return None
        art = portrait_artifact.from_bytes(blob)
        if art.camera is None or art.crop2d_to_crop3d is None:
            return None
        return PortraitInputs(image_2d=None, image_3d=None, camera=art.camera,
                              crop2d_to_crop3d=art.crop2d_to_crop3d.double(), key=portrait_key)

    def stylize_2d(self, exemplar: PortraitInputs, generator: torch.Generator, progress: ProgressFn = no_progress,
                   cache: ArtifactCache | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], StageLog]:
        """Stage 1 (exemplar) + 2. Returns (w_e [L,512], delta_2d, log); cached per style."""
        key = self.style_key(exemplar)
        if cache is not None and (blob := cache.get("style_2d", key)) is not None:
            t = unpack_tensors(blob)
            log = StageLog("style_finetune", skipped=True)
            progress("style_finetune", 1, 1)
            return t["w_e"], split_prefixed("delta.", t), log
        y_e = resize_bilinear(exemplar.image_2d.to(self.nets.device), self.res_2d)
        w_e = self.encode(exemplar.image_2d)[0]  # [L, 512]
        tuned = params.trainable_copy(self.nets.g2d, include=TUNE_PREFIXES_2D)
        log = finetune_style(tuned, w_e, y_e, self.synthesis_2d, self.mapping_2d, self.features_2d,
                             self.cfg.style, generator, progress, self.precision, self.graphs)
        delta = params.compute_delta(tuned, self.nets.g2d)
        if cache is not None:
            cache.put("style_2d", key, pack_tensors({"w_e": w_e, **_with_prefix("delta.", delta)}))
        return w_e, delta, log

    def invert_portrait(self, portrait: PortraitInputs, generator: torch.Generator,
                        progress: ProgressFn = no_progress,
                        cache: ArtifactCache | None = None,
                        seed: int = 0, on_portrait: PortraitFn | None = None
                        ) -> tuple[torch.Tensor, Inversion, dict, list[StageLog]]:
        """Stages 1 (portrait) + 3 + 4, cached per selfie and seed. Returns (w_2d, pivot, delta_pti, logs).
        ``on_portrait`` is given the portrait artifact the later stages continue from (read from the cache
        or just made), once."""
        key = self.portrait_key(portrait.key, seed)
        art = None
        if cache is not None and (blob := cache.get("portrait_3d", key)) is not None:
            try:
                art = portrait_artifact.from_bytes(blob)
            except portrait_artifact.PortraitArtifactError as exc:
                if portrait.image_2d is None or portrait.image_3d is None:
                    raise
                # A damaged cache entry costs a recomputation from the photo, which overwrites it.
                log.warning("portrait %s: %s; inverting the photo again", portrait.key[:12], exc)
        if art is not None:
            names = self.noise_names_3d()
            pivot = Inversion(art.w_3d, [art.noise[n] for n in names], StageLog("invert_3d", skipped=True))
            progress("pivotal_tuning", 1, 1)
            if on_portrait is not None:
                on_portrait(art)
            return art.w_2d, pivot, art.delta_pti, [pivot.log, StageLog("pivotal_tuning", skipped=True)]
        if portrait.image_2d is None or portrait.image_3d is None:
            raise ValueError(f"portrait {portrait.key}: no photo and no cached inversion")
        dev = self.nets.device
        w_2d = self.encode(portrait.image_2d.to(dev))
        target = resize_bilinear(portrait.image_3d.to(dev), self.res_3d)
        c = portrait.camera.to(dev)
        g3d = self.nets.g3d
        cond = c  # EG3D conditions the mapping on the camera of the photo
        w_avg, w_std = latent_statistics(lambda z: g3d.mapping(z, cond.expand(z.shape[0], -1)),
                                         self.cfg.inversion.w_avg_samples, g3d.config.z_dim, generator, dev)
        pivot = invert_3d(target, c, self.render_3d, self._laid_out(self.nets.lpips), w_avg, w_std,
                          self.noise_shapes_3d(), g3d.num_ws, self.cfg.inversion, generator, progress, self.precision,
                          self.graphs, self.concurrent)
        tuned = params.trainable_copy(g3d, include=TUNE_PREFIXES_3D)
        pti_log = pivotal_tuning(tuned, target, pivot, c, self.render_3d, self._laid_out(self.nets.lpips_pti),
                                 self._id_loss_in_3d_frame(portrait), self.cfg.pti, progress, self.precision,
                                 self.graphs, self.concurrent)
        # The artifact stores the PTI delta compactly; continue from what it gives back, cached or not.
        # Rounded on the device; the bytes (entropy coding, copy to the CPU) only when they are cached.
        quantised = portrait_artifact.quantise(portrait_artifact.PortraitArtifact(
            w_2d=w_2d, w_3d=pivot.ws, noise=dict(zip(self.noise_names_3d(), pivot.noise)), camera=portrait.camera,
            crop2d_to_crop3d=portrait.crop2d_to_crop3d, delta_pti=params.compute_delta(tuned, g3d, device=None)))
        stored = quantised.stored()
        pivot = Inversion(pivot.ws, [stored.noise[n] for n in self.noise_names_3d()], pivot.log)
        if cache is not None:
            # The bytes (entropy coding, about 0.3 s of CPU at full size) and their store go on the cache's
            # thread while stage 5 runs, made from a CPU copy (see ArtifactCache.put_later).
            cache.put_later("portrait_3d", key, quantised.to("cpu").to_bytes)
        if on_portrait is not None:
            on_portrait(stored)
        return w_2d, pivot, stored.delta_pti, [pivot.log, pti_log]

    def _id_loss_in_3d_frame(self, portrait: PortraitInputs) -> DistanceFn | None:
        """ArcFace expects FFHQ-aligned faces: carry EG3D-frame images back
        into the FFHQ frame (256 px) before its standard ID crop."""
        if self.nets.id_loss is None or self.cfg.pti.lambda_id <= 0:
            return None
        m = rescale_similarity(portrait.crop2d_to_crop3d, 1.0, self.res_3d / EG3D_FRAME)
        full = torch.cat([m, torch.tensor([[0.0, 0.0, 1.0]], dtype=m.dtype)])
        back = rescale_similarity(torch.linalg.inv(full)[:2], 1.0, 256 / FFHQ_FRAME)  # res_3d px -> FFHQ 256 px
        to_ffhq = frame_warp(back.to(torch.float32), self.res_3d, 256, self.nets.device)  # built once, used per step
        return FramedDistance(self._laid_out(self.nets.id_loss), lambda img: to_ffhq(img)[0])

    def prepare_portrait(self, portrait: PortraitInputs, *, seed: int = 0, progress: ProgressFn = no_progress,
                         cache: ArtifactCache) -> list[StageLog]:
        """Stages 1 (portrait) + 3 + 4 alone, into ``cache``: what a later call with this selfie and seed
        reads instead of running them (a head start while the user still picks a style). It draws what
        that call draws when the style is cached (a house style finetuned by its own job), so the
        inversion is the one the order would have made; stage 5 then starts the seed's stream afresh,
        as for any cached portrait."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return self.invert_portrait(portrait, gen, progress, cache, seed)[3]

    def __call__(self, portrait: PortraitInputs, exemplar: PortraitInputs, *, seed: int = 0,
                 progress: ProgressFn = no_progress, cache: ArtifactCache | None = None,
                 on_portrait: PortraitFn | None = None) -> AvatarResult:
        """Stages 1-5 (module docstring). ``on_portrait``: see :meth:`invert_portrait` (the engine shows the
        photo-real avatar with it while stage 5 runs)."""
        dev = self.nets.device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        logs: dict[str, StageLog] = {}
        t0 = time.perf_counter()
        w_e, delta_2d, style_log = self.stylize_2d(exemplar, gen, progress, cache)
        logs["style_finetune"] = style_log
        w_2d, pivot, delta_pti, inv_logs = self.invert_portrait(portrait, gen, progress, cache, seed, on_portrait)
        logs["invert_3d"], logs["pivotal_tuning"] = inv_logs

        params_2d = {k: v.requires_grad_(True) for k, v in params.apply_delta(self.nets.g2d, delta_2d).items()} \
            if delta_2d else params.trainable_copy(self.nets.g2d, include=TUNE_PREFIXES_2D)
        params_3d = params.apply_delta(self.nets.g3d, delta_pti)
        params_3d = {**params.trainable_copy(self.nets.g3d, include=TUNE_PREFIXES_3D), **params_3d}
        for v in params_3d.values():
            v.requires_grad_(True)
        m = rescale_similarity(portrait.crop2d_to_crop3d, self.res_2d / FFHQ_FRAME, self.res_3d / EG3D_FRAME)
        warp = frame_warp(m.to(torch.float32), self.res_2d, self.res_3d, dev)
        inputs = DualInputs(
            w_2d=w_2d, w_e=w_e, exemplar_2d=resize_bilinear(exemplar.image_2d.to(dev), self.res_2d),
            exemplar_3d=resize_bilinear(exemplar.image_3d.to(dev), self.res_3d), pivot=pivot,
            c=portrait.camera.to(dev), warp=warp)
        logs["dual_branch"] = dual_branch_train(
            params_3d, params_2d, inputs, self.render_3d, self.synthesis_2d, self.mapping_2d, self.features_2d,
            self._laid_out(self.nets.lpips), self.cfg.dual, self.cfg.style, gen, progress, self.precision,
            self.graphs, self.concurrent)
        delta_stylized = params.compute_delta(params_3d, self.nets.g3d)
        names = self.noise_names_3d()
        logs["total"] = StageLog("total", seconds=time.perf_counter() - t0)
        return AvatarResult(
            w_e=w_e, w_2d=w_2d, w_3d=pivot.ws, noise=dict(zip(names, pivot.noise)), camera=portrait.camera,
            delta_2d=delta_2d, delta_pti=delta_pti, delta_stylized=delta_stylized, logs=logs,
            preset=self.nets.preset)

    # -- using a result -----------------------------------------------------------------
    def generator_params(self, result: AvatarResult, strength: float) -> params.Params:
        """EG3D weights at style strength s: 0 = photo-real (PTI), 1 = fully stylized."""
        g3d = self.nets.g3d
        return params.interpolate(g3d, params.apply_delta(g3d, result.delta_pti),
                                  params.apply_delta(g3d, result.delta_stylized), float(strength))


def _synthesis(g3d: nn.Module, ws, c, noise_inputs, layout: dict) -> dict:
    return g3d.synthesis(ws, c, noise_inputs=noise_inputs, **layout)


def _forward(module: nn.Module, *args, **kwargs):
    return module(*args, **kwargs)
