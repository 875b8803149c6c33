"""The Telegram custom-emoji target (issue 19): 100x100 VP9 WEBM, <= 64 KB, <= 3 s, <= 30 fps, looped, no
audio. Each file is checked twice: by our verifier and independently with PyAV (container, codec, size,
frame times, streams), so a wrong rule in the shared table cannot pass both."""
from __future__ import annotations

import io

import av
import numpy as np
import pytest

from engine.stickers.encode import encode
from engine.stickers.targets import KB, get_target
from engine.stickers.verify import verify
from tests.engine.stickers.content import cartoon, noise


def pyav_facts(data: bytes) -> dict:
    with av.open(io.BytesIO(data)) as box:
        video = box.streams.video
        assert len(video) == 1
        times = [float(f.time) for f in box.decode(video=0)]
        ctx = video[0].codec_context
        return {"format": box.format.name, "codec": ctx.name, "size": (ctx.width, ctx.height),
                "frames": len(times), "audio": len(box.streams.audio), "last_time": max(times),
                "min_gap": min((b - a for a, b in zip(times, times[1:])), default=None)}


def test_target_is_telegrams_custom_emoji_rule():
    t = get_target("telegram_emoji")
    (rule,) = t.formats
    assert (rule.container, rule.codec, rule.max_bytes, rule.animated) == ("webm", "vp9", 64 * KB, True)
    assert t.square and t.side == 100 and t.max_fps == 30 and t.max_duration_s == 3.0
    assert t.size_ok(100, 100) and not t.size_ok(100, 99) and not t.size_ok(512, 512)


@pytest.mark.parametrize("fps, n", [(30, 60), (60, 240)])  # a 2 s loop; a 4 s, 60 fps one that must shrink
def test_sticker_frames_become_a_valid_custom_emoji(fps, n):
    frames = cartoon(n, 256, 256, period=n)  # the pack's render size
    res = encode(frames, fps, "telegram_emoji")
    assert res.report.verify.ok and res.mime == "video/webm"
    facts = pyav_facts(res.data)
    assert facts["format"].startswith("matroska") and facts["codec"] in ("vp9", "libvpx-vp9")
    assert facts["size"] == (100, 100) and facts["audio"] == 0
    assert len(res.data) <= 64 * KB
    assert facts["last_time"] < 3.0 and facts["min_gap"] >= 1 / 30 - 0.0015
    assert res.data[:4] == b"\x1a\x45\xdf\xa3"


def test_hard_content_is_squeezed_under_64_kb_or_refused_never_passed_over():
    rng = np.random.default_rng(3)
    res = encode(noise(45, 100, 100, rng), 30, "telegram_emoji")
    assert len(res.data) <= 64 * KB and verify(res.data, "telegram_emoji").ok


def test_verifier_rejects_a_sticker_sized_file_as_custom_emoji():
    sticker = encode(cartoon(10, 128, 128), 30, "telegram_video").data
    codes = {v.code for v in verify(sticker, "telegram_emoji").reasons}
    assert "bad_dimensions" in codes
