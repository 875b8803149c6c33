"""Platform-neutral bot flow: consent, privacy, selfie and style intake, orders,
progress views, cancel, delete-my-data and house-style administration.

Front ends (``bots.telegram``, ``bots.discord``) are thin: they turn platform
events into calls here and render the returned values with ``emoji3d.texts``.
Every refusal is a :class:`~emoji3d.errors.UserFacingError` with a stable key.

Conventions
-----------
* Users are ``(platform, platform_user_id)`` strings; communities (a Telegram
  group, a Discord guild) are ``(platform, platform_id)`` strings.
* Times are UNIX seconds from ``BotResources.clock`` (``time.time`` by default).
* Sizes: ``cfg.limits.max_upload_mb`` is MiB (1 MiB = 1048576 bytes); uploads
  are refused on the size the platform *announces*, before any download, then
  decoded with the bounds of ``emoji3d.images`` (megapixels, sides of at least
  8 px, reduced to ``decode_max_side_px``, at most ``concurrent_decodes`` at once).
* Intake stores pixels only: a selfie or style image is stored as
  ``emoji3d.images.clean_image`` gives it (EXIF orientation applied, sRGB, PNG
  without any metadata: no EXIF/GPS, XMP, ICC or text), never as uploaded.
* Upload rate: each user may send at most ``cfg.limits.uploads_per_user_per_minute``
  images (selfies, style images, house styles; refused ones count too) in any
  rolling 60 seconds, counted in this process before anything is decoded.
* Style images (one-off or house styles) pass the style catalogue's one
  validation, ``storage.style_catalog.validate_exemplar``.
* Strength presets (the paper's style-strength blend in [0, 1]):
  ``subtle`` 0.35 (likeness first, a hint of the style), ``medium`` 0.7 (the
  style clearly visible, the face still recognisable), ``full`` 1.0 (the
  finetuned style generator as trained).
* Quota: at most ``cfg.limits.jobs_per_user_per_day`` ``make_pack`` orders in
  any rolling 24 hours, and at most ``cfg.limits.active_jobs_per_user`` jobs
  queued or running at once.
* Regenerating with a style the user already has a published pack of (same
  style id, same platform) reuses that pack (``regenerate=True``) so the front
  end updates the existing sticker set in place; another style makes a new pack.
* Face checks run through ``BotResources.face_check`` (by default
  ``engine.face.analyze.analyze_face`` with one long-lived MediaPipe detector). Bots may
  import ``engine.face.analyze`` but never torch.
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from emoji3d import orders
from emoji3d.config import Config
from emoji3d.errors import FileTooLargeError, UserFacingError
from emoji3d.images import CleanImage, DecodeLimits, clean_image
from emoji3d.texts import BOT, message, quality_summary, text
from storage.style_catalog import add_house_style, remove_style, validate_exemplar
from storage import jobs, packs, selfies, users
from storage import styles as st
from storage.blobs import BlobStore
from storage.communities import get_or_create_community
from storage.db import Database

from bots import head_starts
from bots.upload_limit import UploadCounter

STRENGTHS: dict[str, float] = {"subtle": 0.35, "medium": 0.7, "full": 1.0}
DAY_SECONDS = 24 * 3600
LISTED_STYLE_STATUSES = ("pending", "tuning", "ready")


# ----------------------------------------------------------------------------- errors

class ConsentRequired(UserFacingError):
    key = "consent_required"


class NoSelfie(UserFacingError):
    key = "no_selfie"


class OwnStyleMissing(UserFacingError):
    key = "own_style_missing"


class ActiveJobExists(UserFacingError):
    """params: ``job_id``."""

    key = "job_active"


class QuotaExceeded(UserFacingError):
    """params: ``limit`` (orders per 24 h)."""

    key = "quota_exceeded"


class NotAdmin(UserFacingError):
    key = "not_admin"


class NothingToCancel(UserFacingError):
    key = "nothing_to_cancel"


class UnknownStrength(UserFacingError):
    key = "strength_invalid"


# ----------------------------------------------------------------------------- resources

FaceCheck = Callable[[Any], Any]  # (H, W, 3) uint8 RGB -> engine.face.analyze.FaceResult; raises UserFacingError

@dataclass
class BotResources:
    """What every front end shares; built once in the front end's ``run``."""

    cfg: Config
    db: Database
    blobs: BlobStore
    face_check: FaceCheck
    clock: Callable[[], float] = time.time
    uploads: UploadCounter = field(default_factory=UploadCounter)

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits.from_config(self.cfg.limits)


