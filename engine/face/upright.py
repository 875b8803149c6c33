"""Find the face whatever the photo's in-plane rotation, and turn the photo so the face is upright.

MediaPipe's face mesh follows a tilted head, but a face lying on its side or
upside down (a phone photo without its EXIF orientation) gets landmarks that
are wrong, yet look like a face. Two facts decide:

- **Confirmation.** The FFHQ crop of a correctly found face is upright, so a
  second landmark pass on a quick 512 px FFHQ crop finds the same anchors
  (eye centres, mouth corners) again: measured on the astronaut turned by 0-330
  degrees, at most 7 px apart in that crop. Landmarks of an upside-down or
  sideways face do not survive the second pass (27-150 px apart, or no face).
- **Search.** When the photo as given is not confirmed, it is tried turned by
  90, 180 and 270 degrees (exact ``numpy.rot90``, no resampling; each try is
  one landmark pass plus one confirmation, 5-30 ms); the first confirmed
  orientation wins. Without a confirmed face, a face found in the photo's own
  orientation is used as found (what MediaPipe alone would give); unconfirmed
  faces in turned orientations are dropped (MediaPipe "sees" faces in textures
  turned sideways, e.g. ``skimage.data.coffee()`` turned 270 degrees), and the
  small-face window search runs, in the photo's own orientation only.

The **roll** is the angle of the FFHQ square's x axis (the eye line bent by the
eye-mouth line; :func:`engine.face.align.ffhq_quad`), counter-clockwise as seen.
The photo is turned by minus the roll, split into a quarter-turn part (exact)
and a rest in [-45, 45] degrees. A rest within ``keep_roll_degrees`` (default
10) is kept, as EG3D's in-the-wild recipe keeps it (its crop is never rotated,
and the reference fixtures are made that way); a larger rest is turned away
too (Pillow bicubic, the canvas grown so nothing is cut off, black outside the
photo as in the recipe). So a photo turned by 90, 180 or 270 degrees gives
exactly the crops of the upright photo, and one turned by 30 degrees gives
crops whose eye line is level.

Conventions
- Images are RGB uint8 (H, W, 3); points are pixels with centres at integers,
  x right, y down, as in :mod:`engine.face.align`.
- ``to_upright`` is the 2x3 affine from photo pixels to upright-image pixels (a
  rotation about the image centre plus the shift of the grown canvas). A
  landmark's z (MediaPipe depth in pixels) is unchanged by it.
- Angles are degrees, counter-clockwise as a person sees the image.

No torch here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.face import align as fa
from engine.face.landmarks import FaceLandmarks, LandmarkDetector

CONFIRM_CROP_PX = 512  # side of the quick FFHQ crop of the confirmation pass
CONFIRM_MAX_PX = 16.0  # anchors of a confirmed face move at most this much in that crop (measured <= 7)


@dataclass(frozen=True)
class UprightFace:
    """The chosen face, in the upright image (see the module docstring)."""

    image: np.ndarray  # (H', W', 3) uint8: the photo turned upright (the photo itself when not turned)
    to_upright: np.ndarray  # (2, 3) photo pixels -> upright-image pixels
    turn_degrees: float  # counter-clockwise turn applied to the photo, in [0, 360)
    face: FaceLandmarks  # the chosen face, upright-image pixels
    n_faces: int  # faces found in the orientation that was used
    anchors: np.ndarray  # (4, 2) FFHQ anchors (eye centres, mouth corners), upright-image pixels
    confirmed: bool  # the second landmark pass agreed (see the module docstring)


# ---------------------------------------------------------------- geometry


def turn_matrix(degrees: float, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The 2x3 map turning an image of ``size`` (W, H) counter-clockwise by ``degrees`` about its
    centre onto a canvas grown to hold all of it, and that canvas's (W', H'). Multiples of 90
    degrees are exact and match ``numpy.rot90(img, k)``."""
    w, h = size
    quarter = degrees / 90.0
    if abs(quarter - round(quarter)) < 1e-9:
        k = int(round(quarter)) % 4
        c, s = ((1, 0), (0, 1), (-1, 0), (0, -1))[k]
        new = (w, h) if k % 2 == 0 else (h, w)
    else:
        a = math.radians(degrees)
        c, s = math.cos(a), math.sin(a)
        new = (int(math.ceil(abs(c) * w + abs(s) * h - 1e-6)), int(math.ceil(abs(s) * w + abs(c) * h - 1e-6)))
    # counter-clockwise as seen, with y pointing down
    lin = np.array([[c, s], [-s, c]], dtype=np.float64)
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    new_centre = np.array([(new[0] - 1) / 2.0, (new[1] - 1) / 2.0])
    return np.hstack([lin, (new_centre - lin @ centre)[:, None]]), new


