"""Converters: each official format -> the pretrained folder its network's from_pretrained reads,
with the same weights and outputs; bad files named; earlier conversions replaced safely."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from emoji3d.errors import WeightsError
from engine.nets import arcface, e4e, eg3d, progan_classifier, stylegan2
from engine.weights import convert
from engine.weights.errors import UnsafePickle
from engine.weights.pretrained import read_index
from engine.weights.stylegan2_layouts import networks_from_checkpoint
from tests.engine.nets.progan_reference import REFERENCE, SCORES, recipe_input, recipe_variables, tf_pickle
from tests.engine.weights.nvidia_pickles import (Reduce, fake_nvidia_modules, nvidia_pickle_bytes,
                                                 persistent_network)


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key, value in sa.items():
        assert torch.equal(value, sb[key]), key


# ----------------------------------------------------------------------------- EG3D pickle


def test_eg3d_pickle_becomes_a_triplane_generator_folder(tmp_path, reference_fixtures):
    fixture = reference_fixtures / "eg3d_slim"
    config = json.loads((fixture / "config.json").read_text())
    state = load_file(str(fixture / "G_official_keys.safetensors"))
    with fake_nvidia_modules() as (persistence, util):
        # The training loop leaves its own neural_rendering_resolution on G_ema (128 for ffhqrebalanced512-128).
        g_ema = persistent_network(persistence, util.EasyDict, "TriPlaneGenerator", state, config["init_kwargs"],
                                   {"neural_rendering_resolution": 128,
                                    "rendering_kwargs": config["init_kwargs"]["rendering_kwargs"]})
        (tmp_path / "ffhqrebalanced512-128.pkl").write_bytes(nvidia_pickle_bytes({"G_ema": g_ema}))
    out = convert.convert(tmp_path / "ffhqrebalanced512-128.pkl", tmp_path / "eg3d_ffhq", "eg3d_pickle")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    generator = eg3d.TriPlaneGenerator.from_pretrained(out)
    assert generator.config.neural_rendering_resolution == 128
    assert generator.config.to_init_kwargs()["channel_base"] == config["init_kwargs"]["channel_base"]
    assert json.loads((out / "config.json").read_text())["source"] == "ffhqrebalanced512-128.pkl"
    io = load_file(str(fixture / "io.safetensors"))
    with torch.no_grad():
        planes = generator.planes(io["ws"])
    ref = io["planes_every4th_pixel"]
    got = planes.reshape(planes.shape[0], -1, *planes.shape[-2:])[:, :, ::4, ::4]
    assert float((got - ref).abs().max()) <= 1e-3 * max(1.0, float(ref.abs().max()))


def test_eg3d_pickle_errors_name_the_file(tmp_path):
    with fake_nvidia_modules() as (persistence, util):
        other = persistent_network(persistence, util.EasyDict, "Generator", {"w": torch.zeros(2)}, {})
        (tmp_path / "not_eg3d.pkl").write_bytes(nvidia_pickle_bytes({"G_ema": other}))
        (tmp_path / "no_g.pkl").write_bytes(nvidia_pickle_bytes({"D": other}))
    with pytest.raises(WeightsError, match="not_eg3d.pkl.*G_ema is a Generator, not an EG3D TriPlaneGenerator"):
        convert.convert(tmp_path / "not_eg3d.pkl", tmp_path / "out", "eg3d_pickle")
    with pytest.raises(WeightsError, match=r"no_g.pkl: no generator \(G_ema or G\)"):
        convert.convert(tmp_path / "no_g.pkl", tmp_path / "out", "eg3d_pickle")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- StyleGAN2


def test_rosinality_checkpoint_becomes_generator_and_discriminator(tmp_path, reference_fixtures):
    source = reference_fixtures / "stylegan2_rosinality_slim" / "checkpoint.pt"
    out = convert.convert(source, tmp_path / "stylegan2_ffhq", "stylegan2_rosinality")
    assert read_index(out) == {convert.GENERATOR: "StyleGAN2Generator", convert.DISCRIMINATOR: "StyleGAN2Discriminator"}
    generator = stylegan2.StyleGAN2Generator.from_pretrained(out / convert.GENERATOR)
    discriminator = stylegan2.StyleGAN2Discriminator.from_pretrained(out / convert.DISCRIMINATOR)
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    expected_g, expected_d = networks_from_checkpoint(checkpoint)
    _equal_state(generator, expected_g)
    _equal_state(discriminator, expected_d)
    assert generator.config.channels == {4: 64, 8: 64, 16: 64, 32: 64, 64: 32}
    torch.testing.assert_close(generator.mapping.w_avg, checkpoint["latent_avg"].reshape(-1))
    # A checkpoint without its discriminator (the copy e4e links) gives an index with the generator only.
    torch.save({"g_ema": checkpoint["g_ema"], "latent_avg": checkpoint["latent_avg"]}, tmp_path / "g_only.pt")
    out = convert.convert(tmp_path / "g_only.pt", tmp_path / "g_only", "stylegan2_rosinality")
    assert read_index(out) == {convert.GENERATOR: "StyleGAN2Generator"}
    with pytest.raises(WeightsError, match="model_ir_se50.pth: not a rosinality StyleGAN2 checkpoint"):
        torch.save({"w": torch.zeros(1)}, tmp_path / "model_ir_se50.pth")
        convert.convert(tmp_path / "model_ir_se50.pth", tmp_path / "x", "stylegan2_rosinality")


def test_stylegan2_ada_pickle_keeps_init_kwargs_settings(tmp_path):
    g_src = stylegan2.StyleGAN2Generator.from_config(stylegan2.slim_generator_config(16), seed=3)
    d_src = stylegan2.StyleGAN2Discriminator.from_config(stylegan2.slim_discriminator_config(16), seed=4)
    g_kwargs = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=16, img_channels=3,
                    mapping_kwargs=dict(num_layers=8), synthesis_kwargs=dict(conv_clamp=256, num_fp16_res=0))
    d_kwargs = dict(c_dim=0, img_resolution=16, img_channels=3, conv_clamp=256, num_fp16_res=0,
                    epilogue_kwargs=dict(mbstd_group_size=2))
    with fake_nvidia_modules() as (persistence, util):
        nets = {"G": persistent_network(persistence, util.EasyDict, "Generator", g_src.state_dict(), g_kwargs),
                "D": persistent_network(persistence, util.EasyDict, "Discriminator", d_src.state_dict(), d_kwargs),
                "G_ema": persistent_network(persistence, util.EasyDict, "Generator", g_src.state_dict(), g_kwargs)}
        (tmp_path / "network-snapshot.pkl").write_bytes(nvidia_pickle_bytes(nets, augment_pipe=None))
    out = convert.convert(tmp_path / "network-snapshot.pkl", tmp_path / "sg2", "stylegan2_ada_pickle")
    generator = stylegan2.StyleGAN2Generator.from_pretrained(out / convert.GENERATOR)
    discriminator = stylegan2.StyleGAN2Discriminator.from_pretrained(out / convert.DISCRIMINATOR)
    assert generator.config.conv_clamp == 256 and generator.config.num_fp16_res == 0
    assert discriminator.config.conv_clamp == 256 and discriminator.config.mbstd_group_size == 2
    _equal_state(generator, g_src)
    _equal_state(discriminator, d_src)


# ----------------------------------------------------------------------------- e4e and ArcFace


def test_e4e_checkpoint_becomes_an_e4e_model(tmp_path):
    """e4e_ffhq_encode.pt's layout at the smallest size (2 style heads, for a 4 px generator)."""
    source = e4e.E4EModel.from_config(e4e.E4EConfig(stylegan_size=4), seed=0)
    latent_avg = torch.randn(2, 512, generator=torch.Generator().manual_seed(1))
    encoder = source.encoder.state_dict()
    state = {f"encoder.{k}": v for k, v in encoder.items()} | {"decoder.style.1.weight": torch.zeros(2, 2)}
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": argparse.Namespace(stylegan_size=4)},
               tmp_path / "e4e_ffhq_encode.pt")
    out = convert.convert(tmp_path / "e4e_ffhq_encode.pt", tmp_path / "e4e_ffhq", "e4e")
    model = e4e.E4EModel.from_pretrained(out)
    assert model.config == e4e.E4EConfig(stylegan_size=4)
    _equal_state(model.encoder, source.encoder)
    assert torch.equal(model.latent_avg, latent_avg)
    # opts that disagree with the encoder, and files that are no e4e checkpoint
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": argparse.Namespace(stylegan_size=1024)},
               tmp_path / "e4e_ffhq_encode.pt")
    with pytest.raises(WeightsError, match="e4e_ffhq_encode.pt: opts.stylegan_size is 1024 but the encoder has 2"):
        convert.convert(tmp_path / "e4e_ffhq_encode.pt", tmp_path / "e4e_ffhq", "e4e")
    checkpoint = {"state_dict": state}
    with pytest.raises(WeightsError, match="'latent_avg' tensor is missing"):
        convert.e4e_from_checkpoint(checkpoint, "e4e_ffhq_encode.pt")
    with pytest.raises(WeightsError, match="not an e4e checkpoint"):
        convert.e4e_from_checkpoint({"latent_avg": latent_avg}, "e4e_ffhq_encode.pt")


