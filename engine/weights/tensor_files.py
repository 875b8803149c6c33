"""Reading and writing tensor files safely: torch checkpoints and safetensors.

Conventions
- ``torch.load`` is only ever called with ``weights_only=True``: a checkpoint
  holding anything but tensors and plain containers is refused
  (:class:`UnsafePickle`), never run. NVIDIA network pickles, which need more,
  go through :mod:`engine.weights.unpickle` instead.
- Tensors are read onto the CPU. Safetensors come back in memory of their
  own, each starting on a 64-byte boundary as torch's allocations do: views
  into the file's buffer start wherever the header left them, and AVX-512
  kernels round differently on unaligned weights, so a loaded network would
  not compute bit for bit what the saved one computed.
- Every problem (missing, empty, truncated, corrupt, unsafe) raises a
  ``WeightsError`` whose message starts with the file's path.
- :func:`read_json` reads the small JSON files that travel with weights
  (fixture and folder configs) with the same promise: one error naming the
  file for a missing, oversized, non-UTF-8, invalid or non-object file.
- :func:`save_safetensors` writes atomically (a ``.tmp`` file renamed over the
  target), so a reader never sees half a file.
"""
from __future__ import annotations

import json
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
    except RecursionError:
        raise WeightsError(f"{file_path}: checkpoint nests data too deeply to read; refused", file=str(file_path)) from None
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
        tensors = load_file(str(file_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"{file_path}: corrupt or truncated safetensors file ({first})", file=str(file_path)) from None
    return {name: _aligned(tensor) for name, tensor in tensors.items()}


SIMD_ALIGNMENT = 64  # bytes; torch's CPU allocator aligns every allocation to this


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.numel() == 0 or tensor.data_ptr() % SIMD_ALIGNMENT == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


MAX_JSON_BYTES = 64 * 2**20  # configs are kilobytes; more is not a config


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``; anything else is a ``WeightsError`` naming the file."""
    file_path = pathlib.Path(path)
    if not file_path.is_file():
        raise WeightsMissing(f"{file_path}: file not found", file=str(file_path))
    size = file_path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise WeightsError(f"{file_path}: {size} bytes is too large for a JSON config (at most {MAX_JSON_BYTES})",
                           file=str(file_path))
    try:
        data = json.loads(file_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WeightsError(f"{file_path}: not UTF-8 text (byte {exc.start}), so not a JSON config",
                           file=str(file_path)) from None
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{file_path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                           file=str(file_path)) from None
    except RecursionError:
        raise WeightsError(f"{file_path}: JSON nested too deeply to read", file=str(file_path)) from None
    except OSError as exc:
        raise WeightsError(f"{file_path}: cannot be read ({exc.strerror or exc})", file=str(file_path)) from None
    if not isinstance(data, dict):
        raise WeightsError(f"{file_path}: expected a JSON object, found {type(data).__name__}", file=str(file_path))
    return data


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
