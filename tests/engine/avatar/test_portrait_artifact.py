"""The per-selfie portrait_3d artifact: the PTI delta stored compactly within its stated render bound,
and a damaged artifact refused with a specific error. Slim EG3D, random seeded weights and a random
PTI delta of the magnitude ``bench/avatar_bytes.py`` uses at full size (2 % of each tensor's std)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from engine.avatar import portrait_artifact
from engine.avatar.portrait_artifact import (PTI_RENDER_PSNR_BOUND_DB, PortraitArtifact, PortraitArtifactError,
                                             from_bytes, to_bytes)
from engine.avatar.tensor_file import pack_tensors, read_metadata, unpack_tensors
from engine.nets.eg3d import slim_generator
from engine.render.frames import camera_path
from tests.engine.avatar.deltas import psnr, random_delta, render


@pytest.fixture(scope="module")
def g3d():
    return slim_generator("slim128", seed=5).eval()


@pytest.fixture(scope="module")
def artifact(g3d):
    gen = torch.Generator().manual_seed(2)
    names = g3d.backbone.synthesis.noise_layer_names()
    noise = {n: torch.randn(1, 1, int(n[1:].split(".")[0]), int(n[1:].split(".")[0]), generator=gen) for n in names}
    w_3d = g3d.mapping(torch.randn(1, g3d.config.z_dim, generator=gen), camera_path("still", 1)).detach()
    return PortraitArtifact(w_2d=torch.randn(1, 14, 512, generator=gen), w_3d=w_3d, noise=noise,
                            camera=camera_path("still", 1), crop2d_to_crop3d=torch.randn(2, 3, dtype=torch.float64),
                            delta_pti=random_delta(g3d, 0.02, gen))


def test_the_pti_delta_is_stored_compactly_within_the_render_bound(g3d, artifact):
    blob = to_bytes(artifact)
    back = from_bytes(blob)
    for name in ("w_2d", "w_3d", "camera", "crop2d_to_crop3d"):
        assert torch.equal(getattr(back, name), getattr(artifact, name))
    assert all(torch.equal(back.noise[k], v.half().float()) for k, v in artifact.noise.items())
    assert set(back.delta_pti) == set(artifact.delta_pti)
    n_weights = sum(v.numel() for v in artifact.delta_pti.values())
    delta_bytes = len(blob) - len(to_bytes(dataclasses.replace(artifact, delta_pti={})))
    assert delta_bytes < 0.5 * n_weights  # fp16 took 2 bytes a weight
    cameras = camera_path("orbit", 4)
    exact = render(g3d, artifact.delta_pti, artifact.w_3d, artifact.noise, cameras)
    decoded = render(g3d, back.delta_pti, artifact.w_3d, artifact.noise, cameras)
    assert psnr(exact, decoded) >= PTI_RENDER_PSNR_BOUND_DB


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_the_values_rounded_on_the_device_are_those_the_stored_artifact_gives_back(artifact, device):
    """What the pipeline continues from without writing bytes (``quantise(...).stored()``) is, bit for bit,
    what the CPU codec's artifact reads back, and writing it gives that artifact's contents."""
    on_device = dataclasses.replace(artifact, w_3d=artifact.w_3d.to(device),
                                    noise={k: v.to(device) for k, v in artifact.noise.items()},
                                    delta_pti={k: v.to(device) for k, v in artifact.delta_pti.items()})
    quantised = portrait_artifact.quantise(on_device)
    stored = quantised.stored()
    blob = to_bytes(artifact)  # the CPU path
    back = from_bytes(blob)
    assert set(stored.delta_pti) == set(back.delta_pti) and set(stored.noise) == set(back.noise)
    for k, v in stored.delta_pti.items():
        assert v.device.type == device and torch.equal(v.cpu().view(torch.int16), back.delta_pti[k].view(torch.int16))
    assert all(torch.equal(v.cpu(), back.noise[k]) and v.device.type == device for k, v in stored.noise.items())
    assert torch.equal(stored.crop2d_to_crop3d, back.crop2d_to_crop3d) and torch.equal(stored.w_3d.cpu(), back.w_3d)
    # Its file holds the CPU path's tensors and metadata (safetensors orders metadata keys at random).
    written = quantised.to_bytes()
    assert read_metadata(written) == read_metadata(blob)
    mine, theirs = unpack_tensors(written), unpack_tensors(blob)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    # The engine codes a CPU copy on another thread (no CUDA call there): the same file.
    on_cpu = quantised.to("cpu")
    moved = [on_cpu.art.w_2d, on_cpu.art.w_3d, on_cpu.art.camera, on_cpu.art.crop2d_to_crop3d,
             *on_cpu.noise_fp16.values(), *on_cpu.delta.levels.values(), *on_cpu.delta.steps.values(),
             *on_cpu.delta.raw.values()]
    assert all(t.device.type == "cpu" for t in moved) and not on_cpu.art.delta_pti
    copied = unpack_tensors(on_cpu.to_bytes())
    assert read_metadata(on_cpu.to_bytes()) == read_metadata(blob)
    assert copied.keys() == theirs.keys() and all(torch.equal(copied[k], theirs[k]) for k in theirs)


def test_an_artifact_written_before_the_compact_format_is_still_read(artifact):
    legacy = pack_tensors({"w_2d": artifact.w_2d, "w_3d": artifact.w_3d, "camera": artifact.camera,
                           **{f"noise.{k}": v for k, v in artifact.noise.items()},
                           **{f"delta.{k}": v for k, v in artifact.delta_pti.items()}})
    back = from_bytes(legacy)
    assert all(torch.equal(back.delta_pti[k], v) for k, v in artifact.delta_pti.items())


def test_a_damaged_or_truncated_artifact_is_refused_naming_what_is_wrong(artifact):
    blob = to_bytes(artifact)
    with pytest.raises(PortraitArtifactError, match="portrait_3d artifact: not a readable safetensors file"):
        from_bytes(blob[: len(blob) // 2])
    with pytest.raises(PortraitArtifactError, match="portrait_3d artifact: .*shorter than its 8-byte header"):
        from_bytes(blob[:5])
    # Bytes flipped inside one tensor's entropy-coded values: the error names the tensor.
    tensors, shapes = portrait_artifact.delta_codec.encode(artifact.delta_pti, None, 2.0)
    name = max((k[len("res."):] for k in tensors if k.startswith("res.")), key=lambda k: tensors[f"res.{k}"].numel())
    damaged = tensors[f"res.{name}"].clone()
    damaged[10:] = 255 - damaged[10:]
    tensors[f"res.{name}"] = damaged
    meta = {"format": portrait_artifact.FORMAT, "shapes": json.dumps(shapes)}
    bad = pack_tensors({"w_2d": artifact.w_2d, "w_3d": artifact.w_3d, **tensors}, meta)
    with pytest.raises(PortraitArtifactError, match=f"PTI delta of {name}"):
        from_bytes(bad)
    with pytest.raises(PortraitArtifactError, match="format 'compact-9'"):
        from_bytes(pack_tensors({"w_2d": artifact.w_2d}, {"format": "compact-9"}))
