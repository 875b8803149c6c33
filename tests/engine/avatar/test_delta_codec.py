"""engine.avatar.delta_codec: quantising on the delta's device gives, bit for bit, what decoding the
stored bytes gives; the per-channel step does not depend on the order of its sums (a GPU sums in
another order than a CPU); files written by the codec before (steps from ``torch.std``) still decode."""
from __future__ import annotations

import zlib

import pytest
import torch

from engine.avatar import delta_codec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _delta(gen: torch.Generator, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """fp16 deltas of conv, linear and bias shapes, with a channel of zeros, negative zeros and one large value."""
    conv = (scale * torch.randn(8, 4, 3, 3, generator=gen)).half()
    conv[3] = 0.0
    conv[5, 0] = -0.0
    conv[6, 1, 1, 1] = 30000.0  # an outlier: its channel's step is large, the rest of it rounds to 0
    return {"conv.weight": conv, "fc.weight": (scale * torch.randn(16, 32, generator=gen)).half(),
            "fc.bias": torch.tensor([0.01, -0.0, 0.0, -0.02], dtype=torch.float16)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_base", [False, True])
def test_dequantising_on_the_device_is_bit_identical_to_decoding_the_stored_bytes(device, with_base):
    gen = torch.Generator().manual_seed(0)
    delta = _delta(gen)
    base = {k: v + (0.01 * torch.randn(v.shape, generator=gen)).half() for k, v in _delta(gen).items()} \
        if with_base else None
    on_device = delta_codec.quantise({k: v.to(device) for k, v in delta.items()},
                                     {k: v.to(device) for k, v in base.items()} if base else None, 2.0)
    values = delta_codec.dequantise(on_device, {k: v.to(device) for k, v in base.items()} if base else None)
    tensors, shapes = delta_codec.encode(delta, base, 2.0)  # the CPU path
    decoded = delta_codec.decode(tensors, shapes, base)
    assert set(values) == set(decoded) == set(delta)
    for name, v in values.items():
        assert v.device.type == device and v.dtype == torch.float16
        # Bit for bit: negative zeros included (compared as integers).
        assert torch.equal(v.cpu().view(torch.int16), decoded[name].view(torch.int16)), name
    # The device's rounding is what the bytes hold: its file is the CPU path's file.
    coded, coded_shapes = delta_codec.entropy_code(on_device)
    assert coded_shapes == shapes and coded.keys() == tensors.keys()
    assert all(torch.equal(coded[k], tensors[k]) for k in tensors)


def test_the_step_of_a_channel_does_not_depend_on_the_order_of_its_sums():
    gen = torch.Generator().manual_seed(1)
    rows = (0.05 * torch.randn(64, 4608, generator=gen)).half().float() + 0.001  # [C, fan-in], fp16 values
    steps = delta_codec._channel_steps(rows, 1.0)
    for seed in range(3):
        order = torch.randperm(rows.shape[1], generator=torch.Generator().manual_seed(seed))
        assert torch.equal(delta_codec._channel_steps(rows[:, order], 1.0), steps)
    assert torch.equal(delta_codec._channel_steps(rows, 2.0), (steps.double() / 2).float())
    torch.testing.assert_close(steps, rows.std(dim=1, unbiased=False), rtol=1e-6, atol=0.0)
    zero = delta_codec._channel_steps(torch.zeros(2, 9), 1.0)
    assert torch.equal(zero, torch.ones(2))  # a channel without change keeps a usable step


def test_a_delta_coded_before_the_exact_steps_still_decodes():
    """The codec before (steps from ``torch.std``, the rest as now) wrote files that decode as they did."""
    gen = torch.Generator().manual_seed(2)
    delta = _delta(gen)
    tensors, shapes = {}, {}
    for name, value in delta.items():
        shapes[name] = list(value.shape)
        if value.dim() < 2:
            tensors[f"raw.{name}"] = value
            continue
        rows = value.float().reshape(value.shape[0], -1)
        step = rows.std(dim=1, unbiased=False)
        step = torch.where(step > 0, step, torch.ones_like(step))
        q = torch.round(rows / step[:, None]).clamp(-127, 127).to(torch.int8)
        packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
        tensors[f"res.{name}"] = torch.frombuffer(bytearray(packer.compress(q.numpy().tobytes()) + packer.flush()),
                                                  dtype=torch.uint8)
        tensors[f"step.{name}"] = step
        expected = (torch.zeros(value.shape) + (q.float() * step[:, None]).reshape(value.shape)).half()
        assert torch.equal(delta_codec.decode(tensors, shapes, None)[name], expected)
    assert torch.equal(delta_codec.decode(tensors, shapes, None)["fc.bias"], delta["fc.bias"].float().add(0.0).half())


def test_a_fan_in_beyond_the_exact_sums_is_refused():
    with pytest.raises(ValueError, match="fan-in of 2097152 exceeds"):
        delta_codec._channel_steps(torch.zeros(1, 2 ** 21), 1.0)
