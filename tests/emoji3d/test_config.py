import re
import subprocess
import sys

import pytest

from emoji3d.config import Config, ConfigError, PackConfig, enabled_frontends, load_config


def write(tmp_path, text):
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_repository_config_is_valid(repo_root):
    cfg = load_config(repo_root / "config.toml", env={})
    assert isinstance(cfg, Config)
    assert cfg.database_url.startswith("sqlite:///")
    assert cfg.weights_manifest.name == "manifest.toml"
    assert {s.action for s in cfg.schedules} == {"regenerate_style_packs", "regenerate_outdated_packs"}
    assert cfg.pack == PackConfig()  # the shipped pack is the built-in default (one definition)


def test_defaults_apply_for_an_empty_file(tmp_path):
    cfg = load_config(write(tmp_path, ""), env={})
    assert cfg.engine.lease_seconds == 120
    assert cfg.data_dir == tmp_path / "data"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[engine]\nlease_secnds = 5\n", "unknown key 'engine.lease_secnds'"),
        ("[enigne]\n", "unknown key 'enigne'"),
        ("[engine]\nlease_seconds = 'soon'\n", "engine.lease_seconds must be an integer >= 5 <= 3600, got 'soon'"),
        ("[engine]\nlease_seconds = 2\n", "engine.lease_seconds must be an integer >= 5"),
        ("[engine]\ndevice = 'tpu'\n", "engine.device must be one of 'auto', 'cpu', 'cuda', got 'tpu'"),
        ("[telegram]\nenabled = 1\n", "telegram.enabled must be true or false, got 1"),
        ("[engine]\nlease_seconds = 10\nheartbeat_seconds = 10\n", "engine.heartbeat_seconds must be smaller"),
        ("[[schedules]]\nid='a'\ncron='61 * * * *'\naction='regenerate_outdated_packs'\n", "schedules[a].cron"),
        ("[[schedules]]\nid='a'\ncron='0 3 * * 1'\naction='regenerate_outdated_packs'\n", "day of week must be"),
        ("[[schedules]]\nid='a'\ncron='0 3 * * *'\naction='regenerate_outdated_packs'\nselector={style='x'}\n",
         "schedules[a].selector: unknown key 'style'"),
        ("[[schedules]]\nid='a'\ncron='* * * * *'\naction='explode'\n", "schedules[0].action must be one of"),
        ("[[schedules]]\ncron='* * * * *'\naction='regenerate_outdated_packs'\n", "missing required key 'schedules[0].id'"),
        ("engine = 3\n", "engine must be a table"),
        ("[pipeline.dual]\nlr_3d = 0\n", "config.toml: pipeline.dual.lr_3d must be > 0, got 0.0"),
        ("[pipeline.style]\nalpha = 2\n", "pipeline.style.alpha must be within [0, 1]"),
        ("[pipeline.pti]\nsteps = 'many'\n", "pipeline.pti.steps must be an integer, got 'many'"),
        ("[pipeline.pti]\nstop_lpips = -0.1\n", "pipeline.pti.stop_lpips must be >= 0, got -0.1"),
        ("[pipeline.inversoin]\n", "unknown key 'pipeline.inversoin'"),
        ("[engine\n", "not valid TOML"),
        ("[engine]\npoll_seconds = nan\n", "engine.poll_seconds must be a finite number > 0 <= 60, got nan"),
        ("[limits]\nmax_image_megapixels = inf\n", "limits.max_image_megapixels must be a finite number"),
        ("[pipeline.style]\nlr = nan\n", "pipeline.style.lr must be a finite number, got nan"),
        ("[pipeline.dual]\nlr_3d = -inf\n", "pipeline.dual.lr_3d must be a finite number"),
        ("[engine]\nseed = 1e23\n", "engine.seed must be an integer >= 0, got 1e+23"),
        ("[engine]\nseed = 9223372036854775808\n", "engine.seed must be an integer >= 0, got 9223372036854775808"),
    ],
)
def test_bad_config_gives_one_line_naming_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith("config.toml: ")


def test_a_config_path_that_is_no_text_file_is_one_line(tmp_path):
    (tmp_path / "latin1.toml").write_bytes("[engine]\n# caf\xe9\n".encode("latin-1"))
    for path, expected in ((tmp_path, "is not a file"), (tmp_path / "latin1.toml", "is not UTF-8 text")):
        with pytest.raises(ConfigError, match=expected) as info:
            load_config(path, env={})
        assert "\n" not in str(info.value)


def test_tokens_come_from_environment_and_never_print(tmp_path):
    cfg = load_config(write(tmp_path, ""), env={"TELEGRAM_BOT_TOKEN": "123:SECRET"})
    assert cfg.telegram_token.reveal() == "123:SECRET"
    assert "SECRET" not in repr(cfg) and "SECRET" not in str(cfg)
    enabled, notices = enabled_frontends(cfg)
    assert enabled == ["telegram"]
    assert notices == ["discord: disabled because DISCORD_BOT_TOKEN is not set"]


def test_disabled_frontend_notice(tmp_path):
    cfg = load_config(write(tmp_path, "[telegram]\nenabled = false\n"), env={"TELEGRAM_BOT_TOKEN": "x"})
    assert enabled_frontends(cfg)[0] == []