def default_face_check(cfg: Config) -> tuple[FaceCheck, Callable[[], None]]:
    """``engine.face.analyze.analyze_face`` with the configured limits and one shared
    detector. Returns (check, close)."""
    from engine.face.analyze import FaceConfig, analyze_face
    from engine.face.landmarks import LandmarkDetector

    fc = FaceConfig(min_face_px=cfg.limits.min_face_px, max_yaw_degrees=cfg.limits.max_yaw_degrees,
                    max_pitch_degrees=cfg.limits.max_pitch_degrees)
    detector = LandmarkDetector(max_faces=fc.max_faces)

    def check(rgb: Any) -> Any:
        return analyze_face(rgb, fc, detector)

    return check, detector.close


def open_bot_resources(cfg: Config) -> tuple[BotResources, Callable[[], None]]:
    """Everything a front end needs from config.toml, and one ``close`` for all of it."""
    from storage.connect import open_storage

    db, blobs = open_storage(cfg)
    face_check, close_detector = default_face_check(cfg)

    def close() -> None:
        close_detector()
        db.dispose()

    return BotResources(cfg, db, blobs, face_check), close


# ----------------------------------------------------------------------------- users, consent, privacy

def ensure_user(res: BotResources, platform: str, platform_user_id: str) -> users.User:
    return users.get_or_create_user(res.db, platform, str(platform_user_id))


def give_consent(res: BotResources, user: users.User) -> float:
    """Record consent now (idempotent: the first time is kept). Returns its timestamp."""
    if user.consent_at is not None:
        return user.consent_at
    at = float(res.clock())
    users.record_consent(res.db, user.id, at=at)
    return at


def require_consent(user: users.User) -> None:
    if user.consent_at is None:
        raise ConsentRequired(f"user {user.id} has not consented yet")


def privacy_params(cfg: Config) -> dict[str, str]:
    """Placeholders of the ``privacy``/``welcome`` texts: how long data is kept, in words (a retention
    of 0 keeps nothing for later), and whether a selfie is processed before an order (the head start)."""
    hours, days = cfg.privacy.selfie_retention_hours, cfg.privacy.artifact_retention_days
    return {"selfie_kept": text("selfie_kept_hours", hours=hours) if hours else text("selfie_kept_briefly"),
            "selfie_deleted": text("selfie_deleted_hours", hours=hours) if hours else text("selfie_deleted_briefly"),
            "avatar_kept": text("avatar_kept_days", days=days) if days else text("avatar_kept_briefly"),
            "avatar_deleted": text("avatar_deleted_days", days=days) if days else text("avatar_deleted_briefly"),
            "head_start": text("head_start_note") if cfg.engine.head_start else ""}


# ----------------------------------------------------------------------------- uploads

def check_announced_size(res: BotResources, size_bytes: int | None) -> None:
    """Refuse an upload by its announced size, before downloading it. An
    unknown size (None) passes; the download is then bounded by the decoder."""
    limit_mb = res.cfg.limits.max_upload_mb
    if size_bytes is not None and size_bytes > limit_mb * 1024 * 1024:
        raise FileTooLargeError(f"upload of {size_bytes} bytes > {limit_mb} MiB",
                                size_mb=round(size_bytes / (1024 * 1024), 1), limit_mb=limit_mb)


@dataclass(frozen=True)
class AcceptedSelfie:
    selfie: selfies.Selfie
    warnings: tuple[tuple[str, dict], ...]  # (error key, params), e.g. ("several_faces", {"count": 2})


def count_upload(res: BotResources, key: Any) -> None:
    """One upload by ``key`` (a user id, or a community for an unknown admin); see the module docstring."""
    res.uploads.take(key, float(res.clock()), res.cfg.limits.uploads_per_user_per_minute)


def _check_downloaded_size(res: BotResources, data: bytes) -> None:
    """The announced-size rule, applied to what was actually downloaded."""
    if len(data) > res.cfg.limits.max_upload_mb * 1024 * 1024:
        check_announced_size(res, len(data))


