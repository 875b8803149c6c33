"""Synthetic sticker content for the tests and the bench (RGBA uint8 frames (H, W, 4)).

Easy: ``cartoon`` (a shaded disc with a soft edge drifting over a transparent
background, like a rendered head). Real texture: ``portrait`` (a photographed head
and shoulders, ``skimage.data.astronaut()``, cut out by a soft elliptical matte and
turning to and fro: what a real avatar's sticker asks of an encoder). Hard:
``noise`` (full-frame random colour, opaque or with random alpha), ``motion``
(random opaque blocks that jump every frame), ``transparent`` (nothing visible).
RNG is passed in.
"""
from __future__ import annotations

import numpy as np


def cartoon(n: int, h: int, w: int, *, period: int = 60) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 0.32 * min(h, w)
    out = []
    for k in range(n):
        t = 2 * np.pi * k / period
        cx = w / 2 + 0.12 * w * np.sin(t)
        cy = h / 2 + 0.05 * h * np.cos(t)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r  # 1 at the rim
        light = np.clip(1.15 - 0.6 * np.sqrt(((xx - cx + 0.3 * r) / r) ** 2 + ((yy - cy + 0.3 * r) / r) ** 2), 0.2, 1.0)
        f = np.zeros((h, w, 4), np.uint8)
        f[..., 0] = np.clip(250 * light, 0, 255)
        f[..., 1] = np.clip(190 * light, 0, 255)
        f[..., 2] = np.clip(120 * light + 20 * np.sin(t), 0, 255)
        f[..., 3] = np.clip((1.0 - d) * r * 0.8, 0, 1) * 255  # ~1 px soft rim
        f[f[..., 3] == 0, :3] = 0
        out.append(f)
    return out


def portrait(n: int, h: int, w: int, *, period: int = 30, degrees: float = 8.0) -> list[np.ndarray]:
    """The astronaut's head and shoulders on a transparent background, rotating by up to
    ``degrees`` and sliding sideways over ``period`` frames (one loop)."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut()).crop((96, 16, 416, 336))  # 320 px around the head
    yy, xx = np.mgrid[0:320, 0:320].astype(np.float32)
    edge = np.sqrt(((xx - 160) / 118) ** 2 + ((yy - 172) / 150) ** 2)  # 1 on the ellipse
    matte = Image.fromarray((np.clip((1.0 - edge) * 40, 0, 1) * 255).astype(np.uint8))  # ~3 px soft rim
    head = photo.convert("RGBA")
    head.putalpha(matte)
    out = []
    for k in range(n):
        t = 2 * np.pi * k / period
        turned = head.rotate(degrees * np.sin(t), resample=Image.Resampling.BICUBIC,
                             translate=(round(20 * np.sin(t)), 0))
        f = np.asarray(turned.resize((w, h), Image.Resampling.LANCZOS)).copy()
        f[f[..., 3] == 0, :3] = 0
        out.append(f)
    return out


def noise(n: int, h: int, w: int, rng: np.random.Generator, *, alpha_noise: bool = False) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        f = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        if not alpha_noise:
            f[..., 3] = 255
        out.append(f)
    return out


def motion(n: int, h: int, w: int, rng: np.random.Generator, *, blocks: int = 12) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        f = np.zeros((h, w, 4), np.uint8)
        for _ in range(blocks):
            bh, bw = int(rng.integers(2, max(3, h // 3))), int(rng.integers(2, max(3, w // 3)))
            y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            f[y : y + bh, x : x + bw, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
            f[y : y + bh, x : x + bw, 3] = 255
        out.append(f)
    return out


def transparent(n: int, h: int, w: int) -> list[np.ndarray]:
    return [np.zeros((h, w, 4), np.uint8) for _ in range(n)]
