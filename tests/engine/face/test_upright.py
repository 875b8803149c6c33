"""Sideways, upside-down and tilted photos (no EXIF) give upright FFHQ and EG3D crops.

The photos are the real astronaut turned by numpy (quarter turns) or by a Pillow affine
transform written here (any angle), so the physical face points are known in every photo:
the unrotated analysis's landmarks mapped through the turn."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from emoji3d.errors import ImageTooSmallError, NoFaceError
from engine.face import align as fa
from engine.face.analyze import analyze_face, check_face
from engine.face.upright import turn_matrix


def turned(rgb: np.ndarray, degrees: float, size: tuple[int, int] = (740, 740)) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` turned counter-clockwise (as seen) about its centre onto a canvas of ``size``; and
    the 2x3 map from the photo's pixels to the turned photo's (pixel centres at integers)."""
    if degrees % 90 == 0:
        k = int(degrees // 90) % 4
        h, w = rgb.shape[:2]
        maps = {0: [[1, 0, 0], [0, 1, 0]], 1: [[0, 1, 0], [-1, 0, w - 1]],
                2: [[-1, 0, w - 1], [0, -1, h - 1]], 3: [[0, -1, h - 1], [1, 0, 0]]}
        return np.ascontiguousarray(np.rot90(rgb, k)), np.array(maps[k], dtype=np.float64)
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    t = np.array([[c, s, 0.0], [-s, c, 0.0]])
    t[:, 2] = (np.array(size) - 1) / 2 - t[:, :2] @ ((np.array(rgb.shape[1::-1]) - 1) / 2)
    inv = fa.compose(fa.translate_matrix(0.5, 0.5), fa.compose(fa.invert(t), fa.translate_matrix(-0.5, -0.5)))
    return np.asarray(Image.fromarray(rgb).transform(size, Image.AFFINE, tuple(inv.flatten()), Image.BICUBIC)), t


def eye_line_degrees(five: np.ndarray) -> float:
    d = five[1] - five[0]
    return math.degrees(math.atan2(-d[1], d[0]))


def assert_upright(five: np.ndarray, what: str, max_tilt: float) -> None:
    """Eyes (iris centres) above the nose, the nose above the mouth corners, image-left eye on the left."""
    eye_l, eye_r, nose, mouth_l, mouth_r = five
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1]), (what, five)
    assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0], (what, five)
    assert abs(eye_line_degrees(five)) < max_tilt, (what, eye_line_degrees(five))


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares 2D similarity src -> dst: (scale, counter-clockwise angle in degrees, shift of the centroid)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    u, sig, vt = np.linalg.svd((dst - mu_d).T @ (src - mu_s))
    rot = u @ vt
    scale = sig.sum() / ((src - mu_s) ** 2).sum()
    return float(scale), math.degrees(math.atan2(-rot[1, 0], rot[0, 0])), mu_d - mu_s


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_quarter_turns_give_the_upright_photos_crops(degrees, astronaut, astronaut_result, detector):
    photo, t = turned(astronaut, degrees)
    assert np.allclose(turn_matrix(degrees, astronaut.shape[1::-1])[0], t)  # the module's own map agrees
    r = analyze_face(photo, detector=detector)
    assert r.turn_degrees == (360 - degrees) % 360
    # the same physical points land on the same crop pixels as in the unrotated photo's crops
    pts = astronaut_result.landmarks.xy[:468]
    for name in ("ffhq", "eg3d"):
        ours = fa.apply(fa.compose(getattr(r, name).matrix, t), pts)
        ref = fa.apply(getattr(astronaut_result, name).matrix, pts)
        assert np.abs(ours - ref).max() < 0.05, name
    assert np.abs(r.ffhq.image.astype(int) - astronaut_result.ffhq.image).mean() < 0.5
    assert np.array_equal(r.eg3d.image, astronaut_result.eg3d.image)
    assert np.array_equal(r.camera_label, astronaut_result.camera_label)
    five = r.landmarks.five_points()  # photo pixels
    assert np.abs(five - fa.apply(t, astronaut_result.landmarks.five_points())).max() < 0.05
    assert_upright(fa.apply(r.ffhq.matrix, five), "ffhq", 5)
    assert_upright(fa.apply(r.eg3d.matrix, five), "eg3d", 5)


