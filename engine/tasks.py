"""What the engine does for each job kind.

``build_handlers(cfg)`` is the worker's factory: it loads the networks and the
face detector once, then returns ``{job kind: handler}``. Handlers are thin
IO wrappers around the pure stages: read blobs, call ``engine.face.analyze`` and
``engine.avatar.pipeline``, write blobs, return a JSON result.

Job kinds:

- ``make_pack`` (payload: :class:`emoji3d.orders.PackOrder`): selfie + style
  → avatar (cached per selfie and per style) → renders / stickers →
  :class:`emoji3d.orders.PackResult`.
- ``style_finetune`` (payload: ``{"style_id", "version"}``): stage 2 for a
  house style, so its first user finds it cached.

Progress is reported as (stage name, overall fraction), using the stage
weights below; cancellation is checked at every step (``JobContext.progress``
raises when the job was cancelled), so a cancel lands within one step.
"""
from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from emoji3d.config import Config
from emoji3d.errors import UserFacingError
from emoji3d.images import DecodeLimits, decode_image
from emoji3d.orders import THUMBNAIL_TARGETS, PackOrder, PackResult, StickerFiles
from storage import artifacts, packs
from storage import styles as st

from engine.face.analyze import FaceConfig, FaceResult, analyze_face
from engine.face.landmarks import LandmarkDetector
from engine.avatar.networks import SLIM_WARNING, load_networks
from engine.avatar.pipeline import AvatarResult, Pipeline, PortraitInputs, result_to_bytes
from engine.worker import JobContext

log = logging.getLogger("emoji3d.tasks")

# Share of a make_pack job's progress bar per stage.
STAGE_WEIGHTS = {
    "face": 0.02,
    "style_finetune": 0.15,
    "invert_3d": 0.20,
    "pivotal_tuning": 0.18,
    "dual_branch": 0.25,
    "render": 0.12,
    "encode": 0.08,
}


class StyleHasNoFace(UserFacingError):
    key = "style_no_face"


class SelfieGone(UserFacingError):
    """A regeneration needs the selfie, which was deleted under the retention policy."""

    key = "selfie_expired"


class StyleGone(UserFacingError):
    key = "style_removed"


@dataclass
class EngineContext:
    cfg: Config
    pipeline: Pipeline
    detector: LandmarkDetector
    face_cfg: FaceConfig
    decode_limits: DecodeLimits
    boundaries: object | None = None      # engine.render.edits.BoundarySet, or None when not installed
    boundaries_problem: str = ""          # why there are none (reported with each pack)

    @classmethod
    def load(cls, cfg: Config) -> "EngineContext":
        device = "cuda" if cfg.engine.device == "cuda" or (
            cfg.engine.device == "auto" and torch.cuda.is_available()) else "cpu"
        if device == "cuda":
            # TF32 matmuls/convolutions: ~3x faster on Ampere/Hopper, well inside GAN-training tolerance.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        nets = load_networks(cfg.weights_dir, cfg.engine.preset, device, seed=cfg.engine.seed)
        if nets.preset == "slim":
            log.warning(SLIM_WARNING)
        face_cfg = FaceConfig(min_face_px=cfg.limits.min_face_px, max_yaw_degrees=cfg.limits.max_yaw_degrees,
                              max_pitch_degrees=cfg.limits.max_pitch_degrees)
        boundaries, problem = load_installed_boundaries(cfg, nets.g3d)
        return cls(cfg, Pipeline(nets, cfg.pipeline), LandmarkDetector(), face_cfg,
                   DecodeLimits(max_megapixels=cfg.limits.max_image_megapixels), boundaries, problem)


def load_installed_boundaries(cfg: Config, g3d) -> tuple[object | None, str]:
    """The expression boundaries for this base generator, or (None, why not).

    A missing, damaged or mismatched file is not fatal: motion stickers are
    still made, and every result says which expressions are unavailable and why.
    """
    from engine.render.edits import generator_digest, load_boundaries

    path = cfg.boundaries_path
    if not path.is_file():
        return None, f"no expression boundary file at {path} (make one with `emoji3d boundaries fit`)"
    try:
        return load_boundaries(path, expected_digest=generator_digest(g3d)), ""
    except UserFacingError as exc:
        log.error("expression boundaries unusable: %s", exc)
        return None, f"expression boundary file {path} is unusable: {exc}"