def test_arcface_state_dict_becomes_an_arcface_folder(tmp_path):
    source = arcface.ArcFaceBackbone.from_config(arcface.ArcFaceConfig(), seed=0)
    torch.save(source.state_dict(), tmp_path / "model_ir_se50.pth")
    out = convert.convert(tmp_path / "model_ir_se50.pth", tmp_path / "arcface_ir_se50", "arcface")
    loaded = arcface.ArcFaceBackbone.from_pretrained(out)
    assert loaded.config == arcface.ArcFaceConfig()
    _equal_state(loaded, source)
    broken = dict(source.state_dict())
    del broken["output_layer.3.bias"]
    broken["output_layer.9.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as ei:
        convert.arcface_from_state_dict(broken, "model_ir_se50.pth")
    assert "model_ir_se50.pth" in str(ei.value) and "output_layer.3.bias" in str(ei.value)
    assert "output_layer.9.weight" in str(ei.value)


# ----------------------------------------------------------------------------- LPIPS, classifiers


def test_torchvision_files_other_than_vgg16_or_alexnet_are_refused(tmp_path):
    torch.save({"classifier.1.weight": torch.zeros(2, 2)}, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth: no features.0.weight"):
        convert.convert(tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alexnet", "torchvision")
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(WeightsError, match=r"features.0.bias, features.3.weight, features.3.bias missing; is this "
                                           r"the torchvision alex file"):
        convert.convert(tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alexnet", "torchvision")


def test_attribute_classifier_pickle_becomes_a_classifier_folder(tmp_path):
    name, case = "fused_mbstd4_32px", REFERENCE["fused_mbstd4_32px"]
    pkl = tmp_path / "celebahq-classifier-19-eyeglasses.pkl"
    pkl.write_bytes(tf_pickle(list(recipe_variables(case).items()), case["static_kwargs"]))
    out = convert.convert(pkl, tmp_path / "attribute_glasses", "tf_network_pickle")
    classifier = progan_classifier.ProGANClassifier.from_pretrained(out)
    with torch.no_grad():
        got = classifier(recipe_input(case)).numpy()
    ref = SCORES[f"{name}__scores"]
    assert np.abs(got - ref).max() <= 1e-4 * max(1e-2, float(np.abs(ref).max()))
    pkl.write_bytes(tf_pickle(list(recipe_variables(case).items()), case["static_kwargs"], func="G_paper",
                              build_src="def G_paper():\n    pass\n"))
    with pytest.raises(WeightsError, match="built by 'G_paper', not ProGAN's D_paper"):
        convert.convert(pkl, tmp_path / "attribute_glasses", "tf_network_pickle")


# ----------------------------------------------------------------------------- folders and files


def test_unsafe_checkpoints_and_unknown_kinds_are_refused(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"w": torch.ones(2), "x": Reduce(os.system, (f"touch {marker}",))}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickle, match="evil.pt"):
        convert.convert(tmp_path / "evil.pt", tmp_path / "out", "arcface")
    assert not marker.exists()
    with pytest.raises(WeightsError, match="unknown kind 'zip'"):
        convert.convert(tmp_path / "evil.pt", tmp_path / "out", "zip")


def test_an_earlier_conversion_is_replaced_but_other_folders_are_not(tmp_path):
    classifier = progan_classifier.ProGANClassifier.from_config(
        progan_classifier.ProGANClassifierConfig(resolution=8), seed=0)
    old = tmp_path / "attribute_glasses"
    old.mkdir()  # what the first converter wrote
    (old / "config.json").write_text(json.dumps({"converted_format": 1, "files": {"variables": "variables.safetensors"}}))
    (old / "variables.safetensors").write_bytes(b"old")
    assert convert.write_converted(old, classifier, source="x.pkl") == old
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "model.safetensors"]
    progan_classifier.ProGANClassifier.from_pretrained(old)

    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me")
    with pytest.raises(WeightsError, match="notes: exists and holds files a conversion does not write"):
        convert.write_converted(precious, classifier)
    assert (precious / "todo.txt").read_text() == "keep me"


def test_cli_convert_by_entry_and_by_source(tmp_path, monkeypatch, capsys):
    """A torchvision trunk found in torch hub's cache converts under its entry name; --src converts any file."""
    import torchvision

    from engine.nets.perceptual import LPIPSNetwork
    from shell.commands.weights import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trunk = {k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items()
                 if k.startswith("features.")}
    torch.save(trunk, hub / "alexnet-owt-7be5be79.pth")
    weights_dir = tmp_path / "weights"
    base = ["--dir", str(weights_dir), "--manifest", "engine/weights/manifest.toml"]
    assert main(base + ["convert", "alexnet"]) == 0
    assert f"(from {hub / 'alexnet-owt-7be5be79.pth'})" in capsys.readouterr().out
    network = LPIPSNetwork.from_pretrained(weights_dir / "alexnet")
    assert network.config.net == "alex"
    assert main(base + ["convert", "vgg16"]) == 1
    assert "not installed; run `emoji3d weights fetch vgg16`" in capsys.readouterr().err

    assert main(base + ["convert", "--src", str(hub / "alexnet-owt-7be5be79.pth"), "--kind", "arcface",
                 "--out", str(tmp_path / "wrong")]) == 2
    assert "alexnet-owt-7be5be79.pth" in capsys.readouterr().err
    assert main(base + ["convert", "--src", str(hub / "alexnet-owt-7be5be79.pth"), "--kind", "torchvision",
                 "--out", str(tmp_path / "right")]) == 0
    assert LPIPSNetwork.from_pretrained(tmp_path / "right").config.net == "alex"
