"""StyleGAN2 checkpoint layouts (rosinality stylegan2-pytorch, NVlabs) -> our networks.

Our modules (``engine.nets.stylegan2``) use NVlabs stylegan2-ada parameter
names, so an NVlabs state dict needs no renaming; this module

* recognises a layout from its keys (``detect_layout``),
* converts rosinality ``g_ema`` / ``d`` state dicts to NVlabs names
  (``rosinality_g_to_nvlabs``, ``rosinality_d_to_nvlabs``),
* infers architecture hyper-parameters (resolution, widths per resolution,
  mapping depth, latent sizes, filter, minibatch-stddev channels) from tensor
  shapes (``infer_g_arch``, ``infer_d_arch``), and
* builds the typed networks from a checkpoint (``networks_from_checkpoint``):
  widths and resolution always come from the tensors, other settings from
  NVlabs' ``init_kwargs`` when a pickle provides them.

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

from engine.weights.errors import WeightsError

__all__ = [
    "detect_layout",
    "rosinality_g_to_nvlabs",
    "rosinality_d_to_nvlabs",
    "infer_g_arch",
    "infer_d_arch",
    "filter_1d_from_2d",
    "generator_config",
    "discriminator_config",
    "networks_from_checkpoint",
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


# --------------------------------------------------------------------------- typed configs and networks

NVLABS_CONV_CLAMP = 256  # NVlabs' default for SynthesisBlock / DiscriminatorBlock when a pickle omits it
NVLABS_NUM_FP16_RES = 4


def generator_config(sd: StateDict, init_kwargs: Mapping | None = None):
    """The generator's config: architecture from the NVlabs-named tensors, run-time settings
    (mapping lr, clamp, fp16 blocks) from NVlabs ``init_kwargs`` when given, else rosinality's
    (no clamp, no fp16)."""
    from engine.nets.stylegan2 import StyleGAN2GeneratorConfig

    arch = infer_g_arch(sd)
    settings: dict = {}
    if "synthesis.b8.resample_filter" in sd:
        settings["resample_filter"] = filter_1d_from_2d(sd["synthesis.b8.resample_filter"])
    if init_kwargs:
        mapping = dict(init_kwargs.get("mapping_kwargs") or {})
        settings["mapping_lr_multiplier"] = float(mapping.get("lr_multiplier", 0.01))
        if "w_avg_beta" in mapping:
            settings["w_avg_beta"] = mapping["w_avg_beta"]
        # stylegan2-ada nests the synthesis arguments, stylegan3 passes them as keywords
        synthesis = dict(init_kwargs.get("synthesis_kwargs") or {})
        synthesis.update({k: v for k, v in init_kwargs.items()
                          if k in ("conv_clamp", "num_fp16_res", "fused_modconv_default")})
        settings["conv_clamp"] = synthesis.get("conv_clamp", NVLABS_CONV_CLAMP)
        settings["num_fp16_res"] = int(synthesis.get("num_fp16_res", NVLABS_NUM_FP16_RES))
        settings["fused_modconv_default"] = synthesis.get("fused_modconv_default", True)
    return StyleGAN2GeneratorConfig(**arch, **settings)


def discriminator_config(sd: StateDict, init_kwargs: Mapping | None = None, resample_filter=(1.0, 3.0, 3.0, 1.0)):
    """The discriminator's config from NVlabs-named tensors (and ``init_kwargs`` when given)."""
    from engine.nets.stylegan2 import StyleGAN2DiscriminatorConfig

    arch = infer_d_arch(sd)
    settings: dict = dict(img_resolution=arch["img_resolution"], channels=arch["channels"], c_dim=arch["c_dim"],
                          img_channels=arch["img_channels"], architecture=arch["architecture"],
                          mbstd_num_channels=arch["mbstd_num_channels"], resample_filter=tuple(resample_filter))
    if arch["c_dim"]:
        settings["cmap_dim"] = arch["cmap_dim"]
    if init_kwargs:
        settings["conv_clamp"] = init_kwargs.get("conv_clamp", NVLABS_CONV_CLAMP)
        settings["num_fp16_res"] = int(init_kwargs.get("num_fp16_res", NVLABS_NUM_FP16_RES))
        epilogue = dict(init_kwargs.get("epilogue_kwargs") or {})
        settings["mbstd_group_size"] = epilogue.get("mbstd_group_size", 4)
    return StyleGAN2DiscriminatorConfig(**settings)


