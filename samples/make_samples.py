"""Regenerate the bundled demo inputs (run once; outputs are committed).

- ``samples/selfie.jpg``: NASA's public-domain portrait of astronaut Eileen
  Collins, as shipped by scikit-image (``skimage.data.astronaut()``).
- ``styles/toon/exemplar.png``: a flat-shaded cartoon rendering of the same
  kind of portrait (colour quantisation + smoothed regions + ink outlines), so
  the demo house style needs no third-party artwork. It is a stand-in for a
  real artist's exemplar, which is what a community would upload.
"""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent


def cartoonize(rgb: np.ndarray, colours: int = 8, seed: int = 0) -> np.ndarray:
    """Edge-preserving smoothing, a small warm palette and thin ink lines."""
    import cv2
    from sklearn.cluster import KMeans

    smooth = rgb
    for _ in range(6):
        smooth = cv2.bilateralFilter(smooth, 9, 40, 7)
    smooth = cv2.stylization(smooth, sigma_s=60, sigma_r=0.45)
    pixels = smooth.reshape(-1, 3).astype(np.float32)
    km = KMeans(n_clusters=colours, n_init=2, random_state=seed).fit(pixels[::7])
    centres = km.cluster_centers_
    grey = centres.mean(axis=1, keepdims=True)
    centres = np.clip(grey + 1.4 * (centres - grey) + np.array([10, 4, -4]), 0, 255)
    flat = centres[km.predict(pixels)].reshape(rgb.shape).astype(np.uint8)
    flat = cv2.medianBlur(flat, 5)
    grey_img = cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY)
    edges = cv2.adaptiveThreshold(cv2.medianBlur(grey_img, 7), 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    ink = (edges == 0)[..., None]
    return np.where(ink, (flat * 0.25).astype(np.uint8), flat)


def main() -> None:
    from skimage import data

    portrait = data.astronaut()
    Image.fromarray(portrait).save(REPO / "samples" / "selfie.jpg", quality=92)
    Image.fromarray(cartoonize(portrait)).save(REPO / "styles" / "toon" / "exemplar.png", optimize=True)


if __name__ == "__main__":
    main()
