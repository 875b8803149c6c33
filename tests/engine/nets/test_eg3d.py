"""EG3D generator: config round trip, pretrained folder, loading errors, mapping, planes, multi-view
rendering, SR."""
import json

import pytest
import torch

from emoji3d.errors import WeightsError
from engine.nets import camera, eg3d, superresolution


@pytest.fixture(scope="module")
def G():
    return eg3d.slim_generator("slim128", seed=3)


def _z(n, seed=0):
    return torch.randn(n, 512, generator=torch.Generator().manual_seed(seed))


def test_slim_generator_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = eg3d.slim_generator("slim128", seed=5).state_dict()
    b = eg3d.slim_generator("slim128", seed=5).state_dict()
    c = eg3d.slim_generator("slim128", seed=6).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="unknown EG3D preset"):
        eg3d.slim_generator("nope")


def test_official_key_layout(G):
    keys = set(G.state_dict())
    for k in ("backbone.mapping.embed.weight", "backbone.mapping.w_avg", "backbone.synthesis.b4.const",
              "backbone.synthesis.b256.torgb.weight", "decoder.net.0.weight", "decoder.net.2.bias",
              "superresolution.block0.conv0.weight", "superresolution.block1.torgb.bias",
              "superresolution.resample_filter"):
        assert k in keys, k
    assert G.state_dict()["decoder.net.2.weight"].shape == (33, 64)
    assert G.state_dict()["backbone.synthesis.b256.torgb.weight"].shape[0] == 96


def test_config_json_roundtrip_and_pretrained_folder(G, tmp_path):
    d = G.config.to_json_dict()
    assert d["class_name"] == "training.triplane.TriPlaneGenerator" and d["neural_rendering_resolution"] == 32
    again = eg3d.EG3DConfig.from_json_dict(json.loads(json.dumps(d)))
    assert again == G.config
    G2 = eg3d.TriPlaneGenerator.from_pretrained(G.save_pretrained(tmp_path))
    assert G2.config == G.config
    z, c = _z(1), camera.conditioning_label(1)
    ws = G.mapping(z, c)
    assert torch.equal(ws, G2.mapping(z, c))
    p1, p2 = G.planes(ws), G2.planes(ws)
    assert torch.equal(p1, p2)
    with pytest.raises(WeightsError, match=r"config.json: class_name 'x.Generator'"):
        eg3d.EG3DConfig.from_json_dict({**d, "class_name": "x.Generator"}, source="config.json")
    with pytest.raises(WeightsError, match="exactly class_name, init_kwargs and neural_rendering_resolution"):
        eg3d.EG3DConfig.from_json_dict({"class_name": d["class_name"], "init_kwargs": d["init_kwargs"]})


def test_official_init_kwargs_defaults():
    # c_scale missing -> 0 (official), other rendering keys kept verbatim.
    kw = eg3d.ffhq512_config().to_init_kwargs()
    del kw["rendering_kwargs"]["c_scale"]
    cfg = eg3d.EG3DConfig.from_init_kwargs(kw, 128)
    assert cfg.rendering.c_scale == 0.0
    assert cfg.rendering.extra["density_reg"] == 0.25
    assert cfg.to_init_kwargs()["rendering_kwargs"]["gpc_reg_prob"] == 0.5
    with pytest.raises(ValueError, match="unknown super-resolution module"):
        eg3d.EG3DConfig.from_init_kwargs({**kw, "rendering_kwargs": {**kw["rendering_kwargs"],
                                          "superresolution_module": "x.Nope"}})


