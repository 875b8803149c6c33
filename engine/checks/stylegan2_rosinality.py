"""Reference check for rosinality-layout StyleGAN2 fixtures.

A folder matches when ``config.json`` describes a rosinality generator
(``n_mlp`` and ``channels_by_resolution`` or ``size``) and ``checkpoint.pt``
exists. The checkpoint (``{'g_ema', 'd', 'latent_avg'}``) takes the product's
own path: ``emoji3d weights convert`` (kind ``stylegan2_rosinality``) into a
temporary folder, then ``StyleGAN2Generator.from_pretrained`` /
``StyleGAN2Discriminator.from_pretrained``; widths and resolution come from
the tensors, never from the fixture's config. Every tensor in
``io.safetensors`` that the config's ``calls`` describe is rebuilt from the
stored inputs:

* ``w_from_z``: mapping of ``z`` broadcast to all latents;
* ``img_from_z``: G(z) with the stored noise maps (noise_mode 'const');
* ``img_trunc_<psi>``: truncation of W towards ``latent_avg`` by psi;
* ``img_from_wplus``: synthesis of ``wplus``;
* ``img_mix_inject<k>``: ``mix_w_a`` for latents [0, k), ``mix_w_b`` after;
* ``d_convs_<i>``: the i-th per-block discriminator feature of ``img_from_wplus``
  (fromrgb output, then each resnet block), ``d_out`` its score;
* ``latent_avg``: the loaded average latent.
"""
from __future__ import annotations

import pathlib
import re
import tempfile

import torch

from engine.checks import TensorCheck, max_abs_check


def matches(config: dict, folder: pathlib.Path) -> bool:
    return ("n_mlp" in config and ("channels_by_resolution" in config or "size" in config)
            and (pathlib.Path(folder) / "checkpoint.pt").is_file())


def run(folder: pathlib.Path) -> list[TensorCheck]:
    from engine.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, style_mix, truncate
    from engine.weights.convert import DISCRIMINATOR, GENERATOR, convert
    from engine.weights.tensor_files import load_safetensors, read_json

    folder = pathlib.Path(folder)
    config = read_json(folder / "config.json")
    if "calls" not in config:
        raise ValueError(f"{folder}/config.json: no 'calls' table describing the stored outputs")
    io = load_safetensors(folder / "io.safetensors")
    with tempfile.TemporaryDirectory(prefix="emoji3d-check-") as tmp:
        converted = convert(folder / "checkpoint.pt", pathlib.Path(tmp) / "stylegan2", "stylegan2_rosinality")
        G = StyleGAN2Generator.from_pretrained(converted / GENERATOR)
        D = (StyleGAN2Discriminator.from_pretrained(converted / DISCRIMINATOR)
             if (converted / DISCRIMINATOR).is_dir() else None)
    latent_avg = G.mapping.w_avg
    kw = dict(noise_mode="const", impl="ref")
    checks: list[TensorCheck] = []

    def check(name: str, ours: torch.Tensor) -> None:
        checks.append(max_abs_check(name, ours, io[name]))

    with torch.no_grad():
        z = io.get("z")
        ws = G.mapping(z, None, impl="ref") if z is not None else None  # [N, num_ws, w_dim]
        if "w_from_z" in io and ws is not None:
            check("w_from_z", ws)
        if "latent_avg" in io:
            check("latent_avg", latent_avg.reshape(io["latent_avg"].shape))
        if "img_from_z" in io and ws is not None:
            check("img_from_z", G.synthesis(ws, **kw))
        for name in sorted(n for n in io if n.startswith("img_trunc_")):
            psi = float(name[len("img_trunc_"):])
            if ws is None:
                raise ValueError(f"{folder}: {name} needs z")
            check(name, G.synthesis(truncate(ws, latent_avg, psi), **kw))
        if "img_from_wplus" in io:
            check("img_from_wplus", G.synthesis(io["wplus"], **kw))
        for name in sorted(n for n in io if n.startswith("img_mix_inject")):
            k = int(name[len("img_mix_inject"):])
            mixed = style_mix(io["mix_w_a"], io["mix_w_b"], k, G.num_ws)
            check(name, G.synthesis(mixed, **kw))
        feat_names = sorted((n for n in io if re.fullmatch(r"d_convs_\d+", n)), key=lambda n: int(n.rsplit("_", 1)[1]))
        if feat_names or "d_out" in io:
            if D is None:
                raise ValueError(f"{folder}: the fixture has discriminator outputs but the checkpoint has no 'd'")
            score, feats = D(io["img_from_wplus"], None, return_features=True, impl="ref")
            for name in feat_names:
                i = int(name.rsplit("_", 1)[1])
                if i >= len(feats):
                    checks.append(TensorCheck(f"{name} (D has only {len(feats)} feature maps)", float("nan"), 0.0))
                    continue
                check(name, feats[i])
            if "d_out" in io:
                check("d_out", score)
    inputs = {"z", "wplus", "mix_w_a", "mix_w_b"}
    checked = {c.name.split(" ")[0] for c in checks}
    for name in sorted(set(io) - inputs - checked):
        checks.append(TensorCheck(f"{name} (no rule to rebuild this output)", float("nan"), 0.0))
    return checks