def _decode_checked(res: BotResources, data: bytes) -> CleanImage:
    """The upload reduced to its pixels (bounded decode; see ``emoji3d.images.clean_image``)."""
    _check_downloaded_size(res, data)
    return clean_image(data, res.decode_limits)


def accept_selfie(res: BotResources, user: users.User, data: bytes, *, head_start: bool = False) -> AcceptedSelfie:
    """Rate limit, bounded decode, face checks, then store the pixels only
    (no metadata) and a selfie row that expires after
    ``cfg.privacy.selfie_retention_hours`` (0 = kept only until the pack ordered with it is made).

    ``head_start``: the user chooses a style after this (Telegram), so the selfie's inversion is
    enqueued now (:mod:`bots.head_starts`, when ``[engine] head_start`` allows it)."""
    require_consent(user)
    count_upload(res, ("user", user.id))
    clean = _decode_checked(res, data)
    face = res.face_check(clean.rgb)
    digest = res.blobs.put_bytes(clean.png)
    hours = res.cfg.privacy.selfie_retention_hours
    row = selfies.add_selfie(res.db, user.id, digest, ttl_seconds=hours * 3600)
    if head_start and res.cfg.engine.head_start:
        head_starts.enqueue(res.db, user.id, digest, seed=res.cfg.engine.seed)  # the seed the bots order with
    return AcceptedSelfie(row, tuple((w.key, dict(w.params)) for w in getattr(face, "warnings", ())))


def accept_style_image(res: BotResources, user: users.User, data: bytes) -> str:
    """A one-off style image: the style catalogue's validation (size, decode, a
    face to map the style from); its pixels only are stored. Returns the blob digest."""
    require_consent(user)
    count_upload(res, ("user", user.id))
    _check_downloaded_size(res, data)
    clean = validate_exemplar(data, res.decode_limits, res.face_check)
    return res.blobs.put_bytes(clean.png)


def current_selfie(res: BotResources, user: users.User) -> selfies.Selfie:
    s = selfies.latest_selfie(res.db, user.id)
    if s is None or not selfies.usable(s, res.clock()) or not res.blobs.exists(s.blob_digest):
        raise NoSelfie(f"user {user.id} has no live selfie")
    return s


def digest_token(digest: str) -> str:
    """Compact (43 chars) form of a sha256 hex digest for callback data."""
    return base64.urlsafe_b64encode(bytes.fromhex(digest)).decode().rstrip("=")


def digest_from_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raise OwnStyleMissing("bad style token") from None
    if len(raw) != 32:
        raise OwnStyleMissing("bad style token")
    return raw.hex()


# ----------------------------------------------------------------------------- styles

@dataclass(frozen=True)
class StyleChoice:
    style_id: int
    name: str
    house: bool  # True = this community's own style
    exemplar_digest: str | None


def community_id_for(res: BotResources, platform: str, platform_id: str | None, name: str | None = None) -> int | None:
    if platform_id is None:
        return None
    return get_or_create_community(res.db, platform, str(platform_id), name).id


def list_style_choices(res: BotResources, community_id: int | None) -> list[StyleChoice]:
    """This community's styles first, then the global ones, each by name;
    disabled and failed styles are left out."""
    own = [] if community_id is None else st.list_styles(res.db, community_id=community_id, include_house=False)
    glob = st.list_styles(res.db)
    out = [StyleChoice(s.id, s.name, True, s.exemplar_digest) for s in own if s.status in LISTED_STYLE_STATUSES]
    out += [StyleChoice(s.id, s.name, False, s.exemplar_digest) for s in glob if s.status in LISTED_STYLE_STATUSES]
    return out


def strength_value(preset: str) -> float:
    try:
        return STRENGTHS[preset]
    except KeyError:
        raise UnknownStrength(f"unknown strength preset {preset!r}", preset=preset) from None


# ----------------------------------------------------------------------------- orders

def open_jobs(res: BotResources, user: users.User) -> list[jobs.Job]:
    return jobs.list_jobs(res.db, status=jobs.OPEN, user_id=user.id, kind=orders.JOB_KIND)


