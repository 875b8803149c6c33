"""`emoji3d make`, `styles add` and `face` as real processes on bad inputs: each refusal is
exit code 2 and one sentence on stderr, never a traceback, and nothing is stored."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from emoji3d.texts import message

EMOJI3D = [sys.executable, "-m", "shell.cli"]


@pytest.fixture()
def config(tmp_path, repo_root):
    text = (repo_root / "config.toml").read_text()
    text = text.replace('data_dir = "data"', f'data_dir = "{tmp_path / "data"}"')
    text = text.replace('styles_dir = "styles"', f'styles_dir = "{repo_root / "styles"}"')
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture()
def files(tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (7, 300), (200, 170, 150)).save(tiny)
    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (200, 170, 150)).save(dot)
    faceless = tmp_path / "faceless.png"
    Image.fromarray(np.random.default_rng(0).integers(90, 110, (256, 256, 3), dtype=np.uint8)).save(faceless)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {"tiny": tiny, "dot": dot, "faceless": faceless, "folder": folder, "missing": tmp_path / "missing.jpg"}


def run(args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TELEGRAM_BOT_TOKEN": "", "DISCORD_BOT_TOKEN": ""}
    return subprocess.run(EMOJI3D + args, capture_output=True, text=True, timeout=timeout, env=env)


def refused_in_one_line(proc, sentence: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [sentence], proc.stderr[-2000:]
    assert proc.stdout == ""


def refused_last_line(proc, sentence: str) -> None:
    """For refusals after the face detector ran: MediaPipe's native code prints its own start-up
    lines on stderr (not Python logging; nothing here can silence them), then our one sentence."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1] == sentence and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def nothing_stored(tmp_path) -> None:
    blobs = tmp_path / "data" / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))


def test_make_refuses_devices_folders_missing_and_tiny_files(config, files, tmp_path):
    cases = [
        ("/dev/zero", "/dev/zero is a device, not an image file."),
        (str(files["folder"]), f"{files['folder']} is a folder, not an image file."),
        (str(files["missing"]), f"There is no file at {files['missing']}."),
        (str(files["tiny"]), message("image_too_small", width=7, height=300, min_side=8)),
    ]
    for selfie, sentence in cases:
        refused_in_one_line(run(["--config", str(config), "make", "--selfie", selfie, "--style", "toon"]), sentence)
    nothing_stored(tmp_path)


def test_make_checks_a_style_path_like_a_selfie(config, files, repo_root, tmp_path):
    selfie = str(repo_root / "samples" / "selfie.jpg")
    refused_in_one_line(run(["--config", str(config), "make", "--selfie", selfie, "--style", "/dev/zero"]),
                        "/dev/zero is a device, not an image file.")
    refused_in_one_line(run(["--config", str(config), "make", "--selfie", selfie, "--style", str(files["missing"])]),
                        f"There is no file at {files['missing']}.")
    refused_last_line(run(["--config", str(config), "make", "--selfie", selfie, "--style", str(files["faceless"])]),
                      message("style_no_face"))
    nothing_stored(tmp_path)


def test_styles_add_refuses_what_the_bots_refuse(config, files, tmp_path):
    def add(path):
        return run(["--config", str(config), "styles", "add", "mine", str(path)])

    refused_in_one_line(add("/dev/zero"), "/dev/zero is a device, not an image file.")
    refused_in_one_line(add(files["folder"]), f"{files['folder']} is a folder, not an image file.")
    refused_in_one_line(add(files["missing"]), f"There is no file at {files['missing']}.")
    refused_in_one_line(add(files["dot"]), message("image_too_small", width=1, height=1, min_side=8))
    refused_last_line(add(files["faceless"]), message("style_no_face"))
    listed = run(["--config", str(config), "styles", "list"])
    assert listed.returncode == 0 and "mine" not in listed.stdout and "toon" in listed.stdout


def test_face_refuses_in_one_sentence(files, tmp_path):
    out = tmp_path / "out"
    for path, sentence in [
        (files["missing"], f"There is no file at {files['missing']}."),
        (files["folder"], f"{files['folder']} is a folder, not an image file."),
        ("/dev/zero", "/dev/zero is a device, not an image file."),
        (files["tiny"], message("image_too_small", width=7, height=300, min_side=8)),
    ]:
        refused_in_one_line(run(["face", str(path), "--out", str(out)]), sentence)
    assert not out.exists()
