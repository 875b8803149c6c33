"""Pretrained folders: every network's from_config / save_pretrained / from_pretrained round trip
(slim sizes), deterministic seeding, and the strict loading errors (config, class, format
version, missing / unexpected / mis-shaped / wrong-dtype tensors, truncated files)."""
from __future__ import annotations

import json

import pytest
import torch

from emoji3d.errors import WeightsError
from engine.nets import arcface, e4e, eg3d, perceptual, progan_classifier, stylegan2
from engine.weights import pretrained
from engine.weights.errors import WeightsMissing
from engine.weights.tensor_files import load_safetensors, save_safetensors


def _images(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _run_stylegan2_generator(net):
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(0))
    return net(z, None, truncation_psi=0.7, noise_mode="const", impl="ref")


def _run_eg3d(net):
    from engine.nets import camera

    c = camera.conditioning_label(1)
    ws = net.mapping(torch.randn(1, 512, generator=torch.Generator().manual_seed(0)), c, truncation_psi=0.7)
    return net.synthesis(ws, c, neural_rendering_resolution=8, depth_resolution=4, depth_resolution_importance=4)["image"]


# (class, config, forward on a fixed input)
NETWORKS = {
    "stylegan2_generator": (stylegan2.StyleGAN2Generator, stylegan2.slim_generator_config(16),
                            _run_stylegan2_generator),
    "stylegan2_discriminator": (stylegan2.StyleGAN2Discriminator, stylegan2.slim_discriminator_config(16),
                                lambda net: net(_images(16), impl="ref")),
    "eg3d": (eg3d.TriPlaneGenerator, eg3d.PRESETS["slim128"], _run_eg3d),
    "e4e": (e4e.E4EModel, e4e.E4EConfig(stylegan_size=4), lambda net: net(_images(256, n=1))),
    "arcface": (arcface.ArcFaceBackbone, arcface.ArcFaceConfig(), lambda net: net(_images(112))),
    "lpips": (perceptual.LPIPSNetwork, perceptual.LPIPSConfig(net="alex"),
              lambda net: net(_images(64), _images(64, seed=1))),
    "progan_classifier": (progan_classifier.ProGANClassifier, progan_classifier.ProGANClassifierConfig(resolution=16),
                          lambda net: net(_images(16, n=4))),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_round_trip_and_seeded_construction(name, tmp_path):
    cls, config, run = NETWORKS[name]
    rng = torch.random.get_rng_state()
    net = cls.from_config(config, seed=1)
    again = cls.from_config(config, seed=1)
    other = cls.from_config(config, seed=2)
    assert torch.equal(torch.random.get_rng_state(), rng), "from_config touched the global RNG"
    own = net.state_dict()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in own.items())
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in own.items())
    assert not net.training and not any(p.requires_grad for p in net.parameters())

    folder = net.save_pretrained(tmp_path / name, source="test")
    header = json.loads((folder / "config.json").read_text())
    assert header["class"] == cls.__name__ and header["format_version"] == pretrained.FORMAT_VERSION
    assert cls.config_class.from_json_dict(json.loads(json.dumps(config.to_json_dict()))) == config
    loaded = cls.from_pretrained(folder)
    assert type(loaded) is cls and loaded.config == config
    back = loaded.state_dict()
    assert list(back) == list(own)
    for key, value in own.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(run(loaded), run(net))


def test_from_config_checks_the_config_type():
    with pytest.raises(TypeError, match="built from a ProGANClassifierConfig"):
        progan_classifier.ProGANClassifier.from_config(arcface.ArcFaceConfig())


# ----------------------------------------------------------------------------- loading errors

SMALL = progan_classifier.ProGANClassifierConfig(resolution=8)
Net = progan_classifier.ProGANClassifier


@pytest.fixture
def folder(tmp_path):
    return Net.from_config(SMALL, seed=0).save_pretrained(tmp_path / "clf")


def _edit_config(folder, **changes):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_missing_folder_or_files_name_the_command(tmp_path, folder):
    with pytest.raises(WeightsMissing, match=r"nothing.*no config.json.*emoji3d weights convert"):
        Net.from_pretrained(tmp_path / "nothing")
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsMissing, match="model.safetensors: file not found"):
        Net.from_pretrained(folder)


