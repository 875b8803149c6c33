"""TensorFlow variable names of NVIDIA's ProGAN attribute classifiers -> our ProGANClassifier.

A ``celebahq-classifier-*.pkl`` (read as data by
:func:`engine.weights.unpickle.load_tf_network_pickle`) holds ``D_paper``'s
variables under TensorFlow scopes: ``FromRGB_lod<k>``, ``<r>x<r>/Conv0``,
``<r>x<r>/Conv1_down`` (fused conv + 2x box downscale) or ``<r>x<r>/Conv1``
(separate), ``4x4/Conv``, ``4x4/Dense0``, ``4x4/Dense1``, each with
``weight`` and ``bias``, plus the scalar ``lod``. Layouts are kept as they are
(``[k, k, in, out]`` convolutions, ``[in, out]`` dense layers); only the names
change (:func:`tf_names`). The architecture comes from the variables' shapes
and the pickle's ``static_kwargs`` (:func:`config_from_variables`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import torch

from engine.nets.progan_classifier import ProGANClassifier, ProGANClassifierConfig
from engine.weights.errors import WeightsError
from engine.weights.pretrained import load_state_strict


def tf_names(cfg: ProGANClassifierConfig) -> dict[str, str]:
    """{TensorFlow variable name: this module's state-dict key}."""
    top = cfg.resolution_log2
    out = {"lod": "lod"}
    for k in range(top - 1):
        for p in ("weight", "bias"):
            out[f"FromRGB_lod{k}/{p}"] = f"from_rgb.{k}.{p}"
    conv1 = "Conv1_down" if cfg.fused_scale else "Conv1"
    for i, res in enumerate(range(top, 2, -1)):
        r = 2 ** res
        for p in ("weight", "bias"):
            out[f"{r}x{r}/Conv0/{p}"] = f"blocks.{i}.conv0.{p}"
            out[f"{r}x{r}/{conv1}/{p}"] = f"blocks.{i}.conv1.{p}"
    for scope, key in (("Conv", "conv"), ("Dense0", "dense0"), ("Dense1", "dense1")):
        for p in ("weight", "bias"):
            out[f"4x4/{scope}/{p}"] = f"epilogue.{key}.{p}"
    return out


_BLOCK = re.compile(r"^(\d+)x\1/")


def config_from_variables(variables: Mapping[str, torch.Tensor], static_kwargs: Mapping | None = None,
                          source: str = "classifier") -> ProGANClassifierConfig:
    """The architecture: resolution, channels, fused downscale and minibatch stddev from the
    variables; widths from the pickle's ``static_kwargs`` (``D_paper``'s defaults where a
    keyword is absent, as when the network was built). :func:`from_variables` then checks
    every shape against it."""
    kw = dict(static_kwargs or {})
    if "FromRGB_lod0/weight" not in variables or "4x4/Dense1/weight" not in variables:
        raise WeightsError(f"{source}: not a ProGAN classifier (no FromRGB_lod0/weight or 4x4/Dense1/weight); "
                           f"found e.g. {', '.join(list(variables)[:4])}", file=source)
    res = max([int(m.group(1)) for k in variables if (m := _BLOCK.match(k))] + [4])
    if "resolution" in kw and int(kw["resolution"]) != res:
        raise WeightsError(f"{source}: static_kwargs say resolution {kw['resolution']}, the variables {res}",
                           file=source)
    group = int(kw.get("mbstd_group_size", 4))
    cfg = ProGANClassifierConfig(
        resolution=res, num_channels=int(variables["FromRGB_lod0/weight"].shape[2]),
        fmap_base=int(kw.get("fmap_base", 8192)), fmap_decay=float(kw.get("fmap_decay", 1.0)),
        fmap_max=int(kw.get("fmap_max", 512)), use_wscale=bool(kw.get("use_wscale", True)),
        mbstd_group_size=0, fused_scale=res == 4 or f"{res}x{res}/Conv1_down/weight" in variables,
        out_features=int(variables["4x4/Dense1/weight"].shape[1]))
    conv_in = int(variables["4x4/Conv/weight"].shape[2])
    if conv_in == cfg.nf(1) + 1:
        if group <= 1:
            raise WeightsError(f"{source}: 4x4/Conv has a minibatch-stddev channel but mbstd_group_size is {group}",
                               file=source)
        cfg = dataclasses.replace(cfg, mbstd_group_size=group)
    elif conv_in != cfg.nf(1):
        raise WeightsError(f"{source}: 4x4/Conv takes {conv_in} channels; expected {cfg.nf(1)} (+1 with minibatch "
                           f"stddev) for fmap_base {cfg.fmap_base}, fmap_max {cfg.fmap_max}", file=source)
    return cfg


def from_variables(variables: Mapping[str, torch.Tensor], static_kwargs: Mapping | None = None,
                   source: str = "classifier") -> ProGANClassifier:
    """The classifier holding the TF variables (every name and shape must match; nothing left over)."""
    cfg = config_from_variables(variables, static_kwargs, source)
    names = tf_names(cfg)
    net = ProGANClassifier(cfg)
    missing = [n for n in names if n not in variables]
    unexpected = [n for n in variables if n not in names]
    if missing or unexpected:
        problems = [f"missing {', '.join(missing[:3])}"] if missing else []
        problems += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
        raise WeightsError(f"{source}: wrong layout for a ProGAN classifier ({dataclasses.asdict(cfg)}): "
                           + "; ".join(problems), file=source)
    load_state_strict(net, {k: variables[n] for n, k in names.items()}, source, cast=True)  # shapes
    return net.eval().requires_grad_(False)


