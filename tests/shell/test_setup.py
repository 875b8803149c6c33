"""`emoji3d setup` against the project's fake download server: licences first (a refusal downloads
nothing), a corrupt download named with its fix, the whole path, and a second run that skips what is done.

The pipeline's five pretrained folders are small random networks converted beforehand (their
downloads are the weights tests' business); one entry, a small CelebA-HQ classifier in NVIDIA's
pickle format, is served by the fake server and goes through fetch, convert and verify here."""
from __future__ import annotations

import hashlib
import io
import pathlib
import sys

import pytest

from engine.avatar.networks import PRETRAINED_FOLDERS
from engine.boundary_job import install_boundaries
from engine.nets import eg3d
from engine.render import boundary_fit, edits
from shell.commands import setup
from tests.engine.nets.progan_reference import REFERENCE, recipe_variables, tf_pickle
from tests.engine.test_boundary_job import install_pretrained
from tests.engine.weights.test_fetch import _Server

TOKEN = "123456:SECRET-token-never-printed"


class Terminal(io.StringIO):
    """Typed answers on an interactive stdin."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def classifier_pickle() -> bytes:
    case = REFERENCE["fused_mbstd4_32px"]
    return tf_pickle(list(recipe_variables(case).items()), case["static_kwargs"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("pretrained")
    install_pretrained(folder)
    return folder


def install(tmp_path, monkeypatch, converted, served: bytes, payload: bytes, url: str) -> pathlib.Path:
    """A config whose manifest lists the pipeline's folders (installed) and the classifier at ``url``
    (``served`` is what the manifest promises, ``payload`` what the server sends)."""
    import shutil

    weights = tmp_path / "data" / "weights"
    for name in PRETRAINED_FOLDERS:
        shutil.copytree(converted / name, weights / name)
    entries = "".join(f'[files.{name}]\nfilename = "{name}.bin"\nurl = "{url}/{name}"\nlicence = "test"\n'
                      f'kind = "arcface"\n' for name in PRETRAINED_FOLDERS)
    entries += (f'[files.clf]\nfilename = "celebahq-classifier-19-eyeglasses.pkl"\nurl = "{url}"\n'
                f'size = {len(served)}\nsha256 = "{hashlib.sha256(served).hexdigest()}"\n'
                'licence = "CC BY-NC 4.0"\nlicence_url = "https://example.org/licence"\nkind = "tf_network_pickle"\n')
    (tmp_path / "manifest.toml").write_text(entries)
    config = tmp_path / "config.toml"
    config.write_text('[paths]\ndata_dir = "data"\n[engine]\npreset = "auto"\ndevice = "cpu"\n'
                      '[weights]\nmanifest = "manifest.toml"\n[discord]\nenabled = false\n'
                      '[pack]\nboundary_fit_samples = 16\n')
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.delenv("EMOJI3D_CONFIG", raising=False)
    return config


@pytest.fixture
def server(classifier_pickle):
    s = _Server(classifier_pickle)
    yield s
    s.close()


def test_a_refused_licence_downloads_nothing(tmp_path, monkeypatch, converted, server, classifier_pickle, capsys):
    config = install(tmp_path, monkeypatch, converted, classifier_pickle, classifier_pickle, server.url)
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert setup.main(["--config", str(config), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "celebahq-classifier-19-eyeglasses.pkl: licence CC BY-NC 4.0" in err and "https://example.org/licence" in err
    assert "setup stopped at licences: clf: licence CC BY-NC 4.0 not accepted; nothing was downloaded" in err
    assert "fix:" in err
    assert server.requests == [] and not list((tmp_path / "data" / "weights").glob("celebahq*"))

    # no terminal and no --yes: a clear error, exit 2, still nothing downloaded
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert setup.main(["--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "setup stopped at licences: not a terminal" in err and "emoji3d setup --yes" in err
    assert server.requests == []


def test_a_corrupt_download_is_named_and_deleted(tmp_path, monkeypatch, converted, classifier_pickle, capsys):
    corrupt = bytearray(classifier_pickle)
    corrupt[100] ^= 0xFF
    bad = _Server(bytes(corrupt))
    try:
        config = install(tmp_path, monkeypatch, converted, classifier_pickle, bytes(corrupt), bad.url)
        assert setup.main(["--config", str(config), "--yes", "--no-progress"]) == 1
    finally:
        bad.close()
    err = capsys.readouterr().err
    assert "setup stopped at fetch: celebahq-classifier-19-eyeglasses.pkl: downloaded file refused" in err
    assert "fix: run `emoji3d setup` again" in err
    weights = tmp_path / "data" / "weights"
    assert not list(weights.glob("celebahq*")) and not (weights / "clf").exists()


def test_the_whole_path_then_a_second_run_skips_what_is_done(tmp_path, monkeypatch, converted, server,
                                                             classifier_pickle, capsys):
    from engine.nets.progan_classifier import ProGANClassifier

    config = install(tmp_path, monkeypatch, converted, classifier_pickle, classifier_pickle, server.url)
    weights = tmp_path / "data" / "weights"
    # The random "pretrained" EG3D draws no faces: the boundary step fails, named, after the weights are in.
    assert setup.main(["--config", str(config), "--yes", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "[licences] clf: accepted (--yes)" in err and "[fetch] clf:" in err and "[convert] clf:" in err
    assert "checked clf against the manifest" in err and "[storage]" in err
    assert "setup stopped at boundaries: faces were found in only 0.0% of the renders" in err
    assert "fix: fix what it names, then `emoji3d setup` again" in err
    assert ProGANClassifier.from_pretrained(weights / "clf").config.resolution == 32
    assert len(server.requests) == 1

    # a boundary file for this generator (fitted with the test-only image statistics, as such weights need)
    generator = eg3d.TriPlaneGenerator.from_pretrained(weights / "eg3d_ffhq")
    bset = boundary_fit.fit_boundary_set(generator, "slim", boundary_fit.plan_fit(weights, ["smile"]),
                                         edits.SampleConfig(n=16, batch=8), edits.FitConfig(fraction=0.25), 0)
    install_boundaries(bset, tmp_path / "data" / "boundaries" / "eg3d.safetensors")

    assert setup.main(["--config", str(config), "--no-progress"]) == 0  # no --yes needed: nothing to download
    captured = capsys.readouterr()
    err = captured.err
    assert "[licences] nothing to download: skipped" in err and "[fetch] every file is downloaded or converted" in err
    assert "[convert] every pretrained folder is current: skipped" in err
    assert "fits this generator (smile): skipped" in err
    assert "[  ok] boundaries" in err and "FAIL" not in err and TOKEN not in err + captured.out
    assert "emoji3d make --selfie samples/selfie.jpg --style toon" in captured.out
    assert len(server.requests) == 1  # nothing downloaded again
