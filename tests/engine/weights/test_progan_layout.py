"""ProGAN classifier variables (TensorFlow names) -> ProGANClassifier: the architecture from tensor
shapes and static_kwargs, and named errors for variables that do not fit D_paper's layout."""
from __future__ import annotations

import pytest
import torch

from emoji3d.errors import WeightsError
from engine.nets.progan_classifier import ProGANClassifier
from engine.weights.progan_layout import config_from_variables, from_variables, tf_names
from tests.engine.nets.progan_reference import REFERENCE, recipe_variables


def test_released_architecture_is_inferred_from_tensors_alone():
    """The celebahq pickles' D_paper defaults (256 px, fmap 8192/512, fused, mbstd 4): 23.05 M parameters."""
    case = REFERENCE["celebahq_256"]
    shapes = {n: torch.zeros(s) for n, s in case["variables"]}
    cfg = config_from_variables(shapes, {"num_channels": 3, "resolution": 256})
    assert (cfg.resolution, cfg.fmap_base, cfg.fmap_max, cfg.fused_scale, cfg.mbstd_group_size) == (256, 8192, 512, True, 4)
    assert sum(p.numel() for p in ProGANClassifier(cfg).parameters()) + 1 == case["parameters"]  # + the lod scalar
    assert set(tf_names(cfg)) == set(shapes)


def test_every_variable_lands_in_the_network():
    case = REFERENCE["fused_mbstd4_32px"]
    variables = {k: torch.from_numpy(v) for k, v in recipe_variables(case).items()}
    net = from_variables(variables, case["static_kwargs"], source="x.pkl")
    state = net.state_dict()
    for tf_name, key in tf_names(net.config).items():
        assert torch.equal(state[key], variables[tf_name]), tf_name


def test_variables_that_do_not_fit_are_named():
    case = REFERENCE["fused_mbstd4_32px"]
    variables = {k: torch.from_numpy(v) for k, v in recipe_variables(case).items()}
    del variables["8x8/Conv0/bias"]
    with pytest.raises(WeightsError, match=r"x.pkl: wrong layout .*missing 8x8/Conv0/bias"):
        from_variables(variables, case["static_kwargs"], source="x.pkl")
    with pytest.raises(WeightsError, match="x.pkl: not a ProGAN classifier"):
        from_variables({"G/weight": torch.zeros(1)}, {}, source="x.pkl")
    with pytest.raises(WeightsError, match="static_kwargs say resolution 64, the variables 32"):
        from_variables({k: torch.from_numpy(v) for k, v in recipe_variables(case).items()},
                       {**case["static_kwargs"], "resolution": 64}, source="x.pkl")
