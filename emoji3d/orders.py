"""The contract between producers (bots, CLI, scheduler) and the engine for a sticker pack.

A producer places an order with :func:`storage.packs.order_pack`: it creates
the pack row and enqueues one ``make_pack`` job whose payload is
:class:`PackOrder` (``to_payload``). The engine's handler reads the order, and
on success completes the job with a :class:`PackResult` (``to_dict``) that
names every produced file by blob digest, per platform target. Producers read
the result back with :func:`storage.packs.result_of`.

Idempotency: the job key is derived from everything that determines the
output (user, selfie, style and its version, strength, platform, seed, engine
version), so a double click, a retried webhook or a rescheduled regeneration
yields one job. ``regenerate`` orders add the pack id, so a regeneration of
an existing pack is distinct from a new order.

Plain data, no storage and no torch: every layer imports this module.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

ENGINE_VERSION = "0.1.0"  # the engine's version: part of every order key and recorded on every pack
JOB_KIND = "make_pack"
REGENERATE_KIND = "regenerate_pack"  # a scheduled remake of an existing pack (payload: {"pack_id", ...})
RERENDER_KIND = "rerender_pack"  # a finished pack rendered again from its stored avatar (payload: RerenderOrder)
# The engine fits the expression boundaries of its base generator (payload: {"generator_digest", "samples"}):
# a batch job, one per generator digest (see boundary_fit_key).
BOUNDARY_FIT_KIND = "fit_boundaries"


def boundary_fit_key(generator_digest: str) -> str:
    """The idempotency key of the boundary fit for one base generator: several engines, one job."""
    return f"{BOUNDARY_FIT_KIND}:{generator_digest}"

# Files each platform needs, in engine.stickers target names.
PLATFORM_TARGETS: dict[str, tuple[str, ...]] = {
    "telegram": ("telegram_video",),
    "discord": ("discord_sticker", "discord_emoji"),
    "local": ("telegram_video", "discord_sticker"),
}
THUMBNAIL_TARGETS: dict[str, str | None] = {"telegram": "telegram_thumb", "discord": None, "local": None}
# The custom emoji made from each sticker's frames where the platform has them and config allows it
# ([telegram] custom_emoji); stored in StickerFiles.files under this target name.
CUSTOM_EMOJI_TARGETS: dict[str, str | None] = {"telegram": "telegram_emoji", "discord": None, "local": None}
# Platforms whose results include the preview page (every sticker's animated preview and the quality
# report in one HTML file): only ``emoji3d make`` ("local") writes it out. The bots send the contact sheet
# (PackResult.preview_png) and the quality line, so their packs skip the page's encodes and its blob.
PREVIEW_PAGE_PLATFORMS = frozenset({"local"})
# PackResult.quality: each measure (float, or None when it could not be taken; see engine.render.quality),
# plus "weak" (the measures past their [quality] thresholds) and "notes" (why a measure is missing).
QUALITY_KEYS = ("identity_pti", "identity_stylized", "multiview", "style_lpips")

# First look: while a make_pack job runs, the engine stores a still PNG of the photo-real avatar (after
# pivotal tuning) and of the stylized one (after dual-branch training) as artifacts under these keys
# (storage.artifacts, owned by the user); the notifier sends each once, the latest first.
FIRST_LOOK_STAGES = ("photo_real", "stylized")


def first_look_key(job_id: int, stage: str) -> str:
    if stage not in FIRST_LOOK_STAGES:
        raise ValueError(f"first-look stage must be one of {FIRST_LOOK_STAGES}, got {stage!r}")
    return f"first_look:{int(job_id)}:{stage}"


@dataclass(frozen=True)
class PackOrder:
    user_id: int
    selfie_digest: str
    exemplar_digest: str          # the style image (house style's exemplar, or the user's upload)
    strength: float = 1.0
    platform: str = "local"
    style_id: int | None = None   # None for a one-off uploaded style
    style_version: int | None = None
    seed: int = 0
    pack_id: int | None = None    # set by order_pack
    regenerate: bool = False
    settings: str = ""            # digest of the pipeline settings (PipelineConfig.digest), part of the key
    mesh: bool = False            # also export the avatar as a GLB mesh

    def __post_init__(self) -> None:
        if self.platform not in PLATFORM_TARGETS:
            raise ValueError(f"platform must be one of {sorted(PLATFORM_TARGETS)}, got {self.platform!r}")
        if not 0.0 <= float(self.strength) <= 1.0:
            raise ValueError(f"strength must be within [0, 1], got {self.strength}")

    @property
    def targets(self) -> tuple[str, ...]:
        return PLATFORM_TARGETS[self.platform]

    def idempotency_key(self) -> str:
        parts = [JOB_KIND, self.user_id, self.selfie_digest, self.exemplar_digest, self.style_id,
                 self.style_version, f"{float(self.strength):.3f}", self.platform, self.seed, self.settings,
                 self.mesh, ENGINE_VERSION]
        if self.regenerate:
            parts += ["regenerate", self.pack_id]
        return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "PackOrder":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in payload.items() if k in known})


# A head start (``[engine] head_start``): a bot that accepts a selfie before the user has chosen a style
# enqueues this job, which inverts the selfie (pipeline stages 1, 3 and 4, cached per selfie and seed as
# a ``portrait_3d`` artifact owned by the user). The order that follows finds the inversion cached and
# starts at stage 5; an order placed while the job still runs waits for it instead of inverting twice.
PREPARE_KIND = "prepare_portrait"


@dataclass(frozen=True)
class PortraitPrep:
    user_id: int
    selfie_digest: str
    seed: int = 0  # the seed of the order it prepares for (PackOrder.seed)

    def idempotency_key(self) -> str:
        parts = [PREPARE_KIND, self.user_id, self.selfie_digest, self.seed, ENGINE_VERSION]
        return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "PortraitPrep":
        return cls(user_id=int(payload["user_id"]), selfie_digest=str(payload["selfie_digest"]),
                   seed=int(payload.get("seed", 0)))

    @classmethod
    def for_order(cls, order: "PackOrder") -> "PortraitPrep":
        return cls(order.user_id, order.selfie_digest, order.seed)


@dataclass(frozen=True)
class RerenderOrder:
    """Render a finished pack again from its stored avatar with another style strength and/or sticker
    selection: no optimisation, only rendering and encoding. ``source_job_id`` is the finished job whose
    :class:`PackResult` holds the avatar; ``stickers`` names the stickers to make (empty = all configured)."""

    user_id: int
    pack_id: int
    source_job_id: int
    strength: float
    stickers: tuple[str, ...] = ()
    platform: str = "local"

    def __post_init__(self) -> None:
        if self.platform not in PLATFORM_TARGETS:
            raise ValueError(f"platform must be one of {sorted(PLATFORM_TARGETS)}, got {self.platform!r}")
        if not 0.0 <= float(self.strength) <= 1.0:
            raise ValueError(f"strength must be within [0, 1], got {self.strength}")
        object.__setattr__(self, "stickers", tuple(self.stickers))

    def idempotency_key(self) -> str:
        parts = [RERENDER_KIND, self.user_id, self.pack_id, self.source_job_id, f"{float(self.strength):.3f}",
                 ",".join(self.stickers), self.platform, ENGINE_VERSION]
        return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()

    def to_payload(self) -> dict[str, Any]:
        # "regenerate": the front ends update the pack's existing sticker set rather than make a new one
        return {**asdict(self), "stickers": list(self.stickers), "regenerate": True}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "RerenderOrder":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in payload.items() if k in known})


@dataclass(frozen=True)
class StickerFiles:
    idx: int
    name: str                      # e.g. "turn", "smile"
    emoji: str
    files: dict[str, str]          # target name -> blob digest


@dataclass
class PackResult:
    pack_id: int
    preset: str                    # "pretrained" or "slim" (random weights: not a real avatar)
    stickers: list[StickerFiles] = field(default_factory=list)
    thumbnail: dict[str, str] = field(default_factory=dict)   # target -> digest
    preview_png: str | None = None
    preview_html: str | None = None
    avatar: str | None = None      # the stored avatar (latents + generator deltas); None once expired
    avatar_expired_at: float | None = None  # when retention deleted it ([privacy] artifact_retention_days)
    renders: list[str] = field(default_factory=list)          # still renders of the avatar (PNG)
    mesh: str | None = None        # GLB of the avatar, when the order asked for it
    missing: list[str] = field(default_factory=list)          # what could not be made, and why
    warnings: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)          # stages served from the cache
    quality: dict[str, Any] = field(default_factory=dict)     # QUALITY_KEYS, "weak" and "notes"; {} = not measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PackResult":
        d = dict(d)
        d["stickers"] = [StickerFiles(**s) for s in d.get("stickers", [])]
        return cls(**d)

    def blob_digests(self) -> list[str]:
        out = [dg for s in self.stickers for dg in s.files.values()]
        out += list(self.thumbnail.values()) + list(self.renders)
        out += [d for d in (self.preview_png, self.preview_html, self.avatar, self.mesh) if d]
        return out
