"""Reference check for the e4e encoder and the IR-SE50 ArcFace (``e4e_arcface_recipe``).

The fixture stores no weights: ``config.json`` holds, per network, a seed and
every state-dict key with its shape in order, plus ``weight_recipe``. For each
key (in order) with ``g = torch.Generator().manual_seed(seed)``:
``num_batches_tracked`` → 0 (no draw); otherwise ``t = randn(shape, generator=g)``
and running_var → 1 + 0.1|t|, running_mean → 0.1 t, ``*bias`` → 0.1 t, other
1-D → 1 + 0.1 t, ≥2-D → t / sqrt(prod(shape[1:])).

Checked tensors (tolerance ``1e-3·max(1, max|ref|)``): ``e4e_codes`` (encoder
output before ``latent_avg``), ``arcface_input_112`` (the ID crop of
``input_256``), ``arcface_embedding`` (and ``arcface_embedding_folded``: the
same, as the identity loss runs the network, its batch norms folded); plus the
parameter counts (267.1 M and 43.8 M, to 0.1 M) and the recipe's key/shape list
against our modules.

Each network takes the product's own path: the converter builds it from the
official-key state dict, it is saved as a pretrained folder (in a temporary
directory; ~1 GB for e4e) and the checked network is ``from_pretrained`` of
that folder.

The e4e style heads apply ``EqualLinear``'s 1/sqrt(512) weight scale, as the
official e4e does (``EqualLinear.scale = (1 / math.sqrt(in_dim)) * lr_mul``,
used by ``GradualStyleBlock``); the fixture was made by the official code with
that scale, and ``e4e_codes`` matches it exactly.
"""
from __future__ import annotations

import math
import pathlib
import tempfile

import torch

from engine.checks import TensorCheck, max_abs_check

E4E_PARAMS_M = 267.1
ARCFACE_PARAMS_M = 43.8


def matches(config: dict, folder: pathlib.Path) -> bool:
    return isinstance(config.get("e4e"), dict) and isinstance(config.get("arcface"), dict) and "weight_recipe" in config


def recipe_state_dict(keys_in_order: list, seed: int) -> dict[str, torch.Tensor]:
    """Rebuild a state dict from the fixture recipe (see module docstring)."""
    g = torch.Generator().manual_seed(int(seed))
    sd: dict[str, torch.Tensor] = {}
    for key, shape in keys_in_order:
        shape = [int(s) for s in shape]
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0, dtype=torch.long)
            continue
        t = torch.randn(shape, generator=g, dtype=torch.float32)
        if key.endswith("running_var"):
            t = 1.0 + 0.1 * t.abs()
        elif key.endswith("running_mean"):
            t = 0.1 * t
        elif key.endswith("bias"):
            t = 0.1 * t
        elif len(shape) == 1:
            t = 1.0 + 0.1 * t
        else:
            t = t / math.sqrt(math.prod(shape[1:]))
        sd[key] = t
    return sd


def layout_checks(config: dict) -> list[TensorCheck]:
    """Key/shape and parameter-count checks, built on the meta device (no memory, instant)."""
    from engine.nets.arcface import ArcFaceBackbone
    from engine.nets.e4e import Encoder4Editing

    out = []
    with torch.device("meta"):
        nets = {"e4e": Encoder4Editing(), "arcface": ArcFaceBackbone()}
    for name, target in (("e4e", E4E_PARAMS_M), ("arcface", ARCFACE_PARAMS_M)):
        net = nets[name]
        ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
        ref = [(k, [int(s) for s in shape]) for k, shape in config[name]["state_dict_keys_in_order"]]
        mism = sum(a != b for a, b in zip(ours, ref)) + abs(len(ours) - len(ref))
        out.append(TensorCheck(f"{name}: state-dict keys/shapes differing", float(mism), 0.0, rule="count"))
        n = sum(p.numel() for p in net.parameters()) / 1e6
        out.append(TensorCheck(f"{name}: parameters (M) vs {target}", abs(n - target), 0.05, rule="|ΔM|"))
    return out


def _through_folder(network):
    """``network`` saved as a pretrained folder and read back (the original is released first)."""
    cls = type(network)
    with tempfile.TemporaryDirectory(prefix="emoji3d-check-") as tmp:
        network.save_pretrained(tmp)
        del network
        return cls.from_pretrained(tmp)


def run(folder: pathlib.Path) -> list[TensorCheck]:
    from engine.nets.arcface import FoldedArcFace, id_crop
    from engine.nets.e4e import encode
    from engine.weights.convert import arcface_from_state_dict, e4e_model
    from engine.weights.tensor_files import load_safetensors, read_json

    folder = pathlib.Path(folder)
    config = read_json(folder / "config.json")
    io = load_safetensors(folder / "io.safetensors")
    checks = layout_checks(config)
    x = io["input_256"]  # [B,3,256,256] in [-1,1]

    recipe = recipe_state_dict(config["arcface"]["state_dict_keys_in_order"], config["arcface"]["seed"])
    arc = _through_folder(arcface_from_state_dict(recipe, f"{folder} (arcface recipe)"))
    del recipe
    with torch.no_grad():
        x112 = id_crop(x)  # [B,3,112,112]
        checks.append(max_abs_check("arcface_input_112", x112, io["arcface_input_112"]))
        checks.append(max_abs_check("arcface_embedding", arc(x112), io["arcface_embedding"]))
        # as the identity loss runs it: the batch norms folded into their layers
        checks.append(max_abs_check("arcface_embedding_folded", FoldedArcFace(arc.eval())(x112),
                                    io["arcface_embedding"]))
    del arc

    recipe = recipe_state_dict(config["e4e"]["state_dict_keys_in_order"], config["e4e"]["seed"])
    # The fixture's codes are taken before latent_avg is added: a zero latent_avg leaves them as they are.
    model = _through_folder(e4e_model(recipe, torch.zeros(512), f"{folder} (e4e recipe)"))
    del recipe
    with torch.no_grad():
        checks.append(max_abs_check("e4e_codes", encode(model.encoder, x, model.latent_avg), io["e4e_codes"]))
    return checks