def build_handlers(cfg: Config) -> dict:
    ctx = EngineContext.load(cfg)
    return {"make_pack": functools.partial(handle_make_pack, ctx),
            "regenerate_pack": functools.partial(handle_regenerate_pack, ctx),
            "style_finetune": functools.partial(handle_style_finetune, ctx)}


# ----------------------------------------------------------------------------- helpers

class BlobArtifactCache:
    """``engine.avatar.pipeline.ArtifactCache`` over the artifacts table and blob store."""

    def __init__(self, jc: JobContext, owner_user_id: int | None) -> None:
        self.jc = jc
        self.owner = owner_user_id

    def _key(self, kind: str, key: str) -> str:
        return artifacts.cache_key(kind, {"key": key}, {}, "")

    def get(self, kind: str, key: str) -> bytes | None:
        art = artifacts.get_artifact(self.jc.db, self._key(kind, key))
        if art is None or not self.jc.blobs.exists(art.blob_digest):
            return None
        return self.jc.blobs.read_bytes(art.blob_digest)

    def put(self, kind: str, key: str, data: bytes) -> None:
        digest = self.jc.blobs.put_bytes(data)
        # Style finetunes are shared between users; per-selfie results belong to the user.
        owner = None if kind == "style_2d" else self.owner
        artifacts.put_artifact(self.jc.db, self._key(kind, key), kind, digest, owner)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def centre_to_edge(m: np.ndarray) -> torch.Tensor:
    """``engine.face.analyze`` matrices put pixel centres at integers; ``engine.avatar.warp``
    at half-integers. Same map, shifted coordinates: M' = T(+½) M T(−½)."""
    m = np.asarray(m, dtype=np.float64)
    out = m.copy()
    out[:, 2] = m[:, 2] + 0.5 - m[:, :2] @ np.array([0.5, 0.5])
    return torch.from_numpy(out)


def portrait_inputs(face: FaceResult, key: str) -> PortraitInputs:
    return PortraitInputs(
        image_2d=to_tensor(face.ffhq.image), image_3d=to_tensor(face.eg3d.image),
        camera=torch.from_numpy(np.asarray(face.camera_label, dtype=np.float32)).reshape(1, 25),
        crop2d_to_crop3d=centre_to_edge(face.ffhq_to_eg3d), key=key)


def _progress(jc: JobContext):
    order = list(STAGE_WEIGHTS)

    def report(stage: str, step: int, total: int) -> None:
        done = sum(STAGE_WEIGHTS[s] for s in order[: order.index(stage)]) if stage in STAGE_WEIGHTS else 0.0
        jc.progress(stage, done + STAGE_WEIGHTS.get(stage, 0.0) * step / max(1, total))

    return report


def _analyze(ctx: EngineContext, data: bytes, what: str) -> FaceResult:
    rgb = decode_image(data, ctx.decode_limits)
    try:
        return analyze_face(rgb, ctx.face_cfg, ctx.detector)
    except UserFacingError as exc:
        if what == "style" and exc.key == "no_face":
            raise StyleHasNoFace("no face found in the style image") from exc
        raise


def render_stills(ctx: EngineContext, avatar: AvatarResult, params, yaws=(-0.35, 0.0, 0.35)) -> list[bytes]:
    """RGBA PNG renders of the stylized avatar from a few head turns (one plane set, matted)."""
    from engine.nets.camera import orbit_label
    from engine.render.frames import RenderSettings, render_frames, to_rgba

    cams = orbit_label(torch.tensor(yaws), torch.zeros(len(yaws)))  # [V, 25]
    settings = RenderSettings(size=ctx.cfg.pack.size, views_per_pass=ctx.cfg.pack.views_per_pass or None)
    batch = render_frames(ctx.pipeline.nets.g3d, params, avatar.w_3d, avatar.noise, cams, settings)
    pngs = []
    for rgba in to_rgba(batch.rgb, batch.alpha):
        buf = io.BytesIO()
        Image.fromarray(rgba).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs


