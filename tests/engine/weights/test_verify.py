"""`weights verify` says "ok" only when something was checked: the manifest's checksum, the
record `weights fetch` wrote of its download, or (a file copied in by hand, nothing known)
a real parse of the file as its kind into our network."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from engine.weights import fetch as weights_fetch
from engine.weights.errors import ChecksumMismatch
from engine.weights.fetch_record import read_record, record_path
from engine.weights.manifest import WeightFile
from engine.weights.verify import verify_installed
from tests.engine.nets.progan_reference import REFERENCE, recipe_variables, tf_pickle
from tests.engine.weights.cli_run import run_weights, write_config
from tests.engine.weights.test_fetch import _Server

FILENAME = "celebahq-classifier-19-eyeglasses.pkl"


@pytest.fixture(scope="module")
def classifier() -> bytes:
    """A small attribute classifier in NVIDIA's TensorFlow pickle format (a real file of that kind)."""
    case = REFERENCE["fused_mbstd4_32px"]
    return tf_pickle(list(recipe_variables(case).items()), case["static_kwargs"])


def _entry(url: str = "https://example.invalid/clf.pkl", size=None, sha256=None) -> WeightFile:
    """A manifest entry that knows neither size nor checksum, as most official files."""
    return WeightFile("clf", FILENAME, url, size, sha256, "MIT", "tf_network_pickle")


def test_fetch_records_size_and_sha256_and_verify_checks_them(tmp_path, classifier):
    server = _Server(classifier)
    try:
        entry = _entry(server.url)
        path = weights_fetch.fetch(entry, tmp_path, progress=False, confirm_licence=lambda e: True)
    finally:
        server.close()
    record = read_record(path)
    assert record.size == len(classifier) and record.sha256 == hashlib.sha256(classifier).hexdigest()
    assert record.url == server.url and record_path(path).name == FILENAME + ".emoji3d-fetch.json"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.part"))
    check = verify_installed(entry, path)
    assert check.ok and check.detail == "matches its fetch record (size, sha256)"

    damaged = bytearray(classifier)
    damaged[len(damaged) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(damaged))
    check = verify_installed(entry, path)
    assert not check.ok and "changed since download" in check.detail and record.sha256 in check.detail
    with pytest.raises(ChecksumMismatch, match=FILENAME):  # fetch does not accept it either
        weights_fetch.fetch(entry, tmp_path, progress=False, confirm_licence=lambda e: True)
    path.write_bytes(classifier[:-10])
    check = verify_installed(entry, path)
    assert not check.ok and f"but {len(classifier)} when fetched" in check.detail


def test_damaged_record_is_not_ignored(tmp_path, classifier):
    path = tmp_path / FILENAME
    path.write_bytes(classifier)
    record_path(path).write_text(json.dumps({"format": 1, "filename": FILENAME, "size": "big"}))
    check = verify_installed(_entry(), path)
    assert not check.ok and "malformed fetch record" in check.detail


def test_hand_placed_file_is_parsed_when_nothing_is_known(tmp_path, classifier):
    path = tmp_path / FILENAME
    path.write_bytes(classifier)
    check = verify_installed(_entry(), path)
    assert check.ok and "loads as tf_network_pickle with the expected keys and shapes" in check.detail
    assert "ProGANClassifier" in check.detail

    path.write_bytes(classifier[: len(classifier) // 2])
    check = verify_installed(_entry(), path)
    assert not check.ok and "does not load" in check.detail and "truncated" in check.detail

    path.write_bytes(b"<!DOCTYPE html><html>Google Drive: confirm download</html>")
    assert not verify_installed(_entry(), path).ok

    torch.save({"features.0.weight": torch.zeros(2, 3, 3, 3)}, path)  # a checkpoint, not this kind
    check = verify_installed(_entry(), path)
    assert not check.ok and "does not load" in check.detail


def test_wrong_shapes_fail_for_a_checkpoint_kind(tmp_path):
    """An ArcFace entry holding a checkpoint of tensors under other names is refused, not "ok"."""
    path = tmp_path / "model_ir_se50.pth"
    torch.save({"input_layer.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    entry = WeightFile("arcface_ir_se50", path.name, "https://example.invalid/a.pth", None, None, "MIT", "arcface")
    check = verify_installed(entry, path)
    assert not check.ok and "does not load" in check.detail


def test_manifest_checksum_still_decides_first(tmp_path, classifier):
    path = tmp_path / FILENAME
    path.write_bytes(classifier)
    check = verify_installed(_entry(sha256=hashlib.sha256(classifier).hexdigest()), path)
    assert check.ok and check.detail == "sha256 ok"  # a published digest needs no parse
    check = verify_installed(_entry(sha256="0" * 64), path)
    assert not check.ok and "expected 0000" in check.detail


def test_cli_verify_parses_hand_placed_files(tmp_path, classifier):
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(f'[files.clf]\nfilename = "{FILENAME}"\nurl = "https://example.invalid/clf.pkl"\n'
                        'size = 0\nsha256 = ""\nlicence = "MIT"\nkind = "tf_network_pickle"\n')
    config = write_config(tmp_path, manifest)
    weights_dir = tmp_path / "data" / "weights"
    weights_dir.mkdir(parents=True)
    (weights_dir / FILENAME).write_bytes(classifier)
    proc = run_weights(config, "verify", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and "loads as tf_network_pickle" in proc.stdout

    (weights_dir / FILENAME).write_bytes(classifier[:1000])
    proc = run_weights(config, "verify", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "FAILED" in lines[0] and str(weights_dir / FILENAME) in lines[0]
    assert "does not load" in lines[0]
