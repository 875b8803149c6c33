"""Head pose: axis conventions, EG3D label recipe, synthetic ground truth."""
from __future__ import annotations

import math

import numpy as np
import pytest

from emoji3d.errors import HeadTurnedTooFarError
from engine.face.pose import CANONICAL_POINTS, FLIP_YZ, PROCRUSTES_IDS, PROCRUSTES_WEIGHTS, deep3d_angles_from_rotation, check_pose_limits, label_from_deep3d_pose, label_from_pose, rotation_from_deep3d_angles, solve_head_pose, weighted_procrustes

W, H = 1200, 1000


def project(angles, focal=1400.0, dist=55.0, offset=(1.5, -2.0)):
    """Canonical face at a Deep3DFaceRecon pose, pinhole-projected into a W x H image.
    Returns face-mesh-like points (478, 3): pixels x, y and a weak-perspective z in pixels."""
    r_cv = FLIP_YZ @ rotation_from_deep3d_angles(angles)
    pc = CANONICAL_POINTS @ r_cv.T + np.array([offset[0], offset[1], dist])  # (33, 3) cm, OpenCV camera
    pts = np.full((478, 3), np.nan)
    pts[PROCRUSTES_IDS] = np.stack(
        [focal * pc[:, 0] / pc[:, 2] + W / 2, focal * pc[:, 1] / pc[:, 2] + H / 2, focal * (pc[:, 2] - dist) / dist], axis=1
    )
    return pts


def test_canonical_model_is_mirror_symmetric_and_weights_match_shared(reference_fixtures):
    by_id = dict(zip(PROCRUSTES_IDS.tolist(), CANONICAL_POINTS))
    for a, b in ((33, 263), (133, 362), (129, 358), (136, 365), (54, 284)):
        assert np.allclose(by_id[a] * [-1, 1, 1], by_id[b])
    assert by_id[33][0] < 0  # image-left eye corner on -x: x is the image right
    assert by_id[4][2] == CANONICAL_POINTS[:, 2].max()  # nose tip nearest the viewer: +z
    shared = reference_fixtures.parent.parent / "data" / "mediapipe_procrustes_landmark_weights.txt"
    if shared.is_file():
        table = np.loadtxt(shared)
        assert np.array_equal(table[:, 0].astype(int), PROCRUSTES_IDS)
        assert np.allclose(table[:, 1], PROCRUSTES_WEIGHTS, rtol=0, atol=1e-15)


def test_canonical_points_match_shared_mediapipe_model(reference_fixtures, repo_root):
    """The engine's 33 embedded points and the tests' full copy are MediaPipe's model, in landmark order.

    Both stay in the repository (the product must not read ``../shared``); this pins them to the
    shared reference file wherever that file is present.
    """
    shared = reference_fixtures.parent.parent / "data" / "mediapipe_canonical_face_vertices.txt"
    if not shared.is_file():
        pytest.skip(f"{shared} not found")
    model = np.loadtxt(shared)  # (468, 3) cm, row i = landmark i
    assert model.shape == (468, 3)
    assert np.allclose(model[0], [0.0, -3.406404, 5.979507])
    assert np.array_equal(model[PROCRUSTES_IDS], CANONICAL_POINTS)
    copy = np.loadtxt(repo_root / "tests" / "engine" / "render" / "data" / "canonical_face_landmarks.txt")
    assert np.array_equal(copy, model)