def turn_image(rgb: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` turned counter-clockwise by ``degrees`` (see :func:`turn_matrix`) and the matrix.
    Quarter turns are exact; other angles are resampled bicubically, black outside the photo."""
    h, w = rgb.shape[:2]
    matrix, (nw, nh) = turn_matrix(degrees, (w, h))
    quarter = degrees / 90.0
    if abs(quarter - round(quarter)) < 1e-9:
        return np.ascontiguousarray(np.rot90(rgb, int(round(quarter)) % 4)), matrix
    # Pillow's AFFINE maps output to input with pixel centres at +0.5.
    inv = fa.compose(fa.translate_matrix(0.5, 0.5), fa.compose(fa.invert(matrix), fa.translate_matrix(-0.5, -0.5)))
    out = Image.fromarray(rgb).transform((nw, nh), Image.AFFINE, tuple(inv.flatten()), Image.BICUBIC, fillcolor=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8), matrix


def map_landmarks(face: FaceLandmarks, matrix: np.ndarray, image_size: tuple[int, int]) -> FaceLandmarks:
    """``face`` in another frame: x, y through the 2x3 ``matrix`` (a rotation + shift), z kept."""
    pts = face.points.copy()
    pts[:, :2] = fa.apply(matrix, face.points[:, :2])
    return FaceLandmarks(points=pts, image_size=image_size)


def roll_degrees(anchors: np.ndarray) -> float:
    """Counter-clockwise angle (degrees, as seen) of the FFHQ square's x axis for 4 anchors;
    0 for a face too small to have a square (it is refused as too small later)."""
    try:
        quad, _ = fa.ffhq_quad(anchors)
    except ValueError:
        return 0.0
    x_axis = quad[3] - quad[0]  # UL -> UR
    return math.degrees(math.atan2(-x_axis[1], x_axis[0]))


# ---------------------------------------------------------------- search


@dataclass(frozen=True)
class _Candidate:
    quarter: int  # the photo was turned by 90 * quarter degrees
    image: np.ndarray
    faces: list
    first: np.ndarray  # (4, 2) anchors of the first pass
    refined: np.ndarray  # (4, 2) anchors of the second pass, mapped back (== first when it found nothing)
    deviation: float  # anchors' largest move in the quick crop, px (inf: no second face)


def second_pass(image: np.ndarray, face: FaceLandmarks, detector: LandmarkDetector,
                size: int = CONFIRM_CROP_PX) -> tuple[np.ndarray, float]:
    """FFHQ anchors (4, 2) of ``face`` from a second landmark pass on a quick ``size`` px FFHQ crop,
    mapped back to ``image``, and how far they moved (largest distance, crop pixels). When the crop
    yields no face (or the anchors are degenerate) the first-pass anchors come back with ``inf``.

    On the upright, normalised crop the mesh is far more repeatable than on the raw photo
    (measured on the astronaut under rotation, scale and shift: the 1024 crop moves by <= 2 px
    instead of up to 6 px)."""
    first = fa.ffhq_anchor_points(face)
    try:
        quick = fa.ffhq_crop(image, first, fa.FfhqCropConfig(output_size=size, transform_size=size))
    except ValueError:  # degenerate anchors (a face a few pixels wide)
        return first, math.inf
    again = detector.detect(quick.image, 1)
    if not again:
        return first, math.inf
    second = fa.ffhq_anchor_points(again[0])  # quick-crop pixels
    deviation = float(np.linalg.norm(fa.apply(quick.matrix, first) - second, axis=1).max())
    return fa.apply(fa.invert(quick.matrix), second), deviation


def _confirm(image: np.ndarray, faces: list, quarter: int, detector: LandmarkDetector) -> _Candidate:
    refined, deviation = second_pass(image, faces[0], detector)
    return _Candidate(quarter, image, faces, fa.ffhq_anchor_points(faces[0]), refined, deviation)


def _search(rgb: np.ndarray, detector: LandmarkDetector, max_faces: int) -> _Candidate | None:
    tried: list[_Candidate] = []
    for quarter in range(4):
        image = rgb if quarter == 0 else np.ascontiguousarray(np.rot90(rgb, quarter))
        faces = detector.detect(image, max_faces)
        if not faces:
            continue
        cand = _confirm(image, faces, quarter, detector)
        if cand.deviation <= CONFIRM_MAX_PX:
            return cand
        tried.append(cand)
    if tried and tried[0].quarter == 0:  # unconfirmed in the photo's own orientation: used as found
        return tried[0]
    # Nothing in the photo's orientation (an unconfirmed face in a turned one is taken for a false
    # detection: MediaPipe sees faces in textures turned sideways): look for a small upright face.
    faces = detector.detect_with_search(rgb, max_faces)
    return _confirm(rgb, faces, 0, detector) if faces else None


def _nearest(faces: list, target: FaceLandmarks) -> FaceLandmarks | None:
    """The face in ``faces`` whose box centre is closest to ``target``'s, if inside ``target``'s box."""
    x0, y0, x1, y1 = target.box()
    best, best_d = None, math.inf
    for f in faces:
        fx0, fy0, fx1, fy1 = f.box()
        cx, cy = 0.5 * (fx0 + fx1), 0.5 * (fy0 + fy1)
        d = math.hypot(cx - 0.5 * (x0 + x1), cy - 0.5 * (y0 + y1))
        if x0 <= cx <= x1 and y0 <= cy <= y1 and d < best_d:
            best, best_d = f, d
    return best


def find_upright_face(rgb: np.ndarray, detector: LandmarkDetector, max_faces: int = 4, *,
                      refine: bool = True, keep_roll_degrees: float = 10.0) -> UprightFace | None:
    """The largest face of ``rgb`` in an upright image (see the module docstring); None when no
    face is found. ``refine``: the anchors are those of the second pass (else the first)."""
    cand = _search(rgb, detector, max_faces)
    if cand is None:
        return None
    anchors_k = cand.refined if refine else cand.first
    h, w = rgb.shape[:2]
    to_k, _ = turn_matrix(90.0 * cand.quarter, (w, h))
    # turn the photo by minus the face's roll in the photo: 90 * quarter in the search, then -roll in that frame
    total = 90.0 * cand.quarter - roll_degrees(anchors_k)
    quarter = int(round(total / 90.0)) % 4
    rest = total - 90.0 * round(total / 90.0)  # in [-45, 45]
    turn = 90.0 * quarter + (rest if abs(rest) > keep_roll_degrees else 0.0)
    if turn == 90.0 * cand.quarter:  # the searched frame is already upright: reuse its landmarks
        return UprightFace(cand.image, to_k, float(turn % 360.0), cand.faces[0], len(cand.faces), anchors_k,
                           cand.deviation <= CONFIRM_MAX_PX)
    image, to_upright = turn_image(rgb, turn)
    size = (image.shape[1], image.shape[0])
    k_to_upright = fa.compose(to_upright, fa.invert(to_k))
    mapped = map_landmarks(cand.faces[0], k_to_upright, size)
    faces = detector.detect(image, max_faces)
    face = _nearest(faces, mapped)
    if face is None:  # the turned photo hides the face from the detector: keep the searched landmarks
        return UprightFace(image, to_upright, float(turn % 360.0), mapped, len(faces) + 1,
                           fa.apply(k_to_upright, anchors_k), cand.deviation <= CONFIRM_MAX_PX)
    again = _confirm(image, [face], 0, detector)  # anchors from the upright image's own second pass
    anchors = again.refined if refine and again.deviation <= CONFIRM_MAX_PX else fa.ffhq_anchor_points(face)
    return UprightFace(image, to_upright, float(turn % 360.0), face, len(faces), anchors,
                       cand.deviation <= CONFIRM_MAX_PX or again.deviation <= CONFIRM_MAX_PX)
