"""LPIPS wrapper: clear error without the torchvision trunk file, no download,
and the same distances as the lpips package given the same weights."""
from __future__ import annotations

import pytest
import torch
import torchvision

import lpips
from engine.weights import core as W
from engine.nets.perceptual import LPIPSConfig, build_lpips, find_backbone, hub_checkpoint_dir, lpips_distance


@pytest.fixture(autouse=True)
def no_downloads(tmp_path, monkeypatch):
    """An empty torch hub cache, and torchvision/torch.hub downloads turned into failures."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _trunk(net: str, seed: int) -> dict[str, torch.Tensor]:
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


@pytest.mark.parametrize("net, entry, filename", [("alex", "alexnet", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16", "vgg16-397923af.pth")])
def test_missing_trunk_is_a_clear_error(tmp_path, net, entry, filename):
    with pytest.raises(W.WeightsMissing) as ei:
        build_lpips(LPIPSConfig(net), tmp_path / "weights")
    msg = str(ei.value)
    assert filename in msg and f"emoji3d weights fetch {entry}" in msg
    assert ei.value.key == "weights_missing"


@pytest.mark.parametrize("net, filename, size", [("alex", "alexnet-owt-7be5be79.pth", 64), ("vgg", "vgg16-397923af.pth", 32)])
def test_matches_lpips_package(tmp_path, net, filename, size):
    wd = tmp_path / "weights"
    wd.mkdir()
    trunk = _trunk(net, 0)
    torch.save(trunk, wd / filename)
    model = build_lpips(LPIPSConfig(net), wd)
    assert not any(p.requires_grad for p in model.parameters())
    a, b = _images(1, size)
    with torch.no_grad():
        d = lpips_distance(model, a, b)
        ref = _reference(net, trunk)(a, b).reshape(2)
        same = lpips_distance(model, a, a)
        swapped = lpips_distance(model, b, a)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, ref, atol=1e-6, rtol=1e-5)
    assert torch.allclose(same, torch.zeros(2), atol=1e-7)
    assert torch.allclose(d, swapped, atol=1e-6)


def test_converted_safetensors_and_hub_cache_are_found(tmp_path):
    wd = tmp_path / "weights"
    wd.mkdir()
    trunk = _trunk("alex", 2)
    src = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(trunk, src)
    # 1) torch hub's cache (as if torchvision had downloaded it earlier)
    hub = hub_checkpoint_dir()
    hub.mkdir(parents=True)
    (hub / src.name).write_bytes(src.read_bytes())
    assert find_backbone("alex", wd) == hub / src.name
    a, b = _images(3, 64)
    with torch.no_grad():
        d_hub = lpips_distance(build_lpips(LPIPSConfig("alex"), wd), a, b)
    # 2) the converted safetensors take precedence
    W.convert(src, wd / "alexnet", "torchvision")
    assert find_backbone("alex", wd) == wd / "alexnet" / "state.safetensors"
    with torch.no_grad():
        d_conv = lpips_distance(build_lpips(LPIPSConfig("alex"), wd), a, b)
    assert torch.allclose(d_hub, d_conv, atol=1e-7)


def test_point_torch_hub_redirects_the_cache(tmp_path):
    from engine.nets.perceptual import point_torch_hub

    saved = torch.hub._hub_dir  # None = follow $TORCH_HOME
    try:
        ckpt = point_torch_hub(tmp_path / "w")
        assert hub_checkpoint_dir() == ckpt == tmp_path / "w" / "torch_hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        torch.save(_trunk("alex", 0), ckpt / "alexnet-owt-7be5be79.pth")
        assert find_backbone("alex", None) == ckpt / "alexnet-owt-7be5be79.pth"
    finally:
        torch.hub._hub_dir = saved


def test_wrong_file_and_bad_inputs(tmp_path):
    wd = tmp_path / "weights"
    wd.mkdir()
    torch.save({"classifier.1.weight": torch.zeros(2, 2)}, wd / "alexnet-owt-7be5be79.pth")
    with pytest.raises(W.WeightsError, match="alexnet-owt-7be5be79.pth.*features.0.weight"):
        build_lpips(LPIPSConfig("alex"), wd)
    with pytest.raises(ValueError, match="net must be"):
        find_backbone("squeeze", wd)
    torch.save(_trunk("alex", 0), wd / "alexnet-owt-7be5be79.pth")
    model = build_lpips(LPIPSConfig("alex"), wd)
    with pytest.raises(ValueError, match="equal shape"):
        lpips_distance(model, torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 32, 32))
