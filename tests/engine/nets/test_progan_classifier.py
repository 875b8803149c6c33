"""CelebA-HQ attribute classifiers (ProGAN D_paper) against outputs of NVIDIA's own TensorFlow code.

``data/progan_classifier/reference.*`` were made by ``make_reference.py`` running the
official ``training/networks_progan.py`` in TensorFlow on recipe weights; see that file.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle

import numpy as np
import pytest
import torch

from emoji3d.errors import WeightsError
from engine.weights import core as W
from engine.nets import progan_classifier as P
from tests.engine.nets.progan_reference import REFERENCE, SCORES, recipe_input, recipe_variables, tf_pickle


def tolerance(ref: np.ndarray) -> float:
    # The logits are small (random weights); a relative bound keeps the check meaningful.
    return 1e-4 * max(1e-2, float(np.abs(ref).max()))


@pytest.mark.parametrize("case_name", sorted(REFERENCE))
def test_matches_official_tensorflow_d_paper(case_name):
    case = REFERENCE[case_name]
    variables = {k: torch.from_numpy(v) for k, v in recipe_variables(case).items()}
    net = P.from_variables(variables, case["static_kwargs"], source=case_name)
    assert sum(p.numel() for p in net.parameters()) + 1 == case["parameters"]  # + the lod scalar
    with torch.no_grad():
        got = net(recipe_input(case)).numpy()
    ref = SCORES[f"{case_name}__scores"]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= tolerance(ref), (case_name, np.abs(got - ref).max())


def test_released_architecture_is_inferred_from_tensors_alone():
    """The celebahq pickles' D_paper defaults (256 px, fmap 8192/512, fused, mbstd 4): 23.05 M parameters."""
    case = REFERENCE["celebahq_256"]
    shapes = {n: torch.zeros(s) for n, s in case["variables"]}
    cfg = P.config_from_variables(shapes, {"num_channels": 3, "resolution": 256})
    assert (cfg.resolution, cfg.fmap_base, cfg.fmap_max, cfg.fused_scale, cfg.mbstd_group_size) == (256, 8192, 512, True, 4)
    assert sum(p.numel() for p in P.ProGANClassifier(cfg).parameters()) + 1 == case["parameters"]  # 23.05 M


# ----------------------------------------------------------------------------- the pickle format

def _small_case() -> tuple[str, dict]:
    return "fused_mbstd4_32px", REFERENCE["fused_mbstd4_32px"]


def test_tf_pickle_is_read_as_data_converted_and_loaded(tmp_path):
    name, case = _small_case()
    pkl = tmp_path / "celebahq-classifier-19-eyeglasses.pkl"
    pkl.write_bytes(tf_pickle(list(recipe_variables(case).items()), case["static_kwargs"]))
    net = W.load_tf_network_pickle(pkl)
    assert net.build_func_name == "D_paper" and net.static_kwargs == case["static_kwargs"]
    assert list(net.variables) == [n for n, _ in case["variables"]]

    folder = W.convert(pkl, tmp_path / "attribute_glasses", "tf_network_pickle")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["network"]["build_func_name"] == "D_paper" and cfg["files"] == {"variables": "variables.safetensors"}
    clf = P.load_classifier(folder)
    with torch.no_grad():
        got = clf(recipe_input(case)).numpy()
    ref = SCORES[f"{name}__scores"]
    assert np.abs(got - ref).max() <= tolerance(ref)


class _RunsCode:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_tf_pickles_are_refused_and_nothing_runs(tmp_path):
    _, case = _small_case()
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(tf_pickle([("4x4/Dense1/weight", _RunsCode(marker))], case["static_kwargs"]))
    with pytest.raises(W.UnsafePickle, match="posix.system|os.system"):
        W.load_tf_network_pickle(evil)
    # Source that would run on import (NVIDIA's loader exec()s it): refused by the audit, never run by us.
    src = f"import os\nos.system('touch {marker}')\ndef D_paper(images_in, labels_in):\n    return images_in\n"
    evil.write_bytes(tf_pickle(list(recipe_variables(case).items()), case["static_kwargs"], build_src=src))
    with pytest.raises(W.UnsafePickle, match="runs a Expr statement"):
        W.load_tf_network_pickle(evil)
    assert W.load_tf_network_pickle(evil, audit_source=False).build_func_name == "D_paper"
    assert not marker.exists()


def test_bad_tf_pickles_name_the_file(tmp_path):
    _, case = _small_case()
    good = tf_pickle(list(recipe_variables(case).items()), case["static_kwargs"])
    p = tmp_path / "celebahq-classifier-00-male.pkl"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match="celebahq-classifier-00-male.pkl: pickle ends early"):
        W.load_tf_network_pickle(p)
    p.write_bytes(tf_pickle([("lod", np.array(["a"], dtype=object))], case["static_kwargs"]))
    with pytest.raises(WeightsError, match="'lod' is a ndarray of dtype object"):
        W.load_tf_network_pickle(p)
    p.write_bytes(pickle.dumps({"g_ema": 1}))
    with pytest.raises(WeightsError, match="not a TensorFlow network pickle"):
        W.load_tf_network_pickle(p)
    p.write_bytes(tf_pickle([], case["static_kwargs"], version=9))
    with pytest.raises(WeightsError, match="version 9"):
        W.load_tf_network_pickle(p)
    # a layout that is not D_paper's: the missing variable is named
    variables = recipe_variables(case)
    del variables["8x8/Conv0/bias"]
    with pytest.raises(WeightsError, match=r"missing 8x8/Conv0/bias"):
        P.from_variables({k: torch.from_numpy(v) for k, v in variables.items()}, case["static_kwargs"], source="x.pkl")
    with pytest.raises(WeightsError, match="not a ProGAN classifier"):
        P.from_variables({"G/weight": torch.zeros(1)}, {}, source="x.pkl")


# ----------------------------------------------------------------------------- scoring as the metric did

def _small_net() -> P.ProGANClassifier:
    _, case = _small_case()
    return P.from_variables({k: torch.from_numpy(v) for k, v in recipe_variables(case).items()}, case["static_kwargs"])


def test_scores_in_consecutive_groups_of_four_like_the_metric():
    net = _small_net()
    x = torch.tanh(torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        got = P.score_in_groups(net, x)
        by_group = torch.cat([net(x[0:4]), net(x[4:8]), net(x[8:10])])[:, 0]
        whole = net(x[:8])[:, 0]  # one call of 8 groups images 0,2,4,6 and 1,3,5,7 (TF's reshape)
    assert got.shape == (10,)
    assert torch.allclose(got, by_group, atol=1e-6)
    assert not torch.allclose(got[:8], whole, atol=1e-4)  # so the grouping is not a detail


def test_generator_images_are_box_downsampled_as_the_metric_does():
    x = torch.randn(2, 3, 64, 64)
    small = P.classifier_input(x, 32)
    assert torch.allclose(small, x.reshape(2, 3, 32, 2, 32, 2).mean(dim=(3, 5)), atol=1e-6)
    assert P.classifier_input(x, 64) is x
    assert P.classifier_input(torch.randn(1, 3, 48, 48), 32).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"expects \[N, 3, 32, 32\]"):
        _small_net()(torch.randn(1, 3, 16, 16))
