"""Typed settings loaded from ``config.toml`` and the environment.

``load_config(path)`` parses the TOML file and validates it against the
dataclasses below before anything starts. Every problem stops start-up with a
:class:`~emoji3d.errors.ConfigError` whose message is one line naming the key
and what was expected, e.g.::

    config.toml: engine.lease_seconds must be an integer >= 5, got 'soon'

Conventions:
- Each TOML table maps to a dataclass; each key to a field. Unknown keys are
  errors (a typo must never be silently ignored).
- Constraints (ranges, choices) sit in the field's ``metadata`` and are
  checked by the same walker, so the schema is the single source of truth.
- Relative paths are resolved against the folder holding ``config.toml``.
- Secrets never live in the file: bot tokens come from ``TELEGRAM_BOT_TOKEN``
  and ``DISCORD_BOT_TOKEN``, the Telegram webhook's secret token from
  ``TELEGRAM_WEBHOOK_SECRET``, each wrapped in :class:`Secret`, whose ``repr``
  and ``str`` never show the value, so a logged config cannot leak them.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import sys
import types
import typing
import urllib.parse
from dataclasses import dataclass, field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from emoji3d.pipeline_config import PipelineConfig
from emoji3d.schedules import Schedule, validate_schedule

from emoji3d.errors import ConfigError

DEFAULT_CONFIG_PATH = pathlib.Path(__file__).resolve().parent.parent / "config.toml"


def _c(default=dataclasses.MISSING, *, ge=None, le=None, gt=None, choices=None, doc="", factory=None):
    """A field with validation metadata."""
    meta = {"ge": ge, "le": le, "gt": gt, "choices": choices, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Secret:
    """A string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class PathsConfig:
    data_dir: str = _c("data", doc="root of the database, blobs, caches and weights")
    out_dir: str = _c("out", doc="where `emoji3d make` writes packs and previews")
    styles_dir: str = _c("styles", doc="global styles, one folder each")


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = _c("", doc="SQLAlchemy URL; empty = SQLite file in data_dir")


@dataclass(frozen=True)
class BlobsConfig:
    max_blob_mb: int = _c(64, ge=1, le=4096, doc="largest single blob accepted")
    gc_grace_seconds: int = _c(3600, ge=0, doc="unreferenced blobs younger than this survive GC")
    backend: str = _c("local", choices=("local", "s3"), doc="local: <data_dir>/blobs; s3: the bucket below")
    s3_bucket: str = _c("", doc="S3 bucket (must exist); credentials come from the AWS_* environment")
    s3_prefix: str = _c("", doc="key prefix inside the bucket, e.g. 'emoji3d/prod'")
    s3_endpoint_url: str = _c("", doc="S3-compatible server URL; empty = AWS (or AWS_ENDPOINT_URL)")
    s3_region: str = _c("", doc="region name; empty = boto3's default")


@dataclass(frozen=True)
class EngineConfig:
    device: str = _c("auto", choices=("auto", "cpu", "cuda"))
    preset: str = _c("auto", choices=("auto", "pretrained", "slim", "full"))
    lease_seconds: int = _c(120, ge=5, le=3600)
    heartbeat_seconds: int = _c(20, ge=1, le=600)
    poll_seconds: float = _c(1.0, gt=0, le=60)
    max_attempts: int = _c(3, ge=1, le=20)
    restart_backoff_seconds: float = _c(5.0, ge=0, le=600)
    seed: int = _c(0, ge=0)
    cudnn_autotune: bool = _c(False, doc="on CUDA, cuDNN times its convolution algorithms per shape once and keeps "
                                         "the fastest (engine/cuda_math.py)")
    shared_artifact_cache_mb: int = _c(512, ge=0, le=1 << 20,
                                       doc="house styles' finetunes kept in the engine's memory between jobs "
                                           "(engine/blob_memo.py); 0 reads them from the blob store every job")
    head_start: bool = _c(True, doc="invert a selfie (stages 1, 3, 4) as soon as a bot accepts it, while the user "
                                    "still picks a style, so the order starts at stage 5 (engine/tasks.py)")


