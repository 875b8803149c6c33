"""The avatar file: references to cached artifacts instead of copies, and the compact stylized delta.

The weights are the slim EG3D (random, seeded); the deltas are random perturbations of the magnitude
``bench/avatar_bytes.py`` uses at full size (PTI: 2 % of each tensor's std; the stylized residual: 5 %).
"""
from __future__ import annotations

import pytest
import torch

from engine.avatar.avatar_file import (
    RENDER_PSNR_BOUND_DB, AvatarArtifactChanged, AvatarArtifactGone, AvatarFileError, decode_residual,
    encode_residual, pack_tensors, quantise_residual, result_from_bytes, result_to_bytes, unpack_tensors)
from engine.avatar.pipeline import AvatarResult, MemoryCache
from engine.nets.eg3d import slim_generator
from engine.render.frames import camera_path
from tests.engine.avatar.deltas import psnr, random_delta, render


@pytest.fixture(scope="module")
def g3d():
    return slim_generator("slim128", seed=3).eval()


@pytest.fixture(scope="module")
def avatar(g3d):
    gen = torch.Generator().manual_seed(0)
    pti = random_delta(g3d, 0.02, gen)
    residual = random_delta(g3d, 0.05, gen)
    stylized = {k: (v.float() + residual[k].float()).half() for k, v in pti.items()}
    names = g3d.backbone.synthesis.noise_layer_names()
    noise = {n: torch.randn(1, 1, int(n[1:].split(".")[0]), int(n[1:].split(".")[0]), generator=gen) for n in names}
    w_3d = g3d.mapping(torch.randn(1, g3d.config.z_dim, generator=gen), camera_path("still", 1))
    delta_2d = {"synthesis.b4.conv1.weight": torch.randn(8, 8, 3, 3, generator=gen).half()}
    result = AvatarResult(w_e=torch.randn(14, 512, generator=gen), w_2d=torch.randn(1, 14, 512, generator=gen),
                          w_3d=w_3d.detach(), noise=noise, camera=camera_path("still", 1), delta_2d=delta_2d,
                          delta_pti=pti, delta_stylized=stylized)
    cache = MemoryCache()
    cache.put("style_2d", "style-key", pack_tensors({"w_e": result.w_e, **{f"delta.{k}": v for k, v in delta_2d.items()}}))
    cache.put("portrait_3d", "selfie-key", pack_tensors({
        "w_2d": result.w_2d, "w_3d": result.w_3d, "camera": result.camera,
        **{f"noise.{n}": v for n, v in noise.items()}, **{f"delta.{k}": v for k, v in pti.items()}}))
    return result, cache


def test_the_file_references_the_artifacts_and_round_trips_within_the_bound(g3d, avatar):
    result, cache = avatar
    blob = result_to_bytes(result, cache, style_key="style-key", portrait_key="selfie-key")
    back = result_from_bytes(blob, cache)
    assert torch.equal(back.w_3d, result.w_3d) and torch.equal(back.w_e, result.w_e)
    assert all(torch.equal(back.delta_pti[k], v) for k, v in result.delta_pti.items())
    assert all(torch.equal(back.delta_2d[k], v) for k, v in result.delta_2d.items())
    assert set(back.delta_stylized) == set(result.delta_stylized)
    # Nothing copied: under 1 byte per stylized weight, where the fp16 copies alone took 2 x 3.
    n_stylized = sum(v.numel() for v in result.delta_stylized.values())
    assert len(blob) < 0.75 * n_stylized
    cameras = camera_path("orbit", 4)
    exact = render(g3d, result.delta_stylized, result.w_3d, result.noise, cameras)
    decoded = render(g3d, back.delta_stylized, result.w_3d, result.noise, cameras)
    assert psnr(exact, decoded) >= RENDER_PSNR_BOUND_DB


def test_a_residual_quantised_beforehand_gives_the_same_file(avatar):
    """The engine rounds the residual on the GPU and codes a CPU copy on another thread: the deltas are then
    not read again, and the file holds the same tensors."""
    import dataclasses

    result, cache = avatar
    residual = quantise_residual(result).to("cpu")
    blob = result_to_bytes(dataclasses.replace(result, delta_pti={}, delta_stylized={}), cache, style_key="style-key",
                           portrait_key="selfie-key", residual=residual)
    mine, theirs = (unpack_tensors(b) for b in (blob, result_to_bytes(result, cache, style_key="style-key",
                                                                      portrait_key="selfie-key")))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert set(result_from_bytes(blob, cache).delta_stylized) == set(result.delta_stylized)


def test_each_weight_is_within_half_a_step_of_the_residual():
    gen = torch.Generator().manual_seed(1)
    pti = {"w": (0.1 * torch.randn(16, 8, 3, 3, generator=gen)).half(), "b": torch.zeros(16).half()}
    stylized = {"w": (pti["w"].float() + 0.03 * torch.randn(16, 8, 3, 3, generator=gen)).half(),
                "b": torch.randn(16, generator=gen).half()}
    stored, shapes = encode_residual(stylized, pti, levels_per_std=4.0)
    back = decode_residual(stored, shapes, pti)
    half_step = stored["step.w"][:, None, None, None] / 2
    # fp16 rounding of the decoded weight adds at most half an fp16 ulp of |w| <= 1 (2^-11).
    assert ((back["w"].float() - stylized["w"].float()).abs() <= half_step + 2 ** -11).all()
    assert torch.equal(back["b"], stylized["b"])


def test_an_expired_artifact_expires_the_avatar(avatar):
    result, cache = avatar
    blob = result_to_bytes(result, cache, style_key="style-key", portrait_key="selfie-key")
    gone = MemoryCache()
    gone.store = {k: v for k, v in cache.store.items() if k[0] != "portrait_3d"}
    with pytest.raises(AvatarArtifactGone, match="portrait_3d artifact has expired"):
        result_from_bytes(blob, gone)
    changed = MemoryCache()
    changed.store = dict(cache.store)
    changed.store[("style_2d", "style-key")] = pack_tensors({"w_e": torch.zeros(14, 512)})
    with pytest.raises(AvatarArtifactChanged):
        result_from_bytes(blob, changed)
    with pytest.raises(AvatarArtifactGone):
        result_to_bytes(result, MemoryCache(), style_key="style-key", portrait_key="selfie-key")


def test_a_damaged_residual_is_refused(avatar):
    result, cache = avatar
    stored, shapes = encode_residual(result.delta_stylized, result.delta_pti)
    name = next(k[len("res."):] for k in stored if k.startswith("res."))
    stored[f"res.{name}"] = stored[f"res.{name}"][:-5]
    with pytest.raises(AvatarFileError, match=name):
        decode_residual(stored, shapes, result.delta_pti)
    with pytest.raises(AvatarFileError, match="format"):
        result_from_bytes(pack_tensors({"x": torch.zeros(1)}, {"format": "1"}), cache)
