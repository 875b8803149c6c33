"""Face-mesh landmarks (MediaPipe 0.10.21 legacy ``solutions.face_mesh``, 478 points).

One call, :func:`detect_landmarks`, serves the selfie *and* rendered frames (the
expression scorers reuse it).

Conventions
- Input: RGB ``uint8`` array (H, W, 3).
- ``FaceLandmarks.points``: float64 (478, 3). ``x = x_norm * W`` and
  ``y = y_norm * H`` are image pixels (x right, y down), exactly MediaPipe's
  normalised coordinates scaled by the image size (the convention the
  ``eg3d_crop`` fixture used for its five points). ``z = z_norm * W`` is
  MediaPipe's relative depth in the same pixel scale as x; smaller z is closer
  to the camera. Indices 0..467 are the face mesh, 468..477 the irises
  (468 = centre of the iris on the image-left side, i.e. the subject's right
  eye; 473 = the image-right one).
- Faces are returned largest first (by the area of their landmark box).

The MediaPipe graph is held by an explicit :class:`LandmarkDetector` object
(create it once per worker, pass it in, ``close()`` it, or use ``with``); it
serialises calls with its own lock, so one detector may be shared by threads.
Nothing is cached at module level. Runs on the CPU. No torch here. MediaPipe's
own native log lines go to the DEBUG log (:mod:`engine.face.native_stderr`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from engine.face.native_stderr import native_stderr_to_log

N_POINTS = 478
# MediaPipe mesh indices used across the face front end ("left"/"right" = as seen in the image)
IRIS_LEFT, IRIS_RIGHT = 468, 473
NOSE_TIP = 4
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
# Eye contours in dlib-68 order (corner, 2 upper, corner, 2 lower), as the FFHQ recipe averages them.
EYE_LEFT_CONTOUR = (33, 160, 158, 133, 153, 144)
EYE_RIGHT_CONTOUR = (362, 385, 387, 263, 373, 380)


@dataclass(frozen=True)
class FaceLandmarks:
    points: np.ndarray  # (478, 3) float64, pixels; see module docstring
    image_size: tuple[int, int]  # (W, H) of the image the points refer to

    def __post_init__(self) -> None:
        if self.points.shape != (N_POINTS, 3):
            raise ValueError(f"FaceLandmarks.points must be ({N_POINTS}, 3), got {self.points.shape}")

    @property
    def xy(self) -> np.ndarray:
        return self.points[:, :2]  # (478, 2)

    def five_points(self) -> np.ndarray:
        """(5, 2) float64 pixels, y down: image-left eye (iris centre), image-right eye,
        nose tip, image-left mouth corner, image-right mouth corner."""
        return self.xy[[IRIS_LEFT, IRIS_RIGHT, NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT]].copy()

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the 468 mesh points in pixels."""
        xy = self.xy[:468]
        return float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())

    def box_area(self) -> float:
        x0, y0, x1, y1 = self.box()
        return (x1 - x0) * (y1 - y0)


