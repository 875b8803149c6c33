from engine.stickers.targets import KB, KIB, TARGETS, FormatRule, get_target

import pytest


def test_names_are_the_api():
    assert set(TARGETS) == {"telegram_video", "telegram_static", "telegram_emoji", "telegram_thumb",
                            "discord_sticker", "discord_emoji", "preview"}


def test_telegram_video_limits():
    t = get_target("telegram_video")
    (rule,) = t.formats
    assert (rule.container, rule.codec, rule.max_bytes, rule.animated) == ("webm", "vp9", 256_000, True)
    assert t.max_fps == 30 and t.max_duration_s == 3.0 and t.aim_duration_s < t.max_duration_s
    assert t.size_ok(512, 512) and t.size_ok(512, 300) and t.size_ok(200, 512)
    assert not t.size_ok(511, 511) and not t.size_ok(513, 512) and not t.size_ok(600, 512)


def test_thumb_and_discord_limits():
    th = get_target("telegram_thumb")
    assert th.rules_for("webm", True).max_bytes == 32 * KB
    assert th.rules_for("png", False).max_bytes == 128 * KB
    assert th.size_ok(100, 100) and not th.size_ok(100, 90)
    ds = get_target("discord_sticker")
    assert ds.rules_for("apng", True).max_bytes == 512 * KB and ds.max_duration_s == 5.0  # smaller reading of "512 KB"
    assert ds.rules_for("png", False) is not None and ds.rules_for("webm", True) is None
    assert get_target("discord_emoji").rules_for("gif", True).max_bytes == 256 * KIB


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="telegram_video"):
        get_target("telegram")
    with pytest.raises(ValueError, match="container"):
        FormatRule("mp4", True, 10)


def test_targets_module_is_free_of_torch_and_av():
    import subprocess
    import sys
    code = ("import sys, engine.stickers.targets, engine.stickers.verify;"
            "print('torch' in sys.modules, 'av' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
