"""Head pose from face-mesh landmarks, and EG3D's 25-number camera label.

Frames (all right-handed)
- **Model frame** (MediaPipe canonical face, centimetres; the same axes as the
  BFM model of Deep3DFaceRecon): x towards the image *right* of a frontal face
  (the subject's left), y up, z out of the face towards the viewer.
- **Deep3DFaceRecon world** (``D``): x right, y up, z towards the camera, which
  sits at z = 10 looking down -z. A head pose is ``angles = (x, y, z)`` radians
  and ``trans``; a model point ``p`` (row vector) lands at ``p @ R + trans``
  with ``R = (Rz(z) @ Ry(y) @ Rx(x)).T``, i.e. the head rotation in column form
  is ``M = Rz(z) Ry(y) Rx(x)``. Meaning of the angles (radians, degrees in
  :class:`HeadPose`):
  - pitch = angles[0] (about x): positive tips the face **down**;
  - yaw = angles[1] (about y): positive turns the face towards the **image
    right** (the subject's left);
  - roll = angles[2] (about z): positive turns the face **counter-clockwise**
    as seen in the image.
- **Landmark frame** (MediaPipe pixels, see ``face_landmarks``): x right,
  y down, z away from the camera; ``F = diag(1, -1, -1)`` maps it to ``D``'s
  axes.
- **EG3D world**: the head frame (EG3D's +y up, face looking towards +z). The
  label is ``cam2world`` (OpenCV: x right, y down, z forward) flattened
  row-major, then the normalised intrinsics ``[[4.2647, 0, 0.5], [0, 4.2647,
  0.5], [0, 0, 1]]`` (focal 2985.29 / 700). :func:`label_from_deep3d_pose` is
  EG3D's recipe exactly (``3dface2idr_mat.py`` mode 1, then
  ``preprocess_face_cameras.py --mode orig``): camera centre
  ``c = -R (trans - (0, 0, 10))``, scaled by 0.27, offset by (0, 0.006, 0.161),
  rotation ``R diag(1, -1, -1)``, then the centre renormalised to radius 2.7.
  A frontal head at the origin gives a camera at about (0, 0.0057, 2.7)
  looking down -z, near the pivot (0, 0, 0.2) EG3D conditions on. Head yaw
  +θ puts the camera at about orbit yaw -θ (``engine.nets.camera``'s
  convention, where positive yaw moves the camera towards +x); head pitch +θ
  (face down) puts it above, at about orbit pitch -θ.

Solver: a weighted similarity Procrustes (Umeyama) fit of MediaPipe's canonical
face to the landmarks, with MediaPipe's own 33 Procrustes landmark weights
(``geometry_pipeline_metadata_landmarks.pbtxt``). The landmark z is a weak
perspective depth, so the fit is orthographic; when the camera focal length
(pixels) is known, :func:`solve_head_pose` refines rotation and translation by
Gauss-Newton on the pinhole reprojection of the same weighted points.

Translation for the label: the EG3D crop centres the POS projection of the
5-point template's origin and fixes its scale (rescale 300 ↔ focal 1015 at
distance 10), so in the crop's frame the face translation is (0, 0, 0) by
construction; :func:`label_from_pose` therefore uses ``trans = 0``.

The canonical points and weights below are from MediaPipe
(``mediapipe/modules/face_geometry/data/canonical_face_model.obj`` and
``geometry_pipeline_metadata_landmarks.pbtxt``), Copyright 2020 The MediaPipe
Authors, Apache License 2.0. Only the 33 weighted points matter for the fit, so
they are embedded here rather than read from a data file at run time;
tests/face/test_pose.py checks them against the full model in landmark order
(``shared/data/mediapipe_canonical_face_vertices.txt``).

No torch here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emoji3d.errors import HeadTurnedTooFarError

# landmark id: ((x, y, z) cm in the model frame, Procrustes weight)
_CANONICAL: dict[int, tuple[tuple[float, float, float], float]] = {
    4: ((0.000000, -0.463170, 7.586580), 0.070909939706326),
    6: ((0.000000, 2.473255, 5.788627), 0.032100144773722),
    10: ((0.000000, 8.261778, 4.481535), 0.008446550928056),
    33: ((-4.445859, 2.663991, 3.173422), 0.058724168688059),
    54: ((-6.279331, 6.615427, 1.425850), 0.007667080033571),
    67: ((-3.523964, 8.005976, 3.729163), 0.009078059345484),
    117: ((-5.258659, 0.945811, 2.974312), 0.009791937656701),
    119: ((-3.300681, 0.861641, 3.872784), 0.014565368182957),
    121: ((-1.820731, 1.467954, 4.224124), 0.018591361120343),
    127: ((-7.743095, 2.364999, -2.005167), 0.005197994410992),
    129: ((-1.785794, -0.978284, 4.850470), 0.120625205338001),
    132: ((-7.270895, -2.890917, -2.252455), 0.005560018587857),
    133: ((-1.856432, 2.585245, 3.757904), 0.05328618362546),
    136: ((-5.085276, -7.178590, 0.714711), 0.066890455782413),
    143: ((-6.407571, 2.236021, 1.560843), 0.014816547743976),
    147: ((-6.234883, -1.944430, 1.663542), 0.014262833632529),
    198: ((-1.246815, 0.230297, 5.681036), 0.025462191551924),
    205: ((-3.832928, -1.537326, 4.137731), 0.047252278774977),
    263: ((4.445859, 2.663991, 3.173422), 0.058724168688059),
    284: ((6.279331, 6.615427, 1.425850), 0.007667080033571),
    297: ((3.523964, 8.005976, 3.729163), 0.009078059345484),
    346: ((5.258659, 0.945811, 2.974312), 0.009791937656701),
    348: ((3.300681, 0.861641, 3.872784), 0.014565368182957),
    350: ((1.820731, 1.467954, 4.224124), 0.018591361120343),
    356: ((7.743095, 2.364999, -2.005167), 0.005197994410992),
    358: ((1.785794, -0.978284, 4.850470), 0.120625205338001),
    361: ((7.270895, -2.890917, -2.252455), 0.005560018587857),
    362: ((1.856432, 2.585245, 3.757904), 0.05328618362546),
    365: ((5.085276, -7.178590, 0.714711), 0.066890455782413),
    372: ((6.407571, 2.236021, 1.560843), 0.014816547743976),
    376: ((6.234883, -1.944430, 1.663542), 0.014262833632529),
    420: ((1.246815, 0.230297, 5.681036), 0.025462191551924),
    425: ((3.832928, -1.537326, 4.137731), 0.047252278774977),
}
PROCRUSTES_IDS = np.array(sorted(_CANONICAL), dtype=np.int64)  # (33,)
CANONICAL_POINTS = np.array([_CANONICAL[i][0] for i in PROCRUSTES_IDS], dtype=np.float64)  # (33, 3) cm
PROCRUSTES_WEIGHTS = np.array([_CANONICAL[i][1] for i in PROCRUSTES_IDS], dtype=np.float64)  # (33,)

FLIP_YZ = np.diag([1.0, -1.0, -1.0])  # landmark / OpenCV frame <-> Deep3DFaceRecon frame
EG3D_FOCAL = 2985.29 / 700  # 4.2647..., normalised by the image size
EG3D_RADIUS = 2.7


# ---------------------------------------------------------------- rotations


def rotation_from_deep3d_angles(angles: np.ndarray) -> np.ndarray:
    """``M = Rz(z) @ Ry(y) @ Rx(x)`` (column form head rotation) for angles (x, y, z) radians."""
    x, y, z = (float(a) for a in np.asarray(angles, dtype=np.float64).reshape(3))
    cx, sx, cy, sy, cz, sz = math.cos(x), math.sin(x), math.cos(y), math.sin(y), math.cos(z), math.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def deep3d_angles_from_rotation(m: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_from_deep3d_angles` (y in [-pi/2, pi/2])."""
    m = np.asarray(m, dtype=np.float64)
    y = math.atan2(-m[2, 0], math.hypot(m[0, 0], m[1, 0]))
    x = math.atan2(m[2, 1], m[2, 2])
    z = math.atan2(m[1, 0], m[0, 0])
    return np.array([x, y, z])


