"""Encode an RGBA frame sequence into a file that passes a target's rules.

``encode(frames, fps, target) -> EncodeResult(data, report)`` is pure: the
same frames, fps, target and config give the same bytes. It measures real
output instead of predicting sizes: every candidate file is written, its byte
size compared with the limit, and a fitting candidate is decoded and checked
by :func:`engine.stickers.verify.verify`. The encoder never returns a file
that fails verification; if nothing fits it raises :class:`StickerEncodeError`
naming the last reason.

Search (the same for every animated format,
:func:`engine.stickers.search.ladder_plan`): a *level* fixes
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

Given ``lanes`` (a pack's encode threads, :mod:`engine.stickers.lanes`), a
search also encodes, on lanes that would idle, the candidates it may need
next (:func:`engine.stickers.search.run_plan`); it still decides on the
outcomes of its own candidates in its own order, so the file and the tries
reported are the same, and ``report.rounds`` counts the encodes it waited
for one after another (``len(report.attempts)`` without lanes).

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

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.stickers import codecs, palette, search
from engine.stickers.errors import StickerEncodeError
from engine.stickers.frames import DURATION_POLICIES, Layout, Timing, fit_frame, layout, retime, validate_frames
from engine.stickers.lanes import SpareLanes
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
    rounds: int = 0       # candidates encoded one after another: len(attempts) without idle lanes
    spare_tries: int = 0  # candidates encoded ahead on idle lanes that the search did not need

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


@dataclass(frozen=True)
class _Outcome:
    """One candidate written (and, when it fits the size, verified)."""

    found: _Found | None
    attempt: Attempt


def _fits(outcome: _Outcome) -> bool:
    return outcome.found is not None


def _try(target: Target, rule: FormatRule, settings: dict[str, object], make: Callable[[], bytes]) -> _Outcome:
    """Write one candidate with ``make()`` and check it against ``rule`` and ``target``; a writer's
    :class:`codecs.Abandoned` propagates (nothing was measured)."""
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
            rep = verify(data, target)  # decode and check every rule, not just the size
            reason = "; ".join(str(v) for v in rep.reasons)
            found = _Found(data, rep, dict(settings)) if rep.ok else None
    return _Outcome(found, Attempt(rule.container, dict(settings), size, found is not None, reason,
                                   time.perf_counter() - t0))


class _Tries:
    """Bookkeeping of one encode call (local to it; never stored on anything)."""

    def __init__(self, cfg: EncodeConfig, lanes: SpareLanes | None, stop: codecs.Stop) -> None:
        self.cfg, self.lanes, self.stop = cfg, lanes, stop
        self.attempts: list[Attempt] = []
        self.rounds = 0
        self.spare = 0
        self.last_reason = "no candidate was tried"

    def left(self) -> int:
        return self.cfg.max_tries - len(self.attempts)

    def search(self, make_plan: Callable[[], search.Plan], try_key: Callable[..., _Outcome]
               ) -> tuple[_Found, search.Key] | None:
        """Run a plan (:mod:`engine.stickers.search`) on this call's lanes: the chosen candidate's file
        and key, or None when nothing fitted."""
        run = search.run_plan(make_plan, try_key, _fits, self.lanes, self.stop)
        for outcome in run.used:
            self.attempts.append(outcome.attempt)
            if outcome.found is None:
                self.last_reason = f"{outcome.attempt.container} {outcome.attempt.settings}: {outcome.attempt.reason}"
        self.rounds += run.rounds
        self.spare += run.spare
        return None if run.chosen is None else (run.outcomes[run.chosen].found, run.chosen)


def encode(frames: list[np.ndarray], fps: float, target: Target | str, config: EncodeConfig | None = None,
           lanes: SpareLanes | None = None, stop: codecs.Stop = None) -> EncodeResult:
    """Frames (RGBA uint8, (H, W, 4)) at ``fps`` -> the best file that passes ``target``.

    ``lanes``: the encode lanes this call shares with other encodes (a pack's). It holds one while
    it runs, and its searches run candidates ahead on idle ones (:mod:`engine.stickers.search`):
    the same file and tries, in less time where lanes idle. None: one candidate after another.
    ``stop``: once it returns true the file is no longer wanted (a cancelled pack, a stopping
    engine); :class:`codecs.Abandoned` is raised before the next frame is written."""
    with lanes.hold() if lanes is not None else contextlib.nullcontext():
        return _encode(frames, fps, target, config or EncodeConfig(), lanes, stop)


def _encode(frames: list[np.ndarray], fps: float, target: Target | str, cfg: EncodeConfig,
            lanes: SpareLanes | None, stop: codecs.Stop) -> EncodeResult:
    t_start = time.perf_counter()
    tgt = get_target(target) if isinstance(target, str) else target
    src_h, src_w = validate_frames(frames, fps)
    tries = _Tries(cfg, lanes, stop)
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
        attempts=tuple(tries.attempts), verify=found.verify, seconds=time.perf_counter() - t_start,
        rounds=tries.rounds, spare_tries=tries.spare)
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


def _levels_once(prepare: Callable[[int], object]) -> Callable[[int], object]:
    """``prepare(i)`` computed once per level and shared by the threads that encode its candidates."""
    prepared: dict[int, object] = {}
    lock = threading.Lock()

    def level(i: int):
        with lock:
            if i not in prepared:
                prepared[i] = prepare(i)
            return prepared[i]
    return level


def _search_webm(frames, fps, tgt: Target, rule: FormatRule, cfg: EncodeConfig, tries: _Tries, src_h, src_w):
    max_dur = tgt.aim_duration_s or tgt.max_duration_s
    levels = [(sc, f) for sc in cfg.content_scale_ladder for f in _fps_levels(fps, tgt.max_fps, cfg.fps_ladder)]
    crfs = list(range(cfg.crf_best, cfg.crf_worst + 1))
    cache: dict = {}

    def prepare(i: int) -> tuple[Layout, Timing, list[np.ndarray]]:
        sc, f = levels[i]
        lay = layout(src_h, src_w, tgt.side, tgt.square, content_scale=sc, even=True)
        timing = retime(len(frames), fps, f, max_dur, cfg.duration_policy, cfg.max_auto_speedup)
        return lay, timing, _prepare(frames, timing, lay, cache)

    level = _levels_once(prepare)

    def attempt(key: tuple[int, int], stop: codecs.Stop) -> _Outcome:
        i, k = key
        lay, timing, seq = level(i)
        st = {"crf": crfs[k], "fps": round(timing.fps, 3), "content_scale": levels[i][0], "cpu_used": cfg.vp9_cpu_used}
        return _try(tgt, rule, st, lambda: codecs.write_webm_vp9(
            seq, timing.fps, crfs[k], cpu_used=cfg.vp9_cpu_used, deadline=cfg.vp9_deadline,
            threads=cfg.threads, max_bytes=rule.max_bytes, stop=stop))

    budget = tries.left()
    out = tries.search(lambda: search.ladder_plan(len(levels), len(crfs), cfg.crf_start - cfg.crf_best,
                                                  cfg.refine_steps, cfg.best_first, budget), attempt)
    if out is None:
        return None
    found, (i, _) = out
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

    def prepare(i: int) -> tuple[Timing, list[np.ndarray]]:
        d, f = levels[i]
        timing = retime(len(frames), fps, f, d, cfg.duration_policy, cfg.max_auto_speedup)
        return timing, _prepare(frames, timing, lay, cache)

    level = _levels_once(prepare)

    def attempt(key: tuple[int, int], stop: codecs.Stop) -> _Outcome:
        i, k = key
        timing, seq = level(i)
        knob = knobs[k]
        st: dict[str, object] = {"fps": round(timing.fps, 3), "duration_s": round(timing.duration_s, 3)}
        if container == "webp":
            # the alpha plane follows the colour's quality: a matte that is not near 0/255 everywhere
            # (a soft or noisy one) would otherwise keep the file over the limit at every quality
            st["quality"] = st["alpha_quality"] = knob
            make = lambda: codecs.write_webp(seq, timing.fps, quality=knob, alpha_quality=knob, stop=stop)
        elif container == "apng" and knob == "rgba":
            st["colors"] = "rgba"
            make = lambda: codecs.write_apng(seq, timing.fps, max_bytes=rule.max_bytes, stop=stop)
        elif container == "apng":
            st["colors"] = knob

            def make():
                idx, pal = palette.quantize_rgba(seq, knob)
                return codecs.write_apng(None, timing.fps, indices=idx, palette_rgba=pal, max_bytes=rule.max_bytes,
                                         stop=stop)
        else:
            st["colors"] = knob

            def make():
                idx, pal, ti = palette.quantize_gif(seq, knob, cfg.gif_alpha_threshold)
                return codecs.write_gif(idx, pal, ti, timing.fps, max_bytes=rule.max_bytes, stop=stop)
        return _try(tgt, rule, st, make)

    budget = tries.left()
    out = tries.search(lambda: search.ladder_plan(len(levels), len(knobs), start, cfg.refine_steps, cfg.best_first,
                                                  budget), attempt)
    if out is None:
        return None
    found, (i, _) = out
    timing, _ = level(i)
    return found, lay, timing, 1.0, container


def _search_still(frame, tgt: Target, cfg: EncodeConfig, tries: _Tries, src_h, src_w):
    lay = layout(src_h, src_w, tgt.side, tgt.square)
    img = fit_frame(frame, lay)  # (canvas_h, canvas_w, 4)
    rules = {r.container: r for r in tgt.static_formats}
    candidates: list[tuple[FormatRule, dict, Callable[[], bytes]]] = []
    if "png" in rules:
        candidates.append((rules["png"], {"colors": "rgba"}, lambda: codecs.write_png(img)))
    if "webp" in rules:
        for q in cfg.webp_quality_ladder:
            candidates.append((rules["webp"], {"quality": q}, lambda q=q: codecs.write_webp([img], 0, quality=q)))
    if "png" in rules:
        for colors in cfg.palette_ladder:
            def make(colors=colors):
                idx, pal = palette.quantize_rgba([img], colors)
                return codecs.write_png(None, indices=idx[0], palette_rgba=pal)
            candidates.append((rules["png"], {"colors": colors}, make))

    def attempt(i: int, _stop: codecs.Stop) -> _Outcome:  # a still's candidate takes milliseconds: never stopped
        rule, st, make = candidates[i]
        return _try(tgt, rule, st, make)

    budget = tries.left()
    out = tries.search(lambda: search.first_fit_plan(len(candidates), budget), attempt)
    if out is None:
        return None
    found, i = out
    return found, lay, None, 1.0, candidates[i][0].container