def sticker_specs(ctx: EngineContext) -> tuple[list, list[str]]:
    """The configured stickers this engine can render, and notes on those it cannot."""
    from engine.render.frames import spec_from_entry

    have = set(ctx.boundaries.names()) if ctx.boundaries is not None else set()
    specs, notes = [], []
    for e in ctx.cfg.pack.stickers:
        if e.expression and e.expression not in have:
            if not e.optional:
                why = ctx.boundaries_problem or f"the boundary file has no {e.expression!r} direction"
                notes.append(f"the {e.name} sticker needs the {e.expression} expression: {why}")
            continue
        specs.append(spec_from_entry(e))
    return specs, notes


def render_and_encode(ctx: EngineContext, avatar: AvatarResult, params, order: PackOrder, jc: JobContext,
                      progress) -> tuple[list[StickerFiles], dict[str, str], str | None, str | None, list[str]]:
    """Frames for every sticker, then every platform file, each verified by its encoder.

    Returns (stickers, thumbnail files, preview png digest, preview html digest, notes)."""
    from engine.render.frames import RenderSettings, render_pack
    from engine.stickers.encode import encode
    from engine.stickers.preview import PackItem, build_pack_preview

    pack = ctx.cfg.pack
    specs, notes = sticker_specs(ctx)
    settings = RenderSettings(size=pack.size, views_per_pass=pack.views_per_pass or None)
    rendered = []
    for i, spec in enumerate(specs):
        with torch.no_grad():
            rendered += render_pack(ctx.pipeline.nets.g3d, params, avatar.w_3d, avatar.noise, ctx.boundaries,
                                    [spec], fps=pack.fps, size=pack.size, settings=settings)
        progress("render", i + 1, len(specs))
    stickers = []
    for i, sf in enumerate(rendered):
        files = {target: jc.put_blob(encode(sf.frames, sf.fps, target).data) for target in order.targets}
        stickers.append(StickerFiles(idx=i, name=sf.name, emoji=sf.emoji, files=files))
        progress("encode", i + 1, len(rendered) + 1)
    thumbnail = {}
    thumb_target = THUMBNAIL_TARGETS.get(order.platform)
    if thumb_target and rendered:
        thumbnail[thumb_target] = jc.put_blob(encode(rendered[0].frames, rendered[0].fps, thumb_target).data)
    preview = build_pack_preview("emoji3d pack", [PackItem(sf.name, sf.frames, sf.fps) for sf in rendered])
    progress("encode", 1, 1)
    return stickers, thumbnail, jc.put_blob(preview.sheet_png), jc.put_blob(preview.html.encode("utf-8")), notes


# ----------------------------------------------------------------------------- handlers

def handle_make_pack(ctx: EngineContext, job, jc: JobContext) -> dict:
    return make_pack(ctx, PackOrder.from_payload(job.payload), jc)