# ---------------------------------------------------------------- label


def label_from_deep3d_pose(angles: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """EG3D's 25-number label (float64) for a Deep3DFaceRecon head pose; see the module docstring."""
    r = rotation_from_deep3d_angles(angles).T  # Deep3DFaceRecon's compute_rotation (pts @ r)
    t = np.asarray(trans, dtype=np.float64).reshape(3).copy()
    t[2] += -10.0
    c = -(r @ t)
    c *= 0.27  # normalise camera radius
    c[1] += 0.006  # offsets of the EG3D recipe
    c[2] += 0.161
    pose = np.eye(4)
    pose[:3, :3] = r @ FLIP_YZ
    pose[:3, 3] = c / np.linalg.norm(c) * EG3D_RADIUS  # --mode orig
    intrinsics = np.array([[EG3D_FOCAL, 0.0, 0.5], [0.0, EG3D_FOCAL, 0.5], [0.0, 0.0, 1.0]])
    return np.concatenate([pose.reshape(-1), intrinsics.reshape(-1)])  # (25,)


# ---------------------------------------------------------------- solver


@dataclass(frozen=True)
class HeadPose:
    rotation: np.ndarray  # (3, 3) M: model frame -> Deep3DFaceRecon world (column vectors)
    angles: np.ndarray  # (3,) Deep3DFaceRecon (x=pitch, y=yaw, z=roll), radians
    scale: float  # landmark pixels per canonical centimetre (orthographic fit)
    translation: np.ndarray  # (3,) landmark-frame pixels of the canonical origin (orthographic fit)
    rms_px: float  # weighted RMS image-plane residual of the orthographic fit, pixels

    @property
    def pitch_degrees(self) -> float:
        return math.degrees(self.angles[0])

    @property
    def yaw_degrees(self) -> float:
        return math.degrees(self.angles[1])

    @property
    def roll_degrees(self) -> float:
        return math.degrees(self.angles[2])


def weighted_procrustes(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising sum w |s R src + t - dst|^2 (Umeyama); R proper (det +1)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or w.shape != (src.shape[0],) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weighted_procrustes: bad shapes {src.shape}, {dst.shape}, {w.shape}")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a  # (3, 3)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    r = u @ np.diag(d) @ vt
    var = float(w @ np.sum(a * a, axis=1))
    s = float((sig * d).sum() / var)
    return s, r, mu_d - s * r @ mu_s


def solve_head_pose(points: np.ndarray, focal_px: float | None = None, principal_point: tuple[float, float] | None = None) -> HeadPose:
    """Head pose from landmarks (N >= 468, 3) in the landmark frame (pixels, see ``face_landmarks``).

    ``focal_px`` (and ``principal_point``, default required with it) enables the
    perspective refinement; without it the orthographic fit is returned.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] <= PROCRUSTES_IDS.max():
        raise ValueError(f"solve_head_pose needs face-mesh points (>=468, 3), got {pts.shape}")
    dst = pts[PROCRUSTES_IDS]
    if not np.all(np.isfinite(dst)):
        raise ValueError("landmarks contain NaN/inf")
    s, r_lm, t = weighted_procrustes(CANONICAL_POINTS, dst, PROCRUSTES_WEIGHTS)
    resid = s * CANONICAL_POINTS @ r_lm.T + t - dst  # (33, 3) of the orthographic fit
    rms = float(math.sqrt(PROCRUSTES_WEIGHTS @ np.sum(resid[:, :2] ** 2, axis=1) / PROCRUSTES_WEIGHTS.sum()))
    if focal_px is not None:
        if principal_point is None:
            raise ValueError("principal_point is required with focal_px")
        r_lm = _refine_perspective(dst[:, :2], r_lm, t, s, float(focal_px), principal_point)
    m = FLIP_YZ @ r_lm
    return HeadPose(rotation=m, angles=deep3d_angles_from_rotation(m), scale=s, translation=t, rms_px=rms)


def _rodrigues(v: np.ndarray) -> np.ndarray:
    th = float(np.linalg.norm(v))
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    if th < 1e-12:
        return np.eye(3) + k
    k /= th
    return np.eye(3) + math.sin(th) * k + (1 - math.cos(th)) * k @ k


def _refine_perspective(
    uv: np.ndarray, r0: np.ndarray, t_px: np.ndarray, s: float, f: float, pp: tuple[float, float], iters: int = 20
) -> np.ndarray:
    """Gauss-Newton on the weighted pinhole reprojection of the canonical points (cm).
    Starts from the orthographic fit placed at the distance its scale implies."""
    cx, cy = pp
    x = CANONICAL_POINTS
    w = np.sqrt(PROCRUSTES_WEIGHTS)
    dist = f / s  # cm: weak perspective scale s = f / Z
    trans = np.array([(t_px[0] - cx) / s, (t_px[1] - cy) / s, dist])
    rot = r0.copy()

    def residual(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
        pc = x @ rot.T + trans
        proj = np.stack([f * pc[:, 0] / pc[:, 2] + cx, f * pc[:, 1] / pc[:, 2] + cy], axis=1)
        return ((proj - uv) * w[:, None]).reshape(-1)

    for _ in range(iters):
        res = residual(rot, trans)
        jac = np.zeros((res.size, 6))
        eps = 1e-6
        for k in range(6):
            d = np.zeros(6)
            d[k] = eps
            jac[:, k] = (residual(_rodrigues(d[:3]) @ rot, trans + d[3:]) - res) / eps
        step = np.linalg.lstsq(jac, -res, rcond=None)[0]
        rot = _rodrigues(step[:3]) @ rot
        trans = trans + step[3:]
        if np.linalg.norm(step) < 1e-10:
            break
    return rot


def label_from_pose(pose: HeadPose) -> np.ndarray:
    """EG3D label for a solved pose, with the crop-frame translation 0 (see the module docstring)."""
    return label_from_deep3d_pose(pose.angles, np.zeros(3))


def check_pose_limits(pose: HeadPose, max_yaw_degrees: float, max_pitch_degrees: float) -> None:
    """Raise :class:`HeadTurnedTooFarError` when |yaw| or |pitch| exceeds its limit."""
    yaw, pitch = abs(pose.yaw_degrees), abs(pose.pitch_degrees)
    if yaw > max_yaw_degrees or pitch > max_pitch_degrees:
        raise HeadTurnedTooFarError(
            f"yaw {pose.yaw_degrees:.1f}°, pitch {pose.pitch_degrees:.1f}° (limits {max_yaw_degrees}°, {max_pitch_degrees}°)",
            angle=round(yaw if yaw > max_yaw_degrees else pitch, 1),
            yaw_degrees=round(pose.yaw_degrees, 1),
            pitch_degrees=round(pose.pitch_degrees, 1),
            max_yaw_degrees=max_yaw_degrees,
            max_pitch_degrees=max_pitch_degrees,
        )
