"""bench/stickers.py with tiny numbers (--vp9-speed, --photographed-pack, --lanes, --cancel), and the
photographed content it measures with."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.bench.run import run_bench
from tests.engine.stickers import content

pytestmark = pytest.mark.timeout(120)


def test_portrait_content_is_a_textured_head_cut_out_and_turning():
    frames = content.portrait(4, 96, 96, period=4)
    assert all(f.shape == (96, 96, 4) and f.dtype == np.uint8 for f in frames)
    first = frames[0]
    assert first[0, 0, 3] == 0 and first[48, 48, 3] == 255  # transparent corner, opaque middle
    assert (first[first[..., 3] == 0, :3] == 0).all()  # no colour hidden under transparency
    assert first[20:76, 20:76, :3].std() > 20  # a photograph's texture, not a flat disc
    assert np.abs(frames[1].astype(int) - first).mean() > 1  # it moves


def test_vp9_speed_bench_prints_every_speed_for_each_content(tmp_path):
    out = run_bench("stickers.py", "--vp9-speed", "--content", "portrait", "cartoon", "--frames", "4", "--size", "128",
                    cwd=tmp_path)
    rows = re.findall(r"^\| (portrait|cartoon) \| ([^|]+?) \| ([\d.]+) \| ([\d.]+)x \| (\d+) \| (\d+) \| (\d+) \| "
                      r"([\d.]+) \|$", out, re.M)
    assert [(kind, label) for kind, label, *_ in rows] == [
        (kind, label) for kind in ("portrait", "cartoon")
        for label in ("good 4", "good 5", "good 6", "realtime 8", "good 4, 2 threads")], out
    for kind, label, _s, ratio, tries, crf, size, psnr in rows:
        assert int(tries) >= 1 and 24 <= int(crf) <= 63 and 0 < int(size) <= 256_000 and float(psnr) > 20, out
        assert label != "good 4" or ratio == "1.00"


def test_photographed_pack_bench_encodes_the_same_files_each_run_and_running_ahead_or_not(tmp_path):
    out = run_bench("stickers.py", "--photographed-pack", "--pack-stickers", "2", "--frames", "4", "--render-gap",
                    "0", "--pack-workers", "2", "--vp9-threads", "1", "2", "--ahead", "off", "on", cwd=tmp_path)
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (yes|no) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \| (\w+) \|$", out, re.M)
    assert [(w, t, a) for w, t, a, *_ in rows] == [("2", "1", "no"), ("2", "1", "yes"), ("2", "2", "no"),
                                                   ("2", "2", "yes")], out
    # libvpx gives the same bytes on a fixed thread count, whether the searches run ahead or not
    assert all(same == "yes" for *_, same in rows), out
    assert rows[0][5] == "1.00"


def test_lanes_bench_gives_the_serial_file_and_tries_and_waits_for_fewer_encodes_in_a_row(tmp_path):
    out = run_bench("stickers.py", "--lanes", "3", "--content", "portrait", "--targets", "telegram_video",
                    "discord_sticker", "--frames", "8", "--size", "256", cwd=tmp_path)
    rows = re.findall(r"^\| portrait \| (\w+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| "
                      r"([\d.]+)x \| (\w+) \|$", out, re.M)
    assert [r[0] for r in rows] == ["telegram_video", "discord_sticker"], out
    for _target, tries, serial, ahead, _spare, *_seconds, same in rows:
        assert int(serial) == int(tries) and int(ahead) <= int(serial) and same == "yes", out
    assert any(int(ahead) < int(serial) for _t, _n, serial, ahead, *_ in rows), out


def test_cancel_bench_times_a_cancelled_pack_both_ways(tmp_path):
    out = run_bench("stickers.py", "--cancel", "0.05", "--pack-stickers", "1", "--pack-workers", "2", "--frames",
                    "4", cwd=tmp_path)
    rows = re.findall(r"^\| (waited for \(before\)|told to stop at their next frame \(now\)) \| ([\d.]+) \| "
                      r"([\d.]+)x \|$", out, re.M)
    assert [label for label, *_ in rows] == ["waited for (before)", "told to stop at their next frame (now)"], out
    assert rows[0][2] == "1.0", out