@pytest.mark.parametrize("degrees", [30, -30])
def test_tilted_photos_are_levelled(degrees, astronaut, astronaut_result, detector, artefact_dir):
    photo, t = turned(astronaut, degrees)
    r = analyze_face(photo, detector=detector)
    assert abs((r.turn_degrees + degrees + 180) % 360 - 180) < 5  # turned back by about the tilt
    five = r.landmarks.five_points()
    assert_upright(fa.apply(r.ffhq.matrix, five), "ffhq", 3)
    assert_upright(fa.apply(r.eg3d.matrix, five), "eg3d", 3)  # levelled (the upright photo keeps -3°)
    pts = astronaut_result.landmarks.xy[:468]
    # FFHQ: the recipe's square is oriented by itself, so the crop is the upright photo's (measured <= 2.1 px)
    err = np.linalg.norm(fa.apply(fa.compose(r.ffhq.matrix, t), pts) - fa.apply(astronaut_result.ffhq.matrix, pts), axis=1)
    assert err.mean() < 1.5 and err.max() < 3.5, (err.mean(), err.max())
    # EG3D: the same crop up to the small roll the upright photo keeps (EG3D's recipe; -3.2° here)
    scale, angle, shift = similarity(fa.apply(astronaut_result.eg3d.matrix, pts), fa.apply(fa.compose(r.eg3d.matrix, t), pts))
    assert abs(scale - 1) < 0.01 and abs(angle) < abs(astronaut_result.pose.roll_degrees) + 1, (scale, angle)
    assert np.linalg.norm(shift) < 4, shift
    assert abs(r.pose.yaw_degrees - astronaut_result.pose.yaw_degrees) < 2
    assert abs(r.pose.pitch_degrees - astronaut_result.pose.pitch_degrees) < 2
    assert abs(r.pose.roll_degrees) < 2  # the label is that of the levelled EG3D crop
    Image.fromarray(np.hstack([r.ffhq.image[::2, ::2], r.eg3d.image])).save(artefact_dir / f"tilted_{degrees}.png")


def test_small_roll_is_kept_as_eg3d_does(astronaut, astronaut_result, detector):
    photo, t = turned(astronaut, 6)
    r = analyze_face(photo, detector=detector)
    assert r.turn_degrees == 0.0 and np.array_equal(r.upright_matrix, np.array([[1.0, 0, 0], [0, 1, 0]]))
    assert 2 < eye_line_degrees(fa.apply(r.eg3d.matrix, r.landmarks.five_points())) < 4  # 6° - 3.2°, unrotated


def test_check_face_sees_the_upside_down_face(astronaut, astronaut_result, detector):
    c = check_face(np.ascontiguousarray(astronaut[::-1, ::-1]), detector=detector)
    assert c.upright.turn_degrees == 180.0 and c.n_faces == 1
    assert np.array_equal(c.camera_label, astronaut_result.camera_label)


def test_no_false_face_in_a_turned_texture(detector):
    """MediaPipe finds a 'face' in the coffee photo turned 270 degrees; its second pass does not."""
    skdata = pytest.importorskip("skimage.data")
    with pytest.raises(NoFaceError):
        analyze_face(np.ascontiguousarray(skdata.coffee()), detector=detector)


def test_arrays_under_8_px_are_refused_with_a_key(detector):
    with pytest.raises(ImageTooSmallError) as err:
        check_face(np.zeros((7, 300, 3), np.uint8), detector=detector)
    assert err.value.key == "image_too_small" and err.value.params == {"width": 300, "height": 7, "min_side": 8}


def test_a_face_too_small_for_a_square_has_a_size_and_no_roll():
    from engine.face.upright import roll_degrees

    tiny = np.array([[100.0, 100.0], [101.0, 100.0], [100.0, 101.0], [101.0, 101.0]])  # eyes and mouth 1 px apart
    with pytest.raises(ValueError):
        fa.ffhq_quad(tiny)  # no crop can be made of it...
    assert fa.ffhq_square_side(tiny) == pytest.approx(4.0)  # ...but it has a size: 2 x (2 x the eye distance)
    assert roll_degrees(tiny) == 0.0
    face = np.array([[100.0, 100.0], [160.0, 100.0], [110.0, 170.0], [150.0, 170.0]])
    assert fa.ffhq_square_side(face) == pytest.approx(fa.ffhq_quad(face)[1])
