"""Encode an RGBA frame sequence into a file that passes a target's rules.

``encode(frames, fps, target) -> EncodeResult(data, report)`` is pure: the
same frames, fps, target and config give the same bytes. It measures real
output instead of predicting sizes: every candidate file is written, its byte
size compared with the limit, and a fitting candidate is decoded and checked
by :func:`engine.stickers.verify.verify`. The encoder never returns a file
that fails verification; if nothing fits it raises :class:`StickerEncodeError`
naming the last reason.

Search (the same for every format, :func:`_ladder_search`): a *level* fixes
the sequence (frame size, fps, duration); a *knob* sets quality within a
level (VP9 CRF; APNG full RGBA then palette 256 -> 32 colours; GIF palette;
WEBP quality, of the colour and, in an animation, of the alpha plane too).
Level 0 is tried at the knob's start value, then at its worst value; if
neither fits, the first level that fits at the worst knob is found
by bisection over the levels, and finally the knob is bisected toward better
quality at that level. With ``best_first`` (the default) level 0 is tried at
the best knob before its start value: typical content (a rendered head) fits
there, so one encode settles it instead of two; wherever the start value fits
and the best does not, the tries that follow are the same as without it.
Levels, in order:

* WEBM VP9 (Telegram): ``content_scale`` (outer) x ``fps`` (inner, from
  ``min(fps_in, max_fps)`` down the ladder). Telegram fixes the 512 px side,
  so "smaller frames" means a smaller figure on the same transparent canvas
  (``content_scale`` < 1). CRF starts at ``crf_start`` and ranges over
  ``crf_best .. crf_worst``. A VP9 candidate is abandoned as soon as its
  packets exceed the byte limit.
* APNG / GIF (Discord) and animated WEBP (preview): duration (outer) x fps
  (inner). GIF delays are multiples of 10 ms, hence its own fps ladder. An
  APNG or GIF candidate is abandoned as soon as the file written so far
  exceeds the byte limit (Pillow compresses and writes frame by frame).
* Still PNG/WEBP: lossless RGBA PNG, then lossy WEBP qualities (where WEBP is
  accepted), then indexed PNG palettes, first fit wins.

The search assumes size falls along knobs and levels; that is only a
heuristic for speed, since every returned file has passed :func:`verify`.

Input conventions: ``frames`` are RGBA uint8 ``(H, W, 4)`` arrays, straight
alpha, all the same shape; ``fps`` is the input rate. Geometry and retiming
follow :mod:`engine.stickers.frames` (fit, letterbox, speed-up or trim); every
change (fps, frame count, trimmed seconds, content scale, still fallback) is
listed in ``report.adjustments``. An animated input goes to the target's
animated formats; a single frame to its still formats (or a 1-frame video
where the target has no still format). With ``allow_static_fallback`` an
animation that cannot fit becomes a still of frame ``still_frame``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.stickers import codecs, palette
from engine.stickers.errors import StickerEncodeError
from engine.stickers.frames import DURATION_POLICIES, Layout, Timing, fit_frame, layout, retime, validate_frames
from engine.stickers.targets import FormatRule, Target, get_target
from engine.stickers.verify import VerifyReport, verify


@dataclass(frozen=True)
class EncodeConfig:
    crf_best: int = 24  # below this VP9 spends bytes on detail nobody sees at sticker size
    crf_start: int = 30
    crf_worst: int = 63
    refine_steps: int = 4  # bisection steps toward better quality once a level fits (after trying the best)
    best_first: bool = True  # level 0's best knob before its start value (False: the search before, for benches)
    vp9_cpu_used: int = 4  # libvpx speed (0 best .. 8 fastest) in "good" deadline
    vp9_deadline: str = "good"
    threads: int = 1
    fps_ladder: tuple[float, ...] = (30.0, 24.0, 20.0, 15.0, 12.0, 10.0)
    gif_fps_ladder: tuple[float, ...] = (25.0, 20.0, 12.5, 10.0)  # 40, 50, 80, 100 ms delays
    content_scale_ladder: tuple[float, ...] = (1.0, 0.85, 0.7, 0.55)
    palette_ladder: tuple[int, ...] = (256, 128, 64, 32)
    webp_quality_ladder: tuple[int, ...] = (90, 80, 65, 50, 35, 20)
    duration_ladder_s: tuple[float, ...] = (5.0, 4.0, 3.0, 2.0)  # APNG/GIF, capped by the target
    duration_policy: str = "auto"  # "auto" | "trim" | "speedup": see frames.retime
    max_auto_speedup: float = 1.25  # "auto" plays a loop up to this much faster rather than cut it
    gif_alpha_threshold: int = 128
    still_frame: int = 0
    allow_static_fallback: bool = True
    max_tries: int = 60

    def __post_init__(self) -> None:
        if not 0 <= self.crf_best <= self.crf_start <= self.crf_worst <= 63:
            raise ValueError("need 0 <= crf_best <= crf_start <= crf_worst <= 63")
        if self.duration_policy not in DURATION_POLICIES:
            raise ValueError(f"duration_policy must be one of {DURATION_POLICIES}, got {self.duration_policy!r}")
        if self.max_auto_speedup < 1:
            raise ValueError(f"max_auto_speedup must be >= 1, got {self.max_auto_speedup}")
        if not self.fps_ladder or not self.gif_fps_ladder or not self.content_scale_ladder or not self.palette_ladder:
            raise ValueError("ladders must not be empty")


@dataclass(frozen=True)
class Attempt:
    container: str
    settings: dict[str, object]
    byte_size: int  # measured size, or the size reached when the writer stopped early
    ok: bool
    reason: str  # "" when ok
    seconds: float


@dataclass(frozen=True)
class EncodeReport:
    target: str
    container: str
    width: int
    height: int
    frames_in: int
    fps_in: float
    duration_in_s: float
    frames_out: int
    fps_out: float | None
    duration_out_s: float | None
    content_scale: float
    source_frames: tuple[int, ...]  # input frame shown as each output frame (before any merging by the writer)
    settings: dict[str, object]
    byte_size: int
    max_bytes: int
    adjustments: tuple[str, ...]
    attempts: tuple[Attempt, ...]
    verify: VerifyReport
    seconds: float

    def summary(self) -> str:
        s = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return (f"{self.target}: {self.container} {self.width}x{self.height} {self.frames_out} frame(s)"
                + (f" @ {self.fps_out:g} fps" if self.fps_out else "")
                + f", {self.byte_size}/{self.max_bytes} B, [{s}], {len(self.attempts)} tries, {self.seconds:.2f} s")


@dataclass(frozen=True)
class EncodeResult:
    data: bytes
    report: EncodeReport

    @property
    def extension(self) -> str:
        return {"apng": ".png"}.get(self.report.container, "." + self.report.container)

    @property
    def mime(self) -> str:
        return {"webm": "video/webm", "png": "image/png", "apng": "image/apng", "gif": "image/gif",
                "webp": "image/webp"}[self.report.container]


@dataclass
class _Found:
    data: bytes
    verify: VerifyReport
    settings: dict[str, object]


class _Tries:
    """Bookkeeping of one encode call (local to it; never stored on anything)."""

    def __init__(self, target: Target, cfg: EncodeConfig) -> None:
        self.target, self.cfg = target, cfg
        self.attempts: list[Attempt] = []
        self.last_reason = "no candidate was tried"

    def budget_left(self) -> bool:
        return len(self.attempts) < self.cfg.max_tries

    def run(self, rule: FormatRule, settings: dict[str, object], make: Callable[[], bytes]) -> _Found | None:
        t0 = time.perf_counter()
        found: _Found | None = None
        try:
            data = make()
        except codecs.OverBudget as e:
            size = e.bytes_so_far
            after = f" after {e.frames_done} frame(s)" if e.frames_done is not None else ""
            reason = f"too_large: passed {size} > {rule.max_bytes} bytes{after}, stopped"
        else:
            size = len(data)
            if size > rule.max_bytes:
                reason = f"too_large: {size} > {rule.max_bytes} bytes"
            else:
                rep = verify(data, self.target)  # decode and check every rule, not just the size
                reason = "; ".join(str(v) for v in rep.reasons)
                found = _Found(data, rep, dict(settings)) if rep.ok else None
        self.attempts.append(Attempt(rule.container, dict(settings), size, found is not None, reason,
                                     time.perf_counter() - t0))
        if found is None:
            self.last_reason = f"{rule.container} {settings}: {reason}"
        return found


def encode(frames: list[np.ndarray], fps: float, target: Target | str, config: EncodeConfig | None = None) -> EncodeResult:
    """Frames (RGBA uint8, (H, W, 4)) at ``fps`` -> the best file that passes ``target``."""
    t_start = time.perf_counter()
    tgt = get_target(target) if isinstance(target, str) else target
    cfg = config or EncodeConfig()
    src_h, src_w = validate_frames(frames, fps)
    tries = _Tries(tgt, cfg)
    adjustments: list[str] = []
    animated_in = len(frames) > 1
    result: tuple[_Found, Layout, Timing | None, float, str] | None = None

    still_k = min(max(cfg.still_frame, 0), len(frames) - 1) if animated_in else 0
    if (animated_in and tgt.animated_formats) or not tgt.static_formats:
        for rule in tgt.animated_formats:
            if rule.container == "webm":
                result = _search_webm(frames, fps, tgt, rule, cfg, tries, src_h, src_w)
            elif rule.container in ("apng", "gif", "webp"):
                result = _search_image_anim(frames, fps, tgt, rule, cfg, tries, src_h, src_w)
            if result is not None:
                break
        if result is None and animated_in and tgt.static_formats and cfg.allow_static_fallback:
            result = _search_still(frames[still_k], tgt, cfg, tries, src_h, src_w)
            if result is not None:
                adjustments.append(f"no animation fitted; fell back to a still image of frame {still_k}")
    else:
        result = _search_still(frames[still_k], tgt, cfg, tries, src_h, src_w)
        if animated_in:
            adjustments.append(f"{tgt.name} is a still target: used frame {still_k} of {len(frames)}")

    if result is None:
        raise StickerEncodeError(
            f"nothing fits {tgt.name} after {len(tries.attempts)} tries; last: {tries.last_reason}",
            target=tgt.name, tries=len(tries.attempts))
    found, lay, timing, scale, container = result
    n_in, dur_in = len(frames), len(frames) / fps
    if (lay.canvas_w, lay.canvas_h) != (src_w, src_h) or (lay.content_w, lay.content_h) != (src_w, src_h):
        adjustments.append(f"resized {src_w}x{src_h} -> content {lay.content_w}x{lay.content_h} on a {lay.canvas_w}x{lay.canvas_h} canvas")
    if scale < 1:
        adjustments.append(f"content scaled to {scale:g} of the canvas to fit the byte limit")
    if timing is not None:
        if abs(timing.fps - fps) > 1e-9:
            adjustments.append(f"fps {fps:g} -> {timing.fps:g}")
        if timing.trimmed_s > 0:
            adjustments.append(f"trimmed {timing.trimmed_s:.3f} s from the end (duration {dur_in:.3f} s -> {timing.duration_s:.3f} s)")
        if timing.speed > 1:
            adjustments.append(f"played {timing.speed:.3f}x faster to fit {timing.duration_s:.3f} s")
        if len(timing.indices) != n_in:
            adjustments.append(f"frames {n_in} -> {len(timing.indices)}")
    rule = tgt.rules_for(found.verify.props.container, found.verify.props.n_frames > 1 or container == "webm")
    report = EncodeReport(
        target=tgt.name, container=container, width=lay.canvas_w, height=lay.canvas_h,
        frames_in=n_in, fps_in=float(fps), duration_in_s=dur_in,
        frames_out=found.verify.props.n_frames,
        fps_out=timing.fps if timing is not None else None,
        duration_out_s=timing.duration_s if timing is not None else None,
        content_scale=scale,
        source_frames=timing.indices if timing is not None else (still_k,),
        settings=found.settings, byte_size=len(found.data),
        max_bytes=rule.max_bytes if rule else -1, adjustments=tuple(adjustments),
        attempts=tuple(tries.attempts), verify=found.verify, seconds=time.perf_counter() - t_start)
    return EncodeResult(found.data, report)


def _fps_levels(fps_in: float, max_fps: float | None, ladder: tuple[float, ...]) -> list[float]:
    top = min(fps_in, max_fps) if max_fps else fps_in
    return [top] + [f for f in ladder if f < top - 1e-9]


def _prepare(frames, timing: Timing, lay: Layout, cache: dict) -> list[np.ndarray]:
    out = []
    for i in timing.indices:
        key = (i, lay)
        if key not in cache:
            cache[key] = fit_frame(frames[i], lay)  # (canvas_h, canvas_w, 4)
        out.append(cache[key])
    return out


def _ladder_search(n_levels: int, knobs: list, start: int, refine_steps: int, attempt, tries: _Tries,
                   best_first: bool = True):
    """Find the first level that can fit, then the best knob there.

    ``knobs`` go from best to worst quality; ``attempt(level, knob_index)`` returns a
    :class:`_Found` or None. Assumes (as a search heuristic only: every returned file
    is verified) that size falls along the knobs and along the levels. With
    ``best_first`` level 0 tries knob 0 before ``start``.
    Returns ``(found, level, knob_index)`` or None.
    """
    worst = len(knobs) - 1

    def best_knob(level: int, lo: int, hi: int, found: _Found, lo_first: bool = True):
        # knob ``hi`` fits; bisect [lo, hi) for a better one that fits too
        best, best_i = found, hi
        if lo_first and lo < hi and tries.budget_left():  # typical content fits at the best knob: one try settles it
            got = attempt(level, lo)
            if got is not None:
                return got, level, lo
            lo += 1
        for _ in range(refine_steps):
            if lo >= best_i or not tries.budget_left():
                break
            mid = (lo + best_i) // 2
            got = attempt(level, mid)
            if got is not None:
                best, best_i = got, mid
            else:
                lo = mid + 1
        return best, level, best_i

    best_tried = best_first and start > 0
    if best_tried:
        got = attempt(0, 0)
        if got is not None:
            return got, 0, 0
    got = attempt(0, start)
    if got is not None:  # knob 0, when tried first, did not fit: bisect from the next one
        return best_knob(0, 1, start, got, lo_first=False) if best_tried else best_knob(0, 0, start, got)
    if start < worst:
        got = attempt(0, worst)
        if got is not None:
            return best_knob(0, start + 1, worst, got)
    if n_levels == 1 or not tries.budget_left():
        return None
    lo, hi = 1, n_levels - 1
    got = attempt(hi, worst)
    if got is None:
        return None
    best_level, best = hi, got
    hi -= 1
    while lo <= hi and tries.budget_left():
        mid = (lo + hi) // 2
        got = attempt(mid, worst)
        if got is not None:
            best_level, best = mid, got
            hi = mid - 1
        else:
            lo = mid + 1
    return best_knob(best_level, 0, worst, best)


def _search_webm(frames, fps, tgt: Target, rule: FormatRule, cfg: EncodeConfig, tries: _Tries, src_h, src_w):
    max_dur = tgt.aim_duration_s or tgt.max_duration_s
    levels = [(sc, f) for sc in cfg.content_scale_ladder for f in _fps_levels(fps, tgt.max_fps, cfg.fps_ladder)]
    crfs = list(range(cfg.crf_best, cfg.crf_worst + 1))
    prepared: dict[int, tuple[Layout, Timing, list[np.ndarray]]] = {}
    cache: dict = {}

    def level(i: int):
        if i not in prepared:
            sc, f = levels[i]
            lay = layout(src_h, src_w, tgt.side, tgt.square, content_scale=sc, even=True)
            timing = retime(len(frames), fps, f, max_dur, cfg.duration_policy, cfg.max_auto_speedup)
            prepared[i] = (lay, timing, _prepare(frames, timing, lay, cache))
        return prepared[i]

    def attempt(i: int, k: int):
        lay, timing, seq = level(i)
        st = {"crf": crfs[k], "fps": round(timing.fps, 3), "content_scale": levels[i][0], "cpu_used": cfg.vp9_cpu_used}
        return tries.run(rule, st, lambda: codecs.write_webm_vp9(
            seq, timing.fps, crfs[k], cpu_used=cfg.vp9_cpu_used, deadline=cfg.vp9_deadline,
            threads=cfg.threads, max_bytes=rule.max_bytes))

    out = _ladder_search(len(levels), crfs, cfg.crf_start - cfg.crf_best, cfg.refine_steps, attempt, tries,
                        cfg.best_first)
    if out is None:
        return None
    found, i, _ = out
    lay, timing, _ = level(i)
    return found, lay, timing, levels[i][0], "webm"


def _search_image_anim(frames, fps, tgt: Target, rule: FormatRule, cfg: EncodeConfig, tries: _Tries, src_h, src_w):
    container = rule.container
    lay = layout(src_h, src_w, tgt.side, tgt.square)
    dur_in = len(frames) / fps
    cap = tgt.aim_duration_s or tgt.max_duration_s
    top = min(dur_in, cap) if cap else dur_in
    durations = [top] + [d for d in cfg.duration_ladder_s if d < top - 1e-9]
    fps_top = min(fps, tgt.max_fps) if tgt.max_fps else fps
    if container == "gif":
        fps_list = [f for f in cfg.gif_fps_ladder if f <= fps_top + 1e-9] or [min(cfg.gif_fps_ladder)]
    else:
        fps_list = _fps_levels(fps, tgt.max_fps, cfg.fps_ladder)
    levels = [(d, f) for d in durations for f in fps_list]
    if container == "webp":
        knobs: list = list(cfg.webp_quality_ladder)
        start = 0
    elif container == "apng":
        knobs, start = ["rgba", *cfg.palette_ladder], 1
    else:
        knobs, start = list(cfg.palette_ladder), 0
    cache: dict = {}
    prepared: dict[int, tuple[Timing, list[np.ndarray]]] = {}

    def level(i: int):
        if i not in prepared:
            d, f = levels[i]
            timing = retime(len(frames), fps, f, d, cfg.duration_policy, cfg.max_auto_speedup)
            prepared[i] = (timing, _prepare(frames, timing, lay, cache))
        return prepared[i]

    def attempt(i: int, k: int):
        timing, seq = level(i)
        knob = knobs[k]
        st: dict[str, object] = {"fps": round(timing.fps, 3), "duration_s": round(timing.duration_s, 3)}
        if container == "webp":
            # the alpha plane follows the colour's quality: a matte that is not near 0/255 everywhere
            # (a soft or noisy one) would otherwise keep the file over the limit at every quality
            st["quality"] = st["alpha_quality"] = knob
            make = lambda: codecs.write_webp(seq, timing.fps, quality=knob, alpha_quality=knob)
        elif container == "apng" and knob == "rgba":
            st["colors"] = "rgba"
            make = lambda: codecs.write_apng(seq, timing.fps, max_bytes=rule.max_bytes)
        elif container == "apng":
            st["colors"] = knob

            def make():
                idx, pal = palette.quantize_rgba(seq, knob)
                return codecs.write_apng(None, timing.fps, indices=idx, palette_rgba=pal, max_bytes=rule.max_bytes)
        else:
            st["colors"] = knob

            def make():
                idx, pal, ti = palette.quantize_gif(seq, knob, cfg.gif_alpha_threshold)
                return codecs.write_gif(idx, pal, ti, timing.fps, max_bytes=rule.max_bytes)
        return tries.run(rule, st, make)

    out = _ladder_search(len(levels), knobs, start, cfg.refine_steps, attempt, tries, cfg.best_first)
    if out is None:
        return None
    found, i, _ = out
    timing, _ = level(i)
    return found, lay, timing, 1.0, container


def _search_still(frame, tgt: Target, cfg: EncodeConfig, tries: _Tries, src_h, src_w):
    lay = layout(src_h, src_w, tgt.side, tgt.square)
    img = fit_frame(frame, lay)  # (canvas_h, canvas_w, 4)
    rules = {r.container: r for r in tgt.static_formats}
    plan: list[tuple[FormatRule, dict, Callable[[], bytes]]] = []
    if "png" in rules:
        plan.append((rules["png"], {"colors": "rgba"}, lambda: codecs.write_png(img)))
    if "webp" in rules:
        for q in cfg.webp_quality_ladder:
            plan.append((rules["webp"], {"quality": q}, lambda q=q: codecs.write_webp([img], 0, quality=q)))
    if "png" in rules:
        for colors in cfg.palette_ladder:
            def make(colors=colors):
                idx, pal = palette.quantize_rgba([img], colors)
                return codecs.write_png(None, indices=idx[0], palette_rgba=pal)
            plan.append((rules["png"], {"colors": colors}, make))
    for rule, st, make in plan:
        if not tries.budget_left():
            break
        got = tries.run(rule, st, make)
        if got is not None:
            return got, lay, None, 1.0, rule.container
    return None
