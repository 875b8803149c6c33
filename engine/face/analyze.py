"""Face front end: one selfie in, everything both generators need out.

:func:`check_face` (what a bot needs before queueing a job; tens of ms) runs
landmarks (largest face; several faces is a *warning*), the face-size check,
head pose with its limits and the 25-number EG3D camera label, and the
eyes-closed check. :func:`analyze_face` (what the engine needs) adds the FFHQ
crop (1024, and 256 for e4e), the EG3D crop (512) and the FFHQ-1024 →
EG3D-512 similarity. Each refusal is a
:class:`~emoji3d.errors.UserFacingError` with a stable key (``no_face``,
``face_too_small``, ``head_turned_too_far``, ``eyes_closed``).

Conventions are those of ``face_landmarks`` (pixels, y down, 478 points),
``face_align`` (2x3 photo → crop matrices, pixel centres at integers) and
``face_pose`` (Deep3DFaceRecon angles, EG3D label).

- **Face size** (``face_px``) is the side, in photo pixels, of the FFHQ crop
  square (the region that becomes the 1024 and 256 crops; about twice the face
  width). Below ``min_face_px`` (default 128) the 256 px e4e input would be
  enlarged more than 2x.
- **FFHQ anchors** (eye centres = mean of the six dlib-equivalent eye-contour
  points, mouth corners 61/291) come from a second landmark pass on a quick
  aligned crop, mapped back to the photo (``refine_alignment``).
- **Eyes closed**: both eye aspect ratios (face-mesh lid distance over corner
  distance) below ``eyes_closed_ear``. Occlusion (hands, masks) is not
  detected: MediaPipe always completes the mesh, so the landmarks give no
  reliable signal for it.
- **Rotated photos** (sideways or upside down, any in-plane angle): the face
  is found and the photo turned upright by ``engine.face.upright`` (a roll
  within ``keep_roll_degrees`` is kept, as EG3D's recipe keeps it). The pose,
  the camera label, the eye checks and the EG3D crop (with its
  ``trans_params``) are computed in that upright image; ``landmarks``, the FFHQ
  anchors and every crop matrix refer to the photo as given (the EG3D matrix
  then includes the turn). ``upright_matrix`` maps the photo to the upright
  image and ``turn_degrees`` says how far it was turned (0 for most selfies).
- An array with a side under 8 px is refused with ``image_too_small``.

No torch here (numpy, Pillow, scipy, MediaPipe).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emoji3d.errors import EyesClosedError, FaceTooSmallError, ImageTooSmallError, NoFaceError
from engine.face import align as fa
from engine.face.landmarks import FaceLandmarks, LandmarkDetector, check_rgb, eye_aspect_ratio
from engine.face.pose import HeadPose, check_pose_limits, label_from_pose, solve_head_pose
from engine.face.upright import UprightFace, find_upright_face, map_landmarks, second_pass

MIN_SIDE_PX = 8  # MediaPipe's smallest input (``check_rgb``); emoji3d.images refuses smaller files the same way

WARNING_SEVERAL_FACES = "several_faces"  # params: count


@dataclass(frozen=True)
class FaceConfig:
    min_face_px: int = 128
    max_yaw_degrees: float = 40.0
    max_pitch_degrees: float = 30.0
    max_faces: int = 4
    eyes_closed_ear: float | None = 0.12  # None disables the check
    ffhq: fa.FfhqCropConfig = field(default_factory=fa.FfhqCropConfig)
    e4e_size: int = 256
    eg3d: fa.Eg3dCropConfig = field(default_factory=fa.Eg3dCropConfig)
    refine_alignment: bool = True  # second landmark pass on a quick FFHQ crop (see refined_ffhq_anchors)
    keep_roll_degrees: float = 10.0  # a smaller roll is kept (EG3D's recipe); a larger one is turned upright

    def __post_init__(self) -> None:
        if self.min_face_px < 1 or self.max_faces < 1 or self.e4e_size < 8:
            raise ValueError(f"bad FaceConfig: {self}")
        if not (0 < self.max_yaw_degrees <= 90 and 0 < self.max_pitch_degrees <= 90):
            raise ValueError("max_yaw_degrees and max_pitch_degrees must be in (0, 90]")
        if not 0 <= self.keep_roll_degrees <= 45:
            raise ValueError(f"keep_roll_degrees must be in [0, 45], got {self.keep_roll_degrees}")

    @classmethod
    def from_limits(cls, limits) -> "FaceConfig":
        """The checks of ``emoji3d.config.LimitsConfig`` (``min_face_px``, ``max_yaw_degrees``, ``max_pitch_degrees``)."""
        return cls(min_face_px=int(limits.min_face_px), max_yaw_degrees=float(limits.max_yaw_degrees),
                   max_pitch_degrees=float(limits.max_pitch_degrees))


@dataclass(frozen=True)
class FaceWarning:
    key: str
    params: dict


@dataclass(frozen=True)
class FaceResult:
    landmarks: FaceLandmarks  # photo pixels
    n_faces: int
    warnings: tuple[FaceWarning, ...]
    face_px: float
    eye_aspect_ratios: tuple[float, float]
    pose: HeadPose  # in the upright image
    camera_label: np.ndarray  # (25,) float64, in the upright image (the EG3D crop's frame)
    ffhq_anchors: np.ndarray  # (4, 2) eye centres and mouth corners (photo px) the FFHQ crop used
    ffhq: fa.FfhqCrop  # 1024 crop + photo -> crop matrix
    e4e_image: np.ndarray  # (256, 256, 3) uint8, the FFHQ crop resized
    e4e_matrix: np.ndarray  # (2, 3) photo -> 256 crop
    eg3d: fa.Eg3dCrop  # 512 crop + photo -> crop matrix + align_img trans params (of the upright image)
    ffhq_to_eg3d: np.ndarray  # (2, 3) FFHQ-1024 crop pixels -> EG3D-512 crop pixels
    upright_matrix: np.ndarray  # (2, 3) photo px -> upright image px (identity when not turned)
    turn_degrees: float  # counter-clockwise turn of the photo that made the face upright, [0, 360)


def face_size_px(face: FaceLandmarks) -> float:
    """Side of the FFHQ crop square in photo pixels (see the module docstring)."""
    return fa.ffhq_square_side(fa.ffhq_anchor_points(face))


def check_eyes_open(face: FaceLandmarks, threshold: float | None) -> tuple[float, float]:
    ears = eye_aspect_ratio(face)
    if threshold is not None and max(ears) < threshold:
        raise EyesClosedError(f"eye aspect ratios {ears[0]:.3f}, {ears[1]:.3f} < {threshold}")
    return ears


def refined_ffhq_anchors(rgb: np.ndarray, face: FaceLandmarks, detector: LandmarkDetector, size: int = 512) -> np.ndarray:
    """FFHQ anchors (4, 2) from a second landmark pass on a quick aligned crop, mapped back to the photo
    (``engine.face.upright.second_pass``; the analysis gets them from its orientation search).
    Falls back to the first pass when the crop yields no face."""
    return second_pass(rgb, face, detector, size)[0]


@dataclass(frozen=True)
class FaceCheck:
    """What :func:`check_face` finds: enough for a bot to accept or refuse a selfie."""

    landmarks: FaceLandmarks  # the largest face, photo pixels
    n_faces: int
    warnings: tuple[FaceWarning, ...]
    face_px: float
    eye_aspect_ratios: tuple[float, float]
    pose: HeadPose  # in the upright image
    camera_label: np.ndarray  # (25,) float64
    upright: UprightFace  # the face in the upright image (engine.face.upright)


def check_face(rgb: np.ndarray, cfg: FaceConfig = FaceConfig(), detector: LandmarkDetector | None = None) -> FaceCheck:
    """Landmarks of the largest face and every refusal (no crops; tens of ms).

    Pass a long-lived ``detector`` in workers; without one, a detector is made for this call."""
    if isinstance(rgb, np.ndarray) and rgb.ndim == 3 and min(rgb.shape[:2]) < MIN_SIDE_PX:
        h, w = rgb.shape[:2]
        raise ImageTooSmallError(f"{w}x{h} array has a side under {MIN_SIDE_PX} px", width=w, height=h, min_side=MIN_SIDE_PX)
    check_rgb(rgb, MIN_SIDE_PX)
    if detector is None:
        with LandmarkDetector(max_faces=cfg.max_faces) as own:
            return check_face(rgb, cfg, own)
    upright = find_upright_face(rgb, detector, cfg.max_faces, refine=cfg.refine_alignment,
                                keep_roll_degrees=cfg.keep_roll_degrees)
    if upright is None:
        raise NoFaceError("no face found")
    face = upright.face
    warnings = ()
    if upright.n_faces > 1:
        warnings = (FaceWarning(WARNING_SEVERAL_FACES, {"count": upright.n_faces}),)

    face_px = face_size_px(face)
    if face_px < cfg.min_face_px:
        raise FaceTooSmallError(f"face region {face_px:.0f} px < {cfg.min_face_px} px", face_px=int(round(face_px)), min_face_px=cfg.min_face_px)

    pose = solve_head_pose(face.points)
    check_pose_limits(pose, cfg.max_yaw_degrees, cfg.max_pitch_degrees)
    ears = check_eyes_open(face, cfg.eyes_closed_ear)
    h, w = rgb.shape[:2]
    in_photo = face if upright.turn_degrees == 0.0 else map_landmarks(face, fa.invert(upright.to_upright), (w, h))
    return FaceCheck(in_photo, upright.n_faces, warnings, face_px, ears, pose, label_from_pose(pose), upright)


def analyze_face(rgb: np.ndarray, cfg: FaceConfig = FaceConfig(), detector: LandmarkDetector | None = None) -> FaceResult:
    """:func:`check_face`, then both crops and the crop-to-crop map."""
    if detector is None:
        with LandmarkDetector(max_faces=cfg.max_faces) as own:
            return analyze_face(rgb, cfg, own)
    c = check_face(rgb, cfg, detector)
    u = c.upright
    from_upright = fa.invert(u.to_upright)
    anchors = fa.apply(from_upright, u.anchors)  # photo pixels: the FFHQ recipe's square is oriented by itself
    ffhq = fa.ffhq_crop(rgb, anchors, cfg.ffhq)
    eg3d_upright = fa.eg3d_crop(u.image, u.face.five_points(), cfg.eg3d)
    eg3d = fa.Eg3dCrop(image=eg3d_upright.image, matrix=fa.compose(eg3d_upright.matrix, u.to_upright),
                       trans_params=eg3d_upright.trans_params)
    return FaceResult(
        landmarks=c.landmarks,
        n_faces=c.n_faces,
        warnings=c.warnings,
        face_px=c.face_px,
        eye_aspect_ratios=c.eye_aspect_ratios,
        pose=c.pose,
        camera_label=c.camera_label,
        ffhq_anchors=anchors,
        ffhq=ffhq,
        e4e_image=_resize_square(ffhq.image, cfg.e4e_size),
        e4e_matrix=fa.rescale_output(ffhq.matrix, cfg.ffhq.output_size, cfg.e4e_size),
        eg3d=eg3d,
        ffhq_to_eg3d=fa.crop_to_crop(ffhq.matrix, eg3d.matrix),
        upright_matrix=u.to_upright,
        turn_degrees=u.turn_degrees,
    )


class FaceChecker:
    """:func:`check_face` with one detector, made on the first call (MediaPipe loads in about a
    second, so a command that may not need it pays nothing). ``close()`` (or ``with``) frees it."""

    def __init__(self, cfg: FaceConfig = FaceConfig()) -> None:
        self.cfg = cfg
        self._detector: LandmarkDetector | None = None

    def __call__(self, rgb: np.ndarray) -> FaceCheck:
        if self._detector is None:
            self._detector = LandmarkDetector(max_faces=self.cfg.max_faces)
        return check_face(rgb, self.cfg, self._detector)

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    def __enter__(self) -> "FaceChecker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resize_square(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == size:
        return img.copy()
    return np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS), dtype=np.uint8)


def result_to_json(r: FaceResult) -> dict:
    """JSON-ready summary (lists and floats) of a :class:`FaceResult`, without the images."""

    def mat(a: np.ndarray) -> list:
        return np.asarray(a, dtype=np.float64).round(6).tolist()

    return {
        "image_size": list(r.landmarks.image_size),
        "n_faces": r.n_faces,
        "warnings": [{"key": w.key, "params": w.params} for w in r.warnings],
        "face_px": round(r.face_px, 2),
        "eye_aspect_ratios": [round(e, 4) for e in r.eye_aspect_ratios],
        "landmarks_px": r.landmarks.points.round(3).tolist(),
        "five_points_px": r.landmarks.five_points().round(3).tolist(),
        "pose": {
            "convention": "Deep3DFaceRecon angles (x=pitch down+, y=yaw towards image right+, z=roll ccw+), degrees",
            "pitch_degrees": round(r.pose.pitch_degrees, 3),
            "yaw_degrees": round(r.pose.yaw_degrees, 3),
            "roll_degrees": round(r.pose.roll_degrees, 3),
            "rotation": mat(r.pose.rotation),
            "fit_rms_px": round(r.pose.rms_px, 3),
        },
        "camera_label": [float(v) for v in r.camera_label],
        "upright": {
            "convention": "the photo turned counter-clockwise by turn_degrees so the face is upright; "
                          "pose, camera_label and the EG3D trans params refer to that image",
            "turn_degrees": round(r.turn_degrees, 3),
            "photo_to_upright": mat(r.upright_matrix),
        },
        "crops": {
            "ffhq_1024": {"size": r.ffhq.image.shape[0], "photo_to_crop": mat(r.ffhq.matrix), "quad": mat(r.ffhq.quad), "anchors_px": mat(r.ffhq_anchors)},
            "e4e_256": {"size": r.e4e_image.shape[0], "photo_to_crop": mat(r.e4e_matrix)},
            "eg3d_512": {
                "size": r.eg3d.image.shape[0],
                "photo_to_crop": mat(r.eg3d.matrix),
                "align_img_trans_params": [float(v) for v in r.eg3d.trans_params],
            },
            "ffhq_1024_to_eg3d_512": mat(r.ffhq_to_eg3d),
        },
    }


def eye_positions_in_crop(r: FaceResult) -> np.ndarray:
    """(2, 2) image-left and image-right eye centres mapped into the FFHQ-1024 crop."""
    return fa.apply(r.ffhq.matrix, r.ffhq_anchors[:2])
