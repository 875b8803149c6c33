"""Reading and writing tensor files safely: torch checkpoints and safetensors.

Conventions
- ``torch.load`` is only ever called with ``weights_only=True``: a checkpoint
  holding anything but tensors and plain containers is refused
  (:class:`UnsafePickle`), never run. NVIDIA network pickles, which need more,
  go through :mod:`engine.weights.unpickle` instead.
- Tensors are read onto the CPU.
- Every problem (missing, empty, truncated, corrupt, unsafe) raises a
  ``WeightsError`` whose message starts with the file's path.
- :func:`save_safetensors` writes atomically (a ``.tmp`` file renamed over the
  target), so a reader never sees half a file.
"""
from __future__ import annotations

import os
import pathlib
import pickle
import re
import zipfile
from typing import Any, Mapping

import torch

from engine.weights.errors import UnsafePickle, WeightsError, WeightsMissing


def load_torch_checkpoint(path: str | os.PathLike, allow_namespace: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file.

    ``allow_namespace`` lets ``argparse.Namespace`` through (e4e stores its
    training options that way); it is a plain attribute bag.
    """
    file_path = pathlib.Path(path)
    if not file_path.is_file():
        raise WeightsMissing(f"{file_path}: file not found", file=str(file_path))
    if file_path.stat().st_size == 0:
        raise WeightsError(f"{file_path}: file is empty", file=str(file_path))
    import argparse

    extra = [argparse.Namespace] if allow_namespace else []
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(file_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            # torch words this "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module ..."
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = found.group(1) if found else "a non-tensor object"
            raise UnsafePickle(f"{file_path}: refuses to load {what} (only tensors and plain containers are allowed)",
                               file=str(file_path)) from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise WeightsError(f"{file_path}: corrupt checkpoint ({first})", file=str(file_path)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"{file_path}: corrupt or truncated checkpoint ({first})", file=str(file_path)) from None


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file_path = pathlib.Path(path)
    if not file_path.is_file():
        raise WeightsMissing(f"{file_path}: file not found", file=str(file_path))
    try:
        return load_file(str(file_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{file_path}: corrupt or truncated safetensors file ({exc})", file=str(file_path)) from None


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Atomic write of CPU copies of ``tensors``.

    safetensors refuses tensors that share memory; a module's state dict has
    such aliases (a layer listed twice, as lpips' ``lins`` does), so a tensor
    whose storage was already written is cloned rather than shared.
    """
    from safetensors.torch import save_file

    file_path = pathlib.Path(path)
    seen: set[int] = set()
    clean = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        clean[key] = tensor
    tmp = file_path.with_name(file_path.name + ".tmp")
    save_file(clean, str(tmp), metadata=dict(metadata or {}))
    os.replace(tmp, file_path)