def test_cli_exits_nonzero_with_one_line_on_bad_config(tmp_path):
    bad = write(tmp_path, "[engine]\nlease_seconds = -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "shell.cli", "--config", str(bad), "jobs", "list"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["config.toml: engine.lease_seconds must be an integer >= 5 <= 3600, got -1"]


def test_global_config_reaches_every_group(tmp_path):
    """``emoji3d --config X weights list`` reads X's weights folder (it used to read the default config)."""
    cfg = write(tmp_path, f'[paths]\ndata_dir = "{tmp_path / "data"}"\n[weights]\ndir = "{tmp_path / "w"}"\n')
    proc = subprocess.run([sys.executable, "-m", "shell.cli", "--config", str(cfg), "weights", "list"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "w") in proc.stdout


def test_unreachable_database_is_one_line_exit_2(tmp_path):
    cfg = write(tmp_path, '[database]\nurl = "postgresql://u:pw@127.0.0.1:9/x"\n')
    proc = subprocess.run([sys.executable, "-m", "shell.cli", "--config", str(cfg), "jobs", "list"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip()] and proc.stderr.startswith("cannot use the database postgresql://u:***@127.0.0.1:9/x")
    assert "Traceback" not in proc.stderr and "pw" not in proc.stderr


def test_loading_the_config_does_not_import_torch(repo_root):
    code = ("import sys; from emoji3d.config import load_config; "
            f"load_config({str(repo_root / 'config.toml')!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_sticker_motions_match_the_renderer():
    from emoji3d.config import MOTIONS
    from engine.render.frames import MOTIONS as RENDER_MOTIONS

    assert MOTIONS == RENDER_MOTIONS


@pytest.mark.parametrize("text, expected", [
    ("[[pack.stickers]]\nname='a'\nemoji='x'\nmotion='spin'\n", "pack.stickers[0].motion must be one of"),
    ("[[pack.stickers]]\nname='a'\nemoji='x'\n", "neither moves nor changes expression"),
    ("[[pack.stickers]]\nname='a'\nemoji='x'\nmotion='nod'\n[[pack.stickers]]\nname='a'\nemoji='y'\nmotion='nod'\n",
     "pack.stickers[].name must be unique"),
    ("[pack]\nfps = 60\n", "pack.fps must be a finite number > 0 <= 30"),
])
def test_bad_pack_definitions_are_refused(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write(tmp_path, text), env={})


def test_an_unusable_data_dir_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = write(tmp_path, f'[paths]\ndata_dir = "{blocker / "data"}"\n')
    proc = subprocess.run([sys.executable, "-m", "shell.cli", "--config", str(cfg), "styles", "list"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"config.toml: paths.data_dir {blocker / 'data'} cannot be used: "
                                                "Not a directory"]


@pytest.mark.parametrize("key", ["selfie_retention_hours", "artifact_retention_days"])
def test_every_retention_key_takes_0_as_keep_nothing_and_refuses_a_negative_as_ambiguous(tmp_path, key):
    cfg = load_config(write(tmp_path, f"[privacy]\n{key} = 0\n"), env={})
    assert getattr(cfg.privacy, key) == 0
    for bad in ("-1", "-0.5"):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, f"[privacy]\n{key} = {bad}\n"), env={})
        message = str(info.value)
        assert message.startswith(f"config.toml: privacy.{key} = ") and "is ambiguous" in message
        assert "0 means 'keep nothing for later'" in message and "\n" not in message
    with pytest.raises(ConfigError, match=f"privacy.{key} must be an integer"):
        load_config(write(tmp_path, f"[privacy]\n{key} = false\n"), env={})


def test_cuda_graphs_is_a_switch(tmp_path):
    assert load_config(write(tmp_path, "[pipeline]\ncuda_graphs = false\n"), env={}).pipeline.cuda_graphs is False
    with pytest.raises(ConfigError, match="cuda_graphs"):
        load_config(write(tmp_path, '[pipeline]\ncuda_graphs = "yes"\n'), env={})


def test_compile_names_a_backend_and_is_off_by_default(tmp_path):
    assert load_config(write(tmp_path, "[pipeline]\nprecision = \"auto\"\n"), env={}).pipeline.compile == "off"
    assert load_config(write(tmp_path, '[pipeline]\ncompile = "inductor"\n'), env={}).pipeline.compile == "inductor"
    with pytest.raises(ConfigError, match="compile must be a string"):
        load_config(write(tmp_path, "[pipeline]\ncompile = true\n"), env={})
    with pytest.raises(ConfigError, match="compile must be one of"):
        load_config(write(tmp_path, '[pipeline]\ncompile = "fastest"\n'), env={})


def test_channels_last_is_a_switch_and_off_by_default(tmp_path):
    assert load_config(write(tmp_path, "[pipeline]\nprecision = \"auto\"\n"), env={}).pipeline.channels_last is False
    assert load_config(write(tmp_path, "[pipeline]\nchannels_last = true\n"), env={}).pipeline.channels_last is True
    with pytest.raises(ConfigError, match="channels_last"):
        load_config(write(tmp_path, "[pipeline]\nchannels_last = 1\n"), env={})


def test_concurrent_branches_is_a_switch_and_off_by_default(tmp_path):
    default = load_config(write(tmp_path, "[pipeline]\nprecision = \"auto\"\n"), env={})
    assert default.pipeline.concurrent_branches is False
    assert load_config(write(tmp_path, "[pipeline]\nconcurrent_branches = true\n"),
                       env={}).pipeline.concurrent_branches is True
    with pytest.raises(ConfigError, match="concurrent_branches"):
        load_config(write(tmp_path, "[pipeline]\nconcurrent_branches = \"yes\"\n"), env={})