@dataclass(frozen=True)
class LimitsConfig:
    max_upload_mb: int = _c(20, ge=1, le=20, doc="Telegram getFile serves at most 20 MB")
    max_image_megapixels: float = _c(40.0, gt=0, le=100)
    min_face_px: int = _c(128, ge=32, le=1024)
    max_yaw_degrees: float = _c(40.0, gt=0, le=90)
    max_pitch_degrees: float = _c(30.0, gt=0, le=90)
    jobs_per_user_per_day: int = _c(10, ge=1)
    active_jobs_per_user: int = _c(1, ge=1, le=10)
    decode_max_side_px: int = _c(2048, ge=512, le=8192,
                                 doc="larger photos are decoded reduced to this long side (emoji3d.images)")
    concurrent_decodes: int = _c(2, ge=1, le=64, doc="image decodes running at once in one process")
    uploads_per_user_per_minute: int = _c(6, ge=1, le=600, doc="images one user may send the bots per minute")


@dataclass(frozen=True)
class PrivacyConfig:
    """How long personal data is kept. Every retention key means the same by 0: *keep nothing for
    later*: deleted by the first maintenance pass (hourly) once no queued or running job needs it.
    Nothing is kept forever; a negative value (a "-1 = forever" habit) is refused as ambiguous."""
    selfie_retention_hours: int = _c(24, ge=0, le=24 * 365, doc="0: deleted once the pack made from it is done")
    artifact_retention_days: int = _c(30, ge=0, le=3650, doc="0: deleted at the first maintenance pass after use")


def _check_retention(key: str, value) -> None:
    """A negative retention is ambiguous (forever? at once?): refused with what the keys mean instead."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"config.toml: {key} = {value!r} is ambiguous: retention counts hours or days, 0 means "
                          "'keep nothing for later' (deleted at the first maintenance pass once no job needs it), "
                          "and nothing is kept forever; set 0 or a positive number")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds below (above, for LPIPS) which a pack's quality report calls it weak
    (engine.render.quality). Meaningful with pretrained weights only."""
    min_identity: float = _c(0.5, ge=-1, le=1, doc="ArcFace cosine, selfie vs the photo-real (PTI) render")
    min_identity_stylized: float = _c(0.3, ge=-1, le=1, doc="ArcFace cosine, selfie vs the stylized render")
    min_multiview: float = _c(0.7, ge=0, le=1, doc="share of depth that agrees across head-turn views")
    max_style_lpips: float = _c(0.6, ge=0, doc="LPIPS distance of the frontal render to the style exemplar")


@dataclass(frozen=True)
class TelegramConfig:
    enabled: bool = _c(True)
    set_title_prefix: str = _c("My 3D emoji")
    base_url: str = _c("", doc="Bot API server, e.g. a self-hosted telegram-bot-api: http://host:8081/bot; "
                               "empty = Telegram's")
    base_file_url: str = _c("", doc="its file downloads, e.g. http://host:8081/file/bot; empty = Telegram's")
    mode: str = _c("polling", choices=("polling", "webhook"), doc="how updates arrive")
    webhook_url: str = _c("", doc="public HTTPS URL Telegram posts updates to (the reverse proxy's)")
    webhook_listen: str = _c("127.0.0.1", doc="address the bot's webhook server binds")
    webhook_port: int = _c(8443, ge=1, le=65535, doc="port the bot's webhook server binds")
    webhook_path: str = _c("/telegram", doc="path the bot's webhook server answers (the proxy forwards here)")
    custom_emoji: bool = _c(True, doc="also make each pack a custom emoji set (100x100 video emoji; only "
                                      "Telegram Premium users can use them): the engine encodes them, the bot "
                                      "publishes the set")

    def __post_init__(self) -> None:
        for key in ("base_url", "base_file_url", "webhook_url"):
            value = getattr(self, key)
            if value and not value.startswith(("http://", "https://")):
                raise ValueError(f"{key} must be an http(s):// URL or empty, got {value!r}")
        if self.mode == "webhook" and not self.webhook_url:
            raise ValueError("webhook_url must be set when mode = 'webhook'")
        if not self.webhook_path.startswith("/"):
            raise ValueError(f"webhook_path must start with '/', got {self.webhook_path!r}")


