"""The safetensors container of the avatar cache's artifacts (``style_2d``, ``portrait_3d``) and of the
avatar file (``engine.avatar.avatar_file``): a dict of named tensors plus string metadata, moved to the CPU."""
from __future__ import annotations

import torch


def pack_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta or {})


def unpack_tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)