def check_limits(res: BotResources, user: users.User) -> None:
    lim = res.cfg.limits
    active = open_jobs(res, user)
    if len(active) >= lim.active_jobs_per_user:
        raise ActiveJobExists(f"user {user.id} has {len(active)} open job(s)", job_id=active[0].id)
    since = res.clock() - DAY_SECONDS
    recent = [j for j in jobs.list_jobs(res.db, user_id=user.id, kind=orders.JOB_KIND,
                                        limit=lim.jobs_per_user_per_day + 1) if j.created_at >= since]
    if len(recent) >= lim.jobs_per_user_per_day:
        raise QuotaExceeded(f"user {user.id} placed {len(recent)} orders in 24 h", limit=lim.jobs_per_user_per_day)


@dataclass(frozen=True)
class Placed:
    pack: packs.Pack
    job_id: int
    regenerate: bool  # True: an existing pack (and its sticker set) will be updated in place


def place_order(res: BotResources, user: users.User, platform: str, *, preset: str,
                style_id: int | None = None, own_exemplar: str | None = None, seed: int = 0) -> Placed:
    """Order a pack from the user's current selfie and a listed style (or an
    uploaded one). Checks consent, the selfie, the daily quota and the
    one-active-job rule."""
    require_consent(user)
    strength = strength_value(preset)
    if (style_id is None) == (own_exemplar is None):
        raise ValueError("pass exactly one of style_id and own_exemplar")
    selfie = current_selfie(res, user)
    if style_id is not None:
        style = st.get_style(res.db, style_id)
        if style.status not in LISTED_STYLE_STATUSES or not style.exemplar_digest:
            raise st.StyleNotFound(f"style {style.name} is {style.status}", name=style.name)
        exemplar, version = style.exemplar_digest, style.version
    else:
        if not res.blobs.exists(own_exemplar):
            raise OwnStyleMissing(f"style blob {own_exemplar[:12]} is gone")
        exemplar, version = own_exemplar, None
    check_limits(res, user)
    previous = None
    if style_id is not None:
        previous = next((p for p in reversed(packs.list_packs(res.db, user.id))
                         if p.style_id == style_id and p.platform == platform and p.platform_set_name
                         and p.status == packs.PUBLISHED), None)
    order = orders.PackOrder(user_id=user.id, selfie_digest=selfie.blob_digest, exemplar_digest=exemplar,
                             strength=strength, platform=platform, style_id=style_id, style_version=version,
                             seed=seed, pack_id=previous.id if previous else None, regenerate=previous is not None)
    # a remake of a published pack leaves it published until the remake succeeds (storage.packs)
    running = head_starts.running_for_order(res.db, order)  # no engine takes the order while it runs
    pack, job_id = packs.order_pack(res.db, order, waits_for=running.id if running else None)
    head_starts.drop_untaken(res.db, user.id)
    return Placed(pack, job_id, previous is not None)


# ----------------------------------------------------------------------------- progress

@dataclass(frozen=True)
class ProgressView:
    """What the progress message shows. ``key``/``params`` select a ``texts.BOT``
    text (``stage_key`` names the stage's own text); ``final`` = stop watching."""

    key: str
    params: dict[str, Any] = field(default_factory=dict)
    stage_key: str | None = None
    cancellable: bool = True
    final: bool = False


def progress_view(res: BotResources, job: jobs.Job) -> ProgressView:
    if job.status == "queued":
        if (prep := head_starts.running_for(res.db, job)) is not None:  # the order's first stages, begun ahead
            return ProgressView("progress", {"percent": int(round(100 * prep.progress))},
                                stage_key=f"stage_{prep.stage or 'unknown'}")
        pos = jobs.queue_position(res.db, job.id)
        if pos is None or pos <= 1:
            return ProgressView("queued_soon")
        return ProgressView("queued", {"position": pos})
    if job.status == "running":
        stage = job.stage or "unknown"
        return ProgressView("progress", {"percent": int(round(100 * job.progress))}, stage_key=f"stage_{stage}")
    if job.status == "cancel_requested":
        return ProgressView("cancel_requested", cancellable=False)
    if job.status == "cancelled":
        return ProgressView("cancelled_ok", cancellable=False, final=True)
    if job.status == "failed":  # a failed re-render or remake changed nothing: the user is told so
        view_key = ("rerender_failed" if job.kind == orders.RERENDER_KIND
                    else "remake_failed" if _kept_made_pack(res, job) else "failed")
        # the job row keeps only the error's key: what its text needs in words comes from the config
        return ProgressView(view_key, {"error_key": job.error_key or "internal",
                                       "hours": res.cfg.privacy.selfie_retention_hours}, cancellable=False, final=True)
    return ProgressView("finishing", cancellable=False, final=True)


