"""StyleGAN2: official-output fixture, layouts (rosinality, NVlabs), config and
safetensors round trip, slim preset, noise handling, truncation, mixing,
W/W+, discriminator features, and (GPU) fused ops against the reference."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from emoji3d.errors import WeightsError
from engine.checks import check_folder, format_report
from engine.nets import stylegan2 as S

RES = 32  # tests use the slim preset at 32 px (fast on one CPU core)


@pytest.fixture(scope="module")
def slim():
    return S.stylegan2_slim(seed=3, resolution=RES)


@pytest.fixture(scope="module")
def rosinality_dir(reference_fixtures):
    d = reference_fixtures / "stylegan2_rosinality_slim"
    if not d.is_dir():
        pytest.skip("stylegan2_rosinality_slim fixture missing")
    return d


def _perturb(G, seed=0):
    """Non-zero noise strengths and biases so no term can be skipped unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.copy_(torch.rand([], generator=g) * 0.5 + 0.1)
            elif name.endswith(".bias") and "affine" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return G


def test_rosinality_fixture_matches_official_outputs(rosinality_dir):
    checks = check_folder(rosinality_dir)
    assert checks and all(c.passed for c in checks), format_report(checks)
    names = {c.name for c in checks}
    assert {"img_from_z", "img_trunc_0.7", "img_from_wplus", "img_mix_inject4", "d_out"} <= names
    assert sum(n.startswith("d_convs_") for n in names) == 5


def test_rosinality_widths_inferred_from_tensors(rosinality_dir):
    ckpt = torch.load(rosinality_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    G, D, latent_avg, cfg = S.load_stylegan2(ckpt)
    assert cfg.img_resolution == 64 and G.num_ws == 10 and cfg.source == "rosinality"
    assert cfg.channels == {4: 64, 8: 64, 16: 64, 32: 64, 64: 32}
    assert cfg.d_channels == {64: 32, 32: 64, 16: 64, 8: 64, 4: 64}
    torch.testing.assert_close(latent_avg, ckpt["latent_avg"].reshape(-1))
    torch.testing.assert_close(G.mapping.w_avg, latent_avg)
    # A checkpoint without the discriminator still loads.
    G2, D2, _, cfg2 = S.load_stylegan2({"g_ema": ckpt["g_ema"], "latent_avg": ckpt["latent_avg"]})
    assert D2 is None and not cfg2.has_discriminator


def test_rosinality_missing_tensor_is_a_clear_error(rosinality_dir):
    ckpt = torch.load(rosinality_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    g = dict(ckpt["g_ema"])
    del g["convs.3.conv.modulation.bias"]
    with pytest.raises(WeightsError, match="convs.3.conv.modulation.bias"):
        S.load_stylegan2({"g_ema": g})
    with pytest.raises(WeightsError, match="unrecognised"):
        S.load_stylegan2({"g_ema": {"foo": torch.zeros(1)}})


def test_nvlabs_layout_loads_directly(slim):
    G, D, w_avg, cfg = slim
    _perturb(G)
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(0))
    ref = G(z, None, noise_mode="const", impl="ref")
    init_kwargs = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=RES, img_channels=3,
                       mapping_kwargs=dict(num_layers=8), conv_clamp=None, num_fp16_res=0)
    for obj in ({"G_ema": (G.state_dict(), init_kwargs), "D": D.state_dict()}, (G.state_dict(), init_kwargs),
                G.state_dict()):
        G2, D2, w2, cfg2 = S.load_stylegan2(obj)
        assert cfg2.source == "nvlabs" and cfg2.channels == cfg.channels
        torch.testing.assert_close(G2(z, None, noise_mode="const", impl="ref"), ref)
        torch.testing.assert_close(w2, G.mapping.w_avg)
    assert D2 is None
    G3, D3, _, _ = S.load_stylegan2({"G_ema": (G.state_dict(), init_kwargs), "D": D.state_dict()})
    img = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(D3(img, impl="ref"), D(img, impl="ref"))


def test_save_and_from_pretrained_round_trip(slim, tmp_path):
    G, D, w_avg, cfg = slim
    S.save_pretrained(tmp_path, G, D, cfg)
    G2, D2, w2, cfg2 = S.from_pretrained(tmp_path)
    assert cfg2 == dataclasses.replace(cfg, has_discriminator=True)
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(G2(z, None, noise_mode="const", impl="ref"), G(z, None, noise_mode="const", impl="ref"))
    torch.testing.assert_close(w2, w_avg)
    assert S.StyleGAN2Config.from_json(cfg.to_json()) == cfg


