"""CelebA-HQ attribute classifiers (ProGAN D_paper) against outputs of NVIDIA's own TensorFlow code.

``data/progan_classifier/reference.*`` were made by ``make_reference.py`` running the
official ``training/networks_progan.py`` in TensorFlow on recipe weights; see that file.
The TensorFlow variables reach the network through their converter
(:func:`engine.weights.progan_layout.from_variables`); the pickle format and the
converted folder are tested in tests/engine/weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.nets import progan_classifier
from engine.weights.progan_layout import from_variables
from tests.engine.nets.progan_reference import REFERENCE, SCORES, recipe_input, recipe_variables


def tolerance(ref: np.ndarray) -> float:
    # The logits are small (random weights); a relative bound keeps the check meaningful.
    return 1e-4 * max(1e-2, float(np.abs(ref).max()))


@pytest.mark.parametrize("case_name", sorted(REFERENCE))
def test_matches_official_tensorflow_d_paper(case_name):
    case = REFERENCE[case_name]
    variables = {k: torch.from_numpy(v) for k, v in recipe_variables(case).items()}
    net = from_variables(variables, case["static_kwargs"], source=case_name)
    assert sum(p.numel() for p in net.parameters()) + 1 == case["parameters"]  # + the lod scalar
    with torch.no_grad():
        got = net(recipe_input(case)).numpy()
    ref = SCORES[f"{case_name}__scores"]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= tolerance(ref), (case_name, np.abs(got - ref).max())


# ----------------------------------------------------------------------------- scoring as the metric did

def _small_net() -> progan_classifier.ProGANClassifier:
    case = REFERENCE["fused_mbstd4_32px"]
    return from_variables({k: torch.from_numpy(v) for k, v in recipe_variables(case).items()}, case["static_kwargs"])


def test_scores_in_consecutive_groups_of_four_like_the_metric():
    net = _small_net()
    x = torch.tanh(torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        got = progan_classifier.score_in_groups(net, x)
        by_group = torch.cat([net(x[0:4]), net(x[4:8]), net(x[8:10])])[:, 0]
        whole = net(x[:8])[:, 0]  # one call of 8 groups images 0,2,4,6 and 1,3,5,7 (TF's reshape)
    assert got.shape == (10,)
    assert torch.allclose(got, by_group, atol=1e-6)
    assert not torch.allclose(got[:8], whole, atol=1e-4)  # so the grouping is not a detail


def test_generator_images_are_box_downsampled_as_the_metric_does():
    x = torch.randn(2, 3, 64, 64)
    small = progan_classifier.classifier_input(x, 32)
    assert torch.allclose(small, x.reshape(2, 3, 32, 2, 32, 2).mean(dim=(3, 5)), atol=1e-6)
    assert progan_classifier.classifier_input(x, 64) is x
    assert progan_classifier.classifier_input(torch.randn(1, 3, 48, 48), 32).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"expects \[N, 3, 32, 32\]"):
        _small_net()(torch.randn(1, 3, 16, 16))