def test_loading_errors_name_the_problem(G, tmp_path):
    from engine.weights.convert import eg3d_from_official

    sd = dict(G.state_dict())
    init_kwargs, resolution = G.config.to_init_kwargs(), G.config.neural_rendering_resolution
    bad = dict(sd)
    del bad["decoder.net.0.weight"]
    bad["decoder.extra"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="G.pkl: .*missing keys: decoder.net.0.weight.*unexpected keys: decoder.extra"):
        eg3d_from_official(bad, init_kwargs, resolution, "G.pkl")
    bad = dict(sd)
    bad["decoder.net.0.weight"] = torch.zeros(64, 31)
    with pytest.raises(WeightsError, match=r"shape mismatches: decoder.net.0.weight: file \(64, 31\), model \(64, 32\)"):
        eg3d_from_official(bad, init_kwargs, resolution, "G.pkl")
    with pytest.raises(WeightsError, match="G.pkl: EG3D constructor arguments not understood"):
        eg3d_from_official(sd, {"z_dim": 512}, resolution, "G.pkl")
    G.save_pretrained(tmp_path)
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(WeightsError, match="model.safetensors") as ei:
        eg3d.TriPlaneGenerator.from_pretrained(tmp_path)
    assert ei.value.key == "weights_invalid"


def test_mapping_conditioning_and_truncation(G):
    z = _z(2)
    c = camera.orbit_label([0.0, 0.5], [0.0, 0.2])
    ws = G.mapping(z, c)
    assert ws.shape == (2, 14, 512)
    assert not torch.allclose(G.mapping(z, c[[1, 0]]), ws)  # camera conditioning matters
    avg = G.backbone.mapping.w_avg
    assert torch.allclose(G.mapping(z, c, truncation_psi=0.0), avg.expand(2, 14, 512), atol=1e-6)
    half = G.mapping(z, c, truncation_psi=0.5, truncation_cutoff=4)
    assert torch.allclose(half[:, :4], avg + 0.5 * (ws[:, :4] - avg), atol=1e-5)
    assert torch.equal(half[:, 4:], ws[:, 4:])
    Gz = eg3d.TriPlaneGenerator(G.config.replace(rendering=G.config.rendering.__class__(
        **{**G.config.rendering.__dict__, "c_gen_conditioning_zero": True})))
    Gz.load_state_dict(G.state_dict())
    assert torch.equal(Gz.mapping(z, c), Gz.mapping(z, torch.zeros_like(c)))
    with pytest.raises(ValueError, match="camera labels"):
        G.mapping(z, c[:, :16])


def test_render_does_not_touch_module_state_and_returns_planes(G):
    before = {k: v.clone() for k, v in G.state_dict().items()}
    attrs = set(vars(G))
    z, c = _z(1), camera.conditioning_label(1)
    ws = G.mapping(z, c)
    out = G.synthesis(ws, c, neural_rendering_resolution=16, depth_resolution=6, depth_resolution_importance=6)
    assert out["planes"].shape == (1, 3, 32, 256, 256)
    assert out["image_raw"].shape == (1, 3, 16, 16) and out["image"].shape == (1, 3, 128, 128)
    assert out["image_depth"].shape == (1, 1, 16, 16) and out["image_alpha"].shape == (1, 1, 16, 16)
    assert set(vars(G)) == attrs
    assert G.config.neural_rendering_resolution == 32
    after = G.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_many_views_from_one_plane_set_match_single_renders(G):
    z = _z(1, seed=1)
    ws = G.mapping(z, camera.conditioning_label(1))
    planes = G.planes(ws)
    c = camera.orbit_label([0.0, 0.4, -0.4], [0.0, -0.1, 0.15])
    kw = dict(neural_rendering_resolution=16, depth_resolution=8, depth_resolution_importance=8)
    multi = G.render(planes, ws, c, **kw)
    chunked = G.render(planes, ws, c, max_points_per_pass=1000, **kw)
    for i in range(3):
        one = G.render(planes, ws, c[i:i + 1], **kw)
        for key in ("image_raw", "image_depth", "image_alpha", "image"):
            assert torch.allclose(multi[key][i], one[key][0], atol=1e-5), key
            assert torch.allclose(chunked[key][i], one[key][0], atol=1e-5), key
    with pytest.raises(ValueError, match="cannot be shared evenly"):
        G.render(torch.cat([planes, planes]), ws, c, **kw)


