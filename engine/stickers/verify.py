"""Check a sticker file against a target's rules by decoding it.

``verify(data_or_path, target)`` returns a :class:`VerifyReport` with ``ok``,
one :class:`Violation` (stable ``code`` + precise ``message``) per broken rule,
and the measured :class:`~engine.stickers.probe.MediaProps`. It never raises
on a bad file (an undecodable file is a ``decode_failed`` violation); it raises
only on programming errors (unknown target name, wrong argument type).

Timing tolerances: WEBM stores times in milliseconds, so a 30 fps stream has
frame gaps of 33 and 34 ms. The shortest gap may therefore be 1.5 ms under
``1000 / max_fps``; declared and mean rates must not exceed ``max_fps`` by
more than 0.05 fps. Duration limits are checked with 1 ms tolerance on the
timestamp-derived duration and on the container header's duration.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.stickers.probe import MediaProps, ProbeError, probe
from engine.stickers.targets import Target, get_target

FPS_TOL = 0.05
DELAY_TOL_MS = 1.5
DURATION_TOL_S = 0.001


@dataclass(frozen=True)
class Violation:
    code: str  # stable, e.g. "too_large", "bad_dimensions"
    message: str  # precise, with measured and allowed values

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class VerifyReport:
    target: str
    ok: bool
    reasons: tuple[Violation, ...]
    props: MediaProps | None  # None when the file could not be decoded
    checked: tuple[str, ...] = field(default_factory=tuple)  # names of the rules that were checked

    def summary(self) -> str:
        head = f"{self.target}: {'OK' if self.ok else 'FAIL'}"
        if self.props is not None:
            p = self.props
            head += (
                f" [{p.container}/{p.codec} {p.width}x{p.height} {p.n_frames} frame(s)"
                f" {p.byte_size} B"
                + (f" {p.duration_s:.3f}s" if p.duration_s is not None else "")
                + (f" {p.fps_declared:.2f}fps" if p.fps_declared is not None else "")
                + f" alpha={'yes' if p.has_alpha_channel else 'no'}]"
            )
        return "\n".join([head] + [f"  - {v}" for v in self.reasons])


MAX_VERIFY_BYTES = 64 * 1024 * 1024  # no sticker is near this; larger files are refused undecoded


def _read(data_or_path: bytes | bytearray | str | os.PathLike) -> bytes | int:
    """The file's bytes, or its size (int) when it is too big to be worth decoding."""
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path)
    if isinstance(data_or_path, (str, os.PathLike)):
        p = Path(data_or_path)
        size = p.stat().st_size
        return size if size > MAX_VERIFY_BYTES else p.read_bytes()
    raise TypeError(f"verify expects bytes or a path, got {type(data_or_path).__name__}")


def verify(data_or_path: bytes | str | os.PathLike, target: Target | str) -> VerifyReport:
    """Decode the file and check every rule of ``target``."""
    tgt = get_target(target) if isinstance(target, str) else target
    data = _read(data_or_path)
    if isinstance(data, int) or len(data) > MAX_VERIFY_BYTES:
        size = data if isinstance(data, int) else len(data)
        return VerifyReport(tgt.name, False, (Violation(
            "too_large", f"file is {size} bytes; not decoded (anything over {MAX_VERIFY_BYTES} bytes is refused)"),),
            None, ("byte_size",))
    try:
        props = probe(data).props
    except ProbeError as e:
        return VerifyReport(tgt.name, False, (Violation("decode_failed", str(e)),), None, ("decode",))
    reasons = check_props(props, tgt)
    return VerifyReport(tgt.name, not reasons, tuple(reasons), props, RULE_NAMES)


RULE_NAMES = (
    "decode", "container", "codec", "byte_size", "dimensions", "frame_count", "fps", "duration",
    "alpha", "audio", "streams", "loop",
)


