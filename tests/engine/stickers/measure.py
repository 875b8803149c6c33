"""How close decoded sticker frames are to the frames they were encoded from (tests and bench)."""
from __future__ import annotations

import numpy as np


def premultiplied_psnr(decoded: list[np.ndarray], sources: list[np.ndarray]) -> float:
    """PSNR (dB) of decoded RGBA uint8 frames against their sources, over premultiplied colour and
    alpha: colour under a transparent pixel counts for nothing, as on screen."""
    def premultiplied(f: np.ndarray) -> np.ndarray:
        f = f.astype(np.float64)
        return np.concatenate([f[..., :3] * f[..., 3:] / 255.0, f[..., 3:]], axis=-1)

    mse = np.mean([np.mean((premultiplied(d) - premultiplied(s)) ** 2) for d, s in zip(decoded, sources, strict=True)])
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))
