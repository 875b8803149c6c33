"""`emoji3d boundaries fit|verify` end to end on the slim preset (proxy scorers, test-only file)."""
import json

import numpy as np
import pytest

from shell.commands import boundaries as boundaries_command
from engine.render import edits
from engine.nets import eg3d
from engine.avatar.networks import SLIM_3D_PRESET


def test_fit_then_verify_on_slim(tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    rc = boundaries_command.main(["fit", "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu", "--engine-seed", "0",
                 "--out", str(out), "--n", "12", "--batch", "6", "--fraction", "0.25",
                 "--expressions", "smile,surprise", "--neural-rendering-resolution", "16", "--layers", "smile=0:8"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "FOR TESTS ONLY" in cap.err
    summary = json.loads(cap.out)
    assert summary["for_tests_only"] and set(summary["boundaries"]) == {"smile", "surprise"}
    bset = edits.load_boundaries(out)
    assert bset.generator_preset == "slim" and bset.get("smile").layers == (0, 8)
    assert bset.get("smile").scorer == "proxy-image-stats" and bset.get("surprise").d > 0
    # tied to the generator the pipeline builds for the slim preset
    assert bset.generator_digest == edits.generator_digest(eg3d.slim_generator(SLIM_3D_PRESET, seed=20))

    sheet = tmp_path / "sheet.png"
    rc = boundaries_command.main(["verify", str(out), "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu",
                 "--engine-seed", "0", "--sheet", str(sheet), "--sheet-latents", "2"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "for tests only" in cap.err and "OK" in cap.err
    assert "rows smile #1, smile #2, surprise #1, surprise #2" in cap.err
    from PIL import Image

    img = np.asarray(Image.open(sheet))
    assert img.shape == (4 * 128, 3 * 128, 3)
    minus, zero, plus = img[:128, :128], img[:128, 128:256], img[:128, 256:]
    assert not np.array_equal(minus, zero) and not np.array_equal(plus, zero)  # the edit shows
    # another engine seed is another generator: digest mismatch
    rc = boundaries_command.main(["verify", str(out), "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu",
                 "--engine-seed", "1"])
    assert rc == 1 and "digest mismatch" in capsys.readouterr().err


def test_verify_rejects_bad_files_and_usage(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    assert boundaries_command.main(["verify", str(bad), "--no-generator"]) == 1
    assert "FAIL" in capsys.readouterr().err
    assert boundaries_command.main(["fit"]) == 2  # --out missing
    assert boundaries_command.main(["fit", "--out", str(tmp_path / "x"), "--preset", "slim", "--weights-dir", str(tmp_path),
                   "--expressions", "smile,joy", "--device", "cpu"]) == 2


@pytest.mark.slow
def test_verify_rescore_on_slim(tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    assert boundaries_command.main(["fit", "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu", "--engine-seed", "0",
                   "--out", str(out), "--n", "24", "--batch", "8", "--fraction", "0.25", "--expressions", "smile",
                   "--neural-rendering-resolution", "16"]) == 0
    capsys.readouterr()
    rc = boundaries_command.main(["verify", str(out), "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu",
                 "--engine-seed", "0", "--rescore", "3"])
    cap = capsys.readouterr()
    report = json.loads(cap.out[cap.out.index('{\n "rescore"'):])["rescore"]
    assert report["smile"]["scored"] == 3
    assert rc in (0, 1)  # proxy statistics need not follow a boundary fitted on 24 random samples


def test_fit_adds_installed_attribute_classifiers_and_refuses_missing_ones(tmp_path, capsys):
    from tests.engine.nets.progan_reference import install_classifier

    base = ["fit", "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu", "--engine-seed", "0",
            "--n", "12", "--batch", "6", "--fraction", "0.25", "--neural-rendering-resolution", "16"]
    out = tmp_path / "b.safetensors"
    # asking for a classifier attribute that is not installed: a clear error, no file
    assert boundaries_command.main(base + ["--out", str(out), "--expressions", "smile,glasses"]) == 1
    assert "cannot fit glasses: no classifier installed" in capsys.readouterr().err and not out.exists()

    install_classifier(tmp_path, "glasses")
    assert boundaries_command.main(base + ["--out", str(out), "--expressions", "glasses,smile"]) == 0, capsys.readouterr().err
    bset = edits.load_boundaries(out)
    assert bset.names() == ["glasses", "smile"]
    assert bset.get("glasses").scorer == "celebahq-classifier" and bset.get("smile").scorer == "proxy-image-stats"
    assert abs(float(bset.get("glasses").normal.norm()) - 1) < 1e-5 and bset.get("glasses").d > 0

    # default: every geometry expression plus every installed classifier; the others are named as skipped
    capsys.readouterr()
    assert boundaries_command.main(base + ["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "not fitting gender" in err and "not fitting age" in err
    assert set(edits.load_boundaries(out).names()) == {"smile", "surprise", "anger", "blink", "glasses"}


def test_pretrained_generator_is_read_from_the_folder_weights_convert_writes(tmp_path, reference_fixtures):
    from safetensors.torch import load_file

    from engine.weights.convert import eg3d_from_official, write_converted

    fixture = reference_fixtures / "eg3d_slim"
    cfg = json.loads((fixture / "config.json").read_text())
    write_converted(tmp_path / "eg3d_ffhq", eg3d_from_official(load_file(str(fixture / "G_official_keys.safetensors")),
                                                               cfg["init_kwargs"], 128, "fixture"))
    G, kind = boundaries_command.load_base_generator("auto", tmp_path, seed=0, device="cpu")
    assert kind == "pretrained"
    # the digest a boundary file is tied to is the one of the generator the pipeline loads
    assert edits.generator_digest(G) == edits.generator_digest(eg3d.TriPlaneGenerator.from_pretrained(tmp_path / "eg3d_ffhq"))
