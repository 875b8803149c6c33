"""The README's main job and `emoji3d serve`, as real processes on a temporary data folder."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

EMOJI3D = [sys.executable, "-m", "shell.cli"]


@pytest.fixture()
def config(tmp_path, repo_root):
    text = (repo_root / "config.toml").read_text()
    text = text.replace('data_dir = "data"', f'data_dir = "{tmp_path / "data"}"')
    text = text.replace('styles_dir = "styles"', f'styles_dir = "{repo_root / "styles"}"')
    text = text.replace("lease_seconds = 120", "lease_seconds = 30")
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def run(args, timeout=600, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TELEGRAM_BOT_TOKEN": "", "DISCORD_BOT_TOKEN": ""}
    return subprocess.run(EMOJI3D + args, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def test_make_runs_the_whole_job_and_says_what_it_is(config, tmp_path, repo_root):
    out = tmp_path / "out"
    args = ["--config", str(config), "make", "--selfie", str(repo_root / "samples" / "selfie.jpg"),
            "--style", "toon", "--out", str(out), "--steps", "1"]
    from storage import jobs
    from storage.db import open_database

    db = open_database(f"sqlite:///{tmp_path / 'data' / 'emoji3d.sqlite3'}")
    theirs = jobs.enqueue(db, "make_pack", {"pack_id": 999}, "another user's order")  # make must leave it alone
    proc = run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (jobs.get_job(db, theirs).status, jobs.get_job(db, theirs).attempts) == ("queued", 0)
    db.dispose()
    assert "USING SLIM RANDOM WEIGHTS" in proc.stderr  # never passed off as a real avatar
    for op in ("upfirdn2d", "bias_act", "modulate_weights"):  # the engine says how each op runs
        assert f"op {op}: pure-torch reference (no fused kernels for cpu tensors)" in proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["preset"] == "slim"
    # No boundary file is installed in a fresh data folder: the expression stickers are reported, not faked.
    assert result["missing"] and all(f"NOT MADE: {line}" in proc.stderr for line in result["missing"])
    assert [s["name"] for s in result["stickers"]] == ["turn", "nod"]
    # The quality report: every measure taken (finite, in range) on slim, in the result, the page and the log.
    quality = result["quality"]
    assert -1 <= quality["identity_pti"] <= 1 and -1 <= quality["identity_stylized"] <= 1
    assert 0 <= quality["multiview"] <= 1 and quality["style_lpips"] >= 0
    assert "Quality: likeness" in proc.stderr and "Test weights: these numbers mean nothing." in proc.stderr
    assert '<div class="quality"><h2>Quality</h2><p>Quality: likeness' in (out / "preview.html").read_text()
    # The first-look stills (after pivotal tuning, after stage 5) were recorded for the bots, as PNGs.
    from emoji3d.orders import first_look_key
    from storage import artifacts, jobs
    from storage.db import open_database

    db = open_database(f"sqlite:///{tmp_path / 'data' / 'emoji3d.sqlite3'}")
    try:
        (job,) = [j for j in jobs.list_jobs(db, kind="make_pack") if j.status == "succeeded"]  # not the foreign one
        for stage in ("photo_real", "stylized"):
            art = artifacts.get_artifact(db, first_look_key(job.id, stage))
            assert art is not None and art.kind == "first_look", stage
            assert next((tmp_path / "data" / "blobs").rglob(art.blob_digest), None) is not None
    finally:
        db.dispose()
    produced = sorted(p.name for p in out.iterdir())
    assert "avatar.safetensors" in produced and any(n.startswith("avatar_view") for n in produced)
    assert {"preview.png", "preview.html", "00_turn.telegram_video.webm", "01_nod.telegram_video.webm"} <= set(produced)
    from engine.stickers.verify import verify

    for name in produced:
        if name.endswith(".webm"):
            assert verify(out / name, "telegram_video").ok, name
        if ".discord_sticker." in name:
            assert verify(out / name, "discord_sticker").ok, name
    # The same order again is the same job: nothing is recomputed.
    again = run(args, timeout=120)
    assert again.returncode == 0 and "loading the networks" not in again.stderr
    # The same selfie with another style reuses the stored inversion and pivotal tuning.
    from PIL import Image

    other_style = tmp_path / "other_style.png"
    Image.open(repo_root / "styles" / "toon" / "exemplar.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other_style)
    args2 = [a if a != "toon" else str(other_style) for a in args]
    second = run(args2)
    assert second.returncode == 0, second.stderr[-3000:]
    result2 = json.loads((out / "result.json").read_text())
    assert {"invert_3d", "pivotal_tuning"} <= set(result2["skipped"]) and "style_finetune" not in result2["skipped"]


@pytest.mark.slow  # about two minutes on a CPU: every sticker of the pack is rendered and encoded
def test_make_demo_fits_a_slim_boundary_file_and_makes_every_sticker(config, tmp_path, repo_root):
    """`make demo`'s two steps: a quick meaningless boundary file on the slim preset, then every sticker."""
    fit = run(["--config", str(config), "boundaries", "demo"])
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "MEANINGLESS" in fit.stderr and "FOR TESTS ONLY" in fit.stderr
    assert (tmp_path / "data" / "boundaries" / "eg3d.safetensors").is_file()
    again = run(["--config", str(config), "boundaries", "demo"], timeout=120)
    assert again.returncode == 0 and "is installed" in again.stderr  # fitted once
    out = tmp_path / "out"
    proc = run(["--config", str(config), "make", "--selfie", str(repo_root / "samples" / "selfie.jpg"),
                "--style", "toon", "--out", str(out), "--steps", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    made = [s["name"] for s in result["stickers"]]
    assert {"turn", "smile", "surprise", "anger", "nod", "blink"} <= set(made), made
    assert "NOT MADE" not in proc.stderr and result["missing"] == []
    assert result["quality"]["style_lpips"] is not None


def test_make_refuses_a_non_image_with_the_friendly_text(config, tmp_path):
    bad = tmp_path / "selfie.jpg"
    bad.write_bytes(b"definitely not a photo")
    proc = run(["--config", str(config), "make", "--selfie", str(bad), "--style", "toon"], timeout=120)
    assert proc.returncode == 2
    assert "isn't an image I can read" in proc.stderr


@pytest.mark.parametrize("option,expected", [
    (["--steps", "-1"], "--steps must be 0 or more, got -1"),
    (["--seed", "100000000000000000000000"], "--seed must be within [0, 2147483647]"),
    (["--strength", "1.5"], "--strength must be within [0, 1], got 1.5"),
])
def test_make_refuses_an_impossible_option_in_one_line(config, repo_root, option, expected):
    proc = run(["--config", str(config), "make", "--selfie", str(repo_root / "samples" / "selfie.jpg"),
                "--style", "toon", *option], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"emoji3d make: {expected}" + proc.stderr.strip().split(expected, 1)[1]]


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (each thread lists the children it started)."""
    out = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(out)


def _engines(pid: int) -> list[int]:
    """The engine processes among ``pid``'s children (``... -m shell.cli ... engine``). ``serve``
    has short-lived children of its own too: about when the engine starts, an import looks for
    PortAudio with ``ctypes.util.find_library``, which runs ``gcc`` three times. Taken for the
    engine, such a child is gone before it can be killed (a CI failure of 2026-12-06)."""
    out = []
    for child in _children(pid):
        try:
            argv = pathlib.Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"shell.cli" in argv and argv[-2:] == [b"engine", b""]:
            out.append(child)
    return out


def test_serve_supervises_the_engine_and_stops_cleanly(config):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TELEGRAM_BOT_TOKEN": "", "DISCORD_BOT_TOKEN": ""}
    proc = subprocess.Popen(EMOJI3D + ["--config", str(config), "serve"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not _engines(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        [engine] = _engines(proc.pid)
        os.kill(engine, signal.SIGKILL)  # a crashed engine is restarted
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _engines(proc.pid) in ([], [engine]):
            time.sleep(0.2)
        restarted = _engines(proc.pid)
        assert restarted and restarted != [engine]
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "telegram: disabled because TELEGRAM_BOT_TOKEN is not set" in output
    assert "discord: disabled because DISCORD_BOT_TOKEN is not set" in output
    assert "stopped" in output


def test_serve_stops_with_the_reason_when_the_engine_cannot_run(config, tmp_path):
    """A fatal configuration error (here: pretrained weights asked for, none installed) is not restarted for ever."""
    text = config.read_text().replace('preset = "auto"', 'preset = "pretrained"')
    assert 'preset = "pretrained"' in text
    config.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TELEGRAM_BOT_TOKEN": "", "DISCORD_BOT_TOKEN": ""}
    proc = subprocess.run(EMOJI3D + ["--config", str(config), "serve"], capture_output=True, text=True,
                          env=env, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: the engine cannot run: A model file isn't installed on this server yet.")
    assert "eg3d_ffhq" in last or "stylegan2_ffhq" in last  # names what is missing


def test_deleting_the_user_leaves_no_file_their_data_produced(config, tmp_path, repo_root):
    """Privacy on disk: after a pack made with the user's own style image, /delete's storage call
    removes every blob: selfie, style image, its finetune (the uploader's), inversion, avatar, renders."""
    import getpass

    from storage import artifacts, users
    from storage.blobs import BlobStore
    from storage.db import open_database

    own_style = tmp_path / "my-style.png"
    own_style.write_bytes((repo_root / "styles" / "toon" / "exemplar.png").read_bytes())
    proc = run(["--config", str(config), "make", "--selfie", str(repo_root / "samples" / "selfie.jpg"),
                "--style", str(own_style), "--out", str(tmp_path / "out"), "--steps", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = tmp_path / "data"
    db = open_database(f"sqlite:///{data / 'emoji3d.sqlite3'}")
    user = users.find_user(db, "local", getpass.getuser() or "local")
    assert any(a.kind == "style_2d" and a.owner_user_id == user.id for a in artifacts.list_artifacts(db))
    blob_files = lambda: sorted(p for p in (data / "blobs").rglob("*") if p.is_file())  # noqa: E731
    assert blob_files()
    users.delete_user(db, BlobStore(db, data / "blobs", gc_grace_seconds=3600), user.id)  # no GC help
    assert blob_files() == [] and artifacts.list_artifacts(db) == []
    db.dispose()
