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
* Error bound of a setting: each weight within step/2 = std(r_c) /
  (2 levels_per_std) of its residual; RMS std(r_c) / (levels_per_std sqrt 12).
"""
from __future__ import annotations

import zlib
from typing import Mapping

import torch

_INT8_MAX = 127


class CompactDeltaError(ValueError):
    """A compact delta that does not decode to the shapes it claims."""


def _deflate_huffman(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return packer.compress(data) + packer.flush()


def encode(delta: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor] | None,
           levels_per_std: float) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Tensors and shapes that store ``delta`` relative to ``base`` (both fp16 deltas, or base None)."""
    if not levels_per_std > 0:
        raise ValueError(f"levels_per_std must be positive, got {levels_per_std}")
    base = base or {}
    out: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, value in delta.items():
        ref = base.get(name)
        residual = value.detach().cpu().float() - (ref.detach().cpu().float() if ref is not None else 0.0)
        shapes[name] = list(residual.shape)
        if residual.dim() < 2:
            out[f"raw.{name}"] = residual.half()
            continue
        rows = residual.reshape(residual.shape[0], -1)                    # [C, fan-in]
        step = rows.std(dim=1, unbiased=False) / levels_per_std             # [C]
        step = torch.where(step > 0, step, torch.ones_like(step))
        q = torch.round(rows / step[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
        out[f"res.{name}"] = torch.frombuffer(bytearray(_deflate_huffman(q.numpy().tobytes())), dtype=torch.uint8)
        out[f"step.{name}"] = step.float()
    return out, shapes


def decode(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, list[int]],
           base: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The fp16 delta back from :func:`encode`'s tensors and the same ``base``."""
    base = base or {}
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        ref = base.get(name)
        base32 = ref.float() if ref is not None else torch.zeros(shape)
        if f"raw.{name}" in tensors:
            raw = tensors[f"raw.{name}"]
            if list(raw.shape) != list(shape):
                raise CompactDeltaError(f"{name}: stored {list(raw.shape)}, expected {list(shape)}")
            out[name] = (base32 + raw.float()).half()
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
        q = torch.frombuffer(bytearray(raw), dtype=torch.int8).reshape(shape[0], -1).float()  # [C, fan-in]
        out[name] = (base32 + (q * step[:, None]).reshape(shape)).half()
    return out
