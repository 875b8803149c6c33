"""Checkpoint layouts for StyleGAN2: rosinality stylegan2-pytorch <-> ours (NVlabs names).

Our modules (``engine.nets.stylegan2``) use NVlabs stylegan2-ada parameter
names, so an NVlabs state dict needs no renaming; this module

* recognises a layout from its keys (``detect_layout``),
* converts rosinality ``g_ema`` / ``d`` state dicts to NVlabs names
  (``rosinality_g_to_nvlabs``, ``rosinality_d_to_nvlabs``), and
* infers architecture hyper-parameters (resolution, widths per resolution,
  mapping depth, latent sizes, filter, minibatch-stddev channels) from tensor
  shapes (``infer_g_arch``, ``infer_d_arch``), for either layout.

Correspondence (rosinality -> NVlabs), all values copied unchanged:
both libraries use equalised learning rate with the same runtime scales
(FC: lr_mul/sqrt(fan_in), weights stored divided by lr_mul; conv:
1/sqrt(fan_in)), the same bias-then-lrelu(0.2)*sqrt(2) activation, the same
transposed-conv weight orientation for upsampling convs (no flip), the same
[1,3,3,1] blur paddings, and the to-RGB modulation scale 1/sqrt(fan_in).

G: ``style.{i+1}`` -> ``mapping.fc{i}``; ``input.input[0]`` -> ``synthesis.b4.const``;
``conv1`` -> ``b4.conv1``; ``to_rgb1`` -> ``b4.torgb``; for block ``k`` (res 2^(k+3)):
``convs.{2k}`` -> ``conv0``, ``convs.{2k+1}`` -> ``conv1``, ``to_rgbs.{k}`` -> ``torgb``;
``*.conv.weight[0]`` -> ``weight``; ``*.conv.modulation`` -> ``affine``;
``*.activate.bias`` -> ``bias``; ``*.noise.weight[0]`` -> ``noise_strength``;
``noises.noise_j[0, 0]`` -> ``noise_const`` of the j-th noisy layer;
``to_rgb*.bias.view(-1)`` -> ``torgb.bias``; ``latent_avg`` -> ``mapping.w_avg``.
D: ``convs.0`` -> ``b{R}.fromrgb``; ``convs.i`` (i >= 1, res R/2^(i-1)):
``conv1`` -> ``conv0``, ``conv2`` -> ``conv1``, ``skip`` -> ``skip``;
``final_conv`` -> ``b4.conv``; ``final_linear.0`` -> ``b4.fc``; ``final_linear.1`` -> ``b4.out``.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from emoji3d.errors import WeightsError

__all__ = [
    "detect_layout",
    "rosinality_g_to_nvlabs",
    "rosinality_d_to_nvlabs",
    "infer_g_arch",
    "infer_d_arch",
    "filter_1d_from_2d",
]

StateDict = Mapping[str, torch.Tensor]


def detect_layout(sd: StateDict) -> str:
    """'rosinality_g', 'rosinality_d', 'nvlabs_g', 'nvlabs_d' (raises WeightsError otherwise)."""
    keys = set(sd)
    if "input.input" in keys and "style.1.weight" in keys:
        return "rosinality_g"
    if "final_linear.0.weight" in keys and "convs.0.0.weight" in keys:
        return "rosinality_d"
    if any(k.startswith("synthesis.b4.") for k in keys) and any(k.startswith("mapping.fc0.") for k in keys):
        return "nvlabs_g"
    if "b4.out.weight" in keys and "b4.conv.weight" in keys:
        return "nvlabs_d"
    sample = ", ".join(sorted(keys)[:6])
    raise WeightsError(f"unrecognised StyleGAN2 state dict layout (first keys: {sample})")


def _need(sd: StateDict, key: str) -> torch.Tensor:
    if key not in sd:
        raise WeightsError(f"StyleGAN2 checkpoint is missing tensor '{key}'")
    return sd[key]


def filter_1d_from_2d(k2: torch.Tensor) -> list[float]:
    """Recover the 1D taps of a separable (outer-product) 2D FIR kernel, normalised to sum 1."""
    k2 = k2.detach().to(torch.float64)
    if k2.ndim == 1:
        return (k2 / k2.sum()).tolist()
    k2 = k2 / k2.sum()
    f = k2.sum(dim=0)
    if not torch.allclose(torch.outer(f, f), k2, atol=1e-6):
        raise WeightsError("StyleGAN2 checkpoint: resampling kernel is not separable")
    return [float(v) for v in f]


# --------------------------------------------------------------------------- rosinality -> NVlabs


def _ros_g_levels(sd: StateDict) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.fullmatch(r"to_rgbs\.(\d+)\.conv\.weight", k))]
    return max(idx) + 1 if idx else 0


def rosinality_g_to_nvlabs(sd: StateDict, latent_avg: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Rename/reshape a rosinality ``g_ema`` state dict to our (NVlabs) names."""
    out: dict[str, torch.Tensor] = {}
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        out[f"mapping.fc{n_mlp}.weight"] = sd[f"style.{n_mlp + 1}.weight"]
        out[f"mapping.fc{n_mlp}.bias"] = _need(sd, f"style.{n_mlp + 1}.bias")
        n_mlp += 1
    if n_mlp == 0:
        raise WeightsError("rosinality generator has no mapping layers (style.N.weight)")
    w_dim = out["mapping.fc0.weight"].shape[0]
    if latent_avg is not None:
        la = latent_avg.reshape(-1)
        if la.numel() != w_dim:
            raise WeightsError(f"latent_avg has {la.numel()} values, expected {w_dim}")
        out["mapping.w_avg"] = la.clone()

    def styled(src: str, dst: str, noise_idx: int) -> None:
        w = _need(sd, f"{src}.conv.weight")
        if w.ndim != 5 or w.shape[0] != 1:
            raise WeightsError(f"'{src}.conv.weight' should be [1, out, in, k, k], got {list(w.shape)}")
        out[f"{dst}.weight"] = w[0]
        out[f"{dst}.affine.weight"] = _need(sd, f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = _need(sd, f"{src}.conv.modulation.bias")
        out[f"{dst}.bias"] = _need(sd, f"{src}.activate.bias")
        out[f"{dst}.noise_strength"] = _need(sd, f"{src}.noise.weight").reshape([])
        nz = sd.get(f"noises.noise_{noise_idx}")
        if nz is not None:
            out[f"{dst}.noise_const"] = nz.reshape(nz.shape[-2], nz.shape[-1])

    def to_rgb(src: str, dst: str) -> None:
        w = _need(sd, f"{src}.conv.weight")
        out[f"{dst}.weight"] = w[0]
        out[f"{dst}.affine.weight"] = _need(sd, f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = _need(sd, f"{src}.conv.modulation.bias")
        out[f"{dst}.bias"] = _need(sd, f"{src}.bias").reshape(-1)

    blur = sd.get("convs.0.conv.blur.kernel")
    if blur is not None:  # stored as the 2D kernel times up**2; ours is normalised to sum 1
        out["synthesis.b8.resample_filter"] = (blur / blur.sum()).to(torch.float32)
    out["synthesis.b4.const"] = _need(sd, "input.input")[0]
    styled("conv1", "synthesis.b4.conv1", 0)
    to_rgb("to_rgb1", "synthesis.b4.torgb")
    for k in range(_ros_g_levels(sd)):
        res = 2 ** (k + 3)
        styled(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1)
        styled(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2)
        to_rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb")
    return out


def rosinality_d_to_nvlabs(sd: StateDict) -> dict[str, torch.Tensor]:
    """Rename a rosinality discriminator state dict to our (NVlabs) names."""
    out: dict[str, torch.Tensor] = {}
    n_res = 0
    while f"convs.{n_res + 1}.conv1.0.weight" in sd:
        n_res += 1
    size = 4 * 2 ** n_res
    out[f"b{size}.fromrgb.weight"] = _need(sd, "convs.0.0.weight")
    out[f"b{size}.fromrgb.bias"] = _need(sd, "convs.0.1.bias")
    for i in range(1, n_res + 1):
        res = size // 2 ** (i - 1)
        out[f"b{res}.conv0.weight"] = _need(sd, f"convs.{i}.conv1.0.weight")
        out[f"b{res}.conv0.bias"] = _need(sd, f"convs.{i}.conv1.1.bias")
        out[f"b{res}.conv1.weight"] = _need(sd, f"convs.{i}.conv2.1.weight")
        out[f"b{res}.conv1.bias"] = _need(sd, f"convs.{i}.conv2.2.bias")
        out[f"b{res}.skip.weight"] = _need(sd, f"convs.{i}.skip.1.weight")
    out["b4.conv.weight"] = _need(sd, "final_conv.0.weight")
    out["b4.conv.bias"] = _need(sd, "final_conv.1.bias")
    out["b4.fc.weight"] = _need(sd, "final_linear.0.weight")
    out["b4.fc.bias"] = _need(sd, "final_linear.0.bias")
    out["b4.out.weight"] = _need(sd, "final_linear.1.weight")
    out["b4.out.bias"] = _need(sd, "final_linear.1.bias")
    return out


# --------------------------------------------------------------------------- shape inference (NVlabs names)


def infer_g_arch(sd: StateDict) -> dict:
    """Hyper-parameters readable from an NVlabs-named generator state dict."""
    n_layers = 0
    while f"mapping.fc{n_layers}.weight" in sd:
        n_layers += 1
    if n_layers == 0:
        raise WeightsError("generator state dict has no mapping.fc0.weight")
    w_dim = sd[f"mapping.fc{n_layers - 1}.weight"].shape[0]
    c_dim = sd["mapping.embed.weight"].shape[1] if "mapping.embed.weight" in sd else 0
    embed = sd["mapping.embed.weight"].shape[0] if c_dim else 0
    z_dim = sd["mapping.fc0.weight"].shape[1] - embed
    layer_features = sd["mapping.fc0.weight"].shape[0] if n_layers > 1 else None
    resolutions = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"synthesis\.b(\d+)\.conv1\.weight", k)))
    if not resolutions or resolutions[0] != 4:
        raise WeightsError("generator state dict has no synthesis.b4 block")
    img_resolution = resolutions[-1]
    if resolutions != [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]:
        raise WeightsError(f"generator blocks are not a full power-of-two ladder: {resolutions}")
    channels = {r: int(sd[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in resolutions}
    img_channels = int(_need(sd, f"synthesis.b{img_resolution}.torgb.weight").shape[0])
    torgb_all = all(f"synthesis.b{r}.torgb.weight" in sd for r in resolutions)
    has_skip = any(f"synthesis.b{r}.skip.weight" in sd for r in resolutions)
    architecture = "resnet" if has_skip else ("skip" if torgb_all else "orig")
    use_noise = "synthesis.b4.conv1.noise_strength" in sd
    arch = dict(z_dim=int(z_dim), c_dim=int(c_dim), w_dim=int(w_dim), img_resolution=img_resolution,
                img_channels=img_channels, mapping_layers=n_layers, channels=channels,
                architecture=architecture, use_noise=use_noise)
    if c_dim:
        arch["embed_features"] = int(embed)
    if layer_features is not None and layer_features != w_dim:
        arch["layer_features"] = int(layer_features)
    return arch


def infer_d_arch(sd: StateDict) -> dict:
    """Hyper-parameters readable from an NVlabs-named discriminator state dict."""
    resolutions = sorted((int(m.group(1)) for k in sd if (m := re.fullmatch(r"b(\d+)\.conv0\.weight", k))),
                         reverse=True)
    if not resolutions:
        raise WeightsError("discriminator state dict has no blocks (bN.conv0.weight)")
    img_resolution = resolutions[0]
    channels = {r: int(sd[f"b{r}.conv0.weight"].shape[0]) for r in resolutions}
    channels[4] = int(_need(sd, "b4.conv.weight").shape[0])
    img_channels = int(_need(sd, f"b{img_resolution}.fromrgb.weight").shape[1])
    mbstd_num_channels = int(sd["b4.conv.weight"].shape[1]) - channels[4]
    architecture = "resnet" if f"b{img_resolution}.skip.weight" in sd else (
        "skip" if f"b{resolutions[-1]}.fromrgb.weight" in sd and len(resolutions) > 1 else "orig")
    c_dim = int(sd["mapping.embed.weight"].shape[1]) if "mapping.embed.weight" in sd else 0
    cmap_dim = int(sd["b4.out.weight"].shape[0]) if c_dim else 0
    return dict(img_resolution=img_resolution, img_channels=img_channels, channels=channels,
                mbstd_num_channels=mbstd_num_channels, architecture=architecture, c_dim=c_dim, cmap_dim=cmap_dim)
