"""Telegram delivery of a made pack: publishing its sticker set and its custom emoji set when every
Bot API call is a network round trip, before and now, side by side in one run.

    .venv/bin/python bench/publish.py [--stickers 7] [--latency 0.1] [--repeat 3]

The real python-telegram-bot client (with the bot's rate limiter) publishes against the fake Bot
API server of the tests (tests/fakes/telegram_api.py), which holds every answer ``--latency``
seconds (a round trip to api.telegram.org; uploads carry more bytes and take longer for real).
Each run publishes a fresh pack of ``--stickers`` real sticker files (engine.stickers encodes of
synthetic cartoon frames, a video sticker and a custom emoji per sticker):

* before: the two sets one after the other (the emoji set first), each uploading its files one at
  a time and then asking ``getFile`` for each file's unique id (:func:`upload_files_before`, the
  publisher's step 1 as it was);
* now: the two sets at once (``bots.telegram.handlers`` delivers them with ``run_at_most``), each
  uploading ``UPLOAD_CONCURRENCY`` files at a time, the upload's answer giving the unique id.

It prints the Bot API calls and the seconds of each (the median of ``--repeat`` runs), and checks
that both leave the same sets (the same files, in order, with their emoji).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from unittest import mock

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/queue.py would shadow the stdlib's
sys.path.insert(0, os.path.dirname(_HERE))

from telegram import InputFile  # noqa: E402
from telegram.ext import ExtBot  # noqa: E402

from bots.telegram import stickers  # noqa: E402
from bots.telegram.custom_emoji import publish_custom_emoji  # noqa: E402
from emoji3d.orders import PackResult, StickerFiles  # noqa: E402
from storage import packs, users  # noqa: E402
from storage.blobs import BlobStore  # noqa: E402
from storage.db import open_database  # noqa: E402
from tests.fakes.telegram_api import FakeTelegramServer  # noqa: E402
from tests.fakes import telegram_updates as tgu  # noqa: E402

EMOJI = "😀😮😠😉🙂😎🤓😴🥳🤔"


async def upload_files_before(bot, rows, blobs, uid, concurrency=stickers.UPLOAD_CONCURRENCY):
    """The publisher's step 1 before: one upload at a time, then ``getFile`` for every file."""
    for s in rows.read():
        if s.platform_state == "local" or not s.platform_file_id:
            up = await bot.upload_sticker_file(uid, InputFile(blobs.read_bytes(s.blob_digest),
                                                              filename=f"sticker{s.idx}.webm"), s.kind)
            rows.set_state(s.id, "uploaded", up.file_id)
    rows_now = list(rows.read())
    unique = {}
    for s in rows_now:
        unique[s.id] = (await bot.get_file(s.platform_file_id)).file_unique_id
    return rows_now, unique


def sticker_files(n: int) -> list[tuple[bytes, bytes]]:
    """(video sticker, custom emoji) of ``n`` distinct synthetic stickers."""
    from engine.stickers.encode import encode
    from tests.engine.stickers.content import cartoon

    out = []
    for k in range(n):
        frames = cartoon(8, 96, 96, period=7 + 5 * k)
        out.append((encode(frames, 10.0, "telegram_video").data, encode(frames, 10.0, "telegram_emoji").data))
    return out


def new_pack(db, blobs, uid: int, files: list[tuple[bytes, bytes]]) -> tuple[int, PackResult]:
    user = users.get_or_create_user(db, "telegram", str(uid))
    pack = packs.create_pack(db, user.id, None, None, 1.0, "0.1.0", platform="telegram")
    made = []
    for i, (video, emoji) in enumerate(files):
        digest = blobs.put_bytes(video)
        packs.put_sticker(db, pack.id, i, EMOJI[i % len(EMOJI)], "video", digest)
        made.append(StickerFiles(i, f"s{i}", EMOJI[i % len(EMOJI)],
                                 {"telegram_video": digest, "telegram_emoji": blobs.put_bytes(emoji)}))
    assert packs.mark_rendering(db, pack.id) and packs.mark_ready(db, pack.id)
    return pack.id, PackResult(pack_id=pack.id, preset="slim", stickers=made, quality={})


async def deliver_sets(server, db, blobs, uid: int, pack_id: int, result: PackResult, mode: str):
    async with ExtBot(server.token, base_url=server.base_url, base_file_url=server.base_file_url,
                      rate_limiter=stickers.StickerSafeRateLimiter(max_retries=3)) as bot:
        def emoji():
            return publish_custom_emoji(bot, db, blobs, pack_id, result, uid, bot_username=bot.username,
                                        title="bench emoji")

        def sticker_set():
            return stickers.publish_pack(bot, db, blobs, pack_id, uid, bot_username=bot.username,
                                         title="bench stickers")

        if mode == "before":
            with mock.patch.object(stickers, "upload_files", upload_files_before):
                return [await emoji(), await sticker_set()]
        return await stickers.run_at_most(2, [emoji, sticker_set])


def set_contents(server, name: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(s["file_unique_id"], tuple(s.get("emoji", ""))) for s in server.sticker_set_json(name)["stickers"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stickers", type=int, default=7, help="stickers in the pack (the default pack has 6-7)")
    ap.add_argument("--latency", type=float, default=0.1, help="seconds the fake server holds every answer")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    files = sticker_files(a.stickers)
    server = FakeTelegramServer()
    with tempfile.TemporaryDirectory() as tmp, server.serve_in_thread():
        db = open_database(f"sqlite:///{tmp}/bench.sqlite3")
        blobs = BlobStore(db, f"{tmp}/blobs")
        uid = server.add_user(tgu.user(4242, "Bench"))["id"]
        server.latency_s = a.latency
        seconds: dict[str, list[float]] = {"before": [], "now": []}
        calls: dict[str, Counter] = {}
        contents: dict[str, list] = {}
        for _ in range(a.repeat):
            for mode in ("before", "now"):
                pack_id, result = new_pack(db, blobs, uid, files)
                server.clear_calls()
                t0 = time.perf_counter()
                emoji_pub, sticker_pub = asyncio.run(deliver_sets(server, db, blobs, uid, pack_id, result, mode))
                seconds[mode].append(time.perf_counter() - t0)
                calls[mode] = Counter(c.method for c in server.calls)
                contents[mode] = [set_contents(server, emoji_pub.name), set_contents(server, sticker_pub.name)]
        print(f"{a.stickers} stickers + {a.stickers} custom emoji, {a.latency:g} s per Bot API call, "
              f"median of {a.repeat}")
        print("| delivery | Bot API calls | uploads | getFile | seconds | vs before |")
        print("|---|---:|---:|---:|---:|---:|")
        base = statistics.median(seconds["before"])
        for mode in ("before", "now"):
            s = statistics.median(seconds[mode])
            print(f"| {mode} | {sum(calls[mode].values())} | {calls[mode]['uploadStickerFile']} | "
                  f"{calls[mode]['getFile']} | {s:.2f} | {base / s:.2f}x |")
        same = contents["before"] == contents["now"]
        print(f"same sets (files in order, emoji): {'yes' if same else 'NO'}")
        return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
