"""bf16 autocast: each stage's loss still falls, and the networks stay within a stated tolerance
of the official implementations' outputs (the reference fixtures).

Tolerance (measured on the CPU, torch 2.14, bf16 autocast of everything the pipeline runs under
it: synthesis, discriminator features, EG3D tri-planes and rendering; the mappings stay float32
as in the stages): ``max|ours - reference| <= BF16_TOLERANCE * max(1, max|reference|)`` per
tensor. bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 %); errors compound over
the layers. Measured (relative to max(1, max|reference|)): StyleGAN2 image 1.4e-2, its
discriminator features <= 1.1e-2; EG3D tri-planes 1.4e-2, raw image 3.5e-2, depth 1.1e-2 (the
fp32 paths are within the fixtures' 1e-3). The stated tolerance is 5e-2; the tests also check
that the error is above 1e-4, so they fail if autocast stops reaching the networks.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile

import pytest
import torch

from emoji3d.pipeline_config import PipelineConfig
from engine.avatar.pipeline import Pipeline

BF16_TOLERANCE = 0.05


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.float() - reference).abs().max()) / max(1.0, float(reference.abs().max()))


def test_stylegan2_fixture_under_bf16_stays_within_the_stated_tolerance(reference_fixtures):
    from engine.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
    from engine.weights.convert import DISCRIMINATOR, GENERATOR, convert
    from engine.weights.tensor_files import load_safetensors

    folder = reference_fixtures / "stylegan2_rosinality_slim"
    io = load_safetensors(folder / "io.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        converted = convert(folder / "checkpoint.pt", pathlib.Path(tmp) / "stylegan2", "stylegan2_rosinality")
        G = StyleGAN2Generator.from_pretrained(converted / GENERATOR)
        D = StyleGAN2Discriminator.from_pretrained(converted / DISCRIMINATOR)
    errors = {}
    with torch.no_grad():
        fp32 = G.synthesis(io["wplus"], noise_mode="const")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img = G.synthesis(io["wplus"], noise_mode="const")
            _score, feats = D(io["img_from_wplus"], None, return_features=True)
    errors["img_from_wplus"] = relative_error(img, io["img_from_wplus"])
    for name in (n for n in io if n.startswith("d_convs_")):
        errors[name] = relative_error(feats[int(name.rsplit("_", 1)[1])], io[name])
    assert relative_error(fp32, io["img_from_wplus"]) < 1e-3  # the fp32 path is the reference path
    assert max(errors.values()) <= BF16_TOLERANCE, errors
    assert max(errors.values()) > 1e-4, errors  # bf16 really ran: float32 would be ~1e-6


def test_eg3d_fixture_under_bf16_stays_within_the_stated_tolerance(reference_fixtures):
    from engine.checks.eg3d import load_generator
    from engine.weights.tensor_files import load_safetensors

    folder = reference_fixtures / "eg3d_slim"
    G = load_generator(folder, json.loads((folder / "config.json").read_text()))
    io = load_safetensors(folder / "io.safetensors")
    errors = {}
    with torch.no_grad():
        ws = G.mapping(io["z"], io["c"], truncation_psi=1.0)  # float32, as in stage 3
        with torch.autocast("cpu", dtype=torch.bfloat16):
            planes = G.planes(ws, noise_mode="const")
            # the 512 px super-resolution is spared on the CPU, as in the fixture test
            out = G.render(planes, ws, io["c"], sampling="deterministic", superresolution=False,
                           official_raw_aliasing=True)
    flat = planes.reshape(planes.shape[0], -1, planes.shape[-2], planes.shape[-1])
    errors["planes_every4th_pixel"] = relative_error(flat[:, :, ::4, ::4], io["planes_every4th_pixel"])
    for key in ("image_raw", "image_depth"):
        errors[key] = relative_error(out[key], io[key])
    assert max(errors.values()) <= BF16_TOLERANCE, errors
    assert max(errors.values()) > 1e-4, errors


def test_every_stage_loss_falls_under_bf16_with_float32_master_weights(faces):
    from engine.avatar.networks import slim_networks

    portrait, style = faces
    cfg = dataclasses.replace(PipelineConfig().reduced(5), precision="bf16")
    pipe = Pipeline(slim_networks(seed=0), cfg)
    assert pipe.precision == "bf16"
    result = pipe(portrait, style, seed=0)
    for stage in ("style_finetune", "invert_3d", "pivotal_tuning", "dual_branch"):
        assert result.logs[stage].decreased("total"), (stage, result.logs[stage].terms["total"])
    # the networks were not touched and the per-user weights came out of float32 masters
    assert all(p.dtype == torch.float32 for p in pipe.nets.g3d.parameters())
    assert result.w_3d.dtype == torch.float32


def test_precision_setting_is_checked_and_auto_depends_on_the_device():
    assert PipelineConfig().resolved_precision("cuda") == "bf16"
    assert PipelineConfig().resolved_precision("cpu") == "fp32"
    assert PipelineConfig(precision="fp32").resolved_precision("cuda") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        PipelineConfig(precision="fp16")