def test_rotation_angle_roundtrip():
    rng = np.random.default_rng(1)
    for _ in range(100):
        a = rng.uniform(-1.2, 1.2, 3)
        m = rotation_from_deep3d_angles(a)
        assert np.allclose(m @ m.T, np.eye(3)) and np.isclose(np.linalg.det(m), 1.0)
        assert np.allclose(deep3d_angles_from_rotation(m), a, atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_conventions_in_the_image(axis):
    base = project(np.zeros(3))
    a = np.zeros(3)
    a[axis] = math.radians(20)
    moved = project(a)
    nose, eye_l, eye_r = 4, 33, 263
    mid = 0.5 * (moved[eye_l] + moved[eye_r])
    if axis == 1:  # yaw +: face turns to the image right, the nose moves right of the eye midpoint
        assert moved[nose, 0] - mid[0] > 0.5 * abs(base[eye_r, 0] - base[eye_l, 0]) * math.sin(math.radians(10))
    if axis == 0:  # pitch +: face tips down, the nose drops relative to the eyes
        assert (moved[nose, 1] - mid[1]) > (base[nose, 1] - 0.5 * (base[eye_l, 1] + base[eye_r, 1])) + 1
    if axis == 2:  # roll +: counter-clockwise in the image, the image-right eye rises
        assert moved[eye_r, 1] < moved[eye_l, 1] - 5
    pose = solve_head_pose(np.nan_to_num(moved))
    assert abs(math.degrees(pose.angles[axis]) - 20) < 2


def test_labels_match_eg3d_fixture(reference_fixtures):
    from safetensors.numpy import load_file

    io = load_file(str(reference_fixtures / "eg3d_camera_labels" / "io.safetensors"))
    ours = np.stack([label_from_deep3d_pose(a, t) for a, t in zip(io["angles"], io["trans"])])
    assert ours.shape == io["label"].shape
    assert np.abs(ours - io["label"]).max() <= 1e-6


def test_frontal_label_geometry():
    c = label_from_deep3d_pose(np.zeros(3), np.zeros(3))
    pose = c[:16].reshape(4, 4)
    assert np.isclose(np.linalg.norm(pose[:3, 3]), 2.7)
    assert abs(pose[0, 3]) < 1e-12 and 0 < pose[1, 3] < 0.01 and pose[2, 3] > 2.69  # on +z, slightly above
    assert np.allclose(pose[:3, 2], [0, 0, -1])  # looks down -z
    assert np.allclose(pose[:3, 1], [0, -1, 0])  # OpenCV: camera y points down
    assert np.allclose(c[16:], [2985.29 / 700, 0, 0.5, 0, 2985.29 / 700, 0.5, 0, 0, 1])


def test_head_yaw_is_minus_orbit_yaw():
    # the face turned to the image right (head yaw +) shows the camera its right cheek: in the head
    # (EG3D world) frame the camera sits towards -x, i.e. at EG3D orbit yaw -25 degrees
    c = label_from_deep3d_pose(np.array([0, math.radians(25), 0]), np.zeros(3))
    x, z = c[3], c[11]
    assert x < -1.0
    assert abs(math.degrees(math.atan2(x, z)) + 25) < 2.0  # the recipe offsets the centre by (0, 0.006, 0.161)


def test_synthetic_ground_truth_within_2_degrees():
    rng = np.random.default_rng(7)
    worst_ortho = worst_persp = worst_label = 0.0
    for _ in range(60):
        truth = np.radians(rng.uniform(-35, 35, 3))
        pts = np.nan_to_num(project(truth, dist=60.0))
        ortho = solve_head_pose(pts)
        persp = solve_head_pose(pts, focal_px=1400.0, principal_point=(W / 2, H / 2))
        worst_ortho = max(worst_ortho, np.degrees(np.abs(ortho.angles - truth)).max())
        worst_persp = max(worst_persp, np.degrees(np.abs(persp.angles - truth)).max())
        worst_label = max(worst_label, np.abs(label_from_pose(persp) - label_from_deep3d_pose(truth, np.zeros(3))).max())
    assert worst_ortho < 2.0, worst_ortho  # orthographic fit of a perspective image at 60 cm
    assert worst_persp < 0.01, worst_persp  # with the true focal length the fit is exact
    assert worst_label < 1e-4, worst_label


def test_label_from_solver_matches_known_pose_orthographic():
    truth = np.radians([10.0, -30.0, 5.0])
    pose = solve_head_pose(np.nan_to_num(project(truth, dist=200.0)))  # nearly orthographic
    assert np.abs(label_from_pose(pose) - label_from_deep3d_pose(truth, np.zeros(3))).max() < 0.02


def test_weighted_procrustes_recovers_similarity():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(20, 3))
    r = rotation_from_deep3d_angles(rng.uniform(-1, 1, 3))
    dst = 2.5 * src @ r.T + [1.0, -2.0, 3.0]
    s, r2, t = weighted_procrustes(src, dst, rng.uniform(0.1, 1.0, 20))
    assert np.isclose(s, 2.5) and np.allclose(r2, r) and np.allclose(t, [1, -2, 3])


def test_pose_limits():
    pts = np.nan_to_num(project(np.radians([0.0, 45.0, 0.0])))
    pose = solve_head_pose(pts)
    check_pose_limits(pose, max_yaw_degrees=60, max_pitch_degrees=30)
    with pytest.raises(HeadTurnedTooFarError) as e:
        check_pose_limits(pose, max_yaw_degrees=40, max_pitch_degrees=30)
    assert e.value.key == "head_turned_too_far"
    assert 43 < e.value.params["angle"] < 47 and e.value.params["max_yaw_degrees"] == 40
    tilted = solve_head_pose(np.nan_to_num(project(np.radians([-33.0, 0.0, 0.0]))))
    with pytest.raises(HeadTurnedTooFarError):
        check_pose_limits(tilted, max_yaw_degrees=40, max_pitch_degrees=30)


def test_bad_input():
    with pytest.raises(ValueError):
        solve_head_pose(np.zeros((10, 3)))
    with pytest.raises(ValueError):
        solve_head_pose(np.full((478, 3), np.nan))
