"""Camera conventions: look-at poses, intrinsics and the 25-number label."""
import math
import pathlib

import pytest
import torch

from engine.nets import camera

FIXTURE = pathlib.Path(__file__).resolve().parents[4] / "shared/fixtures/reference/eg3d_slim"


def test_frontal_camera_position_and_axes():
    c2w = camera.look_at_cam2world(0.0, 0.0, 2.7, (0, 0, 0.2), dtype=torch.float64)[0]
    pos = c2w[:3, 3]
    assert torch.allclose(pos, torch.tensor([0, 0, 2.7], dtype=torch.float64), atol=1e-9)
    # OpenCV: camera z (column 2) points from the camera towards the pivot.
    fwd = c2w[:3, 2]
    to_pivot = torch.tensor([0, 0, 0.2], dtype=torch.float64) - pos
    assert torch.allclose(fwd, to_pivot / to_pivot.norm(), atol=1e-9)
    # camera y (image down) is world -y; camera x (image right) is world +x.
    assert torch.allclose(c2w[:3, 1], torch.tensor([0, -1.0, 0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(c2w[:3, 0], torch.tensor([1.0, 0, 0], dtype=torch.float64), atol=1e-9)
    # Rotation is orthonormal with det +1.
    r = c2w[:3, :3]
    assert torch.allclose(r.T @ r, torch.eye(3, dtype=torch.float64), atol=1e-9)
    assert abs(float(torch.det(r)) - 1) < 1e-9


@pytest.mark.parametrize("yaw,pitch", [(0.35, -0.15), (-0.6, 0.2), (1.0, 0.0), (0.0, -0.4)])
def test_orbit_looks_at_pivot_and_signs(yaw, pitch):
    pivot = torch.tensor([0.05, -0.1, 0.2], dtype=torch.float64)
    c2w = camera.look_at_cam2world(yaw, pitch, 2.7, pivot, dtype=torch.float64)[0]
    pos, fwd = c2w[:3, 3], c2w[:3, 2]
    assert abs(float(pos.norm()) - 2.7) < 1e-9  # on the sphere around the world origin
    d = pivot - pos
    assert torch.allclose(fwd, d / d.norm(), atol=1e-9)
    # +yaw moves the camera to world +x; +pitch moves it down (world -y).
    assert math.copysign(1, float(pos[0])) == math.copysign(1, yaw) or yaw == 0
    if pitch != 0:
        assert (float(pos[1]) < 0) == (pitch > 0)
    # no roll: camera x stays horizontal
    assert abs(float(c2w[1, 0])) < 1e-9


def test_fov_to_intrinsics_official_constants():
    k = camera.fov_to_intrinsics(18.837, dtype=torch.float64)
    expected = 1 / (math.tan(18.837 * 3.14159 / 360) * 1.414)
    assert abs(float(k[0, 0]) - expected) < 1e-12 and abs(float(k[0, 0]) - 4.2634) < 1e-3
    assert float(k[0, 2]) == 0.5 and float(k[1, 2]) == 0.5 and float(k[2, 2]) == 1
    with pytest.raises(ValueError):
        camera.fov_to_intrinsics(0)


def test_label_roundtrip_and_shapes():
    c = camera.orbit_label([0.0, 0.3, -0.3], [0.0, 0.1, -0.1])
    assert c.shape == (3, 25) and c.dtype == torch.float32
    c2w, k = camera.split_label(c)
    assert torch.equal(camera.camera_label(c2w, k), c)
    with pytest.raises(ValueError):
        camera.split_label(torch.zeros(2, 24))
    cond = camera.conditioning_label(4)
    assert cond.shape == (4, 25) and torch.equal(cond[0], cond[3])


@pytest.mark.skipif(not (FIXTURE / "io.safetensors").is_file(), reason="reference fixture not present")
def test_labels_match_official_fixture_cameras():
    import json

    from safetensors.torch import load_file

    cfg = json.loads((FIXTURE / "config.json").read_text())["camera"]
    ref = load_file(str(FIXTURE / "io.safetensors"))["c"]
    yaw = [v[0] for v in cfg["views_yaw_pitch_offsets"]]
    pitch = [v[1] for v in cfg["views_yaw_pitch_offsets"]]
    ours = camera.orbit_label(yaw, pitch, cfg["radius"], cfg["pivot"], cfg["fov_degrees"])
    assert torch.allclose(ours, ref, atol=2e-6), (ours - ref).abs().max()


def test_orbit_path_is_a_loop():
    yaw, pitch = camera.orbit_path(48, 0.5, 0.1)
    assert yaw.shape == (48,) and float(yaw[0]) == 0 and float(pitch[0]) == 0
    assert float(yaw.abs().max()) <= 0.5 + 1e-12
    # the step from the last frame back to the first equals every other step
    steps = torch.diff(torch.cat([yaw, yaw[:1]]))
    assert torch.allclose(steps.abs().max(), torch.diff(yaw).abs().max(), atol=1e-12)
