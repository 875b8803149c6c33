"""Colour quantization shared by every frame of an animation.

One palette for the whole sequence (no per-frame palette flicker). Frames are
stacked into one tall image and quantized by Pillow in C, so the mapping of
every pixel is fast. Conventions: frames RGBA uint8 ``(H, W, 4)``; indices
``(H, W)`` uint8.

* ``quantize_rgba`` (APNG / indexed PNG): Pillow FASTOCTREE on RGBA to
  ``colors - 1`` entries, plus one reserved fully transparent entry (last
  index) that every input pixel with alpha 0 is forced to. Transparent input
  pixels therefore stay exactly transparent.
* ``quantize_gif``: GIF has 1-bit transparency. Pixels with alpha below
  ``alpha_threshold`` become the transparent index (last); the rest are
  quantized (MEDIANCUT on RGB) to ``colors - 1`` opaque entries.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def _stack(frames: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(frames, axis=0)  # (n*H, W, 4)


def quantize_rgba(frames: list[np.ndarray], colors: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Returns ``(indices per frame, palette (K, 4) uint8)`` with ``K <= colors``."""
    if not 2 <= colors <= 256:
        raise ValueError(f"colors must be in 2..256, got {colors}")
    h = frames[0].shape[0]
    tall = _stack(frames)
    q = Image.fromarray(tall, "RGBA").quantize(colors - 1, method=Image.Quantize.FASTOCTREE)
    pal = np.array(q.getpalette("RGBA"), np.uint8).reshape(-1, 4)[: colors - 1]  # (K-1, 4)
    idx = np.asarray(q).copy()
    clear = len(pal)
    idx[tall[..., 3] == 0] = clear
    pal = np.concatenate([pal, np.zeros((1, 4), np.uint8)], axis=0)
    return [idx[i * h : (i + 1) * h] for i in range(len(frames))], pal


def quantize_gif(frames: list[np.ndarray], colors: int, alpha_threshold: int = 128) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Returns ``(indices per frame, palette (K, 3) uint8, transparent index)``."""
    if not 2 <= colors <= 256:
        raise ValueError(f"colors must be in 2..256, got {colors}")
    h = frames[0].shape[0]
    tall = _stack(frames)
    opaque = tall[..., 3] >= alpha_threshold
    rgb = tall[..., :3].copy()
    if opaque.any():
        # fill transparent pixels with an opaque colour so they do not take palette entries
        rgb[~opaque] = rgb[opaque][0]
    q = Image.fromarray(rgb, "RGB").quantize(colors - 1, method=Image.Quantize.MEDIANCUT)
    pal = np.array(q.getpalette("RGB"), np.uint8).reshape(-1, 3)[: colors - 1]
    idx = np.asarray(q).copy()
    t_index = len(pal)
    idx[~opaque] = t_index
    pal = np.concatenate([pal, np.zeros((1, 3), np.uint8)], axis=0)
    return [idx[i * h : (i + 1) * h] for i in range(len(frames))], pal, t_index
