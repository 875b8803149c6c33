"""EG3D against the official implementation's outputs (reference fixture eg3d_slim)."""
import json
import pathlib

import pytest

from engine.checks import check_folder, format_report

FIXTURE = pathlib.Path(__file__).resolve().parents[4] / "shared/fixtures/reference/eg3d_slim"
needs_fixture = pytest.mark.skipif(not (FIXTURE / "io.safetensors").is_file(), reason="reference fixture not present")


@needs_fixture
def test_checker_recognises_the_folder():
    from engine.checks import eg3d as checker

    cfg = json.loads((FIXTURE / "config.json").read_text())
    assert checker.matches(cfg, FIXTURE)
    assert not checker.matches({"class_name": "Generator", "init_kwargs": {}}, FIXTURE)


@needs_fixture
def test_reference_without_superresolution():
    """Everything but the 512px SR image (which costs ~20 s on one CPU core)."""
    from engine.checks import eg3d as checker

    checks = checker.run(FIXTURE, skip=frozenset({"image"}))
    names = {c.name for c in checks}
    assert {"ws", "ws_trunc_0.7", "planes_every4th_pixel", "image_raw", "image_depth", "points_sigma", "points_rgb"} <= names
    assert all(c.passed for c in checks), format_report(checks)


@needs_fixture
@pytest.mark.slow
def test_reference_full_check_folder():
    checks = check_folder(FIXTURE, kinds=["eg3d"])
    assert "image" in {c.name for c in checks}
    assert all(c.passed for c in checks), format_report(checks)