def _kept_made_pack(res: BotResources, job: jobs.Job) -> bool:
    """The job remade a pack that is made and still shows another job's result (storage.packs: a
    failed remake leaves the pack as it was)."""
    pack_id = job.payload.get("pack_id")
    try:
        pack = packs.get_pack(res.db, int(pack_id)) if pack_id is not None else None
    except packs.PackNotFound:
        return False
    return pack is not None and pack.status in packs.MADE and pack.job_id != job.id


_STAGE_KEYS = frozenset(k for k in BOT if k.startswith("stage_"))


def progress_text(view: ProgressView) -> str:
    """The words of a progress view, in either front end (stage name, failure reason filled in)."""
    params = dict(view.params)
    if view.stage_key is not None:
        params["stage"] = text(view.stage_key) if view.stage_key in _STAGE_KEYS else text("stage_unknown")
    if view.key in ("failed", "rerender_failed", "remake_failed"):
        hours = params.pop("hours", None)
        params["reason"] = message(params.pop("error_key", "internal"), **({} if hours is None else {"hours": hours}))
    return text(view.key, **params)


def should_edit(last_text: str | None, new_text: str, last_at: float | None, now: float, min_interval: float,
                final: bool) -> bool:
    """Rate limit for in-place progress edits: only changed text, and not more
    often than ``min_interval`` seconds (final states always go out)."""
    if new_text == last_text:
        return False
    return final or last_at is None or now - last_at >= min_interval


def cancel_open_job(res: BotResources, user: users.User, job_id: int | None = None) -> str:
    """Cancel the user's job (``job_id``) or their newest open job. Returns the
    resulting job status. Another user's job is never touched."""
    if job_id is not None:
        try:
            job = jobs.get_job(res.db, job_id)
        except jobs.JobNotFound:
            raise NothingToCancel(f"job {job_id} does not exist") from None
        if job.user_id != user.id or job.status not in jobs.OPEN:
            raise NothingToCancel(f"job {job_id} is not an open job of user {user.id}")
    else:
        open_ = open_jobs(res, user)
        if not open_:
            raise NothingToCancel(f"user {user.id} has no open job")
        job = open_[0]
    status = jobs.cancel(res.db, job.id)
    pack_id = job.payload.get("pack_id")
    if status == "cancelled" and pack_id is not None:
        try:
            packs.mark_failed(res.db, int(pack_id))
        except packs.PackNotFound:
            pass
    return status


# ----------------------------------------------------------------------------- results

def updates_published_set(job: jobs.Job) -> bool:
    """The job remade a pack that has its set already, so the front ends say "updated": a user's
    retry or new order for the pack (``PackOrder.regenerate`` in the payload), a re-render, or the
    operator's scheduled regeneration (``regenerate_pack``, whose payload names only the pack)."""
    return job.kind in (orders.REGENERATE_KIND, orders.RERENDER_KIND) or bool(job.payload.get("regenerate"))


def materialize_result(res: BotResources, pack: packs.Pack, result: orders.PackResult, target: str,
                       kind: str = "video") -> list[packs.Sticker]:
    """Write the result's stickers for ``target`` into the pack's sticker rows.
    Idempotent: a row that already holds the same file keeps its platform state
    (so a restart never re-uploads); a changed file resets the row to ``local``.
    Rows past the result's last sticker go (a re-render with fewer stickers): the
    front end's next publish removes them from the set."""
    made = [s.idx for s in result.stickers if target in s.files]
    if made:
        packs.trim_stickers(res.db, pack.id, max(made) + 1)
    existing = {s.idx: s for s in packs.list_stickers(res.db, pack.id)}
    for sf in sorted(result.stickers, key=lambda s: s.idx):
        digest = sf.files.get(target)
        if digest is None:
            continue
        old = existing.get(sf.idx)
        if old is not None and old.blob_digest == digest and old.emoji == sf.emoji:
            continue
        packs.put_sticker(res.db, pack.id, sf.idx, sf.emoji, kind, digest)
    return packs.list_stickers(res.db, pack.id)