def _split_pair(obj, what: str, source: str) -> tuple[StateDict, dict | None]:
    """(state_dict, init_kwargs or None) from a state dict or a (state_dict, init_kwargs) pair."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], Mapping):
        return obj[0], dict(obj[1] or {})
    if isinstance(obj, Mapping):
        return obj, None
    raise WeightsError(f"{source}: the {what} is a {type(obj).__name__}, expected a state dict", file=source)


def _derived(key: str) -> bool:
    # Resampling filters are constants the modules derive from the config; checkpoints
    # (rosinality) store at most one of them.
    return key.endswith("resample_filter")


def networks_from_checkpoint(obj, source: str = "StyleGAN2 checkpoint"):
    """(generator, discriminator or None) from any supported layout, as typed networks.

    ``obj`` is a rosinality checkpoint dict ``{'g_ema', 'd'?, 'latent_avg'?}``, or
    ``{'G_ema' or 'G': sd-or-pair, 'D'?: sd-or-pair}`` with NVlabs state dicts (a pair adds
    the pickle's ``init_kwargs``). rosinality's ``latent_avg`` becomes ``mapping.w_avg``
    (zeros when absent). Any tensor that does not fit raises ``WeightsError`` naming it.
    """
    try:
        return _networks_from_checkpoint(obj, source)
    except WeightsError as exc:
        if str(exc).startswith(source):
            raise
        raise WeightsError(f"{source}: {exc}", file=source) from None


def _networks_from_checkpoint(obj, source: str):
    from engine.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
    from engine.weights.pretrained import load_state_strict

    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source}: cannot read a StyleGAN2 checkpoint from a {type(obj).__name__}", file=source)
    latent_avg = None
    if "g_ema" in obj:
        g_src, d_src = obj["g_ema"], obj.get("d")
        if isinstance(obj.get("latent_avg"), torch.Tensor):
            latent_avg = obj["latent_avg"].reshape(-1).to(torch.float32)
    elif "G_ema" in obj or "G" in obj:
        g_src, d_src = obj.get("G_ema", obj.get("G")), obj.get("D")
    else:
        raise WeightsError(f"{source}: no generator (g_ema, G_ema or G) in the checkpoint", file=source)
    g_sd, g_kwargs = _split_pair(g_src, "generator", source)
    layout = detect_layout(g_sd)
    if layout == "rosinality_g":
        g_sd = rosinality_g_to_nvlabs(g_sd, latent_avg)
    elif layout == "nvlabs_g":
        g_sd = dict(g_sd)
    else:
        raise WeightsError(f"{source}: expected a generator state dict, got a {layout} layout", file=source)
    config = generator_config(g_sd, g_kwargs)
    g_sd.setdefault("mapping.w_avg", torch.zeros([config.w_dim]))  # [w_dim]: no average latent stored
    generator = StyleGAN2Generator(config)
    load_state_strict(generator, g_sd, f"{source} (generator)", cast=True, may_be_missing=_derived)
    discriminator = None
    if d_src is not None:
        d_sd, d_kwargs = _split_pair(d_src, "discriminator", source)
        layout = detect_layout(d_sd)
        if layout == "rosinality_d":
            d_sd = rosinality_d_to_nvlabs(d_sd)
        elif layout != "nvlabs_d":
            raise WeightsError(f"{source}: expected a discriminator state dict, got a {layout} layout", file=source)
        d_config = discriminator_config(d_sd, d_kwargs, config.resample_filter)
        if d_config.img_resolution != config.img_resolution:
            raise WeightsError(f"{source}: discriminator resolution {d_config.img_resolution} != generator "
                               f"{config.img_resolution}", file=source)
        discriminator = StyleGAN2Discriminator(d_config)
        load_state_strict(discriminator, d_sd, f"{source} (discriminator)", cast=True, may_be_missing=_derived)
        discriminator = discriminator.eval().requires_grad_(False)
    return generator.eval().requires_grad_(False), discriminator