def check_rgb(rgb: np.ndarray, min_side: int = 8) -> None:
    """Raise ValueError unless ``rgb`` is an RGB uint8 array (H, W, 3) with both sides >= ``min_side``."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            "expected an RGB uint8 array (H, W, 3), got "
            f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}"
        )
    if rgb.shape[0] < min_side or rgb.shape[1] < min_side:
        raise ValueError(f"image too small: {rgb.shape[1]}x{rgb.shape[0]} (need >= {min_side} px a side)")


class LandmarkDetector:
    """An explicit MediaPipe FaceMesh graph (static images, refined irises).

    ``max_faces`` bounds how many faces one call can return. Thread-safe: calls
    are serialised with a lock. Close it (or use ``with``) to free the graph.
    """

    def __init__(self, max_faces: int = 4, min_detection_confidence: float = 0.5) -> None:
        if max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        from mediapipe.python.solutions import face_mesh  # imported lazily: heavy

        self.max_faces = max_faces
        self._lock = threading.Lock()
        # MediaPipe prints native notices from its graph's threads as the graph opens its calculators,
        # and one more on its first face (engine.face.native_stderr). They go to the DEBUG log: the
        # graph is built and run once on a blank image (every calculator opens before the first result
        # comes back), and calls keep being held until one has found a face.
        self._holding_native_log = True
        with native_stderr_to_log():
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=True,
                refine_landmarks=True,
                max_num_faces=max_faces,
                min_detection_confidence=min_detection_confidence,
            )
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def detect(self, rgb: np.ndarray, max_faces: int | None = None) -> list[FaceLandmarks]:
        """Landmarks of up to ``max_faces`` faces, largest first; [] when none."""
        check_rgb(rgb)
        limit = self.max_faces if max_faces is None else min(max_faces, self.max_faces)
        h, w = rgb.shape[:2]
        with self._lock:
            if self._mesh is None:
                raise RuntimeError("LandmarkDetector is closed")
            if self._holding_native_log:
                with native_stderr_to_log():
                    result = self._mesh.process(np.ascontiguousarray(rgb))
                self._holding_native_log = not result.multi_face_landmarks
            else:
                result = self._mesh.process(np.ascontiguousarray(rgb))
        faces: list[FaceLandmarks] = []
        for lms in result.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lms.landmark], dtype=np.float64)  # (478, 3)
            if pts.shape[0] != N_POINTS:
                raise RuntimeError(f"MediaPipe returned {pts.shape[0]} points, expected {N_POINTS} (refine_landmarks)")
            faces.append(FaceLandmarks(points=pts, image_size=(w, h)))
        faces.sort(key=lambda f: f.box_area(), reverse=True)
        return faces[:limit]

    def detect_with_search(self, rgb: np.ndarray, max_faces: int | None = None, min_window: int = 192) -> list[FaceLandmarks]:
        """:meth:`detect`, and when it finds nothing, search overlapping windows.

        MediaPipe's face detector (the short-range model inside FaceMesh) sees
        the whole image at 128x128, so a face under about a tenth of the image
        width is missed. The fallback runs on windows of half the shorter side
        (stride half a window), then of a quarter, ... down to ``min_window``
        pixels, stopping at the first level that finds a face; points are mapped
        back to the photo and duplicates dropped (a face whose landmark-box
        centre lies inside a bigger one's box).
        """
        faces = self.detect(rgb, max_faces)
        if faces:
            return faces
        h, w = rgb.shape[:2]
        found: list[FaceLandmarks] = []
        side = min(h, w) // 2
        while not found and side >= min_window:
            stride = side // 2
            for y0 in _starts(h, side, stride):
                for x0 in _starts(w, side, stride):
                    for f in self.detect(np.ascontiguousarray(rgb[y0 : y0 + side, x0 : x0 + side]), max_faces):
                        pts = f.points.copy()
                        pts[:, 0] += x0
                        pts[:, 1] += y0
                        found.append(FaceLandmarks(points=pts, image_size=(w, h)))
            side //= 2
        found.sort(key=lambda f: f.box_area(), reverse=True)
        kept: list[FaceLandmarks] = []
        for f in found:
            x0, y0, x1, y1 = f.box()
            cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
            if not any(k.box()[0] <= cx <= k.box()[2] and k.box()[1] <= cy <= k.box()[3] for k in kept):
                kept.append(f)
        limit = self.max_faces if max_faces is None else min(max_faces, self.max_faces)
        return kept[:limit]

    def close(self) -> None:
        with self._lock:
            if self._mesh is not None:
                self._mesh.close()
                self._mesh = None

    def __enter__(self) -> "LandmarkDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _starts(length: int, side: int, stride: int) -> list[int]:
    """Window starts covering [0, length) with windows of ``side`` (the last one flush with the end)."""
    starts = list(range(0, max(length - side, 0) + 1, max(stride, 1)))
    if starts[-1] != max(length - side, 0):
        starts.append(max(length - side, 0))
    return starts


def detect_landmarks(
    rgb_uint8: np.ndarray, max_faces: int = 4, detector: LandmarkDetector | None = None
) -> list[FaceLandmarks]:
    """Landmarks of the faces in ``rgb_uint8`` (H, W, 3), largest first.

    Pass a long-lived ``detector`` in workers; without one, a detector is
    created for this call and closed again (about 0.1 s of set-up).
    """
    if detector is not None:
        return detector.detect(rgb_uint8, max_faces)
    with LandmarkDetector(max_faces=max_faces) as own:
        return own.detect(rgb_uint8, max_faces)


def eye_aspect_ratio(face: FaceLandmarks) -> tuple[float, float]:
    """Eye aspect ratio (mean of the two vertical lid distances over the corner
    distance) of the image-left and image-right eye, from the mesh contours.
    Open eyes are about 0.25-0.35; closed eyes about 0.05-0.1."""
    out = []
    for c in (EYE_LEFT_CONTOUR, EYE_RIGHT_CONTOUR):
        p = face.xy[list(c)]
        horiz = np.linalg.norm(p[0] - p[3])
        vert = 0.5 * (np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4]))
        out.append(float(vert / max(horiz, 1e-9)))
    return out[0], out[1]
