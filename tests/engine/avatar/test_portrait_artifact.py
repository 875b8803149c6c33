"""The per-selfie artifact: compact PTI delta, exact round trip of what the pipeline used, clear errors."""
from __future__ import annotations

import pytest
import torch

from engine.avatar import delta_codec, portrait_artifact
from engine.avatar.tensor_file import pack_tensors, unpack_tensors


def sample(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    delta = {"decoder.net.0.weight": (0.01 * torch.randn(64, 32, generator=gen)).half(),   # [O, I]
             "backbone.b8.conv0.weight": (0.01 * torch.randn(16, 8, 3, 3, generator=gen)).half(),
             "backbone.b8.conv0.bias": (0.01 * torch.randn(16, generator=gen)).half()}
    fields = dict(w_2d=torch.randn(1, 14, 512, generator=gen), w_3d=torch.randn(1, 14, 512, generator=gen),
                  noise={"b4.conv1": torch.randn(1, 1, 4, 4, generator=gen)}, camera=torch.randn(1, 25, generator=gen),
                  crop2d_to_crop3d=torch.tensor([[0.5, 0.01, 3.0], [-0.01, 0.5, 7.0]], dtype=torch.float64))
    return delta, fields


def test_the_artifact_gives_back_exactly_the_delta_the_pipeline_used_and_every_field():
    delta, fields = sample()
    quantized = portrait_artifact.quantize_pti(delta)
    used = delta_codec.dequantize(quantized, None)
    back = portrait_artifact.from_bytes(portrait_artifact.to_bytes(**fields, pti=quantized))
    assert set(back.delta_pti) == set(delta)
    for name in delta:
        assert back.delta_pti[name].dtype == torch.float16
        assert torch.equal(back.delta_pti[name], used[name]), name
    for name in ("w_2d", "w_3d", "camera", "crop2d_to_crop3d"):
        assert torch.equal(getattr(back, name), fields[name]), name
    assert torch.equal(back.noise["b4.conv1"], fields["noise"]["b4.conv1"])
    # Within the codec's bound: at most half a step (std of the channel / 8) per weight, plus the
    # fp16 rounding of the result (2^-11 relative); biases exact.
    w = delta["decoder.net.0.weight"].float()
    bound = w.std(dim=1, unbiased=False) / (2 * portrait_artifact.PTI_LEVELS_PER_STD)
    error = (used["decoder.net.0.weight"].float() - w).abs()
    assert (error <= bound[:, None] + 2.0**-11 * w.abs().max()).all(), float((error - bound[:, None]).max())
    assert float(error.max()) > 0.5 * float(bound.min())  # it is quantised, not stored exactly
    assert torch.equal(used["backbone.b8.conv0.bias"], delta["backbone.b8.conv0.bias"])


def test_a_gaussian_delta_takes_under_a_third_of_its_fp16_bytes():
    gen = torch.Generator().manual_seed(1)
    delta = {f"layer{i}.weight": (0.01 * torch.randn(256, 256, 3, 3, generator=gen)).half() for i in range(2)}
    _, fields = sample()
    compact = portrait_artifact.to_bytes(**fields, pti=portrait_artifact.quantize_pti(delta))
    fp16 = pack_tensors({**{f"delta.{k}": v for k, v in delta.items()}, "w_2d": fields["w_2d"],
                         "w_3d": fields["w_3d"], "camera": fields["camera"]})
    assert len(compact) < len(fp16) / 3, (len(compact), len(fp16))


def test_artifacts_of_the_earlier_fp16_format_still_read():
    delta, fields = sample()
    legacy = pack_tensors({"w_2d": fields["w_2d"], "w_3d": fields["w_3d"], "camera": fields["camera"],
                           "crop2d_to_crop3d": fields["crop2d_to_crop3d"],
                           **{f"noise.{k}": v for k, v in fields["noise"].items()},
                           **{f"delta.{k}": v for k, v in delta.items()}})
    back = portrait_artifact.from_bytes(legacy)
    assert all(torch.equal(back.delta_pti[k], delta[k]) for k in delta)


def damaged(mutate) -> bytes:
    delta, fields = sample()
    data = portrait_artifact.to_bytes(**fields, pti=portrait_artifact.quantize_pti(delta))
    from engine.avatar.tensor_file import read_metadata

    tensors, meta = unpack_tensors(data), read_metadata(data)
    mutate(tensors)
    return pack_tensors(tensors, meta)


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.__setitem__("pti.res.decoder.net.0.weight", t["pti.res.decoder.net.0.weight"][:-9].clone()),
     "pivotal-tuning delta of decoder.net.0.weight"),
    (lambda t: t.__setitem__("pti.res.decoder.net.0.weight", torch.zeros(50, dtype=torch.uint8)),
     "pivotal-tuning delta of decoder.net.0.weight is damaged"),
    (lambda t: t.pop("pti.step.backbone.b8.conv0.weight"), "pivotal-tuning delta of backbone.b8.conv0.weight is missing"),
    (lambda t: t.__setitem__("pti.step.backbone.b8.conv0.weight", torch.ones(3)), "3,\\) steps for 16 channels"),
    (lambda t: t.pop("w_3d"), "w_3d missing"),
])
def test_a_damaged_artifact_names_what_is_wrong(mutate, message):
    with pytest.raises(portrait_artifact.PortraitArtifactError, match=message):
        portrait_artifact.from_bytes(damaged(mutate))


def test_bytes_that_are_no_artifact_are_refused_clearly():
    for data in (b"", b"\x00" * 4, (10**6).to_bytes(8, "little") + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{x"):
        with pytest.raises(portrait_artifact.PortraitArtifactError, match="per-selfie artifact"):
            portrait_artifact.from_bytes(data)