@dataclass(frozen=True)
class DiscordConfig:
    enabled: bool = _c(True)
    cooldown_seconds: int = _c(60, ge=0, le=86400)
    shard_count: int = _c(1, ge=0, le=10000, doc="gateway shards in all; 1 = no sharding, 0 = as many as "
                                                  "Discord recommends (AutoShardedBot)")
    shard_ids: tuple = _c(factory=tuple, doc="the shards this process runs; empty = all of shard_count")

    def __post_init__(self) -> None:
        ids = list(self.shard_ids)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise ValueError(f"shard_ids must be integers >= 0, got {ids!r}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"shard_ids must not repeat, got {ids!r}")
        if ids and self.shard_count == 0:
            raise ValueError("shard_ids needs a fixed shard_count (not 0 = auto)")
        if any(i >= self.shard_count for i in ids):
            raise ValueError(f"shard_ids must each be < shard_count ({self.shard_count}), got {ids!r}")


@dataclass(frozen=True)
class WeightsConfig:
    dir: str = _c("", doc="empty = <data_dir>/weights")
    manifest: str = _c("", doc="empty = the manifest shipped in the engine package")


MOTIONS = ("still", "orbit", "nod")  # engine.render.frames.MOTIONS; a test keeps them equal


@dataclass(frozen=True)
class StickerEntry:
    """One sticker of the default pack ([[pack.stickers]])."""

    name: str
    emoji: str
    motion: str = _c("still", choices=MOTIONS)
    expression: str = _c("", doc="boundary name (smile, surprise, anger, blink, glasses, gender, age); empty = none")
    strength: float = _c(1.0, gt=0, le=3, doc="scales the expression's precomputed edit distance")
    seconds: float = _c(2.0, gt=0, le=3)
    yaw_degrees: float = _c(30.0, ge=0, le=60)
    pitch_degrees: float = _c(12.0, ge=0, le=45)
    optional: bool = _c(False, doc="skip (not fail) when its expression has no boundary")


def _default_pack() -> tuple:
    return (StickerEntry("turn", "😎", motion="orbit"), StickerEntry("smile", "😄", expression="smile"),
            StickerEntry("surprise", "😮", expression="surprise"), StickerEntry("anger", "😠", expression="anger"),
            StickerEntry("nod", "👍", motion="nod"),
            StickerEntry("blink", "😌", expression="blink", seconds=1.0, optional=True),
            StickerEntry("glasses", "🤓", expression="glasses", optional=True))


@dataclass(frozen=True)
class PackConfig:
    fps: float = _c(15.0, gt=0, le=30)
    size: int = _c(512, ge=64, le=1024)
    views_per_pass: int = _c(0, ge=0, le=256, doc="cameras ray-marched per call; 0 = auto (8 on a GPU, 1 on a CPU)")
    encode_threads: int = _c(1, ge=1, le=16, doc="libvpx threads per VP9 file (Telegram's stickers, custom emoji, "
                                                 "thumbnail); the files' bytes can depend on it")
    boundaries: str = _c("", doc="boundary file; empty = <data_dir>/boundaries/eg3d.safetensors")
    boundary_fit_samples: int = _c(5000, ge=8, le=1_000_000,
                                   doc="latents the engine renders and scores when it fits the boundaries itself")
    boundary_fit_retry_hours: int = _c(24, ge=1, le=24 * 365,
                                       doc="after a failed or cancelled fit, engines fit again only this much later")
    boundary_check_seconds: int = _c(60, ge=1, le=3600,
                                     doc="how often a running engine looks for a newer fitted file in the blob store")
    stickers: tuple = _c(factory=_default_pack)  # tuple[StickerEntry, ...]


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = _c(factory=PathsConfig)
    database: DatabaseConfig = _c(factory=DatabaseConfig)
    blobs: BlobsConfig = _c(factory=BlobsConfig)
    engine: EngineConfig = _c(factory=EngineConfig)
    limits: LimitsConfig = _c(factory=LimitsConfig)
    privacy: PrivacyConfig = _c(factory=PrivacyConfig)
    telegram: TelegramConfig = _c(factory=TelegramConfig)
    discord: DiscordConfig = _c(factory=DiscordConfig)
    weights: WeightsConfig = _c(factory=WeightsConfig)
    pipeline: PipelineConfig = _c(factory=PipelineConfig)
    pack: PackConfig = _c(factory=PackConfig)
    quality: QualityConfig = _c(factory=QualityConfig)
    schedules: tuple = _c(factory=tuple)  # tuple[Schedule, ...] from [[schedules]]
    # Filled from the environment, never from the file.
    root: pathlib.Path = field(default=pathlib.Path("."), metadata={"internal": True})
    telegram_token: Secret = field(default_factory=lambda: Secret(""), metadata={"internal": True})
    discord_token: Secret = field(default_factory=lambda: Secret(""), metadata={"internal": True})
    telegram_webhook_secret: Secret = field(default_factory=lambda: Secret(""), metadata={"internal": True})

    # Derived locations -------------------------------------------------
    def resolve(self, p: str) -> pathlib.Path:
        path = pathlib.Path(p).expanduser()
        return path if path.is_absolute() else (self.root / path)

    @property
    def data_dir(self) -> pathlib.Path:
        return self.resolve(self.paths.data_dir)

    @property
    def out_dir(self) -> pathlib.Path:
        return self.resolve(self.paths.out_dir)

    @property
    def styles_dir(self) -> pathlib.Path:
        return self.resolve(self.paths.styles_dir)

    @property
    def weights_manifest(self) -> pathlib.Path:
        if self.weights.manifest:
            return self.resolve(self.weights.manifest)
        return pathlib.Path(__file__).resolve().parent.parent / "engine" / "weights" / "manifest.toml"

    @property
    def boundaries_path(self) -> pathlib.Path:
        if self.pack.boundaries:
            return self.resolve(self.pack.boundaries)
        return self.data_dir / "boundaries" / "eg3d.safetensors"

    @property
    def blob_dir(self) -> pathlib.Path:
        return self.data_dir / "blobs"

    @property
    def blob_location(self) -> str:
        """Where blobs live, as one string every process takes (storage.blobs.open_backend):
        the local folder, or ``s3://bucket/prefix?endpoint_url=...&region=...``."""
        if self.blobs.backend == "local":
            return str(self.blob_dir)
        query = urllib.parse.urlencode([(k, v) for k, v in (("endpoint_url", self.blobs.s3_endpoint_url),
                                                            ("region", self.blobs.s3_region)) if v], safe=":/")
        prefix = self.blobs.s3_prefix.strip("/")
        return f"s3://{self.blobs.s3_bucket}/{prefix}" + (f"?{query}" if query else "")

    @property
    def weights_dir(self) -> pathlib.Path:
        return self.resolve(self.weights.dir) if self.weights.dir else self.data_dir / "weights"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_dir / 'emoji3d.sqlite3'}"


