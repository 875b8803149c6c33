"""Platform limits for every sticker target, as data.

One table, :data:`TARGETS`, is shared by the encoder (which searches settings
until its output fits) and the verifier (which decodes a file and checks it).
Nothing here imports torch; the bots import this module directly.

Conventions
-----------
* Sizes are in pixels, byte limits in bytes (``KB`` = 1000 bytes as Telegram
  writes it, ``KiB`` = 1024 bytes as Discord writes it), durations in seconds,
  frame rates in frames per second.
* A :class:`FormatRule` describes one accepted file kind of a target (for
  example the Telegram thumbnail accepts WEBP/PNG up to 128 KB *or* WEBM up
  to 32 KB). ``container`` is one of ``webm``, ``png``, ``apng``, ``gif``,
  ``webp``; ``animated`` says whether the file kind is a moving sticker.
* Size rules: ``square`` targets need ``width == height == side``; the others
  need ``max(width, height) == side`` and ``min(width, height) <= side``
  (Telegram: "one side exactly 512 px, the other 512 px or less").
* ``require_alpha`` is a *product* rule (our stickers are cut-outs and must
  stay transparent); the platforms would accept opaque files. Violations of
  it are reported with the code ``alpha_missing`` like any other rule.

Sources (facts only): Telegram Bot API "Sticker requirements" (static: PNG or
WEBP, 512 px side, 512 KB; video: WEBM VP9, 512 px side, <= 30 fps, <= 3 s,
no audio, 256 KB; video custom emoji the same but exactly 100x100, and we
hold them to 64 KB (issue 19: the stricter reading, which Telegram accepts
either way); set thumbnail 100x100 WEBP/PNG
128 KB or WEBM 32 KB), Discord developer docs (sticker 320x320, PNG/APNG/GIF,
"max 512 KB", <= 5 s animated; emoji 128x128, 256 KiB) and sticker-convert's
compression table. Where a unit is ambiguous the smaller reading is used.
"""
from __future__ import annotations

from dataclasses import dataclass, field

KB = 1000
KIB = 1024

CONTAINERS = ("webm", "png", "apng", "gif", "webp")


@dataclass(frozen=True)
class FormatRule:
    """One accepted file kind of a target."""

    container: str  # one of CONTAINERS
    animated: bool  # True: moving sticker (video / animation); False: one still frame
    max_bytes: int
    codec: str | None = None  # required video codec (``vp9`` for WEBM), None for images

    def __post_init__(self) -> None:
        if self.container not in CONTAINERS:
            raise ValueError(f"unknown container {self.container!r}; expected one of {CONTAINERS}")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")


@dataclass(frozen=True)
class Target:
    """Limits of one sticker target. ``formats`` are in the encoder's order of preference."""

    name: str
    side: int  # the exact length of the long side (or of both sides when ``square``)
    square: bool
    formats: tuple[FormatRule, ...]
    max_fps: float | None = None  # None: the platform sets no limit
    max_duration_s: float | None = None  # hard platform limit
    aim_duration_s: float | None = None  # what the encoder aims at (margin under the limit)
    require_alpha: bool = True  # product rule, see module docstring
    allow_audio: bool = False
    require_loop: bool = True  # GIF / APNG / animated WEBP must loop forever
    gif_min_delay_ms: int = 20  # browsers replay shorter GIF delays at 100 ms
    notes: tuple[str, ...] = field(default_factory=tuple)

    def rules_for(self, container: str, animated: bool) -> FormatRule | None:
        """The rule matching a container and animation kind, or None if not accepted."""
        for rule in self.formats:
            if rule.container == container and rule.animated == animated:
                return rule
        return None

    @property
    def animated_formats(self) -> tuple[FormatRule, ...]:
        return tuple(r for r in self.formats if r.animated)

    @property
    def static_formats(self) -> tuple[FormatRule, ...]:
        return tuple(r for r in self.formats if not r.animated)

    def size_ok(self, width: int, height: int) -> bool:
        if self.square:
            return width == self.side and height == self.side
        return max(width, height) == self.side and min(width, height) >= 1

    def size_rule_text(self) -> str:
        if self.square:
            return f"exactly {self.side}x{self.side}"
        return f"one side exactly {self.side} px and the other at most {self.side} px"


_TG_VIDEO_NOTES = ("Telegram video sticker: WEBM VP9, yuva420p with alpha_mode=1, looping, no audio",)

TARGETS: dict[str, Target] = {
    "telegram_video": Target(
        name="telegram_video",
        side=512,
        square=False,
        formats=(FormatRule("webm", True, 256 * KB, codec="vp9"),),
        max_fps=30.0,
        max_duration_s=3.0,
        aim_duration_s=2.9,
        notes=_TG_VIDEO_NOTES,
    ),
    "telegram_static": Target(
        name="telegram_static",
        side=512,
        square=False,
        formats=(FormatRule("png", False, 512 * KB), FormatRule("webp", False, 512 * KB)),
    ),
    # A video custom emoji (a set with sticker_type "custom_emoji"), made from the sticker's frames.
    "telegram_emoji": Target(
        name="telegram_emoji",
        side=100,
        square=True,
        formats=(FormatRule("webm", True, 64 * KB, codec="vp9"),),
        max_fps=30.0,
        max_duration_s=3.0,
        aim_duration_s=2.9,
        notes=_TG_VIDEO_NOTES + ("Telegram custom emoji: exactly 100x100",),
    ),
    "telegram_thumb": Target(
        name="telegram_thumb",
        side=100,
        square=True,
        formats=(
            FormatRule("webm", True, 32 * KB, codec="vp9"),
            FormatRule("png", False, 128 * KB),
            FormatRule("webp", False, 128 * KB),
        ),
        max_fps=30.0,
        max_duration_s=3.0,
        aim_duration_s=2.9,
    ),
    "discord_sticker": Target(
        name="discord_sticker",
        side=320,
        square=True,
        # Discord's create-guild-sticker docs say "max 512 KB" (older text: 500 KB); the app
        # says 512 KiB. We take the smaller reading, 512,000 bytes, so either check passes.
        formats=(
            FormatRule("apng", True, 512 * KB),
            FormatRule("gif", True, 512 * KB),
            FormatRule("png", False, 512 * KB),
        ),
        max_duration_s=5.0,
        aim_duration_s=5.0,
    ),
    "discord_emoji": Target(
        name="discord_emoji",
        side=128,
        square=True,
        formats=(FormatRule("gif", True, 256 * KIB), FormatRule("png", False, 256 * KIB)),
        max_duration_s=None,
    ),
    # Our own budget (no platform): the local demo page embeds one animated WEBP per sticker.
    "preview": Target(
        name="preview",
        side=256,
        square=False,
        formats=(FormatRule("webp", True, 200 * KB), FormatRule("png", False, 200 * KB)),
        max_fps=30.0,
        max_duration_s=10.0,
        aim_duration_s=10.0,
        notes=("not a platform target: the demo's per-sticker budget",),
    ),
}


def get_target(name: str) -> Target:
    """Look a target up by name; raises ValueError listing the valid names."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown sticker target {name!r}; expected one of {sorted(TARGETS)}") from None
