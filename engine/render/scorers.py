"""Frame scorers for fitting expression boundaries: render batch in, one score per frame and attribute out.

A scorer is an :data:`engine.render.edits.FrameScorer`: ``[B, 3, H, W]`` renders
in [-1, 1] -> ``{attribute: float array [B]}``, NaN where a frame cannot be
scored (no face found). Geometry expressions come from MediaPipe face-mesh
landmarks (:mod:`engine.render.expressions`), glasses / gender / age from the
CelebA-HQ attribute classifiers read on the FFHQ-aligned crop.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from engine.render import edits
from engine.render import expressions

CLASSIFIER_SCORER = "celebahq-classifier"


def face_scorer(detector, geometry_names: Sequence[str], classifiers: dict[str, expressions.ImageScorer]) -> edits.FrameScorer:
    """Renders [B,3,H,W] in [-1,1] of a generator that draws faces: one face-mesh detection per
    frame gives the geometry scores and the FFHQ-aligned crop (CelebA-HQ's framing) that the
    attribute classifiers read. NaN where no face is found."""

    def score(images: torch.Tensor) -> dict[str, np.ndarray]:
        faces = expressions.detect_faces(expressions.images_to_uint8(images), detector)
        out = expressions.geometry_from_faces(faces, geometry_names) if geometry_names else {}
        aligned, kept = expressions.align_to_ffhq(images, faces) if classifiers else (None, [])
        for name, clf in classifiers.items():
            values = np.full(len(faces), np.nan)
            if kept:
                values[kept] = clf(aligned).detach().cpu().numpy()
            out[name] = values
        return out

    return score


def proxy_scores(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Test-only stand-ins for slim random weights: image statistics of fixed regions of the frontal render.

    smile: mean brightness of the lower-centre region; surprise: its contrast
    (std); anger: minus the brightness of the upper band; blink: minus the
    contrast of the eye band. Values are per image [B]; they are NOT
    expressions.
    """
    x = images.detach().float().clamp(-1, 1).mean(1)  # [B,H,W] grey
    h, w = x.shape[-2:]
    lower = x[:, int(0.6 * h):int(0.85 * h), int(0.3 * w):int(0.7 * w)].reshape(x.shape[0], -1)
    upper = x[:, int(0.15 * h):int(0.35 * h), :].reshape(x.shape[0], -1)
    eyes = x[:, int(0.35 * h):int(0.5 * h), int(0.2 * w):int(0.8 * w)].reshape(x.shape[0], -1)
    return {"smile": lower.mean(1).cpu().numpy(), "surprise": lower.std(1).cpu().numpy(),
            "anger": (-upper.mean(1)).cpu().numpy(), "blink": (-eyes.std(1)).cpu().numpy()}


def combined_scorer(geometry: edits.FrameScorer | None, geometry_names: Sequence[str],
                    classifiers: dict[str, expressions.ImageScorer]) -> edits.FrameScorer:
    """Slim (test-only) renders, which show no face: ``geometry`` (the proxy statistics) for the
    geometry names, each classifier on the whole render."""

    def score(images: torch.Tensor) -> dict[str, np.ndarray]:
        out = {n: v for n, v in geometry(images).items() if n in geometry_names} if geometry and geometry_names else {}
        for name, clf in classifiers.items():
            out[name] = clf(images).detach().cpu().numpy()
        return out

    return score