def make_pack(ctx: EngineContext, order: PackOrder, jc: JobContext) -> dict:
    progress = _progress(jc)
    progress("face", 0, 1)
    cache = BlobArtifactCache(jc, order.user_id)
    warnings = []
    if jc.blobs.exists(order.selfie_digest):
        selfie = _analyze(ctx, jc.blobs.read_bytes(order.selfie_digest), "selfie")
        portrait = portrait_inputs(selfie, order.selfie_digest)
        warnings = [{"key": w.key, **w.params} for w in selfie.warnings]
    else:
        # The photo was deleted under the retention policy; its inversion may still be cached.
        portrait = ctx.pipeline.cached_portrait(order.selfie_digest, cache)
        if portrait is None:
            raise SelfieGone(f"selfie {order.selfie_digest[:12]} and its cached inversion are both gone",
                             hours=ctx.cfg.privacy.selfie_retention_hours)
    style = _analyze(ctx, jc.blobs.read_bytes(order.exemplar_digest), "style")
    progress("face", 1, 1)
    avatar = ctx.pipeline(portrait, portrait_inputs(style, order.exemplar_digest),
                          seed=order.seed + ctx.cfg.engine.seed, progress=progress, cache=cache)
    params = ctx.pipeline.generator_params(avatar, order.strength)
    progress("render", 0, 1)
    renders = [jc.put_blob(png) for png in render_stills(ctx, avatar, params)]
    stickers, thumbnail, sheet, page, notes = render_and_encode(ctx, avatar, params, order, jc, progress)
    mesh = None
    if order.mesh:
        import tempfile

        from engine.render.mesh import export_glb

        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/avatar.glb"
            try:
                export_glb(ctx.pipeline.nets.g3d, params, avatar.w_3d, avatar.noise, path)
                mesh = jc.put_file(path)
            except ValueError as exc:  # e.g. no surface in the density field (random slim weights)
                notes.append(f"mesh: {exc}")
    result = PackResult(
        pack_id=order.pack_id, preset=avatar.preset, stickers=stickers, thumbnail=thumbnail, preview_png=sheet,
        preview_html=page, avatar=jc.put_blob(result_to_bytes(avatar)), renders=renders, mesh=mesh,
        missing=notes, timings=avatar.timings, skipped=avatar.skipped(), warnings=warnings)
    if order.pack_id is not None:
        packs.update_pack(jc.db, order.pack_id, status="ready")
    return result.to_dict()


def handle_regenerate_pack(ctx: EngineContext, job, jc: JobContext) -> dict:
    """A scheduled remake of an existing pack (its style changed, or the engine did)."""
    import time

    from emoji3d.orders import ENGINE_VERSION
    from storage import jobs, selfies

    pack = packs.get_pack(jc.db, int(job.payload["pack_id"]))
    # The selfie the pack was made from (its photo may be gone; make_pack then uses the cached inversion).
    selfie_digest = None
    if pack.job_id is not None:
        try:
            selfie_digest = jobs.get_job(jc.db, pack.job_id).payload.get("selfie_digest")
        except jobs.JobNotFound:
            selfie_digest = None
    if selfie_digest is None:
        selfie = selfies.latest_selfie(jc.db, pack.user_id)
        if selfie is None or (selfie.expires_at is not None and selfie.expires_at < time.time()):
            raise SelfieGone(f"pack {pack.id}: the owner's selfie is no longer stored",
                             hours=ctx.cfg.privacy.selfie_retention_hours)
        selfie_digest = selfie.blob_digest
    if pack.style_id is None:
        raise StyleGone(f"pack {pack.id}: its style was removed")
    style = st.get_style(jc.db, pack.style_id)
    order = PackOrder(user_id=pack.user_id, selfie_digest=selfie_digest, exemplar_digest=style.exemplar_digest,
                      strength=pack.strength, platform=pack.platform or "local", style_id=style.id,
                      style_version=style.version, pack_id=pack.id, regenerate=True,
                      settings=ctx.cfg.pipeline.digest("style", "inversion", "pti", "dual"))
    result = make_pack(ctx, order, jc)
    packs.mark_regenerated(jc.db, pack.id, style_version=style.version, engine_version=ENGINE_VERSION)
    return result


def handle_style_finetune(ctx: EngineContext, job, jc: JobContext) -> dict:
    style = st.get_style(jc.db, int(job.payload["style_id"]))
    if style.version != int(job.payload.get("version", style.version)):
        return {"skipped": f"style {style.name} changed to version {style.version}; a newer job tunes it"}
    st.set_status(jc.db, style.id, "tuning")
    try:
        face = _analyze(ctx, jc.blobs.read_bytes(style.exemplar_digest), "style")
        ctx.pipeline.stylize_2d(portrait_inputs(face, style.exemplar_digest), torch.Generator().manual_seed(
            ctx.cfg.engine.seed), _progress(jc), cache=BlobArtifactCache(jc, None))
    except UserFacingError as exc:
        st.set_status(jc.db, style.id, "failed", exc.key)
        raise
    st.set_status(jc.db, style.id, "ready")
    return {"style_id": style.id, "version": style.version, "preset": ctx.pipeline.nets.preset}