# Every integer key fits a signed 64-bit column and torch's seed range; TOML floats such as
# 1e23 are not integers at all, and nan/inf are no number a key can mean.
INT_RANGE = (-(2**63), 2**63 - 1)
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", dict: "a table"}


def _describe(meta: dict, tp) -> str:
    words = _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))
    parts = [words]
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    if meta.get("ge") is not None:
        parts.append(f">= {meta['ge']}")
    if meta.get("gt") is not None:
        parts.append(f"> {meta['gt']}")
    if meta.get("le") is not None:
        parts.append(f"<= {meta['le']}")
    return " ".join(parts)


def _check_value(key: str, value, tp, meta: dict):
    expected = _describe(meta, tp)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and INT_RANGE[0] <= value <= INT_RANGE[1]
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is dict:
        ok = isinstance(value, dict)
    else:  # pragma: no cover - schema bug
        raise TypeError(f"unsupported schema type {tp} for {key}")
    if ok and meta.get("choices") and value not in meta["choices"]:
        ok = False
    if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("ge") is not None and value < meta["ge"]:
            ok = False
        if meta.get("gt") is not None and value <= meta["gt"]:
            ok = False
        if meta.get("le") is not None and value > meta["le"]:
            ok = False
    if not ok:
        raise ConfigError(f"config.toml: {key} must be {expected}, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config.toml: {prefix.rstrip('.') or 'top level'} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"config.toml: unknown key '{prefix}{unknown[0]}' (expected one of: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"config.toml: missing required key '{key}'")
            continue
        tp = hints[name]
        value = data[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".")
        elif cls is PackConfig and name == "stickers":
            if not isinstance(value, list) or not value:
                raise ConfigError(f"config.toml: pack.stickers must be a non-empty array of tables "
                                  f"([[pack.stickers]]), got {value!r}")
            items = tuple(_build(StickerEntry, item, f"pack.stickers[{i}].") for i, item in enumerate(value))
            names = [e.name for e in items]
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup:
                raise ConfigError(f"config.toml: pack.stickers[].name must be unique, got {dup!r} twice")
            bad = next((e for e in items if e.motion == "still" and not e.expression), None)
            if bad:
                raise ConfigError(f"config.toml: pack.stickers[{names.index(bad.name)}] ({bad.name}) neither moves "
                                  "nor changes expression: set motion or expression")
            if len(items) > 50:
                raise ConfigError("config.toml: pack.stickers has more than 50 entries (a set's first upload limit)")
            kwargs[name] = items
        elif cls is DiscordConfig and name == "shard_ids":
            if not isinstance(value, list):
                raise ConfigError(f"config.toml: discord.shard_ids must be an array of integers, got {value!r}")
            kwargs[name] = tuple(value)
        elif cls is Config and name == "schedules":
            if not isinstance(value, list):
                raise ConfigError(f"config.toml: schedules must be an array of tables ([[schedules]]), got {value!r}")
            items = [_build(Schedule, item, f"schedules[{i}].") for i, item in enumerate(value)]
            ids = [s.id for s in items]
            dup = next((i for i in ids if ids.count(i) > 1), None)
            if dup:
                raise ConfigError(f"config.toml: schedules[].id must be unique, got {dup!r} twice")
            for s in items:
                try:
                    validate_schedule(s)
                except ConfigError as exc:
                    raise ConfigError(f"config.toml: {exc}") from None
            kwargs[name] = tuple(items)
        else:
            if isinstance(tp, types.GenericAlias):
                tp = typing.get_origin(tp)
            if cls is PrivacyConfig:
                _check_retention(key, value)
            kwargs[name] = _check_value(key, value, tp, f.metadata)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a dataclass's own range checks: "<field> must be ..."
        raise ConfigError(f"config.toml: {prefix}{exc}") from None


def load_config(path: str | os.PathLike | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Parse and validate ``config.toml``. Raises ConfigError (one line)."""
    path = pathlib.Path(path) if path else pathlib.Path(os.environ.get("EMOJI3D_CONFIG", DEFAULT_CONFIG_PATH))
    env = os.environ if env is None else env
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"config.toml: {path} is not a file")
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config.toml: file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config.toml: {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config.toml: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config.toml: not valid TOML ({exc})") from None
    cfg = _build(Config, raw, "")
    if cfg.blobs.backend == "s3" and not cfg.blobs.s3_bucket:
        raise ConfigError("config.toml: blobs.backend is \"s3\" but blobs.s3_bucket is empty")
    if cfg.engine.heartbeat_seconds >= cfg.engine.lease_seconds:
        raise ConfigError(
            "config.toml: engine.heartbeat_seconds must be smaller than engine.lease_seconds "
            f"({cfg.engine.lease_seconds}), got {cfg.engine.heartbeat_seconds}"
        )
    return dataclasses.replace(
        cfg,
        root=path.resolve().parent,
        telegram_token=Secret(env.get("TELEGRAM_BOT_TOKEN", "").strip()),
        discord_token=Secret(env.get("DISCORD_BOT_TOKEN", "").strip()),
        telegram_webhook_secret=Secret(env.get("TELEGRAM_WEBHOOK_SECRET", "").strip()),
    )


def prepare_data_dir(cfg: Config) -> pathlib.Path:
    """Create ``[paths] data_dir`` if needed; ConfigError (one line) when it cannot be created or written."""
    path = cfg.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".emoji3d-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"config.toml: paths.data_dir {path} cannot be used: {exc.strerror or exc}") from None
    return path


def enabled_frontends(cfg: Config) -> tuple[list[str], list[str]]:
    """(enabled front ends, one-line notices for the disabled ones)."""
    enabled, notices = [], []
    for name, section, token, var in (
        ("telegram", cfg.telegram, cfg.telegram_token, "TELEGRAM_BOT_TOKEN"),
        ("discord", cfg.discord, cfg.discord_token, "DISCORD_BOT_TOKEN"),
    ):
        if not section.enabled:
            notices.append(f"{name}: disabled in config.toml")
        elif not token:
            notices.append(f"{name}: disabled because {var} is not set")
        else:
            enabled.append(name)
    return enabled, notices
