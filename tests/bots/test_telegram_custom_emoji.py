"""The pack's custom emoji set (issue 19) against the fake Bot API with the real python-telegram-bot:
created with every emoji, kept in sync on regeneration, crash-safe, refused where Telegram refuses it,
deleted by /delete with the sticker set, and not made at all when ``[telegram] custom_emoji`` is off."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import pytest
from telegram import InputFile, InputSticker
from telegram.error import BadRequest

from bots.telegram.custom_emoji import publish_custom_emoji
from emoji3d.config import TelegramConfig
from emoji3d.orders import PackResult, StickerFiles
from emoji3d.texts import text
from storage import custom_emoji
from storage import jobs, packs, users
from tests.bots.conftest import EMOJIS, QUALITY
from tests.bots.test_telegram_flow import Chat, add_global_style, buttons, consent, running_bot
from tests.bots.test_telegram_stickers import bot_for
from tests.fakes.telegram_helpers import engine_sticker_verifier
from tests.lifecycle import make_ready

pytestmark = [pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning"),
              pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def emoji_files() -> list[bytes]:
    """Three distinct 100x100 custom emoji, encoded by engine.stickers like the engine does."""
    from engine.stickers.encode import encode
    from tests.engine.stickers.content import cartoon

    files = [encode(cartoon(6, 64, 64, period=7 + 5 * k), 10.0, "telegram_emoji").data for k in range(3)]
    assert len(set(files)) == 3
    return files


def result_for(res, pack_id: int, videos: list[bytes], emoji: list[bytes] | None) -> PackResult:
    stickers = []
    for i, v in enumerate(videos):
        files = {"telegram_video": res.blobs.put_bytes(v)}
        if emoji is not None:
            files["telegram_emoji"] = res.blobs.put_bytes(emoji[i])
        stickers.append(StickerFiles(i, f"s{i}", EMOJIS[i], files))
    return PackResult(pack_id=pack_id, preset="slim", stickers=stickers, quality=dict(QUALITY))


def made_pack(res, uid: int) -> packs.Pack:
    user = users.get_or_create_user(res.db, "telegram", str(uid))
    pack = packs.create_pack(res.db, user.id, None, None, 1.0, "0.1.0", platform="telegram")
    make_ready(res.db, pack.id)
    return pack


async def publish(server, res, pack_id: int, result: PackResult, uid: int, **kw):
    async with bot_for(server) as bot:
        return await publish_custom_emoji(bot, res.db, res.blobs, pack_id, result, uid, bot_username=bot.username,
                                          title="My 3D emoji", **kw)


def entries(server, name: str) -> list[dict]:
    return server.sticker_set_json(name)["stickers"]


def test_the_set_is_created_with_every_emoji(res, telegram_server, telegram_user, sticker_files, emoji_files):
    telegram_server.sticker_verifier = engine_sticker_verifier()  # decodes each file: 100x100, <= 3 s, VP9
    uid = telegram_user["id"]
    pack = made_pack(res, uid)
    pub = asyncio.run(publish(telegram_server, res, pack.id, result_for(res, pack.id, sticker_files["videos"],
                                                                        emoji_files), uid))
    s = telegram_server.sticker_set_json(pub.name)
    assert s["sticker_type"] == "custom_emoji" and pub.created
    assert [e["emoji"] for e in s["stickers"]] == list(EMOJIS)
    assert all(e["is_video"] and (e["width"], e["height"]) == (100, 100) and e["custom_emoji_id"]
               for e in s["stickers"])
    assert len({e["custom_emoji_id"] for e in s["stickers"]}) == 3
    assert pub.name.endswith("_by_" + telegram_server.bot.username) and pub.link.startswith("https://t.me/addemoji/")
    assert custom_emoji.set_name(res.db, pack.id) == pub.name
    assert [e.platform_state for e in custom_emoji.list_emoji(res.db, pack.id)] == ["added"] * 3
    create = telegram_server.calls_to("createNewStickerSet")[-1]
    assert create.params["sticker_type"] == "custom_emoji"


def test_regenerating_keeps_the_set_in_sync(res, telegram_server, telegram_user, sticker_files, emoji_files):
    uid = telegram_user["id"]
    pack = made_pack(res, uid)
    vids = sticker_files["videos"]
    pub = asyncio.run(publish(telegram_server, res, pack.id, result_for(res, pack.id, vids, emoji_files), uid))
    old = [e["file_unique_id"] for e in entries(telegram_server, pub.name)]
    shuffled = [emoji_files[2], emoji_files[0], emoji_files[1]]
    again = asyncio.run(publish(telegram_server, res, pack.id, result_for(res, pack.id, vids, shuffled), uid))
    assert again.name == pub.name and again.replaced == 3 and again.added == 0 and not again.created
    assert [e["file_unique_id"] for e in entries(telegram_server, pub.name)] == [old[2], old[0], old[1]]
    uploads = len(telegram_server.calls_to("uploadStickerFile"))
    same = asyncio.run(publish(telegram_server, res, pack.id, result_for(res, pack.id, vids, shuffled), uid))
    assert (same.added, same.replaced, same.removed_duplicates) == (0, 0, 0)
    assert len(telegram_server.calls_to("uploadStickerFile")) == uploads  # unchanged files are not sent again


def test_a_crash_mid_upload_resumes_without_duplicates(res, telegram_server, telegram_user, sticker_files,
                                                        emoji_files):
    uid = telegram_user["id"]
    pack = made_pack(res, uid)
    result = result_for(res, pack.id, sticker_files["videos"], emoji_files)
    telegram_server.inject("addStickerToSet", "error", error_code=500, description="connection reset", after=1)
    with pytest.raises(Exception):
        asyncio.run(publish(telegram_server, res, pack.id, result, uid, initial_max=1, max_rounds=1))
    name = custom_emoji.set_name(res.db, pack.id)
    assert [e.platform_state for e in custom_emoji.list_emoji(res.db, pack.id)] == ["added", "added", "uploaded"]
    uploads = len(telegram_server.calls_to("uploadStickerFile"))
    # a flooded add that lands anyway, in the fresh process: seen by re-reading, never sent twice
    telegram_server.inject("addStickerToSet", "retry_after_landed", retry_after=1)
    asyncio.run(publish(telegram_server, res, pack.id, result, uid, initial_max=1))
    ids = [e["file_unique_id"] for e in entries(telegram_server, name)]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert len(telegram_server.calls_to("createNewStickerSet")) == 1
    assert len(telegram_server.calls_to("uploadStickerFile")) == uploads


def test_the_fake_refuses_what_telegram_refuses(res, telegram_server, telegram_user, sticker_files, emoji_files):
    uid = telegram_user["id"]
    bot_name = telegram_server.bot.username

    async def scenario() -> None:
        async with bot_for(telegram_server) as bot:
            sticker = (await bot.upload_sticker_file(uid, InputFile(sticker_files["videos"][0], filename="s.webm"),
                                                     "video")).file_id
            emoji = (await bot.upload_sticker_file(uid, InputFile(emoji_files[0], filename="e.webm"),
                                                   "video")).file_id
            with pytest.raises(BadRequest, match="(?i)100x100"):  # a 512 px sticker is no custom emoji
                await bot.create_new_sticker_set(uid, f"big_by_{bot_name}", "t", [InputSticker(sticker, ["😀"], "video")],
                                                 sticker_type="custom_emoji")
            with pytest.raises(BadRequest, match="(?i)512"):  # nor is a 100 px emoji a sticker
                await bot.create_new_sticker_set(uid, f"small_by_{bot_name}", "t", [InputSticker(emoji, ["😀"], "video")])
            with pytest.raises(BadRequest, match="(?i)name invalid"):
                await bot.create_new_sticker_set(uid, "emoji_by_someone_else", "t", [InputSticker(emoji, ["😀"], "video")],
                                                 sticker_type="custom_emoji")
            assert await bot.create_new_sticker_set(uid, f"ok_by_{bot_name}", "t", [InputSticker(emoji, ["😀"], "video")],
                                                    sticker_type="custom_emoji")
            with pytest.raises(BadRequest, match="(?i)100x100"):
                await bot.add_sticker_to_set(uid, f"ok_by_{bot_name}", InputSticker(sticker, ["😮"], "video"))
            got = await bot.get_sticker_set(f"ok_by_{bot_name}")
            assert got.sticker_type == "custom_emoji" and got.stickers[0].custom_emoji_id
            assert await bot.delete_sticker_set(f"ok_by_{bot_name}")
            with pytest.raises(BadRequest, match="(?i)stickerset_invalid"):
                await bot.get_sticker_set(f"ok_by_{bot_name}")

    asyncio.run(scenario())


def finish_with_emoji(res, job_id: int, sticker_files, emoji: list[bytes] | None) -> None:
    job = jobs.claim(res.db, "test-engine", 60, kinds=["make_pack"])
    assert job is not None and job.id == job_id
    result = result_for(res, job.payload["pack_id"], sticker_files["videos"], emoji)
    result.thumbnail = {"telegram_thumb": res.blobs.put_bytes(sticker_files["thumb"])}
    make_ready(res.db, job.payload["pack_id"], job.id)
    jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())


def order_and_deliver(res, app, chat, telegram_user, style, sticker_files, emoji):
    from bots import core

    user = users.find_user(res.db, "telegram", str(telegram_user["id"]))
    placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
    app.bot_data["notifier"].watch(placed.job_id, placed.pack.id, user)
    finish_with_emoji(res, placed.job_id, sticker_files, emoji)
    return placed.pack.id


def test_the_bot_delivers_both_sets_and_delete_removes_both(res, telegram_server, telegram_user, selfie_png,
                                                            sticker_files, emoji_files):
    style = add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> tuple[str, str]:
        async with running_bot(res, telegram_server) as app:
            await consent(chat)
            chat.photo(selfie_png)
            await chat.reply_containing(text("selfie_ok"))
            telegram_server.inject("createNewStickerSet", "delay", delay_s=0.5, times=2)
            pack_id = order_and_deliver(res, app, chat, telegram_user, style, sticker_files, emoji_files)
            done = await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            assert "https://t.me/addemoji/" in done["text"] and "Premium" in done["text"]
            assert telegram_server.max_in_flight["createNewStickerSet"] == 2  # the two sets at once
            names = packs.get_pack(res.db, pack_id).platform_set_name, custom_emoji.set_name(res.db, pack_id)
            assert names[0] != names[1] and telegram_server.sticker_set_json(names[1])["sticker_type"] == "custom_emoji"
            chat.command("privacy")
            await chat.reply_containing("custom emoji")
            chat.command("delete")
            confirm = await chat.reply_containing("Delete everything?")
            assert "custom emoji" in confirm["text"]
            chat.press(confirm, buttons(confirm)[text("delete_yes")])
            await chat.reply_containing(text("custom_emoji_deleted", sets=1))
            return names

    sticker_set, emoji_set = asyncio.run(scenario())
    assert telegram_server.sticker_set_json(sticker_set) is None and telegram_server.sticker_set_json(emoji_set) is None
    deleted = [c.params["name"] for c in telegram_server.calls_to("deleteStickerSet")]
    assert sorted(deleted) == sorted([sticker_set, emoji_set])
    for data in emoji_files:  # the emoji files were this user's alone
        assert not res.blobs.exists(hashlib.sha256(data).hexdigest())


def test_delete_while_the_emoji_set_was_never_finished(res, telegram_server, telegram_user, sticker_files,
                                                        emoji_files):
    """The name is recorded before the set exists: /delete asks for it anyway, and an absent set is fine."""
    from bots.telegram.custom_emoji import delete_custom_emoji_sets, delete_set_ignoring_gone

    uid = telegram_user["id"]
    pack = made_pack(res, uid)
    custom_emoji.record_set_name(res.db, pack.id, f"never_made_by_{telegram_server.bot.username}")

    async def scenario():
        async with bot_for(telegram_server) as bot:
            return await delete_custom_emoji_sets(res.db, "telegram", str(uid),
                                                  lambda name: delete_set_ignoring_gone(bot, name))

    done, failed = asyncio.run(scenario())
    assert done == [f"never_made_by_{telegram_server.bot.username}"] and failed == []


def test_config_off_makes_no_emoji_set(res, telegram_server, telegram_user, selfie_png, sticker_files, emoji_files):
    res.cfg = dataclasses.replace(res.cfg, telegram=TelegramConfig(custom_emoji=False))
    style = add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> int:
        async with running_bot(res, telegram_server) as app:
            await consent(chat)
            chat.photo(selfie_png)
            await chat.reply_containing(text("selfie_ok"))
            # even a result that carries emoji files (made before the switch) is not published as emoji
            pack_id = order_and_deliver(res, app, chat, telegram_user, style, sticker_files, emoji_files)
            done = await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            assert "addemoji" not in done["text"]
            return pack_id

    pack_id = asyncio.run(scenario())
    assert custom_emoji.set_name(res.db, pack_id) is None and custom_emoji.list_emoji(res.db, pack_id) == []
    types = [c.params.get("sticker_type", "regular") for c in telegram_server.calls_to("createNewStickerSet")]
    assert types == ["regular"]


def test_a_result_with_fewer_stickers_drops_the_emoji_rows_past_it(res):
    """A sticker-selection re-render with fewer stickers: the emoji rows shrink as the sticker rows do,
    so the next publish removes those emoji from the set too."""
    from bots.telegram.custom_emoji import EMOJI_TARGET, materialize_emoji
    from emoji3d.orders import PackResult, StickerFiles

    user = users.get_or_create_user(res.db, "telegram", "shrinks")
    pack = packs.create_pack(res.db, user.id, None, None, 1.0, "0.1.0", platform="telegram")
    files = [res.blobs.put_bytes(f"emoji file {i}".encode()) for i in range(3)]
    full = PackResult(pack_id=pack.id, preset="slim",
                      stickers=[StickerFiles(i, f"s{i}", "😀", {EMOJI_TARGET: d}) for i, d in enumerate(files)])
    assert [e.idx for e in materialize_emoji(res.db, pack.id, full)] == [0, 1, 2]
    fewer = PackResult(pack_id=pack.id, preset="slim", stickers=[StickerFiles(0, "s2", "😀", {EMOJI_TARGET: files[2]})])
    assert [(e.idx, e.blob_digest) for e in materialize_emoji(res.db, pack.id, fewer)] == [(0, files[2])]
