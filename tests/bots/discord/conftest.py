"""Fixtures for the Discord bot tests: real Discord sticker/emoji files from the
engine's encoders (session-wide), a finished ``make_pack`` job the way the engine
completes it, and a running :class:`bots.discord.app.EmojiBot` on the fake REST API.
The database, blob store, face checker and images come from ``tests/bots/conftest.py``."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

import pytest

from bots.core import BotResources
from bots.discord.app import BotOptions, EmojiBot
from emoji3d.orders import PackResult, StickerFiles
from storage import jobs
from tests.bots.conftest import QUALITY
from tests.fakes.discord_api import ServerConfig
from tests.fakes.discord_harness import DiscordHarness, World, running_bot
from tests.lifecycle import make_ready

EMOJIS = ("😀", "😮", "😉")
NAMES = ("turn", "surprise", "wink")
FAST = BotOptions(progress_interval_s=0.0, poll_jobs_s=0.03, rescan_s=0.2, retry_s=0.05, sync_commands=False)


@pytest.fixture(scope="session")
def discord_files() -> dict[str, Any]:
    """Three distinct animated Discord stickers (320x320), three 128x128 emoji
    and a PNG preview, encoded by engine.stickers from synthetic frames."""
    from engine.stickers.encode import encode
    from tests.engine.stickers.content import cartoon

    stickers = [encode(cartoon(4, 320, 320, period=7 + 5 * k), 10.0, "discord_sticker").data for k in range(3)]
    emoji = [encode(cartoon(4, 128, 128, period=7 + 5 * k), 10.0, "discord_emoji").data for k in range(3)]
    preview = encode(cartoon(1, 256, 256), 10.0, "preview").data
    assert len(set(stickers)) == 3 and len(set(emoji)) == 3
    return {"stickers": stickers, "emoji": emoji, "preview": preview}


def finish_discord_job(res: BotResources, job_id: int, files: dict[str, Any], *, preset: str = "pretrained",
                       emoji: bool = True) -> PackResult:
    """Play the engine: claim the job and complete it with a PackResult whose
    blobs are the given real files."""
    job = jobs.claim(res.db, "test-engine", 60, kinds=["make_pack"])
    assert job is not None and job.id == job_id, f"expected to claim job {job_id}, got {job}"
    stickers = []
    for i, data in enumerate(files["stickers"]):
        f = {"discord_sticker": res.blobs.put_bytes(data)}
        if emoji:
            f["discord_emoji"] = res.blobs.put_bytes(files["emoji"][i])
        stickers.append(StickerFiles(i, NAMES[i], EMOJIS[i], f))
    result = PackResult(pack_id=job.payload["pack_id"], preset=preset, stickers=stickers,
                        preview_png=res.blobs.put_bytes(files["preview"]), quality=dict(QUALITY))
    make_ready(res.db, job.payload["pack_id"], job.id)  # as the engine does before completing
    jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
    return result


@contextlib.asynccontextmanager
async def bot_on_fake(res: BotResources, opts: BotOptions = FAST, *, config: ServerConfig | None = None,
                      **world_kw: Any) -> AsyncIterator[tuple[DiscordHarness, World, EmojiBot]]:
    bot = EmojiBot(res, opts)
    async with running_bot(bot, config=config, **world_kw) as (h, world):
        yield h, world, bot


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))
