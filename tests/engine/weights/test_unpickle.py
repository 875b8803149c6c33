"""The restricted unpickler: malicious pickles refused with nothing run, NVIDIA network pickles
(PyTorch persistence and TensorFlow) read as data, truncated files named, the source audit."""
from __future__ import annotations

import builtins
import os
import pathlib
import pickle
import subprocess

import numpy as np
import pytest
import torch

from emoji3d.errors import WeightsError
from engine.weights import unpickle
from engine.weights.errors import UnsafePickle
from tests.engine.nets.progan_reference import REFERENCE, recipe_variables, tf_pickle
from tests.engine.weights.nvidia_pickles import Reduce, fake_nvidia_modules, network_source, persistent_class

NET_SRC = network_source("MappingNetwork", "Generator")


def _persistent_pickle(persistence, meta) -> bytes:
    return pickle.dumps({"G_ema": Reduce(persistence._reconstruct_persistent_obj, (meta,))}, protocol=4)


def _malicious_pickles(marker: pathlib.Path, persistence) -> dict[str, bytes]:
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    out = {
        "os.system": pickle.dumps(Reduce(os.system, (f"touch {marker}",))),
        "builtins.exec": pickle.dumps(Reduce(builtins.exec, (code,))),
        "builtins.eval": pickle.dumps(Reduce(builtins.eval, (code,))),
        "nested in a dict": pickle.dumps({"G": [1, 2, Reduce(builtins.exec, (code,))]}),
        "subprocess.Popen": pickle.dumps(Reduce(subprocess.Popen, (["touch", str(marker)],))),
        # a lower-case (function) name from an NVIDIA module is not a data class: refused
        "torch_utils function": b"\x80\x04ctorch_utils.misc\nrun_anything\n(tR.",
    }
    for label, src in {
        "module_src top level": f"import os\n{code}\nclass Generator:\n    pass\n",
        "module_src class body": f"class Generator:\n    _x = {code}\n",
        "module_src assignment": f"_payload = {code}\nclass Generator:\n    pass\n",
        "module_src missing class": "x = 1\n",
    }.items():
        meta = dict(type="class", version=6, module_src=src, class_name="Generator", state={"_init_kwargs": {}})
        out[label] = _persistent_pickle(persistence, meta)
    return out


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "MARKER"
    with fake_nvidia_modules() as (persistence, _):
        blobs = _malicious_pickles(marker, persistence)
    for label, blob in blobs.items():
        path = tmp_path / f"{label.replace(' ', '_')}.pkl"
        path.write_bytes(blob)
        with pytest.raises(UnsafePickle) as ei:
            unpickle.load_nvidia_pickle(path)
        assert str(path) in str(ei.value), label
        assert ei.value.key == "weights_unsafe_pickle"
        assert not marker.exists(), f"{label}: payload ran"


def test_valid_nvidia_style_pickle_gives_state_dict_kwargs_and_attributes(tmp_path):
    with fake_nvidia_modules() as (persistence, util):
        mapping_cls = persistent_class(persistence, util.EasyDict, "MappingNetwork", NET_SRC)
        generator_cls = persistent_class(persistence, util.EasyDict, "Generator", NET_SRC)
        g = torch.Generator().manual_seed(0)
        net = generator_cls(8, 16, mapping_kwargs=util.EasyDict(num_layers=2, lr_multiplier=0.01))
        net.mapping = mapping_cls(8, 16)
        net.mapping.fc0 = torch.nn.Linear(8, 16)
        net.mapping.register_buffer("w_avg", torch.randn(16, generator=g))
        net.decoder = torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.Softplus(), torch.nn.Linear(4, 2))
        net.register_buffer("scratch", torch.zeros(3), persistent=False)
        net.weight = torch.nn.Parameter(torch.randn(2, 3, generator=g))
        net.neural_rendering_resolution = 128  # a plain attribute, as EG3D's training loop sets it
        net.requires_grad_(False)
        expected = {k: v.clone() for k, v in net.state_dict().items()}
        blob = pickle.dumps({"G_ema": net, "training_set_kwargs": util.EasyDict(resolution=512, use_labels=True),
                             "augment_pipe": None}, protocol=4)
    path = tmp_path / "net.pkl"
    path.write_bytes(blob)
    with pytest.raises(ModuleNotFoundError):  # the official modules are gone, and the reader needs none
        pickle.loads(blob)

    pickled = unpickle.load_nvidia_pickle(path)
    got = pickled.networks["G_ema"]
    assert got.class_name == "Generator"
    assert got.init_args == [8, 16]
    assert got.init_kwargs == {"mapping_kwargs": {"num_layers": 2, "lr_multiplier": 0.01}}
    assert got.attributes["neural_rendering_resolution"] == 128 and "training" in got.attributes
    assert not any(k.startswith("_") for k in got.attributes)
    assert list(got.state_dict) == list(expected)  # same order, non-persistent buffer excluded
    for k, v in expected.items():
        assert torch.equal(got.state_dict[k], v), k
    assert pickled.extras["training_set_kwargs"] == {"resolution": 512, "use_labels": True}


