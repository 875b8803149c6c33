"""Camera paths, expression ramps, frame counts and the pack definition (no network)."""
import math

import pytest
import torch

from engine.render import frames
from engine.render.edits import BoundarySet, Boundary, ExpressionUnavailableError
from engine.nets import camera


@pytest.mark.parametrize("motion", frames.MOTIONS)
def test_paths_are_periodic_so_frame_n_equals_frame_0(motion):
    yaw, pitch = frames.motion_angles(motion, torch.tensor([0.0, 1.0, 0.25, 1.25]))
    assert abs(float(yaw[1] - yaw[0])) < 1e-12 and abs(float(pitch[1] - pitch[0])) < 1e-12
    assert float(yaw[2]) == pytest.approx(float(yaw[3]), abs=1e-12)
    n = 12
    cams = frames.camera_path(motion, n)
    assert cams.shape == (n, 25)
    # the frame after the last (t = 1) is the first frame's camera
    seam = camera.orbit_label(*(a.float() for a in frames.motion_angles(motion, torch.tensor([1.0]))))
    torch.testing.assert_close(seam[0], cams[0], atol=1e-6, rtol=0)
    # uniform step everywhere, including across the seam (sinusoid: step k -> k+1 mirrors n-1 -> n)
    y, p = frames.motion_angles(motion, frames.phases(n))
    y_next, p_next = frames.motion_angles(motion, frames.phases(n) + 1.0 / n)
    torch.testing.assert_close(y_next[-1], y[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(p_next[-1], p[0], atol=1e-12, rtol=0)


def test_orbit_and_nod_amplitudes_and_directions():
    t = torch.linspace(0, 1, 401, dtype=torch.float64)[:-1]
    yaw, pitch = frames.motion_angles("orbit", t)
    assert float(yaw.max()) == pytest.approx(math.radians(30), rel=1e-6)
    assert float(yaw.min()) == pytest.approx(-math.radians(30), rel=1e-6)
    assert float(pitch.abs().max()) == 0.0
    yaw, pitch = frames.motion_angles("nod", t, pitch_degrees=10)
    assert float(yaw.abs().max()) == 0.0 and float(pitch.max()) == pytest.approx(math.radians(10), rel=1e-6)
    still = frames.camera_path("still", 5)
    assert torch.equal(still, still[:1].expand(5, -1))
    torch.testing.assert_close(still[0], camera.orbit_label(0.0, 0.0)[0])
    with pytest.raises(ValueError, match="unknown motion"):
        frames.motion_angles("spin", t)


@pytest.mark.parametrize("n", [2, 7, 30, 45])
def test_expression_ramp_eases_up_and_down_symmetrically(n):
    s = frames.expression_ramp(n)
    assert s[0] == 0.0 and float(s.max()) <= 1.0 and float(s.min()) >= 0.0
    for k in range(1, n):
        assert s[k] == s[n - k]  # bit-identical: shared latent
    half = s[: n // 2 + 1]
    assert bool((half[1:] >= half[:-1]).all())
    if n % 2 == 0:
        assert s[n // 2] == 1.0
    if n >= 30:  # eased: small first step, flat top
        assert float(s[1]) < 0.02 and float(1 - s[n // 2 - 1]) < 0.02


def test_frame_count_limits():
    assert frames.frame_count(3.0, 30) == 90
    assert frames.frame_count(2.0, 15) == 30
    with pytest.raises(ValueError, match="duration"):
        frames.frame_count(3.5, 30)
    with pytest.raises(ValueError, match="fps"):
        frames.frame_count(2.0, 31)


def _bset(names):
    return BoundarySet("x" * 64, "slim128", {n: Boundary(n, torch.nn.functional.normalize(torch.ones(8), dim=0), d=1.0)
                                             for n in names})


def test_default_pack_and_availability():
    names = [s.name for s in frames.DEFAULT_PACK]
    assert names == ["turn", "smile", "surprise", "anger", "nod", "blink", "glasses"]
    assert all(s.emoji for s in frames.DEFAULT_PACK)
    keep, skipped = frames.available_stickers(frames.DEFAULT_PACK, _bset(["smile", "surprise", "anger"]))
    assert [s.name for s in keep] == names[:5] and skipped == ["blink", "glasses"]
    keep, skipped = frames.available_stickers(frames.DEFAULT_PACK, _bset(["smile", "surprise", "anger", "glasses"]))
    assert [s.name for s in keep] == names[:5] + ["glasses"] and skipped == ["blink"]
    with pytest.raises(ExpressionUnavailableError) as e:
        frames.available_stickers(frames.DEFAULT_PACK, _bset(["smile"]))
    assert e.value.key == "expression_unavailable" and e.value.params["expression"] == "surprise"
    keep, _ = frames.available_stickers([s for s in frames.DEFAULT_PACK if s.expression is None], None)
    assert [s.name for s in keep] == ["turn", "nod"]


def test_sticker_latents_follow_the_ramp():
    bset = _bset(["smile"])
    w = torch.zeros(1, 3, 8)
    spec = frames.StickerSpec("smile", "😄", expression="smile", strength=0.5)
    ws, cams = frames.sticker_latents_and_cameras(spec, w, bset, 10)
    assert ws.shape == (10, 3, 8) and cams.shape == (10, 25)
    n = bset.get("smile").normal
    proj = (ws[:, 0] @ n)
    torch.testing.assert_close(proj, 0.5 * frames.expression_ramp(10).float())
    assert torch.equal(ws[3], ws[7])


def test_config_entries_become_specs():
    from emoji3d.config import StickerEntry

    spec = frames.spec_from_entry(StickerEntry("turn", "😎", motion="orbit"))
    assert spec == frames.StickerSpec("turn", "😎", motion="orbit") and spec.expression is None
    assert frames.spec_from_entry(StickerEntry("s", "😄", expression="smile", strength=0.5)).expression == "smile"


def test_sticker_spec_validates():
    with pytest.raises(ValueError, match="motion"):
        frames.StickerSpec("a", "😎", motion="spin")
    with pytest.raises(ValueError, match="seconds"):
        frames.StickerSpec("a", "😎", motion="orbit", seconds=4)
    with pytest.raises(ValueError, match="neither"):
        frames.StickerSpec("a", "😎")