def result_notes(result: orders.PackResult, *, stickers_made: bool = True) -> list[str]:
    """Lines both front ends add to a delivered pack: what could not be made
    (``result.missing``) and the test-weights warning. ``stickers_made=False``:
    stills were sent instead of stickers, which ``pack_incomplete`` explains."""
    missing = "; ".join(result.missing)
    if stickers_made:
        lines = [text("pack_partial", missing=missing)] if result.missing else []
    else:
        lines = [text("pack_incomplete", missing=missing or "sticker files")]
    if result.preset in ("slim", "full"):  # random weights either way: not a real avatar
        lines.append(text("slim_warning"))
    summary = quality_summary(result.quality, result.preset)
    if summary:
        lines.append(summary)
    return lines


# ----------------------------------------------------------------------------- my packs, delete

@dataclass(frozen=True)
class PackLine:
    pack: packs.Pack
    style_name: str | None  # None = a one-off uploaded style
    quality: str = ""       # the pack's quality report in one line ("" when not measured or not finished)


def _quality_of(res: BotResources, pack: packs.Pack) -> str:
    if pack.job_id is None:
        return ""
    try:
        result = packs.result_of(jobs.get_job(res.db, pack.job_id))
    except jobs.JobNotFound:
        return ""
    return quality_summary(result.quality, result.preset) if result is not None else ""


def my_packs(res: BotResources, user: users.User) -> list[PackLine]:
    out = []
    for p in packs.list_packs(res.db, user.id):
        if p.status == packs.SUPERSEDED:
            continue
        name = None
        if p.style_id is not None:
            try:
                name = st.get_style(res.db, p.style_id).name
            except st.StyleNotFound:
                name = None
        out.append(PackLine(p, name, _quality_of(res, p)))
    return out


@dataclass(frozen=True)
class Deleted:
    summary: users.DeletionSummary | None  # None: nothing was stored
    sets_deleted: list[str]
    sets_failed: list[str]


async def delete_my_data(res: BotResources, platform: str, platform_user_id: str,
                         delete_set: Callable[[str], Awaitable[None]]) -> Deleted:
    """Erase the user: first the platform's sticker sets (``delete_set(name)``,
    called for each set the bot made; a failure is recorded, not fatal), then
    every row and blob through :func:`storage.users.delete_user` (selfies,
    latents, tuned weights, packs, stickers, jobs). Open jobs are cancelled."""
    user = users.find_user(res.db, platform, str(platform_user_id))
    if user is None:
        return Deleted(None, [], [])
    for job in open_jobs(res, user) + head_starts.open_head_starts(res.db, user.id):
        jobs.cancel(res.db, job.id)
    done, failed = [], []
    for p in packs.list_packs(res.db, user.id):
        if p.platform_set_name and p.platform == platform:
            try:
                await delete_set(p.platform_set_name)
                done.append(p.platform_set_name)
            except Exception:  # noqa: BLE001 - reported to the caller, rows are deleted regardless
                failed.append(p.platform_set_name)
    summary = users.delete_user(res.db, res.blobs, user.id)
    return Deleted(summary, done, failed)


# ----------------------------------------------------------------------------- house styles

def house_style_add(res: BotResources, community_id: int, is_admin: bool, name: str, image: bytes,
                    added_by: users.User | None) -> st.Style:
    """An administrator adds a style to their community; its finetune is
    enqueued at batch priority. The image must contain a face."""
    if not is_admin:
        raise NotAdmin("only administrators manage house styles")
    count_upload(res, ("community", community_id) if added_by is None else ("user", added_by.id))
    _check_downloaded_size(res, image)
    return add_house_style(res.db, res.blobs, name, image, community_id=community_id,
                           added_by=None if added_by is None else added_by.id,
                           limits=res.decode_limits, face_check=res.face_check)


def house_style_remove(res: BotResources, community_id: int, is_admin: bool, name: str) -> st.Style:
    if not is_admin:
        raise NotAdmin("only administrators manage house styles")
    return remove_style(res.db, name, community_id=community_id)


def house_style_list(res: BotResources, community_id: int) -> list[st.Style]:
    return st.list_styles(res.db, community_id=community_id, include_house=False)
