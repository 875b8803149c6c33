"""Loading the pipeline's networks: the converted-weights layout and the slim fallback."""
import json

import pytest
import torch
from safetensors.torch import load_file

from engine.avatar import networks
from engine.weights.core import WeightsMissing, _write_converted


def test_eg3d_loads_from_the_folder_weights_convert_writes(tmp_path, reference_fixtures):
    fixture = reference_fixtures / "eg3d_slim"
    cfg = json.loads((fixture / "config.json").read_text())
    sd = load_file(str(fixture / "G_official_keys.safetensors"))
    folder = tmp_path / "eg3d_ffhq"
    # Exactly what `emoji3d weights convert` writes for an NVIDIA pickle (one group per network).
    _write_converted(folder, {"kind": "eg3d_pickle", "source": "ffhqrebalanced512-128.pkl",
                              "networks": {"G_ema": {"class_name": cfg["class_name"], "init_args": [],
                                                     "init_kwargs": cfg["init_kwargs"]}}}, {"G_ema": sd})
    G = networks.eg3d_from_converted(folder)
    assert G.config.neural_rendering_resolution == networks.EG3D_NEURAL_RESOLUTION
    io = load_file(str(fixture / "io.safetensors"))
    with torch.no_grad():
        planes = G.planes(io["ws"])
    ref = io["planes_every4th_pixel"]
    got = planes.reshape(planes.shape[0], -1, *planes.shape[-2:])[:, :, ::4, ::4].reshape(ref.shape)
    assert float((got - ref).abs().max()) <= 1e-3 * max(1.0, float(ref.abs().max()))


def test_missing_pretrained_weights_are_named_and_auto_falls_back_to_slim(tmp_path, caplog):
    assert not networks.pretrained_available(tmp_path)
    with pytest.raises(WeightsMissing, match="emoji3d weights fetch"):
        networks.load_networks(tmp_path, preset="pretrained")
    nets = networks.load_networks(tmp_path, preset="auto")
    assert nets.preset == "slim"
    assert "USING SLIM RANDOM WEIGHTS" in caplog.text