def test_corrupt_config_and_unknown_fields(folder):
    _edit_config(folder, config={**SMALL.to_json_dict(), "colour": "red"})
    with pytest.raises(WeightsError, match=r"config.json: unknown ProGANClassifierConfig field\(s\) colour"):
        Net.from_pretrained(folder)
    _edit_config(folder, config={k: v for k, v in SMALL.to_json_dict().items() if k != "fmap_max"})
    with pytest.raises(WeightsError, match=r"config.json: ProGANClassifierConfig field\(s\) missing: fmap_max"):
        Net.from_pretrained(folder)
    _edit_config(folder, config={**SMALL.to_json_dict(), "resolution": 12})
    with pytest.raises(WeightsError, match="config.json: invalid ProGANClassifierConfig.*power of two"):
        Net.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json: corrupt config.json"):
        Net.from_pretrained(folder)


def test_wrong_class_is_refused(folder, tmp_path):
    with pytest.raises(WeightsError, match="holds a ProGANClassifier, not a ArcFaceBackbone"):
        arcface.ArcFaceBackbone.from_pretrained(folder)
    pretrained.write_index(tmp_path / "index", {"first": Net.from_config(SMALL, seed=0)})
    assert pretrained.read_index(tmp_path / "index") == {"first": "ProGANClassifier"}
    with pytest.raises(WeightsError, match="holds an index of first, not a ProGANClassifier"):
        Net.from_pretrained(tmp_path / "index")
    assert Net.from_pretrained(tmp_path / "index" / "first").config == SMALL
    with pytest.raises(WeightsError, match="not an index of networks"):
        pretrained.read_index(folder)


def test_other_format_versions_are_refused_with_what_to_do(folder):
    _edit_config(folder, format_version=3)
    with pytest.raises(WeightsError, match="format version 3.*newer emoji3d"):
        Net.from_pretrained(folder)
    assert pretrained.folder_state(folder) == "outdated"
    _edit_config(folder, format_version=1)
    with pytest.raises(WeightsError, match="format version 1.*older emoji3d.*emoji3d weights convert"):
        Net.from_pretrained(folder)
    # What the first converter wrote: groups of official tensors beside {"converted_format": 1, ...}.
    (folder / "config.json").write_text(json.dumps({"converted_format": 1, "kind": "tf_network_pickle",
                                                    "files": {"variables": "variables.safetensors"}}))
    with pytest.raises(WeightsError, match="older emoji3d .converted format 1.*run `emoji3d weights convert`"):
        Net.from_pretrained(folder)
    assert pretrained.folder_state(folder) == "outdated"
    (folder / "config.json").write_text(json.dumps({"class_name": "training.triplane.TriPlaneGenerator"}))
    with pytest.raises(WeightsError, match="not a pretrained folder"):
        Net.from_pretrained(folder)
    assert pretrained.folder_state(folder) == "invalid"


def _edit_tensors(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_safetensors(path)
    edit(tensors)
    save_safetensors(tensors, path)


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("epilogue.dense1.bias"), r"1 missing keys: epilogue.dense1.bias"),
    (lambda t: t.update(extra=torch.zeros(2)), r"1 unexpected keys: extra"),
    (lambda t: t.update({"epilogue.dense1.bias": torch.zeros(3)}),
     r"1 shape mismatches: epilogue.dense1.bias: file \(3,\), model \(1,\)"),
    (lambda t: t.update({"lod": t["lod"].double()}), r"1 dtype mismatches: lod: file torch.float64, model torch.float32"),
])
def test_tensors_must_fit_exactly(folder, edit, match):
    _edit_tensors(folder, edit)
    with pytest.raises(WeightsError, match=f"clf/model.safetensors: does not fit ProGANClassifier: {match}") as ei:
        Net.from_pretrained(folder)
    assert ei.value.key == "weights_invalid"


def test_all_problems_are_reported_at_once(folder):
    def edit(tensors):
        tensors.pop("epilogue.dense1.bias")
        tensors.pop("epilogue.dense1.weight")
        tensors["surplus"] = torch.zeros(1)

    _edit_tensors(folder, edit)
    with pytest.raises(WeightsError, match=r"2 missing keys: epilogue.dense1.weight, epilogue.dense1.bias; "
                                           r"1 unexpected keys: surplus"):
        Net.from_pretrained(folder)


def test_truncated_safetensors_names_the_file(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="clf/model.safetensors: corrupt or truncated"):
        Net.from_pretrained(folder)


def test_a_meta_module_is_not_saved(tmp_path):
    with torch.device("meta"):
        net = Net(SMALL)
    with pytest.raises(ValueError, match="meta device"):
        net.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()