def check_props(p: MediaProps, t: Target) -> list[Violation]:
    """Every rule of ``t`` against measured properties; an empty list means the file passes."""
    out: list[Violation] = []
    animated = p.n_frames > 1 or p.container in ("webm", "matroska")
    rule = t.rules_for(p.container, animated)
    accepted = ", ".join(f"{r.container.upper()}{' (animated)' if r.animated else ' (still)'}" for r in t.formats)
    if rule is None:
        family = {"apng": "png", "png": "apng"}.get(p.container, p.container)
        alt = t.rules_for(p.container, not animated) or t.rules_for(family, not animated)
        if alt is not None:
            kind = "an animation" if animated else "a still image"
            out.append(Violation("wrong_kind", f"{p.container.upper()} is {kind} ({p.n_frames} frames) but {t.name} accepts {accepted}"))
        else:
            out.append(Violation("wrong_container", f"container is {p.container.upper()}; {t.name} accepts {accepted}"))
    if rule is not None and rule.codec is not None and p.codec != rule.codec:
        out.append(Violation("wrong_codec", f"video codec is {p.codec}; {t.name} needs {rule.codec}"))
    if rule is not None and p.byte_size > rule.max_bytes:
        out.append(Violation("too_large", f"file is {p.byte_size} bytes; the limit is {rule.max_bytes} bytes"))
    if not t.size_ok(p.width, p.height):
        out.append(Violation("bad_dimensions", f"size is {p.width}x{p.height}; {t.name} needs {t.size_rule_text()}"))
    if p.n_frames < 1:
        out.append(Violation("no_frames", "the file has no frames"))
    if animated:
        out.extend(_check_timing(p, t))
    if t.require_alpha:
        if not p.has_alpha_channel:
            out.append(Violation("alpha_missing", f"no alpha channel (pixel format {p.pix_fmt}); stickers must stay transparent"))
        if p.container in ("webm", "matroska") and p.has_alpha_channel and p.alpha_mode != "1":
            out.append(Violation("alpha_mode_missing", f"WEBM track lacks AlphaMode=1 (found {p.alpha_mode!r}); players will ignore the alpha plane"))
    if p.audio_streams and not t.allow_audio:
        out.append(Violation("has_audio", f"{p.audio_streams} audio stream(s); {t.name} allows none"))
    if p.video_streams != 1 or p.other_streams:
        out.append(Violation("extra_streams", f"{p.video_streams} video and {p.other_streams} other stream(s); exactly one video stream is allowed"))
    if animated and t.require_loop and p.container in ("gif", "apng", "webp") and p.loop != 0:
        out.append(Violation("not_looping", f"loop count is {p.loop!r}; the animation must loop forever (0)"))
    return out


def _check_timing(p: MediaProps, t: Target) -> list[Violation]:
    out: list[Violation] = []
    if p.duration_s is None or p.duration_s <= 0:
        out.append(Violation("no_duration", "frame timestamps give no positive duration"))
    if t.max_duration_s is not None:
        for label, d in (("frame timestamps give", p.duration_s), ("container header says", p.container_duration_s)):
            if d is not None and d > t.max_duration_s + DURATION_TOL_S:
                out.append(Violation("too_long", f"{label} {d:.3f} s; the limit is {t.max_duration_s:.3f} s"))
    if t.max_fps is not None:
        if p.fps_declared is not None and p.fps_declared > t.max_fps + FPS_TOL:
            out.append(Violation("fps_too_high", f"frame rate is {p.fps_declared:.3f} fps; the limit is {t.max_fps:g} fps"))
        if p.duration_s and p.n_frames / (p.duration_s + DELAY_TOL_MS / 1000.0) > t.max_fps + FPS_TOL:
            out.append(Violation("fps_too_high", f"{p.n_frames} frames in {p.duration_s:.3f} s is {p.n_frames / p.duration_s:.3f} fps; the limit is {t.max_fps:g} fps"))
        if p.min_delay_ms is not None and p.min_delay_ms < 1000.0 / t.max_fps - DELAY_TOL_MS:
            out.append(Violation("fps_too_high", f"shortest frame gap is {p.min_delay_ms:.1f} ms; at most {t.max_fps:g} fps means >= {1000.0 / t.max_fps:.1f} ms"))
    if p.container == "gif" and p.min_delay_ms is not None and p.min_delay_ms < t.gif_min_delay_ms:
        out.append(Violation("gif_delay_too_short", f"shortest GIF delay is {p.min_delay_ms:.0f} ms; browsers replay delays under {t.gif_min_delay_ms} ms at 100 ms"))
    return out
