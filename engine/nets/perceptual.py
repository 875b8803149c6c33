"""LPIPS perceptual distance (Zhang et al. 2018) through the ``lpips`` package.

Conventions
- Images [B,3,H,W] float RGB in [-1, 1]; :func:`lpips_distance` returns [B].
- Nets: ``"vgg"`` (VGG16 trunk, the PTI/e4e choice) and ``"alex"`` (AlexNet).
- Two weight sources, both read with ``torch.load(weights_only=True)`` or from
  safetensors, never downloaded behind the user's back:
  1. the torchvision ImageNet trunk (``vgg16-397923af.pth`` /
     ``alexnet-owt-7be5be79.pth``; manifest entries ``vgg16`` / ``alexnet``),
     searched in this order: the converted folder ``<weights dir>/<name>/``
     (``state.safetensors``), ``<weights dir>/<file>``, then torch hub's
     cache ``$TORCH_HOME/hub/checkpoints/<file>`` (where torchvision itself
     would have put it). If none exists, :class:`engine.weights.core.WeightsMissing`
     names the file and the ``emoji3d weights fetch`` command;
  2. LPIPS' own linear calibration layers, shipped inside the ``lpips``
     package (``lpips/weights/v0.1/<net>.pth``).
- The trunk is built with random initialisation (``pnet_rand=True``) and then
  overwritten, so torchvision is never asked to fetch anything.
"""
from __future__ import annotations

import os
import pathlib
import warnings
from dataclasses import dataclass

import torch

from engine.weights.core import WeightsMissing, load_module_state, load_safetensors, load_torch_checkpoint

BACKBONES = {
    # net -> (manifest entry name, official torchvision file name)
    "vgg": ("vgg16", "vgg16-397923af.pth"),
    "alex": ("alexnet", "alexnet-owt-7be5be79.pth"),
}


@dataclass(frozen=True)
class LPIPSConfig:
    net: str = "vgg"  # "vgg" or "alex"
    version: str = "0.1"


def hub_checkpoint_dir() -> pathlib.Path:
    """Where torchvision/torch.hub keep downloaded checkpoints (honours $TORCH_HOME)."""
    return pathlib.Path(torch.hub.get_dir()) / "checkpoints"


def point_torch_hub(weights_dir: str | os.PathLike) -> pathlib.Path:
    """Make torch.hub (and so torchvision) use ``<weights dir>/torch_hub`` as its cache,
    so any hub file lands beside our weights; returns the checkpoints folder.
    Process-wide: call once at engine start, not from library code."""
    hub = pathlib.Path(weights_dir) / "torch_hub"
    torch.hub.set_dir(str(hub))
    return hub / "checkpoints"


def find_backbone(net: str, weights_dir: str | os.PathLike | None) -> pathlib.Path:
    """Path of the ImageNet trunk weights for ``net``; ``WeightsMissing`` if absent."""
    if net not in BACKBONES:
        raise ValueError(f"LPIPS: net must be one of {sorted(BACKBONES)}, got {net!r}")
    entry, filename = BACKBONES[net]
    candidates = []
    if weights_dir is not None:
        wd = pathlib.Path(weights_dir)
        candidates += [wd / entry / "state.safetensors", wd / filename]
    candidates.append(hub_checkpoint_dir() / filename)
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c) for c in candidates)
    raise WeightsMissing(
        f"LPIPS ({net}) needs the torchvision ImageNet weights {filename}, not found (looked in {where}); "
        f"run `emoji3d weights fetch {entry}`",
        file=filename,
    )


def lpips_linear_path(net: str, version: str = "0.1") -> pathlib.Path:
    import lpips

    return pathlib.Path(lpips.__file__).resolve().parent / "weights" / f"v{version}" / f"{net}.pth"


def _trunk_state(path: pathlib.Path) -> dict[str, torch.Tensor]:
    sd = load_safetensors(path) if path.suffix == ".safetensors" else load_torch_checkpoint(path)
    if not isinstance(sd, dict):
        from emoji3d.errors import WeightsError

        raise WeightsError(f"{path}: expected a state dict", file=str(path))
    return sd


def build_lpips(cfg: LPIPSConfig = LPIPSConfig(), weights_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """An eval-mode, frozen ``lpips.LPIPS`` with the official trunk and linear weights."""
    import lpips

    trunk_path = find_backbone(cfg.net, weights_dir)  # fail before building anything
    lin_path = lpips_linear_path(cfg.net, cfg.version)
    if not lin_path.is_file():
        raise WeightsMissing(f"LPIPS linear weights {lin_path} missing from the lpips package; reinstall lpips", file=str(lin_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation notice
        model = lpips.LPIPS(pretrained=False, net=cfg.net, version=cfg.version, pnet_rand=True, verbose=False)
    trunk = _trunk_state(trunk_path)
    # lpips slices keep torchvision's layer indices: net.sliceK.<i>.* <- features.<i>.*
    mapped = {}
    for k in model.net.state_dict():
        _, idx, pname = k.split(".", 2)
        src = f"features.{idx}.{pname}"
        if src not in trunk:
            from emoji3d.errors import WeightsError

            raise WeightsError(f"{trunk_path}: key {src} missing; is this the torchvision {cfg.net} file?", file=str(trunk_path))
        mapped[k] = trunk[src]
    load_module_state(model.net, mapped, str(trunk_path))
    lin = load_torch_checkpoint(lin_path)  # {"lin<k>.model.1.weight": [1,C,1,1]}
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("lin") and not k.startswith("lins.")}
    bad = sorted(set(expected) ^ set(lin)) + [k for k in expected if k in lin and lin[k].shape != expected[k].shape]
    if bad:
        from emoji3d.errors import WeightsError

        raise WeightsError(f"{lin_path}: LPIPS linear layers do not match ({', '.join(bad[:3])})", file=str(lin_path))
    with torch.no_grad():
        for k, v in lin.items():
            model.get_parameter(k).copy_(v)
    return model.eval().requires_grad_(False)


def lpips_distance(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS distance per image: a, b [B,3,H,W] in [-1,1] → [B]."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"LPIPS: expected two [B,3,H,W] batches of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return model(a, b).reshape(a.shape[0])
