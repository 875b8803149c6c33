"""LPIPS network: converted from a torchvision trunk file, the same distances as the lpips package
given the same weights, no download ever attempted; input checks; a random (slim) network's
distances are non-negative like real LPIPS'."""
from __future__ import annotations

import pytest
import torch
import torchvision

import lpips
from engine.nets.perceptual import LPIPSConfig, LPIPSNetwork
from engine.weights.convert import convert


@pytest.fixture(autouse=True)
def no_downloads(tmp_path, monkeypatch):
    """An empty torch hub cache, and torchvision/torch.hub downloads turned into failures."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _trunk(net: str, seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchvision initialises with the global RNG
        model = torchvision.models.vgg16(weights=None) if net == "vgg" else torchvision.models.alexnet(weights=None)
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


def _reference(net: str, trunk: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The lpips package's own model (its bundled linear layers) with the same trunk."""
    ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    ref.net.load_state_dict({k: trunk["features." + k.split(".", 1)[1]] for k in ref.net.state_dict()})
    return ref.eval()


def _images(seed: int, size: int):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=g) * 2 - 1, torch.rand(2, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("net, filename, size", [("alex", "alexnet-owt-7be5be79.pth", 64),
                                                 ("vgg", "vgg16-397923af.pth", 32)])
def test_converted_network_matches_lpips_package(tmp_path, net, filename, size):
    trunk = _trunk(net, 0)
    torch.save(trunk, tmp_path / filename)
    model = LPIPSNetwork.from_pretrained(convert(tmp_path / filename, tmp_path / "converted", "torchvision"))
    assert model.config == LPIPSConfig(net=net)
    assert not any(p.requires_grad for p in model.parameters())
    a, b = _images(1, size)
    with torch.no_grad():
        d = model(a, b)
        ref = _reference(net, trunk)(a, b).reshape(2)
        same = model(a, a)
        swapped = model(b, a)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, ref, atol=1e-6, rtol=1e-5)
    assert torch.allclose(same, torch.zeros(2), atol=1e-7)
    assert torch.allclose(d, swapped, atol=1e-6)


def test_inputs_are_checked():
    model = LPIPSNetwork.from_config(LPIPSConfig(net="alex"), seed=0)
    with pytest.raises(ValueError, match="equal shape"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPSConfig(net="squeeze")


def test_random_network_distances_are_non_negative():
    model = LPIPSNetwork.from_config(LPIPSConfig(net="alex"), seed=3)
    a, b = _images(2, 64)
    with torch.no_grad():
        d = model(a, b)
    assert (d > 0).all() and torch.allclose(model(a, a), torch.zeros(2), atol=1e-7)
