"""StyleGAN2 checkpoint layouts -> typed networks: rosinality (the reference fixture, and other
widths/resolutions through an independent inverse mapping), NVlabs state dicts with or without
init_kwargs, and clear errors for missing tensors or unknown layouts."""
from __future__ import annotations

import pytest
import torch

from emoji3d.errors import WeightsError
from engine.nets import stylegan2
from engine.weights.stylegan2_layouts import detect_layout, networks_from_checkpoint
from tests.engine.nets.perturb import perturb


@pytest.fixture(scope="module")
def rosinality_checkpoint(reference_fixtures):
    path = reference_fixtures / "stylegan2_rosinality_slim" / "checkpoint.pt"
    if not path.is_file():
        pytest.skip("stylegan2_rosinality_slim fixture missing")
    return torch.load(path, map_location="cpu", weights_only=True)


def test_rosinality_widths_inferred_from_tensors(rosinality_checkpoint):
    ckpt = rosinality_checkpoint
    G, D = networks_from_checkpoint(ckpt)
    assert G.config.img_resolution == 64 and G.num_ws == 10
    assert G.config.channels == {4: 64, 8: 64, 16: 64, 32: 64, 64: 32}
    assert D.config.channels == {64: 32, 32: 64, 16: 64, 8: 64, 4: 64}
    torch.testing.assert_close(G.mapping.w_avg, ckpt["latent_avg"].reshape(-1))
    # A checkpoint without the discriminator still loads; without latent_avg, w_avg is zero.
    G2, D2 = networks_from_checkpoint({"g_ema": ckpt["g_ema"]})
    assert D2 is None and not G2.mapping.w_avg.any()


def test_rosinality_missing_tensor_is_a_clear_error(rosinality_checkpoint):
    g = dict(rosinality_checkpoint["g_ema"])
    del g["convs.3.conv.modulation.bias"]
    with pytest.raises(WeightsError, match="sg2.pt: .*convs.3.conv.modulation.bias"):
        networks_from_checkpoint({"g_ema": g}, source="sg2.pt")
    with pytest.raises(WeightsError, match="sg2.pt: unrecognised"):
        networks_from_checkpoint({"g_ema": {"foo": torch.zeros(1)}}, source="sg2.pt")
    with pytest.raises(WeightsError, match=r"sg2.pt: no generator \(g_ema, G_ema or G\)"):
        networks_from_checkpoint({"d": {}}, source="sg2.pt")


def test_nvlabs_layout_loads_directly():
    G = perturb(stylegan2.StyleGAN2Generator.from_config(stylegan2.slim_generator_config(32), seed=3))
    D = stylegan2.StyleGAN2Discriminator.from_config(stylegan2.slim_discriminator_config(32), seed=4)
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(0))
    ref = G(z, None, noise_mode="const", impl="ref")
    init_kwargs = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=32, img_channels=3,
                       mapping_kwargs=dict(num_layers=8), conv_clamp=None, num_fp16_res=0)
    assert detect_layout(G.state_dict()) == "nvlabs_g" and detect_layout(D.state_dict()) == "nvlabs_d"
    for obj in ({"G_ema": (G.state_dict(), init_kwargs), "D": D.state_dict()}, {"G": G.state_dict()}):
        G2, D2 = networks_from_checkpoint(obj)
        assert G2.config.channels == G.config.channels
        torch.testing.assert_close(G2(z, None, noise_mode="const", impl="ref"), ref)
        torch.testing.assert_close(G2.mapping.w_avg, G.mapping.w_avg)
    assert D2 is None
    _, D3 = networks_from_checkpoint({"G_ema": (G.state_dict(), init_kwargs), "D": D.state_dict()})
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(D3(img, impl="ref"), D(img, impl="ref"))


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
    G = stylegan2.Generator(512, 0, 512, 32, 3, mapping_kwargs=dict(num_layers=3),
                            channels_dict={4: 40, 8: 40, 16: 24, 32: 12}, num_fp16_res=0, conv_clamp=None)
    D = stylegan2.Discriminator(0, 32, 3, channels_dict={32: 12, 16: 24, 8: 40, 4: 40}, conv_clamp=None)
    perturb(G, seed=4)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    ckpt = _to_rosinality(G, D)
    G2, D2 = networks_from_checkpoint(ckpt)
    assert G2.config.channels == {4: 40, 8: 40, 16: 24, 32: 12} and G2.config.mapping_layers == 3 and G2.num_ws == 8
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(8))
    img = G(z, None, truncation_psi=0.7, noise_mode="const", impl="ref")
    torch.testing.assert_close(G2(z, None, truncation_psi=0.7, noise_mode="const", impl="ref"), img)
    torch.testing.assert_close(D2(img, impl="ref"), D(img, impl="ref"))
