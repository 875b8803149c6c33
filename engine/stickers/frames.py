"""Frame preparation for the encoders: validation, fit-to-canvas, retiming.

Conventions
-----------
* A frame is an RGBA ``uint8`` array of shape ``(H, W, 4)``, straight (not
  premultiplied) alpha. All frames of a sequence share one shape.
* Fitting: the content is resized with its aspect ratio kept, using Lanczos on
  *premultiplied* colour (float planes) so no dark fringe appears at
  transparent edges. Non-square targets (Telegram 512 px): the long side
  becomes exactly ``side``, the short side is scaled to match (rounded, at
  least 1 px) and, for WEBM only, padded to an even number with a transparent
  column/row. Square targets: the content fits inside ``side x side`` and is
  centred on a transparent canvas (letterbox). ``content_scale < 1`` shrinks
  the content further inside the same canvas (transparent margin), which is
  the encoder's last resort when nothing else fits.
* Colour under fully transparent pixels is set to 0: it is invisible and
  encoding noise there only costs bytes.
* Retiming is explicit: frame ``k`` of the output is shown at ``k / fps_out``
  and takes the latest input frame at or before that time (``speed`` > 1
  compresses the timeline instead of trimming it; see :func:`retime` for the
  policies). The output never has more frames per second than the input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.stickers.errors import StickerInputError

MAX_INPUT_FRAMES = 2000
MAX_INPUT_SIDE = 4096


def validate_frames(frames: list[np.ndarray], fps: float) -> tuple[int, int]:
    """Check the encoder input; returns ``(H, W)``. Raises StickerInputError with the exact problem."""
    if not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise StickerInputError(f"fps must be a positive finite number, got {fps!r}")
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise StickerInputError("no frames given")
    if len(frames) > MAX_INPUT_FRAMES:
        raise StickerInputError(f"{len(frames)} frames given; at most {MAX_INPUT_FRAMES} are accepted")
    first = frames[0]
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray):
            raise StickerInputError(f"frame {i} is a {type(f).__name__}, expected a numpy array")
        if f.dtype != np.uint8:
            raise StickerInputError(f"frame {i} has dtype {f.dtype}, expected uint8")
        if f.ndim != 3 or f.shape[2] != 4:
            raise StickerInputError(f"frame {i} has shape {f.shape}, expected (H, W, 4) RGBA")
        if f.shape != first.shape:
            raise StickerInputError(f"frame {i} has shape {f.shape}, frame 0 has {first.shape}; all frames must match")
    h, w = first.shape[:2]
    if h < 1 or w < 1 or max(h, w) > MAX_INPUT_SIDE:
        raise StickerInputError(f"frame size {w}x{h} is outside 1..{MAX_INPUT_SIDE} px")
    return h, w


@dataclass(frozen=True)
class Layout:
    """Where the content lands: canvas ``(width, height)``, content size and top-left offset."""

    canvas_w: int
    canvas_h: int
    content_w: int
    content_h: int
    left: int
    top: int


def layout(src_h: int, src_w: int, side: int, square: bool, *, content_scale: float = 1.0, even: bool = False) -> Layout:
    """Compute the canvas and content placement for a target (see module docstring)."""
    if not 0 < content_scale <= 1:
        raise ValueError(f"content_scale must be in (0, 1], got {content_scale}")
    s = side / max(src_h, src_w)
    full_w = max(1, round(src_w * s))
    full_h = max(1, round(src_h * s))
    if square:
        cw, ch = side, side
    else:
        cw, ch = full_w, full_h
        if even:
            cw += cw % 2
            ch += ch % 2
    content_w = max(1, round(full_w * content_scale))
    content_h = max(1, round(full_h * content_scale))
    return Layout(cw, ch, content_w, content_h, (cw - content_w) // 2, (ch - content_h) // 2)


def fit_frame(frame: np.ndarray, lay: Layout) -> np.ndarray:
    """Resize one RGBA frame into its canvas; returns ``(canvas_h, canvas_w, 4)`` uint8."""
    h, w = frame.shape[:2]
    if (w, h) == (lay.content_w, lay.content_h):
        content = frame
    else:
        content = _resize_premultiplied(frame, lay.content_w, lay.content_h)
    out = np.zeros((lay.canvas_h, lay.canvas_w, 4), np.uint8)  # transparent canvas
    out[lay.top : lay.top + lay.content_h, lay.left : lay.left + lay.content_w] = content
    return clear_transparent(out)


def _resize_premultiplied(frame: np.ndarray, w: int, h: int) -> np.ndarray:
    """Lanczos resize of premultiplied colour in float32, then back to straight RGBA uint8.

    Float planes (Pillow mode ``F``) avoid the 8-bit premultiplied round trip, which
    turns the colour of alpha-1..3 edge pixels into noise (costly to encode, and
    faintly visible).
    """
    a = frame[..., 3].astype(np.float32) / 255.0  # (H, W)
    planes = [frame[..., c].astype(np.float32) * a for c in range(3)] + [a * 255.0]
    size = (w, h)
    res = [np.asarray(Image.fromarray(p, "F").resize(size, Image.Resampling.LANCZOS)) for p in planes]
    alpha = np.clip(res[3], 0.0, 255.0)  # (h, w)
    out = np.zeros((h, w, 4), np.uint8)
    safe = np.maximum(alpha / 255.0, 1e-6)
    for c in range(3):
        out[..., c] = np.clip(res[c] / safe, 0.0, 255.0) + 0.5
    out[..., 3] = alpha + 0.5
    return out


def clear_transparent(frame: np.ndarray) -> np.ndarray:
    """Zero the colour of fully transparent pixels (returns a new array)."""
    out = frame.copy()
    out[out[..., 3] == 0, :3] = 0
    return out


@dataclass(frozen=True)
class Timing:
    """The retimed sequence: ``indices[k]`` is the input frame shown as output frame ``k``."""

    indices: tuple[int, ...]
    fps: float
    speed: float  # > 1: the timeline was compressed
    trimmed_s: float  # seconds of input dropped from the end

    @property
    def duration_s(self) -> float:
        return len(self.indices) / self.fps


DURATION_POLICIES = ("auto", "trim", "speedup")


def retime(n_in: int, fps_in: float, fps_out: float, max_duration_s: float | None, policy: str = "auto",
           max_auto_speedup: float = 1.25) -> Timing:
    """Pick input frames for an output rate and duration cap.

    ``policy``: ``trim`` cuts the end; ``speedup`` compresses the whole timeline
    (a loop stays seamless); ``auto`` speeds up when that needs at most
    ``max_auto_speedup`` (e.g. a 3.0 s loop played in 2.9 s) and trims otherwise.
    """
    if policy not in DURATION_POLICIES:
        raise ValueError(f"duration policy must be one of {DURATION_POLICIES}, got {policy!r}")
    fps_out = min(fps_out, fps_in)
    dur_in = n_in / fps_in
    speed, trimmed, dur = 1.0, 0.0, dur_in
    if max_duration_s is not None and dur_in > max_duration_s:
        if policy == "auto":
            policy = "speedup" if dur_in / max_duration_s <= max_auto_speedup else "trim"
        if policy == "trim":
            dur, trimmed = max_duration_s, dur_in - max_duration_s
        else:
            dur, speed = max_duration_s, dur_in / max_duration_s
    n_out = max(1, math.floor(dur * fps_out + 1e-6))
    idx = tuple(min(n_in - 1, math.floor(k / fps_out * speed * fps_in + 1e-6)) for k in range(n_out))
    return Timing(idx, fps_out, speed, trimmed)
