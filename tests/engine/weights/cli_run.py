"""Test helper: ``emoji3d weights …`` as a real process on a temporary config.

The config is the repository's ``config.toml`` with the data folder (and so the
weights folder, ``<data_dir>/weights``) moved into ``tmp_path``; an optional
manifest replaces the packaged one.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[3]


def write_config(tmp_path: pathlib.Path, manifest: pathlib.Path | None = None) -> pathlib.Path:
    text = (REPO / "config.toml").read_text()
    text = text.replace('data_dir = "data"', f'data_dir = "{tmp_path / "data"}"')
    if manifest is not None:
        text = text.replace('manifest = ""', f'manifest = "{manifest}"', 1)
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def run_weights(config: pathlib.Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m shell.cli --config CONFIG weights ARGS`` from the repository root."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TELEGRAM_BOT_TOKEN": "",
           "DISCORD_BOT_TOKEN": ""}
    return subprocess.run([sys.executable, "-m", "shell.cli", "--config", str(config), "weights", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, stdin=subprocess.DEVNULL)


def one_line_refusal(proc: subprocess.CompletedProcess, names: str) -> str:
    """Asserts exit 2, no traceback, and one stderr line naming ``names``; returns that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and names in lines[0], proc.stderr
    return lines[0]
