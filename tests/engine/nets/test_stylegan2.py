"""StyleGAN2: official-output fixture, slim preset configs, noise handling, truncation, mixing,
W/W+, discriminator features, other architectures, and (GPU) fused ops against the reference.
Checkpoint layouts are tested with their converter (tests/engine/weights/test_stylegan2_layouts.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.checks import check_folder, format_report
from engine.nets import stylegan2
from tests.engine.nets.perturb import perturb

RES = 32  # tests use the slim preset at 32 px (fast on one CPU core)


def _slim(resolution: int = RES):
    generator = stylegan2.StyleGAN2Generator.from_config(stylegan2.slim_generator_config(resolution), seed=3)
    discriminator = stylegan2.StyleGAN2Discriminator.from_config(stylegan2.slim_discriminator_config(resolution),
                                                                 seed=4)
    return generator, discriminator


@pytest.fixture(scope="module")
def slim():
    return _slim()


@pytest.fixture(scope="module")
def rosinality_dir(reference_fixtures):
    d = reference_fixtures / "stylegan2_rosinality_slim"
    if not d.is_dir():
        pytest.skip("stylegan2_rosinality_slim fixture missing")
    return d


def test_rosinality_fixture_matches_official_outputs(rosinality_dir):
    checks = check_folder(rosinality_dir)
    assert checks and all(c.passed for c in checks), format_report(checks)
    names = {c.name for c in checks}
    assert {"img_from_z", "img_trunc_0.7", "img_from_wplus", "img_mix_inject4", "d_out"} <= names
    assert sum(n.startswith("d_convs_") for n in names) == 5


def test_slim_preset_configs():
    assert stylegan2.slim_generator_config(16).channels == {4: 64, 8: 64, 16: 64}
    assert stylegan2.slim_discriminator_config(128).channels == {4: 64, 8: 64, 16: 64, 32: 64, 64: 32, 128: 32}
    assert stylegan2.slim_generator_config().img_resolution == 256
    assert stylegan2.StyleGAN2GeneratorConfig().channels[1024] == 32  # FFHQ widths when none are given
    with pytest.raises(ValueError, match="power of two"):
        stylegan2.slim_generator_config(100)
    with pytest.raises(ValueError, match="channels must list exactly the resolutions"):
        stylegan2.StyleGAN2GeneratorConfig(img_resolution=8, channels={4: 8})
    # a generator's average latent: the mean mapped latent of seeded draws, not zero
    generator, _ = _slim(16)
    assert generator.mapping.w_avg.abs().sum() > 0


def test_noise_modes_and_explicit_noise(slim):
    G, _ = slim
    G = perturb(G, seed=1)
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


def test_w_avg_updates_only_when_asked():
    G, _ = _slim(16)
    z = torch.randn(4, 512, generator=torch.Generator().manual_seed(4))
    w0 = G.mapping.w_avg.clone()
    G.mapping(z, None)
    assert torch.equal(G.mapping.w_avg, w0)
    G.mapping(z, None, update_emas=True)
    assert not torch.equal(G.mapping.w_avg, w0)


def test_truncation_mixing_and_w_plus(slim):
    G, _ = slim
    w_avg = G.mapping.w_avg
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(5))
    ws = G.mapping(z, None)
    assert ws.shape == (2, G.num_ws, 512)
    t0 = G.mapping(z, None, truncation_psi=0.0)
    torch.testing.assert_close(t0, w_avg.expand_as(t0))
    cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(cut[:, 3:], ws[:, 3:])
    torch.testing.assert_close(cut[:, :3], w_avg.lerp(ws[:, :3], 0.5))
    torch.testing.assert_close(stylegan2.truncate(ws, w_avg, 0.5, 3), cut)
    # W+ input equals G(z); mixing takes latents from each source.
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), G(z, None, noise_mode="const"))
    wa, wb = ws[:, 0], G.mapping(z.flip(0), None)[:, 0]
    mixed = stylegan2.style_mix(wa, wb, 4, G.num_ws)
    assert torch.equal(mixed[:, :4], wa[:, None].expand(-1, 4, -1)) and torch.equal(mixed[:, 4:], wb[:, None].expand(-1, G.num_ws - 4, -1))
    with pytest.raises(ValueError, match="synthesis ws"):
        G.synthesis(ws[:, :-1])


def test_fused_and_unfused_modconv_agree(slim):
    G, _ = slim
    ws = G.mapping(torch.randn(3, 512, generator=torch.Generator().manual_seed(6)), None)
    a = G.synthesis(ws, noise_mode="const", fused_modconv=True, impl="ref")
    b = G.synthesis(ws, noise_mode="const", fused_modconv=False, impl="ref")
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_discriminator_features_and_gradients(slim):
    G, D = slim
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
        G = stylegan2.Generator(64, 0, 64, 16, 3, mapping_kwargs=dict(num_layers=2), channel_base=256,
                                channel_max=32, num_fp16_res=0, architecture=arch, conv_clamp=0.05)
        D = stylegan2.Discriminator(0, 16, 3, architecture=("skip" if arch == "orig" else "resnet"),
                                    channel_base=256, channel_max=32, conv_clamp=0.05)
        img = G(torch.randn(2, 64), None, noise_mode="none")
        assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
        assert D(img).shape == (2, 1)
    # Conditional mapping needs c.
    Gc = stylegan2.Generator(8, 5, 16, 8, 3, mapping_kwargs=dict(num_layers=2), channel_base=64, channel_max=16)
    assert Gc(torch.randn(1, 8), torch.randn(1, 5)).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="conditioning label"):
        Gc(torch.randn(1, 8), None)


@pytest.mark.gpu
def test_cuda_fused_ops_match_reference_end_to_end():
    G, D = _slim()  # fresh copies: .cuda() moves modules in place
    G = perturb(G).cuda()
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
    cfg = dataclasses.replace(stylegan2.slim_generator_config(64), num_fp16_res=2, conv_clamp=256)
    G = stylegan2.StyleGAN2Generator.from_config(cfg, seed=0).cuda()
    z = torch.randn(2, 512, device="cuda")
    a = G(z, None, noise_mode="const")
    b = G(z, None, noise_mode="const", force_fp32=True)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert (a - b).abs().max() < 0.05 * max(1.0, float(b.abs().max()))