def test_sampling_modes(G):
    z = _z(1, seed=2)
    ws = G.mapping(z, camera.conditioning_label(1))
    planes = G.planes(ws)
    c = camera.orbit_label(0.2, 0.0)
    kw = dict(neural_rendering_resolution=8, depth_resolution=8, depth_resolution_importance=8, superresolution=False)
    a = G.render(planes, ws, c, **kw)["image_depth"]
    b = G.render(planes, ws, c, **kw)["image_depth"]
    assert torch.equal(a, b)
    s1 = G.render(planes, ws, c, sampling="stochastic", generator=torch.Generator().manual_seed(1), **kw)["image_depth"]
    s1b = G.render(planes, ws, c, sampling="stochastic", generator=torch.Generator().manual_seed(1), **kw)["image_depth"]
    s2 = G.render(planes, ws, c, sampling="stochastic", generator=torch.Generator().manual_seed(2), **kw)["image_depth"]
    assert torch.equal(s1, s1b) and not torch.equal(s1, s2)


def test_noise_modes_change_planes(G):
    ws = G.mapping(_z(1), camera.conditioning_label(1))
    const = G.planes(ws, noise_mode="const")
    assert torch.equal(const, G.planes(ws, noise_mode="const"))
    none = G.planes(ws, noise_mode="none")
    assert not torch.allclose(const, none)
    r1 = G.planes(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(0))
    r2 = G.planes(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(0))
    assert torch.equal(r1, r2) and not torch.allclose(r1, const)


def test_sample_points_decoder_ranges_and_chunking(G):
    ws = G.mapping(_z(1), camera.conditioning_label(1))
    planes = G.planes(ws)
    pts = (torch.rand(1, 1000, 3, generator=torch.Generator().manual_seed(0)) - 0.5)
    sigma, rgb = G.sample_points(planes, pts)
    assert sigma.shape == (1, 1000, 1) and rgb.shape == (1, 1000, 32)
    assert float(rgb.min()) >= -0.001 - 1e-6 and float(rgb.max()) <= 1.001 + 1e-6
    s2, r2 = G.sample_points(planes, pts, chunk=300)
    assert torch.allclose(sigma, s2, atol=1e-6) and torch.allclose(rgb, r2, atol=1e-6)
    # far outside the box every plane reads zero features -> decoder of a zero vector
    far = torch.full((1, 1, 3), 5.0)
    sf, _ = G.sample_points(planes, far)
    s0, _ = G.decoder(torch.zeros(1, 3, 1, 32))
    assert torch.allclose(sf, s0)


def test_decoder_matches_formula():
    dec = eg3d.OSGDecoder(lr_multiplier=0.5)
    x = torch.randn(2, 3, 5, 32, generator=torch.Generator().manual_seed(0))
    sigma, rgb = dec(x)
    fc0, fc1 = dec.net[0], dec.net[2]
    h = torch.nn.functional.linear(x.mean(1), fc0.weight * fc0.weight_gain, fc0.bias * fc0.bias_gain)
    o = torch.nn.functional.linear(torch.nn.functional.softplus(h), fc1.weight * fc1.weight_gain, fc1.bias * fc1.bias_gain)
    assert torch.allclose(sigma, o[..., :1], atol=1e-6)
    assert torch.allclose(rgb, torch.sigmoid(o[..., 1:]) * 1.002 - 0.001, atol=1e-6)
    assert fc0.weight_gain == pytest.approx(0.5 / 32 ** 0.5)


