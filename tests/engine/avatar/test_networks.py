"""Loading the pipeline's networks: the pretrained folders `emoji3d weights convert` writes (read
with from_pretrained), clear errors for missing, outdated or mismatched folders, and the slim
fallback."""
import json

import pytest
import torch

from emoji3d.errors import WeightsError
from engine.avatar import networks
from engine.nets import arcface, e4e, eg3d, perceptual, stylegan2
from engine.weights.convert import DISCRIMINATOR, GENERATOR, write_converted
from engine.weights.errors import WeightsMissing


def _install(weights_dir, stylegan_size: int = 8):
    """Small networks written where the pipeline looks for the converted official ones."""
    nets = {
        "stylegan2_ffhq": {
            GENERATOR: stylegan2.StyleGAN2Generator.from_config(stylegan2.slim_generator_config(8), seed=1),
            DISCRIMINATOR: stylegan2.StyleGAN2Discriminator.from_config(stylegan2.slim_discriminator_config(8), seed=2)},
        "e4e_ffhq": e4e.E4EModel.from_config(e4e.E4EConfig(stylegan_size=stylegan_size), seed=3),
        "eg3d_ffhq": eg3d.TriPlaneGenerator.from_config(eg3d.PRESETS["slim128"], seed=4),
        "arcface_ir_se50": arcface.ArcFaceBackbone.from_config(arcface.ArcFaceConfig(), seed=5),
        "vgg16": perceptual.LPIPSNetwork.from_config(perceptual.LPIPSConfig(net="alex"), seed=6),
        "alexnet": perceptual.LPIPSNetwork.from_config(perceptual.LPIPSConfig(net="alex"), seed=7),
    }
    with torch.no_grad():
        nets["e4e_ffhq"].latent_avg.normal_()
    assert set(nets) == set(networks.PRETRAINED_FOLDERS)
    for name, net in nets.items():
        write_converted(weights_dir / name, net, source=f"{name} (test)")
    return nets


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(v, sb[k].to(v.device)) for k, v in sa.items())


def test_pretrained_folders_become_the_pipeline_networks(tmp_path):
    installed = _install(tmp_path)
    assert networks.pretrained_available(tmp_path)
    nets = networks.load_networks(tmp_path, preset="auto")
    assert nets.preset == "pretrained" and nets.weights_id.startswith("pretrained:")
    assert _same(nets.g2d, installed["stylegan2_ffhq"][GENERATOR])
    assert _same(nets.d2d, installed["stylegan2_ffhq"][DISCRIMINATOR])
    assert _same(nets.e4e, installed["e4e_ffhq"].encoder)
    assert torch.equal(nets.e4e_latent_avg, installed["e4e_ffhq"].latent_avg)
    assert _same(nets.g3d, installed["eg3d_ffhq"])
    assert nets.g3d.config.neural_rendering_resolution == eg3d.PRESETS["slim128"].neural_rendering_resolution
    a = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(nets.lpips(a, a.flip(0)), installed["vgg16"](a, a.flip(0)))
        assert torch.equal(nets.lpips_pti(a, a.flip(0)), installed["alexnet"](a, a.flip(0)))
        assert nets.id_loss(a, a).abs().max() < 1e-5
    # the same folders give the same id; other weights another
    assert networks.load_networks(tmp_path, preset="pretrained").weights_id == nets.weights_id
    write_converted(tmp_path / "arcface_ir_se50", arcface.ArcFaceBackbone.from_config(arcface.ArcFaceConfig(), seed=9),
                    source="other")
    assert networks.load_networks(tmp_path, preset="pretrained").weights_id != nets.weights_id


def test_an_encoder_for_another_generator_is_refused(tmp_path):
    _install(tmp_path, stylegan_size=4)
    with pytest.raises(WeightsError, match="e4e_ffhq: the e4e encoder makes 2 latents but the StyleGAN2 generator"):
        networks.load_networks(tmp_path, preset="pretrained")


def test_outdated_folders_name_the_convert_command(tmp_path, caplog):
    _install(tmp_path)
    # what the first converter wrote for the EG3D pickle
    for item in (tmp_path / "eg3d_ffhq").iterdir():
        item.unlink()
    (tmp_path / "eg3d_ffhq" / "config.json").write_text(json.dumps({"converted_format": 1, "kind": "eg3d_pickle"}))
    assert not networks.pretrained_available(tmp_path)
    with pytest.raises(WeightsError, match=r"eg3d_ffhq/config.json: written by an older emoji3d.*emoji3d weights convert"):
        networks.load_networks(tmp_path, preset="pretrained")
    assert networks.load_networks(tmp_path, preset="auto").preset == "slim"
    assert "USING SLIM RANDOM WEIGHTS" in caplog.text


def test_a_partial_install_names_the_folders_it_lacks(tmp_path, caplog):
    """An install converted before PTI read its own LPIPS (AlexNet) has every folder but that one."""
    import shutil

    _install(tmp_path)
    shutil.rmtree(tmp_path / "alexnet")
    assert networks.pretrained_states(tmp_path)["alexnet"] == "missing"
    with pytest.raises(WeightsMissing, match="alexnet"):
        networks.load_networks(tmp_path, preset="pretrained")
    assert networks.load_networks(tmp_path, preset="auto").preset == "slim"
    assert "incomplete (alexnet: missing)" in caplog.text and "emoji3d weights convert" in caplog.text


def test_missing_pretrained_weights_are_named_and_auto_falls_back_to_slim(tmp_path, caplog):
    assert not networks.pretrained_available(tmp_path)
    with pytest.raises(WeightsMissing, match="emoji3d weights fetch"):
        networks.load_networks(tmp_path, preset="pretrained")
    nets = networks.load_networks(tmp_path, preset="auto")
    assert nets.preset == "slim"
    assert "USING SLIM RANDOM WEIGHTS" in caplog.text
    # slim e4e encodes around the slim generator's average latent
    assert torch.equal(nets.e4e_latent_avg, nets.g2d.mapping.w_avg.expand_as(nets.e4e_latent_avg))
    assert nets.e4e_latent_avg.shape == (nets.g2d.num_ws, 512)
