"""Golden-reference checker for EG3D ``TriPlaneGenerator`` fixture folders.

A folder matches when its ``config.json`` names a ``TriPlaneGenerator`` (the
official vocabulary: ``class_name`` + ``init_kwargs``) and holds
``io.safetensors``. Everything is read from the folder: the constructor
arguments (``init_kwargs``), the neural rendering resolution, the call
(``call.noise_mode``, ``call.truncation_psi``, optional
``call.truncation_cutoff``, ``call.sampling``) and the weights
(``G.safetensors`` or ``G_official_keys.safetensors``, official keys).

The weights take the product's own path: the converter builds the generator
from the official keys and saves it as a pretrained folder (in a temporary
directory), and the checked generator is ``TriPlaneGenerator.from_pretrained``
of that folder, so a pass also proves the folder format loses nothing.

Inputs in ``io.safetensors``: ``z`` [B,z_dim], ``c`` [B,25] (used both as
conditioning and rendering camera, as the official ``G(z, c)`` does) and
optionally ``points`` [B,M,3]. Outputs rebuilt end to end from those inputs:

* ``ws`` - mapping at ``call.truncation_psi``;
* ``ws_trunc_<psi>`` - mapping at that psi (cutoff ``call.truncation_cutoff``
  or all ws);
* ``planes`` / ``planes_every<k>th_pixel`` - backbone output [B,96,256,256]
  (subsampled ``[:, :, ::k, ::k]``);
* ``image``, ``image_raw``, ``image_depth`` - ``synthesis(ws, c)``;
* ``points_sigma``, ``points_rgb`` - decoder queried at ``points``.

Any other tensor is reported as a failure ("not rebuilt"), so a fixture
that grows a new output cannot pass silently.
"""
from __future__ import annotations

import math
import pathlib
import re
import tempfile

import torch

from engine.checks import TensorCheck, max_abs_check

INPUTS = {"z", "c", "points"}
OFFICIAL_WEIGHT_FILES = ("G.safetensors", "G_official_keys.safetensors")


def matches(config: dict, folder: pathlib.Path) -> bool:
    from engine.weights.convert import is_official_eg3d_config

    return is_official_eg3d_config(config) and (pathlib.Path(folder) / "io.safetensors").is_file()


def load_generator(folder: pathlib.Path, config: dict):
    """The fixture's generator, converted and read back through a pretrained folder."""
    from engine.nets.eg3d import TriPlaneGenerator
    from engine.weights.convert import eg3d_from_official
    from engine.weights.tensor_files import load_safetensors

    weights = next((folder / n for n in OFFICIAL_WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise ValueError(f"{folder}: no weight file ({' or '.join(OFFICIAL_WEIGHT_FILES)})")
    converted = eg3d_from_official(load_safetensors(weights), config["init_kwargs"],
                                   config.get("neural_rendering_resolution", 64), str(weights))
    with tempfile.TemporaryDirectory(prefix="emoji3d-check-") as tmp:
        converted.save_pretrained(tmp, source=str(weights))
        del converted
        return TriPlaneGenerator.from_pretrained(tmp)


def _sampling_mode(call: dict) -> str:
    text = str(call.get("sampling", "deterministic")).strip().lower()
    if text.startswith("deterministic"):
        return "deterministic"
    raise ValueError(f"fixture sampling {call.get('sampling')!r} cannot be reproduced; only deterministic fixtures are checkable")


def run(folder: pathlib.Path, skip: frozenset[str] = frozenset()) -> list[TensorCheck]:
    """Rebuild and compare every output; names in ``skip`` are left out (tests use this to
    spare the 512px super-resolution on a CPU) and are *not* reported."""
    from engine.weights.tensor_files import load_safetensors, read_json

    folder = pathlib.Path(folder)
    config = read_json(folder / "config.json")
    call = dict(config.get("call", {}))
    noise_mode = call.get("noise_mode", "const")
    psi = float(call.get("truncation_psi", 1.0))
    cutoff = call.get("truncation_cutoff")
    sampling = _sampling_mode(call)

    G = load_generator(folder, config)
    io = load_safetensors(folder / "io.safetensors")
    for need in ("z", "c"):
        if need not in io:
            raise ValueError(f"{folder}/io.safetensors lacks the input {need!r}")
    z, c = io["z"], io["c"]
    checks: list[TensorCheck] = []
    done: set[str] = set(INPUTS) | set(skip)

    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
        if "ws" in io and "ws" not in skip:
            checks.append(max_abs_check("ws", ws, io["ws"]))
            done.add("ws")
        for key in sorted(io):
            m = re.fullmatch(r"ws_trunc_([0-9.]+)", key)
            if m and key not in skip:
                w_t = G.mapping(z, c, truncation_psi=float(m.group(1)), truncation_cutoff=cutoff)
                checks.append(max_abs_check(key, w_t, io[key]))
                done.add(key)

        planes = G.planes(ws, noise_mode=noise_mode)  # [B,3,32,256,256]
        flat = planes.reshape(planes.shape[0], -1, planes.shape[-2], planes.shape[-1])  # [B,96,256,256]
        for key in sorted(io):
            m = re.fullmatch(r"planes(?:_every(\d+)(?:st|nd|rd|th)_pixel)?", key)
            if m and key not in skip:
                k = int(m.group(1) or 1)
                checks.append(max_abs_check(key, flat[:, :, ::k, ::k], io[key]))
                done.add(key)

        wanted = [k for k in ("image", "image_raw", "image_depth") if k in io and k not in skip]
        if wanted:
            need_sr = "image" in wanted or ("image_raw" in wanted and not G.superresolution.first_block_upsamples)
            # The official SR aliases image_raw for 2X/4X heads without resize: reproduce that, and
            # keep the same SR path even when ``image`` itself is skipped.
            out = G.render(planes, ws, c, sampling=sampling, superresolution=need_sr,
                           official_raw_aliasing=True)
            for key in wanted:
                checks.append(max_abs_check(key, out[key], io[key]))
                done.add(key)

        if "points" in io:
            sigma, rgb = G.sample_points(planes, io["points"].to(planes.dtype), chunk=1 << 16)
            for key, t in (("points_sigma", sigma), ("points_rgb", rgb)):
                if key in io and key not in skip:
                    checks.append(max_abs_check(key, t, io[key]))
                    done.add(key)

    for key in sorted(set(io) - done):
        checks.append(TensorCheck(f"{key} (not rebuilt by the EG3D checker)", math.nan, 0.0))
    return checks