@pytest.mark.parametrize("name,out_res,in_res", [("SuperresolutionHybrid2X", 128, 64), ("SuperresolutionHybrid4X", 256, 128)])
def test_superresolution_heads(name, out_res, in_res):
    cls = superresolution.sr_class(f"training.superresolution.{name}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sr16 = cls(channels=32, img_resolution=out_res, sr_num_fp16_res=4, sr_antialias=True)
        sr32 = cls(channels=32, img_resolution=out_res, sr_num_fp16_res=0, sr_antialias=True)
    layers = [sr16.block0.conv0, sr16.block0.conv1, sr16.block1.conv0, sr16.block1.conv1, sr16.block1.torgb]
    assert all(l.conv_clamp == 256 for l in layers)
    assert sr32.block1.conv1.conv_clamp is None
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 32, in_res // 2, in_res // 2, generator=g)
    ws = torch.randn(1, 14, 512, generator=g)
    img = sr16(feats[:, :3], feats, ws)
    assert img.shape == (1, 3, out_res, out_res)
    ws2 = ws.clone()
    ws2[:, :-1] += 1.0
    assert torch.equal(img, sr16(feats[:, :3], feats, ws2))  # only the last w is used
    with pytest.raises(ValueError, match="produces"):
        cls(channels=32, img_resolution=out_res * 2, sr_num_fp16_res=0, sr_antialias=True)


def test_superresolution_clamp_and_antialias_are_effective():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        sr = superresolution.SuperresolutionHybrid2X(channels=32, img_resolution=128, sr_num_fp16_res=4, sr_antialias=True)
    with torch.no_grad():
        sr.block1.torgb.bias.fill_(1000.0)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 32, 128, 128, generator=g)  # larger than the 64px input: downsampled
    ws = torch.randn(1, 14, 512, generator=g)
    unclamped = superresolution.SuperresolutionHybrid2X(channels=32, img_resolution=128, sr_num_fp16_res=0,
                                                        sr_antialias=True)
    unclamped.load_state_dict(sr.state_dict())
    no_aa = superresolution.SuperresolutionHybrid2X(channels=32, img_resolution=128, sr_num_fp16_res=4, sr_antialias=False)
    no_aa.load_state_dict(sr.state_dict())
    with torch.no_grad():
        img = sr(feats[:, :3], feats, ws)
        free = unclamped(feats[:, :3], feats, ws)
        plain = no_aa(feats[:, :3], feats, ws)
    # block1's torgb adds bias 1000: clamped to 256 with sr_num_fp16_res > 0, not without.
    assert float((free - img).min()) > 500
    assert not torch.allclose(img, plain)  # the antialiased downsizing is in effect


def test_8x_heads_layout():
    dc = superresolution.SuperresolutionHybrid8XDC(channels=32, img_resolution=512, sr_num_fp16_res=4, sr_antialias=True)
    x8 = superresolution.SuperresolutionHybrid8X(channels=32, img_resolution=512, sr_num_fp16_res=0, sr_antialias=True)
    sd_dc, sd_8 = dc.state_dict(), x8.state_dict()
    assert "resample_filter" not in sd_dc and "resample_filter" in sd_8  # as the official modules register it
    assert sd_dc["block0.conv0.weight"].shape == (256, 32, 3, 3) and sd_dc["block1.torgb.weight"].shape == (3, 128, 1, 1)
    assert sd_8["block0.conv0.weight"].shape == (128, 32, 3, 3) and sd_8["block1.torgb.weight"].shape == (3, 64, 1, 1)
    assert sd_dc["block1.conv0.noise_const"].shape == (512, 512)
    assert dc.block0.conv0.conv_clamp == 256 and x8.block0.conv0.conv_clamp is None


def test_official_raw_aliasing_only_when_the_2x_head_gets_its_native_size(G):
    ws = G.mapping(_z(1, seed=4), camera.conditioning_label(1))
    planes = G.planes(ws)
    c = camera.conditioning_label(1)
    kw = dict(depth_resolution=6, depth_resolution_importance=6)
    for res, aliased in ((64, True), (32, False)):  # Hybrid2X input is 64px; 32px renders are resized first
        clean = G.render(planes, ws, c, neural_rendering_resolution=res, **kw)
        off = G.render(planes, ws, c, neural_rendering_resolution=res, official_raw_aliasing=True, **kw)
        assert torch.equal(clean["image"], off["image"])
        assert torch.equal(clean["image_depth"], off["image_depth"])
        assert torch.equal(clean["image_raw"], off["image_raw"]) != aliased


