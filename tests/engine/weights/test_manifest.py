"""The manifest: packaged entries, validation, verification against size/sha256, and the
state of each entry in a weights folder (converted / outdated / downloaded / partial / missing)."""
from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

from emoji3d.errors import WeightsError
from engine.weights import manifest
from engine.weights.errors import WeightsMissing


def test_packaged_manifest_lists_every_needed_file():
    entries = {f.filename: f for f in manifest.load_manifest().files}
    for fn in ("ffhqrebalanced512-128.pkl", "stylegan2-ffhq-config-f.pt", "e4e_ffhq_encode.pt", "model_ir_se50.pth",
               "vgg16-397923af.pth", "alexnet-owt-7be5be79.pth"):
        assert fn in entries, fn
        assert entries[fn].licence
    assert "non-commercial" in entries["ffhqrebalanced512-128.pkl"].licence
    assert "non-commercial" in entries["stylegan2-ffhq-config-f.pt"].licence
    assert entries["ffhqrebalanced512-128.pkl"].url.startswith("https://api.ngc.nvidia.com/")
    # torchvision publishes the sha256 prefix in the file name
    for fn in ("vgg16-397923af.pth", "alexnet-owt-7be5be79.pth"):
        entry = entries[fn]
        assert entry.url == f"https://download.pytorch.org/models/{fn}"
        assert entry.sha256 == re.search(r"-([0-9a-f]{8})\.pth$", fn).group(1) and entry.sha256_is_prefix


def test_every_folder_the_pipeline_reads_is_a_manifest_entry():
    from engine.avatar.networks import PRETRAINED_FOLDERS

    names = {e.name for e in manifest.load_manifest().files}
    assert set(PRETRAINED_FOLDERS) <= names


def test_attribute_classifiers_are_optional_manifest_entries():
    attrs = {e.name: e for e in manifest.load_manifest().files if e.optional}
    assert sorted(attrs) == ["attribute_age", "attribute_gender", "attribute_glasses"]
    for entry in attrs.values():
        assert entry.kind == "tf_network_pickle" and "non-commercial" in entry.licence
        assert entry.url.startswith("https://nvlabs-fi-cdn.nvidia.com/stylegan/networks/metrics/celebahq-classifier-")
    assert attrs["attribute_glasses"].filename == "celebahq-classifier-19-eyeglasses.pkl"
    assert not any(e.optional for e in manifest.load_manifest().files if not e.name.startswith("attribute_"))


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"kind": "zip"}, "kind"),
        ({"sha256": "xyz"}, "sha256"),
        ({"colour": "red"}, "unknown key"),
        ({"filename": "../etc/passwd"}, "plain file name"),
        ({"url": "ftp://x"}, "http"),
        ({"size": -3}, "size"),
        ({"optional": "yes"}, "optional must be true or false"),
    ],
)
def test_manifest_rejects_bad_entries(patch, match):
    entry = {"filename": "a.pt", "url": "https://example.org/a.pt", "size": 10, "sha256": "", "licence": "MIT",
             "kind": "arcface"}
    entry.update(patch)
    with pytest.raises(WeightsError, match=match):
        manifest.Manifest.from_dict({"files": {"a": entry}})


def test_manifest_file_errors_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match="m.toml not found"):
        manifest.load_manifest(tmp_path / "m.toml")
    (tmp_path / "m.toml").write_text("[files.a\n")
    with pytest.raises(WeightsError, match="m.toml: invalid TOML"):
        manifest.load_manifest(tmp_path / "m.toml")


def _entry(payload: bytes, sha: str | None = "full") -> manifest.WeightFile:
    digest = hashlib.sha256(payload).hexdigest() if sha == "full" else sha
    return manifest.WeightFile("testnet", "testnet.bin", "http://x/", len(payload), digest, "L", "arcface")


def test_verify_file_states(tmp_path):
    payload = b"0123456789" * 1000
    path = tmp_path / "testnet.bin"
    path.write_bytes(payload)
    assert manifest.verify_file(_entry(payload), path).detail == "size ok, sha256 ok"
    prefix = _entry(payload, sha=hashlib.sha256(payload).hexdigest()[:8])
    assert manifest.verify_file(prefix, path).detail == "size ok, sha256 prefix ok"
    assert not manifest.verify_file(_entry(payload, sha="deadbeef"), path).ok
    assert manifest.verify_file(_entry(payload), tmp_path / "nope").detail == "missing"
    assert manifest.sha256_file(path) == hashlib.sha256(payload).hexdigest()


def test_status_and_require_follow_the_folder(tmp_path):
    """missing -> partial -> downloaded -> converted -> outdated (an older format), with the
    command to run named at each step."""
    from engine.nets.progan_classifier import ProGANClassifier, ProGANClassifierConfig

    listing = manifest.Manifest.from_dict({"files": {"clf": {
        "filename": "clf.pkl", "url": "https://example.org/clf.pkl", "licence": "MIT", "kind": "tf_network_pickle"}}})
    entry = listing.get("clf")

    def state() -> str:
        return dict((e.name, s) for e, s in manifest.iter_status(listing, tmp_path))["clf"]

    assert state() == "missing"
    with pytest.raises(WeightsMissing, match="run `emoji3d weights fetch clf` then `emoji3d weights convert clf`"):
        manifest.require(entry, tmp_path)
    (tmp_path / "clf.pkl.part").write_bytes(b"x")
    assert state() == "partial"
    (tmp_path / "clf.pkl").write_bytes(b"x")
    assert state() == "downloaded"
    with pytest.raises(WeightsMissing, match="downloaded but not converted; run `emoji3d weights convert clf`"):
        manifest.require(entry, tmp_path)
    ProGANClassifier.from_config(ProGANClassifierConfig(resolution=8), seed=0).save_pretrained(tmp_path / "clf")
    assert state() == "converted" and manifest.require(entry, tmp_path) == tmp_path / "clf"
    (tmp_path / "clf" / "config.json").write_text(json.dumps({"converted_format": 1, "kind": "tf_network_pickle"}))
    assert state() == "outdated"
    with pytest.raises(WeightsError, match="run `emoji3d weights convert clf` again"):
        manifest.require(entry, tmp_path)


def test_torchvision_files_are_also_found_in_torch_hubs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    entry = manifest.load_manifest().get("alexnet")
    weights_dir = tmp_path / "weights"
    assert manifest.find_installed(entry, weights_dir) is None
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, hub / entry.filename)
    assert manifest.find_installed(entry, weights_dir) == hub / entry.filename
    weights_dir.mkdir()
    (weights_dir / entry.filename).write_bytes(b"x")  # the weights folder comes first
    assert manifest.find_installed(entry, weights_dir) == weights_dir / entry.filename
    other = manifest.load_manifest().get("e4e_ffhq")  # only torchvision files live in the hub cache
    (hub / other.filename).write_bytes(b"x")
    assert manifest.find_installed(other, tmp_path / "elsewhere") is None
