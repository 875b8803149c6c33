import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.stickers.errors import StickerInputError
from engine.stickers.frames import fit_frame, layout, retime, validate_frames


@given(h=st.integers(1, 2000), w=st.integers(1, 2000), side=st.sampled_from([100, 128, 320, 512]),
       square=st.booleans(), even=st.booleans(), scale=st.sampled_from([1.0, 0.85, 0.55]))
def test_layout_obeys_the_size_rule(h, w, side, square, even, scale):
    lay = layout(h, w, side, square, content_scale=scale, even=even)
    if square:
        assert (lay.canvas_w, lay.canvas_h) == (side, side)
    else:
        assert max(lay.canvas_w, lay.canvas_h) == side and min(lay.canvas_w, lay.canvas_h) >= 1
        if even:
            assert lay.canvas_w % 2 == 0 and lay.canvas_h % 2 == 0
    assert 0 <= lay.left and lay.left + lay.content_w <= lay.canvas_w
    assert 0 <= lay.top and lay.top + lay.content_h <= lay.canvas_h
    # aspect ratio kept up to rounding of each side to whole pixels
    assert abs(lay.content_w - lay.content_h * w / h) <= 1 + w / h


@settings(max_examples=200)
@given(n=st.integers(1, 300), fps_in=st.sampled_from([8.0, 12.5, 24.0, 30.0, 60.0]),
       fps_out=st.sampled_from([10.0, 15.0, 24.0, 30.0]), cap=st.sampled_from([None, 2.9, 5.0]),
       policy=st.sampled_from(["trim", "speedup", "auto"]))
def test_retime_respects_rate_and_duration(n, fps_in, fps_out, cap, policy):
    t = retime(n, fps_in, fps_out, cap, policy)
    assert t.fps <= fps_out and t.fps <= fps_in
    assert all(0 <= i < n for i in t.indices)
    assert list(t.indices) == sorted(t.indices)
    if cap is not None and len(t.indices) > 1:
        assert t.duration_s <= cap + 1e-9
    assert t.duration_s <= n / fps_in + 1e-9 or len(t.indices) == 1
    if policy == "trim":
        assert t.speed == 1.0
    if policy == "auto":
        assert t.speed <= 1.25 and (t.speed == 1.0 or t.trimmed_s == 0.0)


def test_auto_policy_keeps_short_loops_whole_and_trims_long_clips():
    loop = retime(90, 30.0, 30.0, 2.9, "auto")  # a 3.0 s loop: play 3.4 % faster, keep the seam
    assert loop.speed > 1 and loop.trimmed_s == 0 and len(loop.indices) == 87 and loop.indices[-1] >= 88
    clip = retime(120, 30.0, 30.0, 2.9, "auto")  # 4.0 s would need 1.38x: cut instead
    assert clip.speed == 1.0 and abs(clip.trimmed_s - 1.1) < 1e-9 and clip.indices[-1] == 86
    with pytest.raises(ValueError, match="policy"):
        retime(10, 30.0, 30.0, None, "stretch")


def test_fit_keeps_transparency_and_clears_hidden_colour():
    f = np.zeros((60, 80, 4), np.uint8)
    f[..., :3] = 200  # colour under alpha 0 must not survive
    f[20:40, 30:50] = (10, 200, 30, 255)
    lay = layout(60, 80, 100, True)
    out = fit_frame(f, lay)
    assert out.shape == (100, 100, 4)
    assert (out[out[..., 3] == 0, :3] == 0).all()
    assert out[:10, :, 3].max() == 0  # letterbox band is transparent


def test_fit_resamples_premultiplied_so_edges_do_not_darken():
    f = np.zeros((90, 90, 4), np.uint8)  # black, transparent background
    f[30:61, 30:61] = (10, 200, 30, 255)
    out = fit_frame(f, layout(90, 90, 64, True))  # downscale: edge pixels get partial alpha
    edge = out[(out[..., 3] >= 32) & (out[..., 3] < 255)]
    assert len(edge) > 0
    assert edge[:, 1].min() >= 180  # straight-alpha resampling would pull these toward black


@pytest.mark.parametrize("frames,fps,match", [
    ([], 30, "no frames"),
    ([np.zeros((8, 8, 3), np.uint8)], 30, "RGBA"),
    ([np.zeros((8, 8, 4), np.float32)], 30, "uint8"),
    ([np.zeros((8, 8, 4), np.uint8), np.zeros((8, 9, 4), np.uint8)], 30, "must match"),
    ([np.zeros((8, 8, 4), np.uint8)], 0, "fps"),
    ([np.zeros((8, 8, 4), np.uint8)], float("nan"), "fps"),
    ([np.zeros((5000, 8, 4), np.uint8)], 30, "outside"),
])
def test_bad_input_is_named(frames, fps, match):
    with pytest.raises(StickerInputError, match=match) as e:
        validate_frames(frames, fps)
    assert e.value.key == "sticker_input_invalid"
