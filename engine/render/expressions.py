"""Expression scorers: face-mesh geometry (smile, surprise, anger, blink) and optional attribute classifiers.

Geometry scorers (the auxiliary "classifiers" of paper §2.3 for the
expressions CelebA has no labels for) read MediaPipe face-mesh landmarks
(:mod:`engine.face.landmarks`, indices 0..467 of the 478) of a rendered frame.

Conventions
-----------
* Input points are image pixels, x right, y **down** (``FaceLandmarks.xy``),
  shape (>=468, 2). They are first put into a *face frame*: origin at the
  midpoint of the outer eye corners (33, 263), x along 33 -> 263, y
  perpendicular pointing towards the chin, unit = the outer inter-ocular
  distance. Scores are therefore invariant to image translation, in-plane
  rotation (roll) and scale.
* Features (face-frame units): ``corner_lift`` = y of the inner-lip centre
  (13, 14) minus the mean y of the mouth corners (61, 291): positive when the
  corners sit above the lip centre. ``mouth_width`` = |291 - 61|.
  ``mouth_open`` = y(14) - y(13), inner lips. ``brow_raise`` = mean over both
  sides of y(upper eyelid 159 / 386) - y(mid brow 105 / 334).
  ``brow_gap`` = distance of the inner brow ends (107, 336).
  ``eye_open`` = mean eyelid gap (159-145, 386-374) over eye width
  (33-133, 263-362).
* Scores (unitless, higher = more of the expression; compare values of one
  scorer only, there is no calibrated zero):
  ``smile = corner_lift + 0.5 mouth_width``,
  ``surprise = mouth_open + brow_raise``,
  ``anger = -brow_raise - brow_gap`` (brows lowered and knitted),
  ``blink = -eye_open``.
* A frame without a detected face scores NaN (the fitter drops it).

Attribute classifiers (glasses, gender, age) are NVIDIA's CelebA-HQ
classifiers (:mod:`engine.nets.progan_classifier`), optional entries of the
weights manifest (``attribute_glasses`` = Eyeglasses, ``attribute_gender`` =
Male, ``attribute_age`` = Young). They read the FFHQ-aligned 256 px crop of
the rendered face (:func:`align_to_ffhq`: FFHQ's alignment is CelebA-HQ's,
the framing they were trained on), in groups of 4 as StyleGAN's metric ran
them. Scores come from their logits ``l``; a negative logit means the
attribute is present (see
:mod:`engine.nets.progan_classifier`): ``glasses = -l(eyeglasses)``,
``gender = -l(male)`` (higher = more masculine), ``age = +l(young)``
(higher = older).
:func:`classifier_scorers` returns the installed ones and, for the others, why
they are unavailable; only the available ones can be fitted and offered.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

# MediaPipe face-mesh indices ("left"/"right" as seen in the image).
EYE_OUTER = (33, 263)
EYE_INNER = (133, 362)
LID_UPPER = (159, 386)
LID_LOWER = (145, 374)
MOUTH_CORNERS = (61, 291)
LIP_INNER_UPPER, LIP_INNER_LOWER = 13, 14
BROW_MID = (105, 334)
BROW_INNER = (107, 336)

GEOMETRY_EXPRESSIONS: tuple[str, ...] = ("smile", "surprise", "anger", "blink")
CLASSIFIER_ATTRIBUTES: tuple[str, ...] = ("glasses", "gender", "age")


@dataclass(frozen=True)
class FaceFeatures:
    """Geometric measurements in face-frame units (see the module docstring)."""

    corner_lift: float
    mouth_width: float
    mouth_open: float
    brow_raise: float
    brow_gap: float
    eye_open: float

    def scores(self) -> dict[str, float]:
        return {
            "smile": self.corner_lift + 0.5 * self.mouth_width,
            "surprise": self.mouth_open + self.brow_raise,
            "anger": -self.brow_raise - self.brow_gap,
            "blink": -self.eye_open,
        }


def face_frame(xy: np.ndarray) -> np.ndarray:
    """Landmarks (N>=468, 2) pixels, y down -> the same points in the face frame (N, 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[0] < 468 or xy.shape[1] < 2:
        raise ValueError(f"expected face-mesh landmarks (>=468, 2), got {xy.shape}")
    xy = xy[:, :2]
    a, b = xy[EYE_OUTER[0]], xy[EYE_OUTER[1]]
    axis = b - a
    iod = float(np.hypot(*axis))
    if not iod > 1e-9:
        raise ValueError("degenerate landmarks: the outer eye corners coincide")
    ex = axis / iod
    ey = np.array([-ex[1], ex[0]])  # x right, y down: rotating +x by +90 deg points down
    rel = xy - (a + b) / 2
    return np.stack([rel @ ex, rel @ ey], axis=1) / iod


def face_features(xy: np.ndarray) -> FaceFeatures:
    p = face_frame(xy)
    lip_centre_y = (p[LIP_INNER_UPPER, 1] + p[LIP_INNER_LOWER, 1]) / 2
    corners = p[list(MOUTH_CORNERS)]
    eye_w = [np.linalg.norm(p[o] - p[i]) for o, i in zip(EYE_OUTER, EYE_INNER)]
    lid = [abs(p[lo, 1] - p[up, 1]) for up, lo in zip(LID_UPPER, LID_LOWER)]
    return FaceFeatures(
        corner_lift=float(lip_centre_y - corners[:, 1].mean()),
        mouth_width=float(np.linalg.norm(corners[1] - corners[0])),
        mouth_open=float(p[LIP_INNER_LOWER, 1] - p[LIP_INNER_UPPER, 1]),
        brow_raise=float(np.mean([p[lid_i, 1] - p[brow_i, 1] for lid_i, brow_i in zip(LID_UPPER, BROW_MID)])),
        brow_gap=float(np.linalg.norm(p[BROW_INNER[1]] - p[BROW_INNER[0]])),
        eye_open=float(np.mean([g / max(w, 1e-9) for g, w in zip(lid, eye_w)])),
    )


def geometry_scores(xy: np.ndarray) -> dict[str, float]:
    """Scores of every geometry expression for one face's landmarks (pixels, y down)."""
    return face_features(xy).scores()


def detect_faces(frames: Sequence[np.ndarray], detector) -> list:
    """The first face (``FaceLandmarks``) of each RGB uint8 frame, or None where none is found.

    ``detector`` is an ``engine.face.landmarks.LandmarkDetector`` (the caller owns it).
    """
    out = []
    for f in frames:
        faces = detector.detect(np.ascontiguousarray(f[..., :3]), max_faces=1)
        out.append(faces[0] if faces else None)
    return out


def geometry_from_faces(faces: Sequence, names: Sequence[str] = GEOMETRY_EXPRESSIONS) -> dict[str, np.ndarray]:
    """Geometry scores [F] per name for detected faces (None -> NaN)."""
    unknown = set(names) - set(GEOMETRY_EXPRESSIONS)
    if unknown:
        raise ValueError(f"unknown geometry expressions {sorted(unknown)}; known: {GEOMETRY_EXPRESSIONS}")
    out = {n: np.full(len(faces), np.nan) for n in names}
    for i, face in enumerate(faces):
        if face is None:
            continue
        s = geometry_scores(face.xy)
        for n in names:
            out[n][i] = s[n]
    return out


def score_frames(frames: Sequence[np.ndarray], detector, names: Sequence[str] = GEOMETRY_EXPRESSIONS) -> dict[str, np.ndarray]:
    """Geometry scores [F] per name for RGB uint8 frames (H, W, 3); NaN where no face is found."""
    return geometry_from_faces(detect_faces(frames, detector), names)


def images_to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """NCHW images in [-1, 1] -> RGB uint8 (H, W, 3) arrays."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(x[i]) for i in range(x.shape[0])]


# ----------------------------------------------------------------------------- attribute classifiers

class ImageScorer(Protocol):
    """An attribute classifier: face images [B,3,H,W] in [-1,1] (FFHQ-aligned crops of frontal renders) -> scores [B]."""

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


ClassifierLoader = Callable[[pathlib.Path], ImageScorer]

# attribute -> (sign applied to the classifier's logit, what the score means)
CLASSIFIER_SCORES: dict[str, tuple[float, str]] = {
    "glasses": (-1.0, "minus the eyeglasses logit (higher = glasses)"),
    "gender": (-1.0, "minus the male logit (higher = more masculine)"),
    "age": (1.0, "the young logit (higher = older)"),
}


class ProGANAttributeScorer:
    """One CelebA-HQ classifier as an :class:`ImageScorer` (sign per :data:`CLASSIFIER_SCORES`)."""

    def __init__(self, name: str, net: torch.nn.Module) -> None:
        self.name = name
        self.net = net
        self.sign, self.meaning = CLASSIFIER_SCORES[name]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from engine.nets.progan_classifier import score_in_groups

        net = self.net.to(images.device)
        return self.sign * score_in_groups(net, images.float())


def ffhq_matrix(face, size: int) -> np.ndarray:
    """(2, 3) similarity from a frame's pixels to the FFHQ-aligned crop of side ``size`` of its
    face: the recipe's oriented square (:func:`engine.face.align.ffhq_quad`), which is
    CelebA-HQ's alignment, the framing the attribute classifiers were trained on.

    In :mod:`engine.avatar.warp`'s convention (pixel centres at +0.5); the square's corners, like the
    landmarks, put pixel centres at integers and bound the crop's outer edges."""
    from engine.face.align import ffhq_anchor_points, ffhq_quad

    quad, qsize = ffhq_quad(ffhq_anchor_points(face))
    upper_left, lower_left, upper_right = quad[0], quad[1], quad[3]
    rows = np.stack([upper_right - upper_left, lower_left - upper_left]) * (size / qsize**2)  # [2,2]
    return np.concatenate([rows, -(rows @ (upper_left + 0.5))[:, None]], axis=1)


def align_to_ffhq(images: torch.Tensor, faces: Sequence, size: int = 256) -> tuple[torch.Tensor, list[int]]:
    """FFHQ-aligned crops [K,3,size,size] of the images [B,3,H,W] that have a usable face (not
    None, not degenerate), and their indices; sampled at twice the size and box-filtered, so a
    reduction does not alias."""
    from engine.avatar.warp import warp_to_frame

    keep, mats = [], []
    for i, face in enumerate(faces):
        if face is None:
            continue
        try:
            mats.append(ffhq_matrix(face, 2 * size))
        except ValueError:  # eyes and mouth collapsed, or a face a few pixels wide
            continue
        keep.append(i)
    if not keep:
        return images.new_zeros(0, images.shape[1], size, size), keep
    warped, _ = warp_to_frame(images[keep].float(), torch.tensor(np.stack(mats), dtype=torch.float32), 2 * size)
    return torch.nn.functional.avg_pool2d(warped, 2), keep


def load_attribute_scorer(name: str, folder: pathlib.Path) -> ImageScorer:
    from engine.nets.progan_classifier import ProGANClassifier

    return ProGANAttributeScorer(name, ProGANClassifier.from_pretrained(folder))


def classifier_scorers(weights_dir: pathlib.Path | str,
                       loaders: dict[str, ClassifierLoader] | None = None) -> tuple[dict[str, ImageScorer], dict[str, str]]:
    """Installed attribute classifiers and, for each unusable one, the reason.

    A classifier lives in ``<weights_dir>/attribute_<name>/`` (what ``emoji3d
    weights convert attribute_<name>`` writes). ``loaders`` overrides how an
    attribute is built from that folder (default: the CelebA-HQ classifier).
    A folder that fails to load (corrupt, wrong layout) is reported, not raised.
    """
    from emoji3d.errors import WeightsError

    weights_dir = pathlib.Path(weights_dir)
    available: dict[str, ImageScorer] = {}
    missing: dict[str, str] = {}
    for name in CLASSIFIER_ATTRIBUTES:
        folder = weights_dir / f"attribute_{name}"
        load = (loaders or {}).get(name) or (lambda f, n=name: load_attribute_scorer(n, f))
        if not (folder / "config.json").is_file():
            missing[name] = (f"no classifier installed at {folder} (run `emoji3d weights fetch attribute_{name} "
                             f"--convert`)")
            continue
        try:
            available[name] = load(folder)
        except WeightsError as exc:
            missing[name] = f"classifier at {folder} is unusable: {exc}"
    return available, missing
