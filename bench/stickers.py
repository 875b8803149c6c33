"""Sticker encoder bench: encode time, chosen settings and size per target, on easy and hard content.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python bench/stickers.py            # all targets, easy + hard
    .venv/bin/python bench/stickers.py --content cartoon --targets telegram_video discord_sticker
    .venv/bin/python bench/stickers.py --frames 30 --size 256        # quicker

Content (from tests/stickers/content.py): ``cartoon`` (easy: a shaded disc
drifting over transparency, like a rendered head), ``motion`` (hard: random
blocks jumping every frame), ``noise`` (hardest: full-frame random colour).
Every file is verified; a target where nothing fits prints the error key.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from engine.stickers.encode import encode  # noqa: E402
from engine.stickers.errors import StickerEncodeError  # noqa: E402
from engine.stickers.targets import TARGETS  # noqa: E402
from tests.engine.stickers import content  # noqa: E402


def make(kind: str, n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "cartoon":
        return content.cartoon(n, size, size)
    if kind == "motion":
        return content.motion(n, size, size, rng)
    if kind == "noise":
        return content.noise(n, size, size, rng)
    raise SystemExit(f"unknown content {kind!r}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--content", nargs="+", default=["cartoon", "motion", "noise"])
    ap.add_argument("--frames", type=int, default=90, help="input frames at --fps (default 90 = 3 s)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--size", type=int, default=512, help="input frame side in px")
    a = ap.parse_args(argv)
    head = f"{'content':8} {'target':16} {'time s':>7} {'file':5} {'bytes':>8} {'limit':>8} {'fill':>5} {'frames':>6} {'fps':>5} {'tries':>5}  settings / adjustments"
    print(head)
    print("-" * len(head))
    for kind in a.content:
        frames = make(kind, a.frames, a.size)
        for name in a.targets:
            t0 = time.perf_counter()
            try:
                res = encode(frames, a.fps, name)
            except StickerEncodeError as e:
                print(f"{kind:8} {name:16} {time.perf_counter() - t0:7.2f} {'-':5} {'-':>8} {'-':>8} {'-':>5} {'-':>6} {'-':>5} {'-':>5}  {e.key}: {e}")
                continue
            dt = time.perf_counter() - t0
            r = res.report
            st = " ".join(f"{k}={v}" for k, v in r.settings.items() if k not in ("fps",))
            adj = [x for x in r.adjustments if not x.startswith("resized")]
            fps = f"{r.fps_out:g}" if r.fps_out else "-"
            print(f"{kind:8} {name:16} {dt:7.2f} {r.container:5} {r.byte_size:8d} {r.max_bytes:8d} {r.byte_size / r.max_bytes:5.0%}"
                  f" {r.frames_out:6d} {fps:>5} {len(r.attempts):5d}  {st}" + (f" | {'; '.join(adj)}" if adj else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