def test_truncated_or_corrupt_weights_name_the_file(slim, tmp_path):
    G, D, _, cfg = slim
    S.save_pretrained(tmp_path, G, None, cfg)
    path = tmp_path / "generator.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="generator.safetensors"):
        S.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"kind": "eg3d"}')
    with pytest.raises(WeightsError, match="StyleGAN2"):
        S.from_pretrained(tmp_path)


def test_slim_preset_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = S.stylegan2_slim(seed=5, resolution=16)
    b = S.stylegan2_slim(seed=5, resolution=16)
    c = S.stylegan2_slim(seed=6, resolution=16)
    assert torch.equal(torch.random.get_rng_state(), state)
    for k, v in a[0].state_dict().items():
        assert torch.equal(v, b[0].state_dict()[k]), k
    assert not torch.equal(a[0].synthesis.b16.conv1.weight, c[0].synthesis.b16.conv1.weight)
    assert a[3].channels == {4: 64, 8: 64, 16: 64}
    assert S.stylegan2_slim_config().img_resolution == 256
    with pytest.raises(ValueError, match="power of two"):
        S.stylegan2_slim_config(100)


def test_noise_modes_and_explicit_noise(slim):
    G, _, _, _ = slim
    G = _perturb(G, seed=1)
    ws = G.mapping(torch.randn(2, 512, generator=torch.Generator().manual_seed(3)), None)
    syn = G.synthesis
    const = syn(ws, noise_mode="const", impl="ref")
    none = syn(ws, noise_mode="none", impl="ref")
    assert (const - none).abs().max() > 1e-3
    # Explicit maps equal to the stored buffers reproduce 'const'.
    names = syn.noise_layer_names()
    assert names[0] == "b4.conv1" and len(names) == 2 * len(syn.block_resolutions) - 1
    explicit = {n: syn.get_submodule(n).noise_const[None, None] for n in names}
    torch.testing.assert_close(syn(ws, noise_inputs=explicit, noise_mode="none", impl="ref"), const)
    # Seeded random noise is reproducible and differs between seeds.
    r1 = syn(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(9), impl="ref")
    r2 = syn(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(9), impl="ref")
    r3 = syn(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(10), impl="ref")
    torch.testing.assert_close(r1, r2)
    assert (r1 - r3).abs().max() > 1e-4
    # Gradients reach optimised noise maps; module buffers are untouched.
    before = {k: v.clone() for k, v in G.state_dict().items()}
    maps = {n: torch.zeros(1, 1, *syn.get_submodule(n).noise_const.shape, requires_grad=True) for n in names}
    syn(ws, noise_inputs=maps, impl="ref").square().mean().backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps.values())
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), f"forward changed {k}"
    with pytest.raises(ValueError, match="unknown noise input"):
        syn(ws, noise_inputs={"b5.conv0": maps["b4.conv1"]})
    with pytest.raises(ValueError, match="explicit noise"):
        syn(ws, noise_inputs={"b8.conv0": torch.zeros(1, 1, 4, 4)})


def test_w_avg_updates_only_when_asked(slim):
    G, _, _, _ = slim
    G = S.stylegan2_slim(seed=3, resolution=16)[0]
    z = torch.randn(4, 512, generator=torch.Generator().manual_seed(4))
    w0 = G.mapping.w_avg.clone()
    G.mapping(z, None)
    assert torch.equal(G.mapping.w_avg, w0)
    G.mapping(z, None, update_emas=True)
    assert not torch.equal(G.mapping.w_avg, w0)


def test_truncation_mixing_and_w_plus(slim):
    G, _, w_avg, _ = slim
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(5))
    ws = G.mapping(z, None)
    assert ws.shape == (2, G.num_ws, 512)
    t0 = G.mapping(z, None, truncation_psi=0.0)
    torch.testing.assert_close(t0, w_avg.expand_as(t0))
    cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(cut[:, 3:], ws[:, 3:])
    torch.testing.assert_close(cut[:, :3], w_avg.lerp(ws[:, :3], 0.5))
    torch.testing.assert_close(S.truncate(ws, w_avg, 0.5, 3), cut)
    # W+ input equals G(z); mixing takes latents from each source.
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), G(z, None, noise_mode="const"))
    wa, wb = ws[:, 0], G.mapping(z.flip(0), None)[:, 0]
    mixed = S.style_mix(wa, wb, 4, G.num_ws)
    assert torch.equal(mixed[:, :4], wa[:, None].expand(-1, 4, -1)) and torch.equal(mixed[:, 4:], wb[:, None].expand(-1, G.num_ws - 4, -1))
    with pytest.raises(ValueError, match="synthesis ws"):
        G.synthesis(ws[:, :-1])