def test_gradients_reach_ws_through_planes_render_and_sr(G):
    ws = G.mapping(_z(1, seed=5), camera.conditioning_label(1)).detach().requires_grad_(True)
    c = camera.orbit_label(0.2, 0.0)
    out = G.synthesis(ws, c, neural_rendering_resolution=16, depth_resolution=6, depth_resolution_importance=6,
                      sampling="stochastic", generator=torch.Generator().manual_seed(0))
    (out["image"].mean() + out["image_raw"].mean() + out["image_depth"].mean()).backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all()
    assert float(ws.grad[:, :-1].abs().sum()) > 0 and float(ws.grad[:, -1].abs().sum()) > 0


def test_the_decoder_gives_the_official_slices_values_and_gradients():
    """One split of the output (engine.nets.eg3d) against the official two slices
    (bench/stages_before.py): the same density and colour, the same gradients."""
    from bench.stages_before import decode_sliced
    from engine.nets.eg3d import DECODER_HIDDEN, PLANE_CHANNELS, OSGDecoder

    torch.manual_seed(0)
    decoder = OSGDecoder(PLANE_CHANNELS, DECODER_HIDDEN, PLANE_CHANNELS)
    x = torch.randn(2, 50, PLANE_CHANNELS, requires_grad=True)
    leaves = [x, *decoder.parameters()]
    probe_sigma, probe_rgb = torch.randn(2, 50, 1), torch.randn(2, 50, PLANE_CHANNELS)
    got, want = decoder.decode(x), decode_sliced(decoder, x)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    grads = [torch.autograd.grad((out[0] * probe_sigma).sum() + (out[1] * probe_rgb).sum(), leaves)
             for out in (got, want)]
    assert all(torch.allclose(g, w, rtol=1e-6, atol=1e-7) for g, w in zip(*grads))


def test_the_render_maps_the_decoders_colours_on_the_composites(G):
    """``render`` asks the decoder for its colours before the affine map and maps the composites
    (``volume.map_composite``): the features, the raw image and the gradients (planes, decoder
    weights) of marching the mapped colours, as the official renderer does, up to rounding."""
    from engine.nets import volume

    ws = G.mapping(_z(1, seed=6), camera.conditioning_label(1)).detach()
    planes = G.planes(ws).detach().requires_grad_(True)
    c = camera.orbit_label(0.3, -0.1)
    opts = G.render_options("deterministic", depth_resolution=8, depth_resolution_importance=8)
    weights = list(G.decoder.parameters())
    trainable = [p.requires_grad for p in weights]
    for p in weights:
        p.requires_grad_(True)
    try:
        got = G.render(planes, ws, c, neural_rendering_resolution=16, options=opts, superresolution=False)
        want = volume.render_views(G.field(planes), c[:, :16].reshape(1, 4, 4), c[:, 16:25].reshape(1, 3, 3), 16,
                                   opts, n_fields=1)
        probe = torch.randn(want["features"].shape, generator=torch.Generator().manual_seed(1))
        grads = [torch.autograd.grad((f * probe).sum(), [planes, *weights])
                 for f in (got["image_features"], want["features"])]
    finally:
        for p, was in zip(weights, trainable):
            p.requires_grad_(was)
    torch.testing.assert_close(got["image_features"], want["features"], rtol=0, atol=2e-6)
    torch.testing.assert_close(got["image_raw"], want["features"][:, :3], rtol=0, atol=2e-6)
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6 * float(w.abs().max()))
    _sigma, colour = G.decoder.decode(torch.randn(1, 5, 32), map_colours=False)
    assert float(colour.min()) >= 0 and float(colour.max()) <= 1  # the sigmoid, before the map
