"""Safe tensor files: torch.load only with weights_only (code refused), corrupt and truncated
files named in errors, atomic safetensors writes that survive shared storage, loaded tensors
aligned for SIMD."""
from __future__ import annotations

import os
import pathlib
import re

import pytest
import torch

from emoji3d.errors import WeightsError
from engine.weights.errors import UnsafePickle, WeightsMissing
from engine.weights.tensor_files import load_safetensors, load_torch_checkpoint, save_safetensors
from tests.engine.weights.nvidia_pickles import Reduce

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_torch_load_path_refuses_code(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": Reduce(os.system, (f"touch {marker}",))}, path)
    with pytest.raises(UnsafePickle, match="evil.pt.*posix.system|evil.pt.*os.system"):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_corrupt_torch_checkpoint_names_file(tmp_path):
    path = tmp_path / "model_ir_se50.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(WeightsError, match="model_ir_se50.pth.*(corrupt|truncated)"):
        load_torch_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match="model_ir_se50.pth.*empty"):
        load_torch_checkpoint(path)
    with pytest.raises(WeightsMissing, match="nothere.pth"):
        load_torch_checkpoint(tmp_path / "nothere.pth")


def test_corrupt_safetensors_names_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_safetensors({"a": torch.randn(32, 32)}, path)
    full = path.read_bytes()
    path.write_bytes(full[:-100])
    with pytest.raises(WeightsError, match="model.safetensors.*(corrupt|truncated)"):
        load_safetensors(path)
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_safetensors(path)
    with pytest.raises(WeightsMissing, match="nothere.safetensors"):
        load_safetensors(tmp_path / "nothere.safetensors")


def test_save_safetensors_writes_aliases_and_views_as_separate_tensors(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"a": base, "a_again": base, "row": base[1], "metadata_free": torch.zeros(2, dtype=torch.int64)}
    path = tmp_path / "x.safetensors"
    save_safetensors(tensors, path, metadata={"k": "v"})
    back = load_safetensors(path)
    assert set(back) == set(tensors)
    for key, value in tensors.items():
        assert torch.equal(back[key], value) and back[key].dtype == value.dtype, key
    assert not list(tmp_path.glob("*.tmp"))


def test_loaded_safetensors_start_on_the_simd_boundary(tmp_path):
    from safetensors.torch import load_file

    # odd sizes put most tensors' bytes off any 64-byte boundary inside the file
    tensors = {f"t{i}": torch.randn(2 * i + 3) for i in range(8)}
    path = tmp_path / "odd.safetensors"
    save_safetensors(tensors, path)
    assert any(t.data_ptr() % 64 for t in load_file(str(path)).values()), "file no longer misaligns; pick other sizes"
    back = load_safetensors(path)
    assert [t.data_ptr() % 64 for t in back.values()] == [0] * len(tensors)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_torch_load_always_weights_only():
    offenders = []
    for package in ("engine", "emoji3d", "storage", "bots", "bench"):
        for source_file in (REPO / package).rglob("*.py"):
            src = source_file.read_text(encoding="utf-8", errors="replace")
            for found in re.finditer(r"torch\.load\(", src):
                depth, i = 1, found.end()
                while i < len(src) and depth:
                    depth += {"(": 1, ")": -1}.get(src[i], 0)
                    i += 1
                call = src[found.start():i]
                if not re.search(r"weights_only\s*=\s*True", call):
                    offenders.append(f"{source_file.relative_to(REPO)}: {call[:80]}")
            if re.search(r"\bpickle\.loads?\(", src):
                offenders.append(f"{source_file.relative_to(REPO)}: plain pickle.load")
    assert not offenders, offenders
