"""Shared helpers: the ProGAN classifier reference (made by NVIDIA's code) and NVIDIA-format TF pickles."""
from __future__ import annotations

import json
import pathlib
import pickle
import sys
import types

import numpy as np
import torch

DATA = pathlib.Path(__file__).resolve().parent / "data" / "progan_classifier"
REFERENCE = json.loads((DATA / "reference.json").read_text())["cases"]
SCORES = dict(np.load(DATA / "reference.npz"))


def recipe_variables(case: dict) -> dict[str, np.ndarray]:
    """The recipe of make_reference.py: N(0,1) weights, 0.1·N(0,1) biases, in TF creation order."""
    rng = np.random.default_rng(case["seed"])
    out = {}
    for name, shape in case["variables"]:
        if name == "lod":
            out[name] = np.array(case["lod"], dtype=np.float32)
            continue
        t = rng.standard_normal(shape, dtype=np.float32)
        out[name] = 0.1 * t if name.endswith("/bias") else t
    return out


def recipe_input(case: dict) -> torch.Tensor:
    kw = case["static_kwargs"]
    shape = [case["batch"], kw["num_channels"], kw["resolution"], kw["resolution"]]
    return torch.from_numpy(np.tanh(np.random.default_rng(case["seed"] + 1).standard_normal(shape, dtype=np.float32)))


def _network_class():
    """A class that pickles as NVIDIA's ``dnnlib.tflib.network.Network`` (state dict via __getstate__)."""
    module = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, state):
            self._state = state

        def __getstate__(self):
            return self._state

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = Network.__name__ = "Network"
    module.Network = Network
    return module, Network


BUILD_SRC = "import numpy as np\nimport tensorflow as tf\n\ndef D_paper(images_in, labels_in, **kwargs):\n    return images_in\n"


def tf_pickle(variables: list, static_kwargs: dict, build_src: str = BUILD_SRC, func: str = "D_paper",
              version: int = 3) -> bytes:
    module, network = _network_class()
    state = {"version": version, "name": "D", "static_kwargs": static_kwargs, "components": {},
             "build_module_src": build_src, "build_func_name": func, "variables": variables}
    added = [m for m in ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network") if m not in sys.modules]
    for m in added:
        sys.modules[m] = module if m == "dnnlib.tflib.network" else types.ModuleType(m)
    try:
        return pickle.dumps(network(state), protocol=4)
    finally:
        for m in added:
            del sys.modules[m]


def install_classifier(weights_dir: pathlib.Path, attribute: str, case_name: str = "fused_mbstd4_32px") -> pathlib.Path:
    """Write an NVIDIA-format pickle of a reference case and convert it as ``weights convert`` would."""
    from engine.weights.convert import convert

    case = REFERENCE[case_name]
    weights_dir.mkdir(parents=True, exist_ok=True)
    pkl = weights_dir / f"{attribute}.pkl"
    pkl.write_bytes(tf_pickle(list(recipe_variables(case).items()), case["static_kwargs"]))
    return convert(pkl, weights_dir / f"attribute_{attribute}", "tf_network_pickle")