def test_truncated_or_garbage_pickle_names_file(tmp_path):
    blob = pickle.dumps({"a": torch.ones(100)}, protocol=4)
    path = tmp_path / "ffhqrebalanced512-128.pkl"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(WeightsError, match="ffhqrebalanced512-128.pkl"):
        unpickle.load_nvidia_pickle(path)
    path.write_bytes(b"\x00not a pickle at all")
    with pytest.raises(WeightsError, match="ffhqrebalanced512-128.pkl"):
        unpickle.load_nvidia_pickle(path)


def test_audit_accepts_official_style_source_with_bom():
    # stylegan2-ada's training/networks.py starts with a UTF-8 byte-order mark
    unpickle.audit_module_src("\ufeff" + NET_SRC, "Generator", "net.pkl")
    with pytest.raises(UnsafePickle, match="does not define class Synthesis"):
        unpickle.audit_module_src(NET_SRC, "Synthesis", "net.pkl")
    unpickle.audit_module_src(NET_SRC + "\nif __name__ == '__main__':\n    main()\n", "Generator", "net.pkl")


def test_source_audit_can_be_skipped_but_nothing_runs(tmp_path):
    marker = tmp_path / "MARKER"
    src = f"open({str(marker)!r}, 'w').write('x')\nclass Generator:\n    pass\n"
    meta = dict(type="class", version=6, module_src=src, class_name="Generator",
                state={"_init_kwargs": {"a": 1}, "_modules": {}})
    path = tmp_path / "g.pkl"
    with fake_nvidia_modules() as (persistence, _):
        path.write_bytes(_persistent_pickle(persistence, meta))
    with pytest.raises(UnsafePickle):
        unpickle.load_nvidia_pickle(path)
    pickled = unpickle.load_nvidia_pickle(path, audit_source=False)
    assert pickled.networks["G_ema"].init_kwargs == {"a": 1} and pickled.networks["G_ema"].state_dict == {}
    assert not marker.exists()


# ----------------------------------------------------------------------------- TensorFlow network pickles

CASE = REFERENCE["fused_mbstd4_32px"]


class _RunsCode:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_tf_pickle_is_read_as_data(tmp_path):
    path = tmp_path / "celebahq-classifier-19-eyeglasses.pkl"
    variables = recipe_variables(CASE)
    path.write_bytes(tf_pickle(list(variables.items()), CASE["static_kwargs"]))
    network = unpickle.load_tf_network_pickle(path)
    assert network.build_func_name == "D_paper" and network.static_kwargs == CASE["static_kwargs"]
    assert list(network.variables) == [n for n, _ in CASE["variables"]]
    for name, value in variables.items():
        assert torch.equal(network.variables[name], torch.from_numpy(value)), name


def test_malicious_tf_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(tf_pickle([("4x4/Dense1/weight", _RunsCode(marker))], CASE["static_kwargs"]))
    with pytest.raises(UnsafePickle, match="posix.system|os.system"):
        unpickle.load_tf_network_pickle(evil)
    # Source that would run on import (NVIDIA's loader exec()s it): refused by the audit, never run by us.
    src = f"import os\nos.system('touch {marker}')\ndef D_paper(images_in, labels_in):\n    return images_in\n"
    evil.write_bytes(tf_pickle(list(recipe_variables(CASE).items()), CASE["static_kwargs"], build_src=src))
    with pytest.raises(UnsafePickle, match="runs a Expr statement"):
        unpickle.load_tf_network_pickle(evil)
    assert unpickle.load_tf_network_pickle(evil, audit_source=False).build_func_name == "D_paper"
    assert not marker.exists()


def test_bad_tf_pickles_name_the_file(tmp_path):
    good = tf_pickle(list(recipe_variables(CASE).items()), CASE["static_kwargs"])
    path = tmp_path / "celebahq-classifier-00-male.pkl"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match="celebahq-classifier-00-male.pkl: pickle ends early"):
        unpickle.load_tf_network_pickle(path)
    path.write_bytes(tf_pickle([("lod", np.array(["a"], dtype=object))], CASE["static_kwargs"]))
    with pytest.raises(WeightsError, match="'lod' is a ndarray of dtype object"):
        unpickle.load_tf_network_pickle(path)
    path.write_bytes(pickle.dumps({"g_ema": 1}))
    with pytest.raises(WeightsError, match="not a TensorFlow network pickle"):
        unpickle.load_tf_network_pickle(path)
    path.write_bytes(tf_pickle([], CASE["static_kwargs"], version=9))
    with pytest.raises(WeightsError, match="version 9"):
        unpickle.load_tf_network_pickle(path)
