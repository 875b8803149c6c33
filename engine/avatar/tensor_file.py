"""The safetensors container of the avatar cache's artifacts (``style_2d``, ``portrait_3d``) and of the
avatar file (``engine.avatar.avatar_file``): a dict of named tensors plus string metadata, moved to the CPU.
A damaged or truncated file raises :class:`TensorFileError`."""
from __future__ import annotations

import json
from typing import Mapping

import torch


class TensorFileError(ValueError):
    """Bytes that are not a readable safetensors file (damaged or truncated)."""


def pack_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta or {})


def unpack_tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except SafetensorError as exc:
        raise TensorFileError(f"not a readable safetensors file of {len(data)} bytes ({exc})") from exc


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file."""
    if len(data) < 8:
        raise TensorFileError("not a safetensors file: shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise TensorFileError(f"safetensors header of {n} bytes in a file of {len(data)}")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFileError(f"unreadable safetensors header ({exc})") from exc
    return header.get("__metadata__", {}) or {}


def split_prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix + name``, by ``name`` (the containers group tensors by prefix)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
