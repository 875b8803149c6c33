"""`emoji3d weights check-reference` on damaged and malicious copies of the golden fixtures:
one sentence naming the file, exit 2, no traceback, nothing from the file run."""
from __future__ import annotations

import os
import pathlib
import shutil

import pytest
import torch

from engine.checks import check_folder
from engine.weights.errors import UnsafePickle, WeightsError
from engine.weights.tensor_files import load_safetensors, save_safetensors
from tests.engine.weights.cli_run import one_line_refusal, run_weights, write_config
from tests.engine.weights.nvidia_pickles import Reduce

REFERENCE = pathlib.Path("/work/shared/fixtures/reference")
LABELS = REFERENCE / "eg3d_camera_labels"
STYLEGAN2 = REFERENCE / "stylegan2_rosinality_slim"

pytestmark = pytest.mark.skipif(not LABELS.is_dir(), reason="golden fixtures not present")


@pytest.fixture
def labels(tmp_path) -> pathlib.Path:
    folder = tmp_path / "eg3d_camera_labels"
    shutil.copytree(LABELS, folder)
    return folder


def test_intact_copy_still_passes(labels):
    checks = check_folder(labels)
    assert checks and all(c.passed for c in checks)


def test_truncated_safetensors_names_the_file(labels):
    io_file = labels / "io.safetensors"
    io_file.write_bytes(io_file.read_bytes()[:300])
    with pytest.raises(WeightsError, match="io.safetensors: corrupt or truncated"):
        check_folder(labels)


@pytest.mark.parametrize("content, says", [
    (b'{"recipe": "3dface2idr", ', "invalid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2, 3]", "expected a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "config.json"),
])
def test_bad_config_json_names_the_file(labels, content, says):
    (labels / "config.json").write_bytes(content)
    with pytest.raises(WeightsError, match=says) as caught:
        check_folder(labels)
    assert str(labels / "config.json") in str(caught.value)


def test_fixture_missing_a_tensor_is_damaged_not_a_traceback(labels):
    tensors = load_safetensors(labels / "io.safetensors")
    del tensors["label"]
    save_safetensors(tensors, labels / "io.safetensors")
    with pytest.raises(WeightsError, match=r"damaged face_geometry fixture \(KeyError: 'label'\)"):
        check_folder(labels)


def test_checkpoint_that_asks_to_run_code_is_refused_and_nothing_runs(tmp_path):
    folder = tmp_path / "stylegan2_rosinality_slim"
    folder.mkdir()
    for name in ("config.json", "io.safetensors"):
        shutil.copy(STYLEGAN2 / name, folder / name)
    marker = tmp_path / "ran"
    torch.save({"g_ema": Reduce(os.system, (f"touch {marker}",))}, folder / "checkpoint.pt")
    with pytest.raises(UnsafePickle, match=r"checkpoint.pt: refuses to load (posix|os)\.system"):
        check_folder(folder)
    assert not marker.exists()

    proc = run_weights(write_config(tmp_path), "check-reference", str(folder), timeout=120)
    one_line_refusal(proc, str(folder / "checkpoint.pt"))
    assert not marker.exists()


def test_cli_damaged_fixture_is_one_line_and_exit_2(tmp_path, labels):
    (labels / "config.json").write_text('{"recipe": ')
    proc = run_weights(write_config(tmp_path), "check-reference", str(labels), timeout=120)
    assert "invalid JSON" in one_line_refusal(proc, str(labels / "config.json"))
