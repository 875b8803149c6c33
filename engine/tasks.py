"""What the engine does for each job kind: the job's IO around the pure stages.

``build_handlers(cfg)`` is the worker's factory: it loads the engine's
resources once (:class:`engine.resources.EngineResources`), then returns
``{job kind: handler}``. A handler reads blobs, calls the face front end,
the avatar pipeline (:mod:`engine.avatar.pipeline`) and the pack maker
(:mod:`engine.render.pack`), writes blobs, moves the pack through its life
cycle (:mod:`storage.packs`) and returns a JSON result.

Job kinds:

- ``make_pack`` (payload: :class:`emoji3d.orders.PackOrder`): selfie + style
  → avatar (cached per selfie and per style; a first-look still of the
  photo-real avatar after pivotal tuning and of the stylized one after
  stage 5, recorded under ``emoji3d.orders.first_look_key``) → quality report
  (:mod:`engine.render.quality`, also written into preview.html) → stills
  and stickers → :class:`emoji3d.orders.PackResult`.
- ``regenerate_pack`` (payload: ``{"pack_id"}``): a scheduled remake of a pack.
- ``rerender_pack`` (payload: :class:`emoji3d.orders.RerenderOrder`): a
  finished pack rendered again from its stored avatar with another strength
  or sticker selection, without optimisation; the pack changes only when it
  succeeds (``storage.packs.mark_rerendered``).
- ``style_finetune`` (payload: ``{"style_id", "version"}``): stage 2 for a
  house style, so its first user finds it cached.
- ``prepare_portrait`` (payload: :class:`emoji3d.orders.PortraitPrep`): the
  head start, stages 1, 3 and 4 for a selfie while its user picks a style. An
  order placed while it runs is held in the queue until it ends
  (``jobs.waits_for``). A ``make_pack`` that still finds its selfie's head
  start running (it started between the order's placing and its claim, or a
  bot of the previous version placed the order) waits for it (mirroring its
  progress) and then reads the inversion from the cache.

Progress is reported as (stage name, overall fraction) with the stage
weights below. Cancellation has one channel: ``JobContext.progress`` raises
when the job was cancelled; it reads the cancel at most once a second, so a
cancel lands within max(one step, about a second).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch

from emoji3d.config import Config
from emoji3d.errors import AvatarGone, SelfieGone, StyleGone, StyleHasNoFace, UserFacingError
from emoji3d.images import decode_image
from emoji3d.orders import (CUSTOM_EMOJI_TARGETS, ENGINE_VERSION, JOB_KIND, PLATFORM_TARGETS, PREPARE_KIND,
                            PREVIEW_PAGE_PLATFORMS, QUALITY_KEYS, REGENERATE_KIND, RERENDER_KIND, THUMBNAIL_TARGETS,
                            PackOrder, PackResult, PortraitPrep, RerenderOrder, StickerFiles, first_look_key)
from emoji3d.texts import quality_summary
from engine import boundary_job
from engine.avatar import params, portrait_artifact
from engine.avatar.avatar_file import AvatarFileError, quantise_residual, result_from_bytes, result_to_bytes
from engine.avatar.pipeline import AvatarResult, PortraitFn, PortraitInputs
from engine.avatar.portrait import portrait_inputs
from engine.blob_memo import BlobMemo
from engine.face.analyze import FaceResult, analyze_face
from engine.render import quality
from engine.render.pack import AvatarPose, PackFiles, make_pack_files
from engine.resources import EngineResources
from engine.stickers.preview import with_quality
from engine.worker import JobContext
from storage import artifacts, jobs, packs, selfies
from storage import styles as style_store

log = logging.getLogger("emoji3d.tasks")

# Share of a make_pack job's progress bar per stage (every key has a text in emoji3d.texts).
STAGE_WEIGHTS = {
    "face": 0.02,
    "style_finetune": 0.15,
    "invert_3d": 0.20,
    "pivotal_tuning": 0.18,
    "dual_branch": 0.25,
    "render": 0.12,
    "encode": 0.08,
}


def build_handlers(cfg: Config) -> dict:
    res = EngineResources.load(cfg)
    return {JOB_KIND: functools.partial(handle_make_pack, res),
            REGENERATE_KIND: functools.partial(handle_regenerate_pack, res),
            RERENDER_KIND: functools.partial(handle_rerender_pack, res),
            PREPARE_KIND: functools.partial(handle_prepare_portrait, res),
            "style_finetune": functools.partial(handle_style_finetune, res), **boundary_job.handlers(res)}


def artifact_key(kind: str, key: str, owner_user_id: int | None = None) -> str:
    """The artifacts-table key under which the job cache stores the pipeline's ``(kind, key)``: for an
    artifact a user owns, theirs alone (see :class:`BlobArtifactCache`)."""
    return artifacts.cache_key(kind, {"key": key} if owner_user_id is None else {"key": key, "owner": owner_user_id},
                               {}, "")


class BlobArtifactCache:
    """``engine.avatar.pipeline.ArtifactCache`` over the artifacts table and blob store.

    Every artifact belongs to the user it was made for (deleted with them, by
    ``/delete`` or retention), except the finetune of a house style
    (``shared_style``), which every user of that style shares. A finetune on a
    one-off uploaded style image belongs to its uploader. Shared artifacts
    (no owner) are kept in ``memo`` between jobs, and read from it.

    An owned artifact's table key names its owner, so nothing made from one
    user's photo serves another user who uploads the same bytes: each computes
    their own, no order runs faster for a photo someone else sent (which would
    tell that they did), and each user's ``/delete`` removes their own copy. A
    read also finds the owner's artifacts stored before keys named owners
    (under the shared form of the key, with this owner recorded), so the
    avatars made then still render.

    :meth:`put_later` puts on the cache's own thread. Use the cache as a context
    manager when anything may be put later: leaving it waits for those puts (so
    a failed job's clean-up sees every blob it wrote) and raises the first
    failure among them, unless the block is already raising.
    """

    def __init__(self, jc: JobContext, owner_user_id: int | None, *, shared_style: bool,
                 memo: BlobMemo | None = None) -> None:
        self.jc = jc
        self.owner = owner_user_id
        self.shared_style = shared_style
        self.memo = memo if memo is not None else BlobMemo(0)
        self._later: ThreadPoolExecutor | None = None
        self._pending: dict[tuple[str, str], Future] = {}
        self._pending_lock = threading.Lock()  # a put may be waited for from another thread (the avatar file's)

    def __enter__(self) -> "BlobArtifactCache":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.settle()
        except Exception as failure:
            if exc is None:
                raise
            log.warning("job %s: an artifact stored on the side failed too: %s", self.jc.job.id, failure)
        finally:
            if self._later is not None:
                self._later.shutdown(wait=True)
                self._later = None

    def put_later(self, kind: str, key: str, make: Callable[[], bytes]) -> None:
        """``put(kind, key, make())`` on this cache's thread (``ArtifactCache.put_later``)."""
        if self._later is None:
            self._later = ThreadPoolExecutor(1, thread_name_prefix=f"artifact-put-{self.jc.job.id}")
        future = self._later.submit(lambda: self.put(kind, key, make()))
        with self._pending_lock:
            self._pending[(kind, key)] = future

    def settle(self, kind: str | None = None, key: str | None = None) -> None:
        """Wait for the pending :meth:`put_later` of ``(kind, key)`` (all of them without a kind), raising
        the first failure (a failed put is forgotten once raised, as if never made)."""
        with self._pending_lock:
            waiting = [(k, f) for k, f in self._pending.items() if kind is None or k == (kind, key)]
        failure = None
        for k, future in waiting:
            try:
                future.result()
            except Exception as exc:  # the others are still waited for
                failure = failure or exc
            finally:
                with self._pending_lock:
                    if self._pending.get(k) is future:
                        del self._pending[k]
        if failure is not None:
            raise failure

    def raise_failed_put(self) -> None:
        """Raise the failure of a put that has already failed, without waiting for those still running
        (as :meth:`settle` would): checked after every step, so that a job whose artifact could not be
        stored stops there instead of after its stage."""
        with self._pending_lock:
            failed = next((k for k, f in self._pending.items() if f.done() and f.exception() is not None), None)
        if failed is not None:
            self.settle(*failed)

    def _owner_of(self, kind: str) -> int | None:
        """Who an artifact of ``kind`` put by this cache belongs to (None: shared)."""
        return None if kind == "style_2d" and self.shared_style else self.owner

    def table_key(self, kind: str, key: str) -> str:
        """The artifacts-table key :meth:`put` stores ``(kind, key)`` under."""
        return artifact_key(kind, key, self._owner_of(kind))

    def find(self, kind: str, key: str) -> artifacts.Artifact | None:
        """This owner's artifact for ``(kind, key)``, else a shared one (or one of this owner's stored
        under the shared key form); never another user's. Its ``cache_key`` is the table key it has.
        Waits for a :meth:`put_later` of it."""
        self.settle(kind, key)
        if self.owner is not None:
            own = artifacts.get_artifact(self.jc.db, artifact_key(kind, key, self.owner))
            if own is not None:
                return own
        art = artifacts.get_artifact(self.jc.db, artifact_key(kind, key))
        return art if art is not None and art.owner_user_id in (None, self.owner) else None

    def get(self, kind: str, key: str) -> bytes | None:
        art = self.find(kind, key)
        if art is None:
            return None
        shared = art.owner_user_id is None
        if shared and (data := self.memo.get(art.blob_digest)) is not None:
            return data
        if not self.jc.blobs.exists(art.blob_digest):
            return None
        data = self.jc.blobs.read_bytes(art.blob_digest)
        if shared:
            self.memo.put(art.blob_digest, data)
        return data

    def digest(self, kind: str, key: str) -> str | None:
        """The sha256 of the artifact's bytes without reading them: the blob store names a blob by it."""
        art = self.find(kind, key)
        if art is None or not self.jc.blobs.exists(art.blob_digest):
            return None
        return art.blob_digest

    def put(self, kind: str, key: str, data: bytes) -> None:
        digest = self.jc.store_blob(data)
        owner = self._owner_of(kind)
        artifacts.put_artifact(self.jc.db, self.table_key(kind, key), kind, digest, owner)
        if owner is None:
            self.memo.put(digest, data)


class OrderCache(BlobArtifactCache):
    """An order's artifact cache: ``before_portrait()`` runs before the pipeline looks for the portrait's
    inversion (after the style stage); the order waits there for its selfie's head start
    (:func:`await_preparation`)."""

    def __init__(self, jc: JobContext, owner_user_id: int | None, *, shared_style: bool,
                 memo: BlobMemo | None = None, before_portrait: Callable[[], Any] | None = None) -> None:
        super().__init__(jc, owner_user_id, shared_style=shared_style, memo=memo)
        self.before_portrait = before_portrait

    def get(self, kind: str, key: str) -> bytes | None:
        if kind == "portrait_3d" and self.before_portrait is not None:
            self.before_portrait()
        return super().get(kind, key)


def still_png(image: torch.Tensor) -> bytes:
    """PNG bytes of one render [1, 3, S, S] in [-1, 1]."""
    import io

    from PIL import Image

    pixels = ((image[0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [3, S, S]
    buf = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def record_first_look(res: EngineResources, jc: JobContext, owner: int | None, stage: str, weights: dict,
                      ws: torch.Tensor, noise: dict) -> None:
    """Render the avatar frontally with ``weights`` and record the still for the notifier."""
    image = quality.render(res.pipeline.nets.g3d, weights, ws, quality.turn_cameras()[:1], noise)["image"]
    digest = jc.store_blob(still_png(image))
    artifacts.put_artifact(jc.db, first_look_key(jc.job.id, stage), "first_look", digest, owner, wake_waiters=True)


def _pivot_still(res: EngineResources, jc: JobContext, owner: int | None) -> PortraitFn:
    """The pipeline's ``on_portrait``: the photo-real avatar's still, from the values stage 5 starts from
    (not from the artifact's bytes, which may still be being made)."""

    def on_portrait(art: portrait_artifact.PortraitArtifact) -> None:
        g3d = res.pipeline.nets.g3d
        record_first_look(res, jc, owner, "photo_real", params.apply_delta(g3d, art.delta_pti), art.w_3d, art.noise)

    return on_portrait


def stage_progress(jc: JobContext):
    """``progress(stage, step, total)`` for the stages, as the job's overall fraction."""
    order = list(STAGE_WEIGHTS)

    def report(stage: str, step: int, total: int) -> None:
        done = sum(STAGE_WEIGHTS[s] for s in order[: order.index(stage)]) if stage in STAGE_WEIGHTS else 0.0
        jc.progress(stage, done + STAGE_WEIGHTS.get(stage, 0.0) * step / max(1, total))

    return report


def _analyze(res: EngineResources, data: bytes, what: str) -> FaceResult:
    rgb = decode_image(data, res.decode_limits)
    try:
        return analyze_face(rgb, res.face_cfg, res.detector)
    except UserFacingError as exc:
        if what == "style" and exc.key == "no_face":
            raise StyleHasNoFace("no face found in the style image") from exc
        raise


def _style_face(res: EngineResources, jc: JobContext, digest: str, shared: bool) -> FaceResult:
    """The analysed face of a style image: a house or global style's (``shared``) kept between
    jobs (``res.style_faces``, :mod:`engine.face_memo`), a user's own upload analysed each time."""
    def analyse() -> FaceResult:
        return _analyze(res, jc.blobs.read_bytes(digest), "style")

    return res.style_faces.get_or_analyse(digest, analyse) if shared else analyse()


def custom_emoji_target(cfg: Config, platform: str) -> str | None:
    """The custom-emoji target the pack gets: the platform's, unless ``[telegram] custom_emoji`` is off."""
    if platform == "telegram" and not cfg.telegram.custom_emoji:
        return None
    return CUSTOM_EMOJI_TARGETS.get(platform)


# ----------------------------------------------------------------------------- handlers

def handle_make_pack(res: EngineResources, job, jc: JobContext) -> dict:
    return make_pack(res, PackOrder.from_payload(job.payload), jc)


def make_pack(res: EngineResources, order: PackOrder, jc: JobContext) -> dict:
    """Make the order's pack. A remake of a made pack (a retry, a regeneration) leaves the pack as it
    is until it succeeds: a failure keeps the published set and its stickers (``storage.packs``)."""
    # False for a made pack: a remake, which does not touch the pack's status
    remake = order.pack_id is not None and not packs.mark_rendering(jc.db, order.pack_id)
    try:
        return _make_pack(res, order, jc)
    except Exception as exc:
        if remake:  # the operator's record: the job row holds the error; the pack still shows its last result
            log.warning("pack %s keeps its previous stickers: its remake (job %s) failed: %s",
                        order.pack_id, jc.job.id, exc)
        raise


def handle_prepare_portrait(res: EngineResources, job, jc: JobContext) -> dict:
    """The head start: invert the selfie into the user's ``portrait_3d`` artifact, unless it is there.
    The result names the artifact, so that one no order read goes with its selfie
    (:func:`storage.selfies.purge_expired`)."""
    prep = PortraitPrep.from_payload(job.payload)
    with BlobArtifactCache(jc, prep.user_id, shared_style=False, memo=res.artifact_memo) as cache:
        return _prepare_portrait(res, prep, jc, cache)


def _prepare_portrait(res: EngineResources, prep: PortraitPrep, jc: JobContext, cache: BlobArtifactCache) -> dict:
    seed = prep.seed + res.cfg.engine.seed
    key = res.pipeline.portrait_key(prep.selfie_digest, seed)
    cached = cache.find("portrait_3d", key)
    if cached is not None and jc.blobs.exists(cached.blob_digest):  # the artifact's own key, whichever form
        return {"artifact": cached.cache_key, "prepared": False}
    done = {"artifact": cache.table_key("portrait_3d", key)}
    if not jc.blobs.exists(prep.selfie_digest):  # deleted meanwhile (retention, /delete): nothing to prepare
        return {"prepared": False}
    portrait = portrait_inputs(_analyze(res, jc.blobs.read_bytes(prep.selfie_digest), "selfie"), prep.selfie_digest)
    logs = res.pipeline.prepare_portrait(portrait, seed=seed, progress=stage_progress(jc), cache=cache)
    return {**done, "prepared": True, "timings": {log.name: log.seconds for log in logs}}


# How often an order looks at the head start it waits for (one small read each time).
PREPARATION_POLL_S = 0.1


def await_preparation(jc: JobContext, order: PackOrder) -> bool:
    """Wait while the head start of the order's selfie runs on another engine, showing its progress as
    the order's; True when it succeeded (its inversion is then in the cache). A head start that is not
    running (none, queued, failed, being cancelled) or whose engine went silent (lease expired) is not
    waited for: the order inverts the selfie itself. Raises like ``jc.progress`` when the order is
    cancelled."""
    key = PortraitPrep.for_order(order).idempotency_key()
    while True:
        prep = jobs.find_by_key(jc.db, key)
        if prep is None or prep.status != "running":
            return prep is not None and prep.status == "succeeded"
        if prep.lease_expires_at is not None and prep.lease_expires_at < time.time():
            return False
        jc.progress(prep.stage if prep.stage in STAGE_WEIGHTS else "invert_3d", prep.progress)
        time.sleep(PREPARATION_POLL_S)


def _make_pack(res: EngineResources, order: PackOrder, jc: JobContext) -> dict:
    cache = OrderCache(jc, order.user_id, shared_style=order.style_id is not None, memo=res.artifact_memo,
                       before_portrait=functools.partial(await_preparation, jc, order))
    # One thread beside the job's for the avatar file's bytes; leaving either block waits for what runs there.
    with cache, ThreadPoolExecutor(1, thread_name_prefix=f"avatar-file-{jc.job.id}") as beside:
        return _make_pack_with(res, order, jc, cache, beside)


def _make_pack_with(res: EngineResources, order: PackOrder, jc: JobContext, cache: OrderCache,
                    beside: ThreadPoolExecutor) -> dict:
    report_progress = stage_progress(jc)

    def progress(stage: str, step: int, total: int) -> None:
        report_progress(stage, step, total)
        cache.raise_failed_put()  # the portrait artifact's, stored during stage 5

    progress("face", 0, 1)
    warnings = []
    seed = order.seed + res.cfg.engine.seed
    if jc.blobs.exists(order.selfie_digest):
        selfie = _analyze(res, jc.blobs.read_bytes(order.selfie_digest), "selfie")
        portrait = portrait_inputs(selfie, order.selfie_digest)
        warnings = [{"key": w.key, **w.params} for w in selfie.warnings]
    else:
        # The photo was deleted under the retention policy; its inversion may still be cached.
        portrait = res.pipeline.cached_portrait(order.selfie_digest, cache, seed)
        if portrait is None:
            raise SelfieGone(f"selfie {order.selfie_digest[:12]} and its cached inversion are both gone",
                             hours=res.cfg.privacy.selfie_retention_hours)
    style = portrait_inputs(_style_face(res, jc, order.exemplar_digest, shared=order.style_id is not None),
                            order.exemplar_digest)
    progress("face", 1, 1)
    avatar = res.pipeline(portrait, style, seed=seed, progress=progress, cache=cache,
                          on_portrait=_pivot_still(res, jc, order.user_id))
    cache.settle()  # the portrait artifact's put, done during stage 5: its failure ends the job before the pack
    # The avatar references the style and selfie artifacts in the cache instead of copying them. Its residual
    # is rounded here (on the GPU) and coded from a CPU copy beside the render and encode of the pack.
    residual = quantise_residual(avatar).to("cpu")
    avatar_file = beside.submit(result_to_bytes, avatar, cache, style_key=res.pipeline.style_key(style),
                                portrait_key=res.pipeline.portrait_key(order.selfie_digest, seed), residual=residual)
    pose = AvatarPose(res.pipeline.generator_params(avatar, order.strength), avatar.w_3d, avatar.noise)
    record_first_look(res, jc, order.user_id, "stylized", pose.params, avatar.w_3d, avatar.noise)
    report = quality_report(res, avatar, portrait, style, pose.params)
    files = make_pack_files(res.pipeline.nets.g3d, pose, res.cfg.pack, order.targets,
                            thumbnail_target=THUMBNAIL_TARGETS.get(order.platform), boundaries=res.boundaries,
                            boundaries_problem=res.boundaries_problem, mesh=order.mesh, progress=progress,
                            emoji_target=custom_emoji_target(res.cfg, order.platform),
                            preview_page=order.platform in PREVIEW_PAGE_PLATFORMS)
    preview_html = (with_quality(files.preview_html, quality_summary(report, avatar.preset), report["notes"])
                    if files.preview_html else None)
    result = PackResult(
        pack_id=order.pack_id, preset=avatar.preset,
        **store_pack_files(jc, files, preview_html, avatar_file.result()),
        missing=files.notes, timings=avatar.timings, skipped=avatar.skipped(), warnings=warnings, quality=report)
    # one step: a first make becomes ready, a remake now shows this job's result
    if order.pack_id is not None and not packs.mark_made(jc.db, order.pack_id, jc.job.id, order.strength):
        log.warning("pack %s was failed or cancelled meanwhile, or shows a later order's result; job %s's "
                    "result is not published", order.pack_id, jc.job.id)
    return result.to_dict()


def quality_report(res: EngineResources, avatar: AvatarResult, portrait: PortraitInputs, style: PortraitInputs,
                   stylized: dict) -> dict:
    """``PackResult.quality`` of an avatar whose pack is rendered with the ``stylized`` generator weights."""
    g3d = res.pipeline.nets.g3d
    measures = quality.measure(
        g3d, res.pipeline.nets.lpips, res.pipeline.nets.id_loss, pti=params.apply_delta(g3d, avatar.delta_pti),
        stylized=stylized, ws=avatar.w_3d, noise=avatar.noise, selfie_camera=avatar.camera,
        selfie_3d=portrait.image_3d, crop2d_to_crop3d=portrait.crop2d_to_crop3d, exemplar_3d=style.image_3d)
    limits = res.cfg.quality
    weak = quality.weak_measures(measures, min_identity=limits.min_identity,
                                 min_identity_stylized=limits.min_identity_stylized,
                                 min_multiview=limits.min_multiview, max_style_lpips=limits.max_style_lpips)
    return {**{k: getattr(measures, k) for k in QUALITY_KEYS}, "weak": weak, "notes": list(measures.notes)}


def handle_regenerate_pack(res: EngineResources, job, jc: JobContext) -> dict:
    """A scheduled remake of an existing pack (its style changed, or the engine did)."""
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
                             hours=res.cfg.privacy.selfie_retention_hours)
        selfie_digest = selfie.blob_digest
    if pack.style_id is None:
        raise StyleGone(f"pack {pack.id}: its style was removed")
    style = style_store.get_style(jc.db, pack.style_id)
    order = PackOrder(user_id=pack.user_id, selfie_digest=selfie_digest, exemplar_digest=style.exemplar_digest,
                      strength=pack.strength, platform=pack.platform or "local", style_id=style.id,
                      style_version=style.version, pack_id=pack.id, regenerate=True,
                      settings=res.cfg.pipeline.digest("style", "inversion", "pti", "dual"))
    result = make_pack(res, order, jc)
    packs.mark_regenerated(jc.db, pack.id, style_version=style.version, engine_version=ENGINE_VERSION)
    return result


def handle_rerender_pack(res: EngineResources, job, jc: JobContext) -> dict:
    """A finished pack rendered again from its stored avatar (another strength or sticker selection):
    no optimisation. The quality report keeps the PTI likeness (strength does not change it) and
    measures the rest again at the new strength; the stylized likeness needs the selfie, which is
    not read here."""
    began = time.perf_counter()
    order = RerenderOrder.from_payload(job.payload)
    source = packs.result_of(jobs.get_job(jc.db, order.source_job_id))
    if source is None or source.avatar is None or not jc.blobs.exists(source.avatar):
        raise AvatarGone(f"pack {order.pack_id}: no stored avatar to render again")
    # The pack's status is left alone until the end: a failure must not touch a published set.
    progress = stage_progress(jc)
    try:  # the avatar file names the cached style and selfie artifacts it was made from
        avatar = result_from_bytes(jc.blobs.read_bytes(source.avatar),
                                   BlobArtifactCache(jc, order.user_id, shared_style=True, memo=res.artifact_memo))
    except AvatarFileError as exc:
        raise AvatarGone(f"pack {order.pack_id}: its stored avatar cannot be read back ({exc})") from exc
    known = {entry.name for entry in res.cfg.pack.stickers}
    unknown = sorted(set(order.stickers) - known)
    if unknown:
        raise ValueError(f"no stickers named {unknown} in the configured pack ({', '.join(sorted(known))})")
    chosen = tuple(e for e in res.cfg.pack.stickers if not order.stickers or e.name in order.stickers)
    pose = AvatarPose(res.pipeline.generator_params(avatar, order.strength), avatar.w_3d, avatar.noise)
    files = make_pack_files(res.pipeline.nets.g3d, pose, dataclasses.replace(res.cfg.pack, stickers=chosen),
                            PLATFORM_TARGETS[order.platform], thumbnail_target=THUMBNAIL_TARGETS.get(order.platform),
                            boundaries=res.boundaries, boundaries_problem=res.boundaries_problem, progress=progress,
                            emoji_target=custom_emoji_target(res.cfg, order.platform),
                            preview_page=order.platform in PREVIEW_PAGE_PLATFORMS)
    g3d = res.pipeline.nets.g3d
    measures = quality.measure(g3d, res.pipeline.nets.lpips, None, pti=pose.params, stylized=pose.params,
                               ws=avatar.w_3d, noise=avatar.noise, selfie_camera=avatar.camera, selfie_3d=None,
                               crop2d_to_crop3d=None, exemplar_3d=_exemplar_of(res, jc, order.pack_id))
    # The PTI likeness does not depend on the strength: it is carried over; the stylized one needs the selfie.
    measures.identity_pti = source.quality.get("identity_pti")
    measures.notes = [n for n in measures.notes if not n.startswith("identity")] + [
        "likeness (stylized): not measured on a re-render"]
    limits = res.cfg.quality
    report = {**{k: getattr(measures, k) for k in QUALITY_KEYS}, "notes": measures.notes,
              "weak": quality.weak_measures(measures, min_identity=limits.min_identity,
                                            min_identity_stylized=limits.min_identity_stylized,
                                            min_multiview=limits.min_multiview,
                                            max_style_lpips=limits.max_style_lpips)}
    preview_html = (with_quality(files.preview_html, quality_summary(report, avatar.preset), report.get("notes", []))
                    if files.preview_html else None)
    result = PackResult(
        pack_id=order.pack_id, preset=avatar.preset,
        **store_pack_files(jc, files, preview_html, jc.blobs.read_bytes(source.avatar)),
        missing=files.notes, timings={"rerender": time.perf_counter() - began}, quality=report)
    # only now, in one step: until it succeeds the pack keeps its old result, status and strength
    if not packs.mark_rerendered(jc.db, order.pack_id, jc.job.id, order.strength):
        log.warning("pack %s is being remade or shows a later order's result; its re-render (job %s) is not "
                    "published", order.pack_id, jc.job.id)
    return result.to_dict()


def store_pack_files(jc: JobContext, files: PackFiles, preview_html: bytes | None, avatar: bytes) -> dict[str, Any]:
    """Store a pack's files as the job's outputs, all at once (:meth:`JobContext.put_blobs`); returns
    :class:`PackResult`'s file fields (digests) in the pack's order."""
    data: list[bytes] = []

    def slot(blob: bytes) -> int:
        data.append(blob)
        return len(data) - 1

    sticker_slots = [{target: slot(blob) for target, blob in s.files.items()} for s in files.stickers]
    thumbnail_slots = {target: slot(blob) for target, blob in files.thumbnail.items()}
    preview_png, avatar_slot = slot(files.preview_png), slot(avatar)
    html_slot = slot(preview_html) if preview_html is not None else None
    mesh_slot = slot(files.mesh) if files.mesh is not None else None
    render_slots = [slot(png) for png in files.stills]
    digests = jc.put_blobs(data)
    return {"stickers": [StickerFiles(idx=i, name=s.name, emoji=s.emoji,
                                      files={target: digests[k] for target, k in slots.items()})
                         for i, (s, slots) in enumerate(zip(files.stickers, sticker_slots))],
            "thumbnail": {target: digests[k] for target, k in thumbnail_slots.items()},
            "preview_png": digests[preview_png], "avatar": digests[avatar_slot],
            "preview_html": None if html_slot is None else digests[html_slot],
            "mesh": None if mesh_slot is None else digests[mesh_slot],
            "renders": [digests[k] for k in render_slots]}


def _exemplar_of(res: EngineResources, jc: JobContext, pack_id: int) -> torch.Tensor | None:
    """The EG3D crop of the pack's style image, or None when its style is gone."""
    pack = packs.get_pack(jc.db, pack_id)
    if pack.style_id is None:
        return None
    try:
        style = style_store.get_style(jc.db, pack.style_id)
    except style_store.StyleNotFound:
        return None
    face = _style_face(res, jc, style.exemplar_digest, shared=True)
    return portrait_inputs(face, style.exemplar_digest).image_3d


def handle_style_finetune(res: EngineResources, job, jc: JobContext) -> dict:
    style = style_store.get_style(jc.db, int(job.payload["style_id"]))
    if style.version != int(job.payload.get("version", style.version)):
        return {"skipped": f"style {style.name} changed to version {style.version}; a newer job tunes it"}
    style_store.set_status(jc.db, style.id, "tuning")
    try:
        face = _style_face(res, jc, style.exemplar_digest, shared=True)
        res.pipeline.stylize_2d(portrait_inputs(face, style.exemplar_digest), torch.Generator().manual_seed(
            res.cfg.engine.seed), stage_progress(jc),
            cache=BlobArtifactCache(jc, None, shared_style=True, memo=res.artifact_memo))
    except UserFacingError as exc:
        style_store.set_status(jc.db, style.id, "failed", exc.key)
        raise
    style_store.set_status(jc.db, style.id, "ready")
    return {"style_id": style.id, "version": style.version, "preset": res.pipeline.nets.preset}
