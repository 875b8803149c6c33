"""Pickles that describe far more than they hold: shared references repeated over and over
("billion laughs"), objects inside themselves, nesting thousands deep, numbers that ask
for gigabytes. Each is a small file written here; each is refused quickly, with one
sentence naming the file, and nothing expands in memory."""
from __future__ import annotations

import contextlib
import pickle
import sys
import time
import tracemalloc

import pytest
import torch

from engine.weights import unpickle
from engine.weights.errors import UnsafePickle, WeightsError
from tests.engine.weights.cli_run import one_line_refusal, run_weights, write_config
from tests.engine.weights.nvidia_pickles import fake_nvidia_modules, nvidia_pickle_bytes, persistent_network

TENSORS = {"block.weight": torch.arange(6.0).reshape(2, 3), "block.bias": torch.ones(2)}


def _laughs(levels: int = 30, width: int = 10) -> list:
    """10**30 "lol"s as JSON, a few hundred bytes as a pickle."""
    laughs: list = ["lol"]
    for _ in range(levels):
        laughs = [laughs] * width
    return laughs


def _network_pickle(tmp_path, name: str, change=None, **extras) -> tuple:
    """Writes ``{"G": network, **extras}``; ``change(network)`` may alter the network first."""
    with fake_nvidia_modules() as (persistence, util):
        net = persistent_network(persistence, util.EasyDict, "Generator", TENSORS, {"z_dim": 4})
        if change is not None:
            change(net)
        with _deep_recursion():
            blob = nvidia_pickle_bytes({"G": net}, **extras)
    path = tmp_path / name
    path.write_bytes(blob)
    return path, len(blob)


@contextlib.contextmanager
def _deep_recursion(limit: int = 20_000):
    """Python's own pickler recurses once per level; writing the deep test files needs room."""
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(max(saved, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(saved)


def _refused_quickly(path, match: str, error=WeightsError) -> WeightsError:
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(error, match=match) as caught:
            unpickle.load_nvidia_pickle(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 10
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB allocated while reading a {path.stat().st_size} byte file"
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    return caught.value


def test_billion_laughs_in_plain_data_is_refused_without_expanding(tmp_path):
    path, size = _network_pickle(tmp_path, "laughs.pkl", laughs=_laughs())
    _refused_quickly(path, "expands to more than")
    # the laughs alone are a few hundred bytes: the file is the network plus them
    assert len(pickle.dumps(_laughs(), protocol=4)) < 800


def test_billion_laughs_in_constructor_arguments_is_refused(tmp_path):
    path, _ = _network_pickle(tmp_path, "kwargs.pkl",
                              change=lambda net: net._init_kwargs.__setitem__("channels", _laughs()))
    _refused_quickly(path, "expands to more than")


def test_modules_shared_over_and_over_are_refused_before_the_state_dict_is_built(tmp_path):
    def share(net):
        module = torch.nn.Module()
        module.register_buffer("w", torch.zeros(1))
        for _ in range(30):
            parent = torch.nn.Module()
            for i in range(10):
                parent._modules[str(i)] = module
            module = parent
        net._modules["tree"] = module

    path, size = _network_pickle(tmp_path, "modules.pkl", change=share)
    _refused_quickly(path, "more than 100,000 entries")


def test_modest_sharing_is_kept_shared_not_copied(tmp_path):
    shared = {"resolution": 64, "channels": [32, 64, 128]}
    path, _ = _network_pickle(tmp_path, "shared.pkl", first=shared, second=shared)
    got = unpickle.load_nvidia_pickle(path)
    assert got.extras["first"] == shared and got.extras["first"] is got.extras["second"]

    def twice(net):  # one module under two names: listed under both, the same tensor
        net._modules["alias"] = net._modules["block"]

    path, _ = _network_pickle(tmp_path, "alias.pkl", change=twice)
    state = unpickle.load_nvidia_pickle(path).networks["G"].state_dict
    assert set(state) == {"block.weight", "block.bias", "alias.weight", "alias.bias"}
    assert state["alias.weight"].data_ptr() == state["block.weight"].data_ptr()
    assert torch.equal(state["block.weight"], TENSORS["block.weight"])


def test_cyclic_module_gives_one_clear_sentence(tmp_path):
    def loop(net):
        net._modules["block"]._modules["again"] = net._modules["block"]

    path, _ = _network_pickle(tmp_path, "cyclic.pkl", change=loop)
    _refused_quickly(path, "module block.again. contains itself")


def test_cyclic_data_gives_one_clear_sentence(tmp_path):
    def loop(net):
        net._init_kwargs["itself"] = net._init_kwargs

    path, _ = _network_pickle(tmp_path, "cyclic_kwargs.pkl", change=loop)
    _refused_quickly(path, "contains itself")


def test_deep_nesting_is_refused(tmp_path):
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    path, _ = _network_pickle(tmp_path, "deep.pkl", deep=deep)
    _refused_quickly(path, "nested more than 100 levels deep")

    def deep_modules(net):
        module = net._modules["block"]
        for _ in range(300):
            child = torch.nn.Module()
            module._modules["next"] = child
            module = child

    path, _ = _network_pickle(tmp_path, "deep_modules.pkl", change=deep_modules)
    _refused_quickly(path, "nested more than 100 levels deep")


def test_numbers_asking_for_gigabytes_are_refused(tmp_path):
    # bytearray(1 GiB): a 40-byte file
    path = tmp_path / "bytearray.pkl"
    path.write_bytes(b"\x80\x04\x8c\x08builtins\x8c\x09bytearray\x93J\x00\x00\x00\x40\x85R.")
    _refused_quickly(path, "bytearray built from a int", error=UnsafePickle)
    # one float seen as 10**10 of them (stride 0): a few hundred bytes
    path, _ = _network_pickle(tmp_path, "expanded.pkl", huge=torch.zeros(1).expand(100_000, 100_000))
    _refused_quickly(path, "repeats the same memory", error=UnsafePickle)


def _self_module(net):
    net._modules["block"]._modules["again"] = net._modules["block"]


@pytest.mark.parametrize("bomb, says", [
    (dict(laughs=_laughs()), "expands to more than"),
    (dict(change=_self_module), "contains itself"),
])
def test_cli_convert_refuses_a_bomb_in_one_line(tmp_path, bomb, says):
    path, _ = _network_pickle(tmp_path, "ffhqrebalanced512-128.pkl", **bomb)
    proc = run_weights(write_config(tmp_path), "convert", "--src", str(path), "--kind", "eg3d_pickle",
                       "--out", str(tmp_path / "out"), timeout=120)
    assert says in one_line_refusal(proc, "ffhqrebalanced512-128.pkl")
    assert "RecursionError" not in proc.stderr
    assert not (tmp_path / "out").exists()