def test_fused_and_unfused_modconv_agree(slim):
    G, _, _, _ = slim
    ws = G.mapping(torch.randn(3, 512, generator=torch.Generator().manual_seed(6)), None)
    a = G.synthesis(ws, noise_mode="const", fused_modconv=True, impl="ref")
    b = G.synthesis(ws, noise_mode="const", fused_modconv=False, impl="ref")
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_discriminator_features_and_gradients(slim):
    G, D, _, _ = slim
    img = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(7), requires_grad=True)
    score, feats = D(img, return_features=True, impl="ref")
    assert score.shape == (2, 1)
    assert [tuple(f.shape[1:]) for f in feats] == [(D.channels_dict[RES], RES, RES)] + [
        (D.channels_dict[r // 2], r // 2, r // 2) for r in D.block_resolutions]
    torch.testing.assert_close(D(img, impl="ref"), score)
    # JoJoGAN-style feature loss: gradients reach the image.
    loss = sum((f - f.detach().flip(0)).abs().mean() for f in D.features(img, impl="ref"))
    (g,) = torch.autograd.grad(loss, img)
    assert g.abs().sum() > 0
    with pytest.raises(ValueError, match="discriminator image"):
        D(torch.zeros(2, 3, RES * 2, RES * 2))


def test_other_architectures_and_clamp_build_and_run():
    for arch in ("orig", "resnet"):
        G = S.Generator(64, 0, 64, 16, 3, mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=32,
                        num_fp16_res=0, architecture=arch, conv_clamp=0.05)
        D = S.Discriminator(0, 16, 3, architecture=("skip" if arch == "orig" else "resnet"), channel_base=256,
                            channel_max=32, conv_clamp=0.05)
        img = G(torch.randn(2, 64), None, noise_mode="none")
        assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
        assert D(img).shape == (2, 1)
    # Conditional mapping needs c.
    Gc = S.Generator(8, 5, 16, 8, 3, mapping_kwargs=dict(num_layers=2), channel_base=64, channel_max=16)
    assert Gc(torch.randn(1, 8), torch.randn(1, 5)).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="conditioning label"):
        Gc(torch.randn(1, 8), None)


@pytest.mark.gpu
def test_cuda_fused_ops_match_reference_end_to_end():
    G, D, _, _ = S.stylegan2_slim(seed=3, resolution=RES)  # fresh copies: .cuda() moves modules in place
    G = _perturb(G).cuda()
    D = D.cuda()
    z = torch.randn(4, 512, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    ws = G.mapping(z, None, impl="ref").requires_grad_(True)
    out = {}
    for impl in ("ref", "cuda"):
        img = G.synthesis(ws, noise_mode="const", impl=impl)
        score, feats = D(img, return_features=True, impl=impl)
        (gw,) = torch.autograd.grad(score.sum() + sum(f.mean() for f in feats), ws)
        out[impl] = (img, score, gw)
    for a, b in zip(out["cuda"], out["ref"]):
        torch.testing.assert_close(a, b, atol=1e-3 * max(1.0, float(b.abs().max())), rtol=0)


@pytest.mark.gpu
def test_fp16_blocks_run_on_cuda():
    cfg = dataclasses.replace(S.stylegan2_slim_config(64), num_fp16_res=2, conv_clamp=256)
    G = S.build_generator(cfg).cuda()
    z = torch.randn(2, 512, device="cuda")
    a = G(z, None, noise_mode="const")
    b = G(z, None, noise_mode="const", force_fp32=True)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert (a - b).abs().max() < 0.05 * max(1.0, float(b.abs().max()))


def _to_rosinality(G, D):
    """Inverse of the converter, written independently from the rosinality key list,
    to check that other widths and resolutions load (no fixture special-casing)."""
    g, d = G.state_dict(), D.state_dict()
    out = {}
    for i in range(G.mapping.num_layers):
        out[f"style.{i + 1}.weight"], out[f"style.{i + 1}.bias"] = g[f"mapping.fc{i}.weight"], g[f"mapping.fc{i}.bias"]
    out["input.input"] = g["synthesis.b4.const"][None]
    noise_i = 0

    def styled(src, dst, up):
        nonlocal noise_i
        out[f"{dst}.conv.weight"] = g[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = g[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = g[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = g[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = g[f"{src}.bias"]
        if up:
            out[f"{dst}.conv.blur.kernel"] = g[f"{src}.resample_filter"] * 4
        out[f"noises.noise_{noise_i}"] = g[f"{src}.noise_const"][None, None]
        noise_i += 1

    def rgb(src, dst):
        out[f"{dst}.conv.weight"] = g[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = g[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = g[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = g[f"{src}.bias"].reshape(1, -1, 1, 1)

    styled("synthesis.b4.conv1", "conv1", False)
    rgb("synthesis.b4.torgb", "to_rgb1")
    for k, res in enumerate(G.synthesis.block_resolutions[1:]):
        styled(f"synthesis.b{res}.conv0", f"convs.{2 * k}", True)
        styled(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", False)
        rgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}")
    dd = {"convs.0.0.weight": d[f"b{D.img_resolution}.fromrgb.weight"], "convs.0.1.bias": d[f"b{D.img_resolution}.fromrgb.bias"]}
    for i, res in enumerate(D.block_resolutions, start=1):
        dd[f"convs.{i}.conv1.0.weight"], dd[f"convs.{i}.conv1.1.bias"] = d[f"b{res}.conv0.weight"], d[f"b{res}.conv0.bias"]
        dd[f"convs.{i}.conv2.1.weight"], dd[f"convs.{i}.conv2.2.bias"] = d[f"b{res}.conv1.weight"], d[f"b{res}.conv1.bias"]
        dd[f"convs.{i}.skip.1.weight"] = d[f"b{res}.skip.weight"]
    for a, b in [("final_conv.0.weight", "b4.conv.weight"), ("final_conv.1.bias", "b4.conv.bias"),
                 ("final_linear.0.weight", "b4.fc.weight"), ("final_linear.0.bias", "b4.fc.bias"),
                 ("final_linear.1.weight", "b4.out.weight"), ("final_linear.1.bias", "b4.out.bias")]:
        dd[a] = d[b]
    return {"g_ema": out, "d": dd, "latent_avg": G.mapping.w_avg[None].clone()}


def test_rosinality_layout_with_other_widths_and_resolution():
    G = S.Generator(512, 0, 512, 32, 3, mapping_kwargs=dict(num_layers=3), channels_dict={4: 40, 8: 40, 16: 24, 32: 12},
                    num_fp16_res=0, conv_clamp=None)
    D = S.Discriminator(0, 32, 3, channels_dict={32: 12, 16: 24, 8: 40, 4: 40}, conv_clamp=None)
    _perturb(G, seed=4)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    ckpt = _to_rosinality(G, D)
    G2, D2, la, cfg = S.load_stylegan2(ckpt)
    assert cfg.channels == {4: 40, 8: 40, 16: 24, 32: 12} and cfg.mapping_layers == 3 and G2.num_ws == 8
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(8))
    img = G(z, None, truncation_psi=0.7, noise_mode="const", impl="ref")
    torch.testing.assert_close(G2(z, None, truncation_psi=0.7, noise_mode="const", impl="ref"), img)
    torch.testing.assert_close(D2(img, impl="ref"), D(img, impl="ref"))


def test_from_pretrained_reads_weights_convert_output(rosinality_dir, tmp_path):
    from engine.weights.core import convert

    out = convert(rosinality_dir / "checkpoint.pt", tmp_path / "sg2", "stylegan2_rosinality")
    G, D, w_avg, cfg = S.from_pretrained(out)
    ckpt = torch.load(rosinality_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    G0, D0, la0, _ = S.load_stylegan2(ckpt)
    assert D is not None and cfg.channels == {4: 64, 8: 64, 16: 64, 32: 64, 64: 32}
    torch.testing.assert_close(w_avg, la0)
    for k, v in G0.state_dict().items():
        assert torch.equal(G.state_dict()[k], v), k
    assert S.from_pretrained(out, with_discriminator=False)[1] is None
