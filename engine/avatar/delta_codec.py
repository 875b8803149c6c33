"""The compact form of a generator weight delta: int8 per output channel, entropy-coded.

Used for the stylized delta in the avatar file (stored against the PTI delta,
``engine.avatar.avatar_file``) and for the PTI delta in the per-selfie
``portrait_3d`` artifact (stored against zero, i.e. against the pretrained
weights, ``engine.avatar.portrait_artifact``).

Conventions
-----------
* :func:`encode` stores ``r = delta - base`` (fp32; a name missing from
  ``base`` counts as a zero base). A tensor of >= 2 dims is quantised per
  output channel (dim 0) with a uniform step ``std(r_c) / levels_per_std``
  to int8 and deflated with Huffman coding only (``res.<name>``: uint8
  bytes, ``step.<name>``: fp32 [C]): the values are near-Gaussian noise
  where LZ77 matches find nothing, so Huffman alone is about as small as
  zlib level 6 (8 % smaller at 2 levels/std) and 15x faster. Tensors of
  fewer than 2 dims (biases, gains) are stored as the fp16 residual
  (``raw.<name>``). ``shapes`` (name -> shape) goes in the file's metadata.
* :func:`decode` gives ``fp16(base + q * step)``; anything missing, short or
  over-long raises :class:`CompactDeltaError` naming the tensor.
* The two halves are apart: :func:`quantise` (on the delta's own device, a
  GPU too) -> :class:`QuantisedDelta` -> :func:`entropy_code` (CPU bytes,
  only when the delta is stored), and :func:`dequantise` gives on that
  device, bit for bit, what :func:`decode` gives back from the bytes. The
  arithmetic is the same on every device: elementwise IEEE operations, and a
  step ``std(r_c)`` that does not depend on the order of a reduction (integer
  sums of ``r`` in units of 2^-24, exact for fp16 deltas: see
  :func:`_channel_steps`), where ``torch.std`` sums in another order on a GPU
  than on a CPU and differs in the last bits.
* Error bound of a setting: each weight within step/2 = std(r_c) /
  (2 levels_per_std) of its residual; RMS std(r_c) / (levels_per_std sqrt 12).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Mapping

import torch

_INT8_MAX = 127


class CompactDeltaError(ValueError):
    """A compact delta that does not decode to the shapes it claims."""


_FIXED_BITS = 24     # fp16 values, and differences of two, are whole multiples of 2^-24 ...
_FIXED_LIMIT = 2 ** 41  # ... below 2^17 in size: at most 2^41 units (clamped there, as anything larger is no delta)
_SPLIT_BITS = 21     # units = hi * 2^21 + lo: each product of two halves and its row sum stays inside int64
_MAX_FAN_IN = 2 ** 20


@dataclass
class QuantisedDelta:
    """What :func:`encode` stores, before the entropy coding, on the device of the delta it came from."""
    shapes: dict[str, list[int]]                                          # name -> shape
    levels: dict[str, torch.Tensor] = field(default_factory=dict)         # name -> int8 [C, fan-in]
    steps: dict[str, torch.Tensor] = field(default_factory=dict)          # name -> fp32 [C]
    raw: dict[str, torch.Tensor] = field(default_factory=dict)            # name -> fp16 residual, < 2 dims

    def to(self, device: torch.device | str) -> "QuantisedDelta":
        """The same values on ``device``: e.g. copied to the CPU once, so that :func:`entropy_code` can run on
        another thread without a CUDA call."""
        return QuantisedDelta(shapes=dict(self.shapes), levels={k: v.to(device) for k, v in self.levels.items()},
                              steps={k: v.to(device) for k, v in self.steps.items()},
                              raw={k: v.to(device) for k, v in self.raw.items()})


def _deflate_huffman(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return packer.compress(data) + packer.flush()


def _channel_steps(rows: torch.Tensor, levels_per_std: float) -> torch.Tensor:
    """``std(row) / levels_per_std`` per row of ``rows`` [C, n] (fp32), the same bits on every device:
    the sums are of integers (the values in units of 2^-24, exact for fp16 deltas), so their order does
    not matter; what follows is elementwise fp64 on [C]. A zero std gives a step of 1."""
    n = rows.shape[1]
    if n > _MAX_FAN_IN:
        raise ValueError(f"a fan-in of {n} exceeds the codec's {_MAX_FAN_IN}")
    # Whole numbers for fp16 deltas; anything finer truncates toward zero, the same on every device.
    units = (rows * 2.0 ** _FIXED_BITS).clamp_(-_FIXED_LIMIT, _FIXED_LIMIT).to(torch.int64)  # [C, n]
    hi = units >> _SPLIT_BITS                                             # [C, n], floor
    lo = units & (2 ** _SPLIT_BITS - 1)                                   # [C, n], in [0, 2^21)
    total = units.sum(dim=1).double()                                     # [C]
    squares = ((hi * hi).sum(dim=1).double() * 2.0 ** (2 * _SPLIT_BITS)  # sum of units^2, [C]
               + (hi * lo).sum(dim=1).double() * 2.0 ** (_SPLIT_BITS + 1) + (lo * lo).sum(dim=1).double())
    mean = total / n
    variance = (squares / n - mean * mean).clamp_(min=0.0)
    step = (torch.sqrt(variance) * 2.0 ** -_FIXED_BITS / levels_per_std).float()
    return torch.where(step > 0, step, torch.ones_like(step))


def _restored(values: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
    """``fp16(base + values)`` (fp32 sum; a missing base is zero, so -0 comes back as +0 either way)."""
    return ((base.to(values.device).float() + values) if base is not None else values + 0.0).half()


def _dequantised(levels: torch.Tensor, step: torch.Tensor, shape: list[int], base: torch.Tensor | None) -> torch.Tensor:
    return _restored((levels.float() * step[:, None]).reshape(shape), base)  # [C, fan-in] -> shape


def quantise(delta: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor] | None,
             levels_per_std: float) -> QuantisedDelta:
    """``delta`` relative to ``base`` (both fp16 deltas, or base None) quantised on ``delta``'s device."""
    if not levels_per_std > 0:
        raise ValueError(f"levels_per_std must be positive, got {levels_per_std}")
    base = base or {}
    out = QuantisedDelta(shapes={})
    for name, value in delta.items():
        ref = base.get(name)
        residual = value.detach().float() - (ref.detach().to(value.device).float() if ref is not None else 0.0)
        out.shapes[name] = list(residual.shape)
        if residual.dim() < 2:
            out.raw[name] = residual.half()
            continue
        rows = residual.reshape(residual.shape[0], -1)                    # [C, fan-in]
        step = _channel_steps(rows, levels_per_std)                         # [C]
        out.levels[name] = torch.round(rows / step[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
        out.steps[name] = step
    return out


def dequantise(quantised: QuantisedDelta, base: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The fp16 delta that :func:`decode` gives back from ``entropy_code(quantised)`` and the same ``base``,
    computed on ``quantised``'s device."""
    base = base or {}
    out: dict[str, torch.Tensor] = {}
    for name, shape in quantised.shapes.items():
        if name in quantised.raw:
            out[name] = _restored(quantised.raw[name].float(), base.get(name))
        else:
            out[name] = _dequantised(quantised.levels[name], quantised.steps[name], shape, base.get(name))
    return out


def entropy_code(quantised: QuantisedDelta) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """The tensors (CPU) and shapes that store ``quantised``: its int8 levels Huffman-deflated."""
    out: dict[str, torch.Tensor] = {}
    for name in quantised.shapes:
        if name in quantised.raw:
            out[f"raw.{name}"] = quantised.raw[name].cpu()
            continue
        levels = quantised.levels[name].cpu()
        out[f"res.{name}"] = torch.frombuffer(bytearray(_deflate_huffman(levels.numpy().tobytes())), dtype=torch.uint8)
        out[f"step.{name}"] = quantised.steps[name].cpu()
    return out, dict(quantised.shapes)


def encode(delta: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor] | None,
           levels_per_std: float) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Tensors and shapes that store ``delta`` relative to ``base`` (both fp16 deltas, or base None)."""
    return entropy_code(quantise(delta, base, levels_per_std))


def decode(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, list[int]],
           base: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The fp16 delta back from :func:`encode`'s tensors and the same ``base`` (on the CPU)."""
    base = base or {}
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        ref = base.get(name)
        if f"raw.{name}" in tensors:
            raw = tensors[f"raw.{name}"]
            if list(raw.shape) != list(shape):
                raise CompactDeltaError(f"{name}: stored {list(raw.shape)}, expected {list(shape)}")
            out[name] = _restored(raw.float(), ref)
            continue
        if f"res.{name}" not in tensors or f"step.{name}" not in tensors:
            raise CompactDeltaError(f"{name}: its quantised values or steps are missing")
        numel = 1
        for s in shape:
            numel *= int(s)
        step = tensors[f"step.{name}"].float()
        if len(shape) < 2 or step.shape != (int(shape[0]),):
            raise CompactDeltaError(f"{name}: {tuple(step.shape)} steps for a tensor of shape {list(shape)}")
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(tensors[f"res.{name}"].numpy().tobytes(), numel)
        except zlib.error as exc:
            raise CompactDeltaError(f"{name}: its quantised values are damaged ({exc})") from exc
        if len(raw) != numel or inflater.unconsumed_tail or not inflater.eof:
            raise CompactDeltaError(f"{name}: the quantised values do not hold exactly {numel} values")
        levels = torch.frombuffer(bytearray(raw), dtype=torch.int8).reshape(shape[0], -1)  # [C, fan-in]
        out[name] = _dequantised(levels, step, shape, ref)
    return out
