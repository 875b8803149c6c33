"""Frame rendering on the slim EG3D: determinism, plane reuse, per-user weights, packs."""
import numpy as np
import pytest
import torch

from engine.render import frames as R
from engine.render.edits import Boundary, BoundarySet
from engine.nets import camera, eg3d

FAST = R.RenderSettings(size=64, neural_rendering_resolution=16, views_per_pass=4, latents_per_pass=2)


@pytest.fixture(scope="module")
def gen():
    G = eg3d.slim_generator("slim128", seed=3)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(5)), camera.conditioning_label(1))
    return G, ws


def test_still_frames_identical_and_repeat_renders_bit_identical(gen):
    G, ws = gen
    cams = R.camera_path("still", 3)
    a = R.render_frames(G, None, ws, None, cams, FAST)
    assert a.planes_computed == 1
    assert a.rgb.shape == (3, 3, 64, 64) and a.alpha.shape == (3, 1, 64, 64) and a.opacity.shape == (3, 1, 16, 16)
    assert torch.equal(a.rgb[0], a.rgb[1]) and torch.equal(a.rgb[1], a.rgb[2])
    assert torch.equal(a.alpha[0], a.alpha[2])
    again = R.render_frames(G, None, ws, None, cams, FAST)
    assert torch.equal(a.rgb, again.rgb) and torch.equal(a.alpha, again.alpha)  # no shimmer between runs
    b = R.render_frames(G, None, ws, None, cams[:1], FAST)  # another batch size: BLAS may round differently
    torch.testing.assert_close(a.rgb[:1], b.rgb, atol=1e-4, rtol=0)
    frames = R.to_rgba(a.rgb, a.alpha)
    assert len(frames) == 3 and frames[0].shape == (64, 64, 4) and frames[0].dtype == np.uint8
    assert float(a.alpha.min()) >= 0.0 and float(a.alpha.max()) <= 1.0


def test_unmasked_render_equals_the_generator_render(gen):
    G, ws = gen
    cams = R.camera_path("orbit", 4)[[0, 1]]
    s = R.RenderSettings(size=128, matte=R.MatteConfig(mask_density=False), views_per_pass=1)
    ours = R.render_frames(G, None, ws, None, cams, s)
    with torch.no_grad():
        ref = G.render(G.planes(ws), ws, cams)
    torch.testing.assert_close(ours.rgb, ref["image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.opacity, ref["image_alpha"], atol=1e-6, rtol=0)
    # the matte region only ever removes density
    masked = R.render_frames(G, None, ws, None, cams, R.RenderSettings(size=128, views_per_pass=1))
    assert bool((masked.opacity <= ours.opacity + 1e-6).all())


def test_backbone_once_per_distinct_latent_and_pack_frames(gen):
    G, ws = gen
    calls = []
    hook = G.backbone.synthesis.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        normal = torch.nn.functional.normalize(torch.randn(G.w_dim, generator=torch.Generator().manual_seed(1)), dim=0)
        bset = BoundarySet("0" * 64, "slim128", {"smile": Boundary("smile", normal, d=3.0)})
        spec = R.StickerSpec("smile", "😄", expression="smile", seconds=1.0)
        n = R.frame_count(1.0, 6)  # 6 frames: strengths s0 < s1 = s5 < s2 = s4 < s3 -> 4 latents
        w_f, cams = R.sticker_latents_and_cameras(spec, ws, bset, n)
        batch = R.render_frames(G, None, w_f, None, cams, FAST)
        assert batch.planes_computed == 4
        assert calls == [2, 2]  # latents_per_pass = 2
        assert torch.equal(batch.rgb[1], batch.rgb[5]) and torch.equal(batch.rgb[2], batch.rgb[4])
        assert not torch.equal(batch.rgb[0], batch.rgb[3])
        calls.clear()
        pack = [R.StickerSpec("turn", "😎", motion="orbit", seconds=1.0)]
        out = R.render_pack(G, None, ws, None, bset, pack, fps=4, size=48, settings=FAST)
        assert calls == [1]  # a 4-view orbit of one latent: one backbone pass
        assert [s.name for s in out] == ["turn"] and out[0].emoji == "😎" and out[0].fps == 4.0
        assert len(out[0].frames) == 4 and out[0].frames[0].shape == (48, 48, 4)
        assert not np.array_equal(out[0].frames[0], out[0].frames[1])
    finally:
        hook.remove()


def test_tuned_params_are_applied(gen):
    G, ws = gen
    cams = R.camera_path("still", 1)
    base = R.render_frames(G, None, ws, None, cams, FAST)
    same = {k: v.detach().clone() for k, v in G.named_parameters() if k.startswith(("decoder.", "backbone.synthesis.b4"))}
    again = R.render_frames(G, same, ws, None, cams, FAST)
    assert torch.equal(base.rgb, again.rgb)
    tuned = {k: v * 1.5 for k, v in same.items()}
    changed = R.render_frames(G, tuned, ws, None, cams, FAST)
    assert (changed.rgb - base.rgb).abs().max() > 1e-3
    # the base module was not modified by the functional call
    assert all(torch.equal(dict(G.named_parameters())[k], v) for k, v in same.items())
    # a base-W boundary edit composes with the tuned weights: it changes the tuned avatar's frame
    from engine.render.edits import apply_edit

    normal = torch.nn.functional.normalize(torch.randn(G.w_dim, generator=torch.Generator().manual_seed(2)), dim=0)
    edited = R.render_frames(G, tuned, apply_edit(ws, normal, 3.0), None, cams, FAST)
    assert (edited.rgb - changed.rgb).abs().max() > 1e-3


def test_input_validation(gen):
    G, ws = gen
    with pytest.raises(ValueError, match=r"cameras must be \[F,25\]"):
        R.render_frames(G, None, ws, None, torch.zeros(2, 16), FAST)
    with pytest.raises(ValueError, match="ws must be"):
        R.render_frames(G, None, ws.expand(3, -1, -1), None, R.camera_path("still", 2), FAST)


def test_each_distinct_camera_is_rendered_once(gen, monkeypatch):
    """A loop's sine path revisits each head turn: frame k and frame n/2 - k share a camera."""
    G, ws = gen
    n = 16
    cams = R.camera_path("orbit", n)
    assert torch.equal(cams[1], cams[n // 2 - 1]) and torch.equal(cams[n // 2 + 1], cams[n - 1])
    distinct = torch.unique(cams, dim=0).shape[0]
    assert distinct == n // 2 + 1
    rendered = []
    original = R._render_masked

    def counting(g, planes, w, c, *a, **k):  # counts the cameras ray-marched, then renders for real
        rendered.append(c.shape[0])
        return original(g, planes, w, c, *a, **k)

    monkeypatch.setattr(R, "_render_masked", counting)
    batch = R.render_frames(G, None, ws, None, cams, FAST)
    assert sum(rendered) == distinct
    assert torch.equal(batch.rgb[1], batch.rgb[n // 2 - 1])
    reference = R.render_frames(G, None, ws, None, cams[3:4], FAST)  # a camera rendered on its own
    torch.testing.assert_close(batch.rgb[3:4], reference.rgb, atol=1e-4, rtol=0)
