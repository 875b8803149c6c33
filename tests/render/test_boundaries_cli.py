"""`emoji3d boundaries fit|verify` end to end on the slim preset (proxy scorers, test-only file)."""
import json

import pytest

from engine import boundaries_cli as C
from engine import edit as E
from engine.nets import eg3d
from engine.networks import SLIM_3D_PRESET


def test_fit_then_verify_on_slim(tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    rc = C.main(["fit", "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu", "--engine-seed", "0",
                 "--out", str(out), "--n", "12", "--batch", "6", "--fraction", "0.25",
                 "--expressions", "smile,surprise", "--neural-rendering-resolution", "16", "--layers", "smile=0:8"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "FOR TESTS ONLY" in cap.err
    summary = json.loads(cap.out)
    assert summary["for_tests_only"] and set(summary["boundaries"]) == {"smile", "surprise"}
    bset = E.load_boundaries(out)
    assert bset.generator_preset == "slim" and bset.get("smile").layers == (0, 8)
    assert bset.get("smile").scorer == "proxy-image-stats" and bset.get("surprise").d > 0
    # tied to the generator the pipeline builds for the slim preset
    assert bset.generator_digest == E.generator_digest(eg3d.slim_generator(SLIM_3D_PRESET, seed=20))

    rc = C.main(["verify", str(out), "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu",
                 "--engine-seed", "0"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "for tests only" in cap.err and "OK" in cap.err
    # another engine seed is another generator: digest mismatch
    rc = C.main(["verify", str(out), "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu",
                 "--engine-seed", "1"])
    assert rc == 1 and "digest mismatch" in capsys.readouterr().err


def test_verify_rejects_bad_files_and_usage(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    assert C.main(["verify", str(bad), "--no-generator"]) == 1
    assert "FAIL" in capsys.readouterr().err
    assert C.main(["fit"]) == 2  # --out missing
    assert C.main(["fit", "--out", str(tmp_path / "x"), "--preset", "slim", "--weights-dir", str(tmp_path),
                   "--expressions", "smile,joy", "--device", "cpu"]) == 2


@pytest.mark.slow
def test_verify_rescore_on_slim(tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    assert C.main(["fit", "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu", "--engine-seed", "0",
                   "--out", str(out), "--n", "24", "--batch", "8", "--fraction", "0.25", "--expressions", "smile",
                   "--neural-rendering-resolution", "16"]) == 0
    capsys.readouterr()
    rc = C.main(["verify", str(out), "--preset", "slim", "--weights-dir", str(tmp_path), "--device", "cpu",
                 "--engine-seed", "0", "--rescore", "3"])
    cap = capsys.readouterr()
    report = json.loads(cap.out[cap.out.index('{\n "rescore"'):])["rescore"]
    assert report["smile"]["scored"] == 3
    assert rc in (0, 1)  # proxy statistics need not follow a boundary fitted on 24 random samples
