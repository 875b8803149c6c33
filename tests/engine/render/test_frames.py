"""Frame rendering on the slim EG3D: determinism, plane reuse, per-user weights, packs."""
import numpy as np
import pytest
import torch

from engine.render import frames
from engine.render.edits import Boundary, BoundarySet
from engine.nets import camera, eg3d

FAST = frames.RenderSettings(size=64, neural_rendering_resolution=16, views_per_pass=4, latents_per_pass=2)


@pytest.fixture(scope="module")
def gen():
    G = eg3d.slim_generator("slim128", seed=3)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(5)), camera.conditioning_label(1))
    return G, ws


def test_still_frames_identical_and_repeat_renders_bit_identical(gen):
    G, ws = gen
    cams = frames.camera_path("still", 3)
    a = frames.render_frames(G, None, ws, None, cams, FAST)
    assert a.planes_computed == 1
    assert a.rgb.shape == (3, 3, 64, 64) and a.alpha.shape == (3, 1, 64, 64) and a.opacity.shape == (3, 1, 16, 16)
    assert torch.equal(a.rgb[0], a.rgb[1]) and torch.equal(a.rgb[1], a.rgb[2])
    assert torch.equal(a.alpha[0], a.alpha[2])
    again = frames.render_frames(G, None, ws, None, cams, FAST)
    assert torch.equal(a.rgb, again.rgb) and torch.equal(a.alpha, again.alpha)  # no shimmer between runs
    b = frames.render_frames(G, None, ws, None, cams[:1], FAST)  # another batch size: BLAS may round differently
    torch.testing.assert_close(a.rgb[:1], b.rgb, atol=1e-4, rtol=0)
    rgba = frames.to_rgba(a.rgb, a.alpha)
    assert len(rgba) == 3 and rgba[0].shape == (64, 64, 4) and rgba[0].dtype == np.uint8
    assert float(a.alpha.min()) >= 0.0 and float(a.alpha.max()) <= 1.0


def test_unmasked_render_equals_the_generator_render(gen):
    G, ws = gen
    cams = frames.camera_path("orbit", 4)[[0, 1]]
    s = frames.RenderSettings(size=128, matte=frames.MatteConfig(mask_density=False), views_per_pass=1)
    ours = frames.render_frames(G, None, ws, None, cams, s)
    with torch.no_grad():
        ref = G.render(G.planes(ws), ws, cams)
    torch.testing.assert_close(ours.rgb, ref["image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.opacity, ref["image_alpha"], atol=1e-6, rtol=0)
    # the matte region only ever removes density
    masked = frames.render_frames(G, None, ws, None, cams, frames.RenderSettings(size=128, views_per_pass=1))
    assert bool((masked.opacity <= ours.opacity + 1e-6).all())


def test_backbone_once_per_distinct_latent_and_pack_frames(gen):
    G, ws = gen
    calls = []
    hook = G.backbone.synthesis.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        normal = torch.nn.functional.normalize(torch.randn(G.w_dim, generator=torch.Generator().manual_seed(1)), dim=0)
        bset = BoundarySet("0" * 64, "slim128", {"smile": Boundary("smile", normal, d=3.0)})
        spec = frames.StickerSpec("smile", "😄", expression="smile", seconds=1.0)
        n = frames.frame_count(1.0, 6)  # 6 frames: strengths s0 < s1 = s5 < s2 = s4 < s3 -> 4 latents
        w_f, cams = frames.sticker_latents_and_cameras(spec, ws, bset, n)
        batch = frames.render_frames(G, None, w_f, None, cams, FAST)
        assert batch.planes_computed == 4
        assert calls == [2, 2]  # latents_per_pass = 2
        assert torch.equal(batch.rgb[1], batch.rgb[5]) and torch.equal(batch.rgb[2], batch.rgb[4])
        assert not torch.equal(batch.rgb[0], batch.rgb[3])
        calls.clear()
        pack = [frames.StickerSpec("turn", "😎", motion="orbit", seconds=1.0)]
        out = frames.render_pack(G, None, ws, None, bset, pack, fps=4, size=48, settings=FAST)
        assert calls == [1]  # a 4-view orbit of one latent: one backbone pass
        assert [s.name for s in out] == ["turn"] and out[0].emoji == "😎" and out[0].fps == 4.0
        assert len(out[0].frames) == 4 and out[0].frames[0].shape == (48, 48, 4)
        assert not np.array_equal(out[0].frames[0], out[0].frames[1])
    finally:
        hook.remove()


def test_tuned_params_are_applied(gen):
    G, ws = gen
    cams = frames.camera_path("still", 1)
    base = frames.render_frames(G, None, ws, None, cams, FAST)
    same = {k: v.detach().clone() for k, v in G.named_parameters() if k.startswith(("decoder.", "backbone.synthesis.b4"))}
    again = frames.render_frames(G, same, ws, None, cams, FAST)
    assert torch.equal(base.rgb, again.rgb)
    tuned = {k: v * 1.5 for k, v in same.items()}
    changed = frames.render_frames(G, tuned, ws, None, cams, FAST)
    assert (changed.rgb - base.rgb).abs().max() > 1e-3
    # the base module was not modified by the functional call
    assert all(torch.equal(dict(G.named_parameters())[k], v) for k, v in same.items())
    # a base-W boundary edit composes with the tuned weights: it changes the tuned avatar's frame
    from engine.render.edits import apply_edit

    normal = torch.nn.functional.normalize(torch.randn(G.w_dim, generator=torch.Generator().manual_seed(2)), dim=0)
    edited = frames.render_frames(G, tuned, apply_edit(ws, normal, 3.0), None, cams, FAST)
    assert (edited.rgb - changed.rgb).abs().max() > 1e-3


def test_input_validation(gen):
    G, ws = gen
    with pytest.raises(ValueError, match=r"cameras must be \[F,25\]"):
        frames.render_frames(G, None, ws, None, torch.zeros(2, 16), FAST)
    with pytest.raises(ValueError, match="ws must be"):
        frames.render_frames(G, None, ws.expand(3, -1, -1), None, frames.camera_path("still", 2), FAST)


def test_each_distinct_camera_is_rendered_once(gen):
    """A loop's sine path revisits each head turn: frame k and frame n/2 - k share a camera."""
    G, ws = gen
    n = 16
    cams = frames.camera_path("orbit", n)
    assert torch.equal(cams[1], cams[n // 2 - 1]) and torch.equal(cams[n // 2 + 1], cams[n - 1])
    distinct = torch.unique(cams, dim=0).shape[0]
    assert distinct == n // 2 + 1
    batch = frames.render_frames(G, None, ws, None, cams, FAST)
    assert batch.views_rendered == distinct
    assert torch.equal(batch.rgb[1], batch.rgb[n // 2 - 1])
    reference = frames.render_frames(G, None, ws, None, cams[3:4], FAST)  # a camera rendered on its own
    assert reference.views_rendered == 1
    torch.testing.assert_close(batch.rgb[3:4], reference.rgb, atol=1e-4, rtol=0)


def test_unknown_weight_names_are_refused(gen):
    """A tuned-weights dict naming a layer the generator lacks (a renamed layer, a converter bug)
    must not silently render the base weights."""
    from engine.avatar.params import UnknownParameterError

    G, ws = gen
    bad = {"decoder.net.0.weight_renamed": torch.zeros(1)}
    with pytest.raises(UnknownParameterError, match="TriPlaneGenerator has no parameter or buffer named decoder"):
        frames.render_frames(G, bad, ws, None, frames.camera_path("still", 1), FAST)
