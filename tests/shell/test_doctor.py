"""`emoji3d doctor`: passes on a healthy slim install; each broken piece is named by its own check."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest
import sqlalchemy as sa
import torch

from emoji3d.config import load_config
from engine.weights.manifest import load_manifest
from shell.commands import boundaries as boundaries_command
from shell.commands import doctor
from storage.db import open_database

REPO = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "123456:SECRET-token-never-printed"


def write_config(folder: pathlib.Path, extra: str = "") -> pathlib.Path:
    path = folder / "config.toml"
    path.write_text(f'[paths]\ndata_dir = "data"\n[engine]\npreset = "slim"\ndevice = "cpu"\n'
                    f'[discord]\nenabled = false\n{extra}')
    return path


def config(folder: pathlib.Path, extra: str = "", env: dict | None = None):
    return load_config(write_config(folder, extra), env={"TELEGRAM_BOT_TOKEN": TOKEN} if env is None else env)


def failures(checks, name: str) -> list[str]:
    return [c.text for c in checks if c.name == name and c.level == doctor.FAIL]


@pytest.fixture(scope="module")
def slim_boundaries(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("boundaries") / "eg3d.safetensors"
    rc = boundaries_command.main(["fit", "--preset", "slim", "--weights-dir", str(out.parent), "--device", "cpu",
                                  "--engine-seed", "0", "--out", str(out), "--n", "12", "--batch", "6",
                                  "--fraction", "0.25", "--expressions", "smile",
                                  "--neural-rendering-resolution", "16"])
    assert rc == 0
    return out


@pytest.fixture
def healthy(tmp_path, slim_boundaries):
    """A slim install: storage created and migrated, a slim boundary file, the Telegram token set."""
    cfg = config(tmp_path, f'[pack]\nboundaries = "{slim_boundaries}"\n')
    open_database(cfg.database_url).dispose()
    return tmp_path, cfg


def test_healthy_install_passes_and_never_prints_a_token(healthy):
    folder, cfg = healthy
    checks = doctor.run_checks(cfg)
    assert not [c for c in checks if c.level == doctor.FAIL], [c.line() for c in checks]
    assert {c.name for c in checks} == {"runtime", "weights", "ops", "boundaries", "database", "blobs", "tokens",
                                        "compile", "config"}
    levels = {c.name: c.level for c in checks}
    assert levels["boundaries"] == levels["database"] == levels["blobs"] == levels["ops"] == levels["compile"] \
        == doctor.OK
    assert "FOR TESTS ONLY" in next(c.text for c in checks if c.name == "boundaries")
    assert "TELEGRAM_BOT_TOKEN is set" in " ".join(c.text for c in checks)
    # the command itself: exit 0, one line per check, no token anywhere
    proc = subprocess.run([sys.executable, "-m", "shell.cli", "doctor", "--config", str(folder / "config.toml")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TELEGRAM_BOT_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == len(checks)


def test_broken_install_exits_1(tmp_path):
    write_config(tmp_path, '[blobs]\nmax_blob_mb = 64\n')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "blobs").write_text("a file where the blob folder should be")
    proc = subprocess.run([sys.executable, "-m", "shell.cli", "doctor", "--config", str(tmp_path / "config.toml")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert "FAIL]" in proc.stdout and "blobs" in proc.stdout


def test_runtime_asking_for_cuda_without_one_fails(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = config(tmp_path, env={})
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, device="cuda"))
    assert "engine.device" in failures(doctor.check_runtime(cfg), "runtime")[0]
    assert "no CUDA device" in failures(doctor.check_ops(cfg), "ops")[0]


def test_a_damaged_weights_file_is_named(tmp_path):
    cfg = config(tmp_path)
    entry = load_manifest(cfg.weights_manifest).get("vgg16")
    cfg.weights_dir.mkdir(parents=True)
    (cfg.weights_dir / entry.filename).write_bytes(b"not the network")
    found = failures(doctor.check_weights(cfg), "weights")
    assert len(found) == 1 and "vgg16" in found[0] and "does not match" in found[0]


def test_missing_weights_fail_the_pretrained_preset(tmp_path):
    cfg = config(tmp_path, env={})
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, preset="pretrained"))
    found = failures(doctor.check_weights(cfg), "weights")
    assert found and "eg3d_ffhq" in found[0]
    assert failures(doctor.check_boundaries(cfg), "boundaries")  # no generator to match a file against


def test_a_damaged_or_foreign_boundary_file_is_named(tmp_path, slim_boundaries):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    found = failures(doctor.check_boundaries(config(tmp_path, f'[pack]\nboundaries = "{bad}"\n')), "boundaries")
    assert found and str(bad) in found[0]
    # a file fitted for another generator (another engine seed gives another slim generator)
    cfg = config(tmp_path, f'[pack]\nboundaries = "{slim_boundaries}"\n')
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, seed=7))
    found = failures(doctor.check_boundaries(cfg), "boundaries")
    assert found and "fitted on generator" in found[0]


def test_an_unmigrated_database_is_named(healthy):
    _, cfg = healthy
    db = open_database(cfg.database_url)
    newest = db.schema_version()
    with db.write() as conn:
        conn.execute(sa.text("DELETE FROM schema_version WHERE version = :v"), {"v": newest})
    db.dispose()
    found = failures(doctor.check_database(cfg), "database")
    assert found and f"schema {newest - 1}" in found[0]


def test_an_unreachable_database_is_named(tmp_path):
    cfg = config(tmp_path, '[database]\nurl = "postgresql+psycopg://nobody@127.0.0.1:9/none"\n')
    found = failures(doctor.check_database(cfg), "database")
    assert found and "127.0.0.1" in found[0]


def test_an_unwritable_blob_store_is_named(tmp_path):
    cfg = config(tmp_path)
    cfg.data_dir.mkdir(parents=True)
    cfg.blob_dir.write_text("a file, not a folder")
    found = failures(doctor.check_blobs(cfg), "blobs")
    assert found and str(cfg.blob_dir) in found[0]


def test_tokens_are_checked_without_being_printed(tmp_path):
    missing = doctor.check_tokens(config(tmp_path, env={}))
    assert any(c.level == doctor.WARN and "TELEGRAM_BOT_TOKEN is not set" in c.text for c in missing)
    webhook = config(tmp_path, '[telegram]\nmode = "webhook"\nwebhook_url = "https://bot.example.com/telegram"\n')
    found = failures(doctor.check_tokens(webhook), "tokens")
    assert found and "TELEGRAM_WEBHOOK_SECRET" in found[0]
    assert all(TOKEN not in c.line() for c in doctor.check_tokens(webhook))


def test_config_lists_the_keys_that_differ_from_the_defaults(tmp_path):
    checks = doctor.check_config(config(tmp_path, "[limits]\nmin_face_px = 200\n"), None)
    assert "limits.min_face_px = 200" in checks[0].text and "engine.preset = 'slim'" in checks[0].text
    assert "paths.data_dir" not in checks[0].text  # "data" is the default


def test_compile_off_is_fine_and_a_backend_that_compiles_is_named(tmp_path):
    off = doctor.check_compile(config(tmp_path))
    assert [(c.level, c.text) for c in off] == [(doctor.OK, "off: the generator passes run eagerly")]
    traced = doctor.check_compile(config(tmp_path, '[pipeline]\ncompile = "eager"\n'))
    assert [c.level for c in traced] == [doctor.OK] and traced[0].text.startswith("eager compiles on cpu (")


def test_a_host_that_cannot_compile_gets_a_warning_naming_why(tmp_path):
    """Inductor without a working C++ compiler (CXX is read when inductor is imported, and a failed
    compile is kept out of this process: see tests/engine/avatar/own_process.py)."""
    write_config(tmp_path, '[pipeline]\ncompile = "inductor"\n')
    script = ("from emoji3d.config import load_config; from shell.commands import doctor; "
              f"print(doctor.check_compile(load_config({str(tmp_path / 'config.toml')!r}, env={{}}))[0].line())")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "CXX": "/nonexistent/g++"})
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("[warn] compile    inductor cannot compile on cpu here "
                           "(InductorError, InvalidCxxCompiler"), line
    assert "the engine will run the generator passes eagerly  -> install what the compiler needs" in line, line


@pytest.mark.slow  # inductor's first compile on a CPU: about 20 s
def test_inductor_compiles_on_a_host_with_a_cpp_compiler(tmp_path):
    checks = doctor.check_compile(config(tmp_path, '[pipeline]\ncompile = "inductor"\n'))
    assert [c.level for c in checks] == [doctor.OK] and checks[0].text.startswith("inductor compiles on cpu ("), checks
