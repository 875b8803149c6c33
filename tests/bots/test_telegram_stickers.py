"""Crash-safe sticker-set publishing against the fake Bot API: flooded adds that
land anyway, a restart half way, "name is already occupied", regenerating in
place, and a user who never started the bot."""
from __future__ import annotations

import asyncio

import pytest
from telegram.ext import ExtBot

from bots.telegram.stickers import StickerSafeRateLimiter, TelegramNotStarted, publish_pack, set_name_for
from emoji3d.texts import message
from storage import packs, users
from tests.bots.conftest import EMOJIS
from tests.fakes import telegram_updates as tgu
from tests.fakes.telegram_helpers import engine_sticker_verifier
from tests.lifecycle import make_ready

pytestmark = [pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning"),
              pytest.mark.timeout(120)]


def make_pack(res, tg_user_id: int, videos: list[bytes]) -> packs.Pack:
    user = users.get_or_create_user(res.db, "telegram", str(tg_user_id))
    pack = packs.create_pack(res.db, user.id, None, None, 1.0, "0.1.0", platform="telegram")
    for i, v in enumerate(videos):
        packs.put_sticker(res.db, pack.id, i, EMOJIS[i], "video", res.blobs.put_bytes(v))
    make_ready(res.db, pack.id)
    return packs.get_pack(res.db, pack.id)


def bot_for(server) -> ExtBot:
    return ExtBot(server.token, base_url=server.base_url, base_file_url=server.base_file_url,
                  rate_limiter=StickerSafeRateLimiter(max_retries=3))


async def publish(server, res, pack_id: int, uid: int, **kw):
    async with bot_for(server) as bot:
        return await publish_pack(bot, res.db, res.blobs, pack_id, uid, bot_username=bot.username,
                                  title="My 3D emoji", **kw)


def unique_ids(server, name: str) -> list[str]:
    return [s["file_unique_id"] for s in server.sticker_set_json(name)["stickers"]]


def test_flooded_add_that_lands_leaves_one_copy_each(res, telegram_server, telegram_user, sticker_files):
    telegram_server.sticker_verifier = engine_sticker_verifier()
    uid = telegram_user["id"]
    pack = make_pack(res, uid, sticker_files["videos"])
    telegram_server.inject("addStickerToSet", "retry_after_landed", retry_after=1)
    pub = asyncio.run(publish(telegram_server, res, pack.id, uid, thumbnail=sticker_files["thumb"],
                              initial_max=1))
    ids = unique_ids(telegram_server, pub.name)
    assert len(ids) == 3 and len(set(ids)) == 3
    assert [s["emoji"] for s in telegram_server.sticker_set_json(pub.name)["stickers"]] == list(EMOJIS)
    statuses = [c.status for c in telegram_server.calls_to("addStickerToSet")]
    assert statuses == [429, 200]  # the landed one was seen by re-reading, not re-sent
    assert len(telegram_server.calls_to("getStickerSet")) >= 2
    assert pub.created and pub.added == 1
    assert "thumbnail" in telegram_server.sticker_set_json(pub.name)
    assert packs.get_pack(res.db, pack.id).status == "uploading"  # published once its user is told


def test_flooded_add_retried_blindly_is_deduplicated(res, telegram_server, telegram_user, sticker_files):
    """If a duplicate did land (e.g. by an older build), the next publish removes it."""
    uid = telegram_user["id"]
    pack = make_pack(res, uid, sticker_files["videos"])
    pub = asyncio.run(publish(telegram_server, res, pack.id, uid, initial_max=3))

    async def add_duplicate() -> None:
        async with bot_for(telegram_server) as bot:
            s = await bot.get_sticker_set(pub.name)
            from telegram import InputSticker
            f = packs.list_stickers(res.db, pack.id)[1].platform_file_id
            await bot.add_sticker_to_set(uid, pub.name, InputSticker(f, ["😮"], "video"))
            assert len((await bot.get_sticker_set(pub.name)).stickers) == len(s.stickers) + 1

    asyncio.run(add_duplicate())
    again = asyncio.run(publish(telegram_server, res, pack.id, uid))
    assert again.removed_duplicates == 1 and not again.created
    ids = unique_ids(telegram_server, pub.name)
    assert len(ids) == 3 and len(set(ids)) == 3


def test_restart_between_create_and_last_add_completes_without_duplicates(res, telegram_server, telegram_user,
                                                                          sticker_files):
    uid = telegram_user["id"]
    pack = make_pack(res, uid, sticker_files["videos"])
    # The process "dies" on the second addStickerToSet (a 500 the publisher does not handle).
    telegram_server.inject("addStickerToSet", "error", error_code=500, description="connection reset", after=1)
    with pytest.raises(Exception):
        asyncio.run(publish(telegram_server, res, pack.id, uid, initial_max=1, max_rounds=1))
    name = packs.get_pack(res.db, pack.id).platform_set_name
    assert name is not None and telegram_server.sticker_set_json(name) is not None
    states_before = [s.platform_state for s in packs.list_stickers(res.db, pack.id)]
    assert states_before == ["added", "added", "uploaded"]
    uploads_before = len(telegram_server.calls_to("uploadStickerFile"))
    # a fresh process (new bot, state only from the database)
    pub = asyncio.run(publish(telegram_server, res, pack.id, uid, initial_max=1))
    ids = unique_ids(telegram_server, name)
    assert len(ids) == 3 and len(set(ids)) == 3
    assert len(telegram_server.calls_to("createNewStickerSet")) == 1
    assert len(telegram_server.calls_to("uploadStickerFile")) == uploads_before  # file_ids were kept
    assert [s.platform_state for s in packs.list_stickers(res.db, pack.id)] == ["added"] * 3
    assert not pub.created


def test_uploads_go_several_at_once_and_their_answers_identify_the_files(res, telegram_server, telegram_user,
                                                                         sticker_files):
    """Each upload is a round trip of its own: they overlap (at most UPLOAD_CONCURRENCY at once),
    and the upload's answer names the file, so no getFile follows."""
    from bots.telegram.stickers import UPLOAD_CONCURRENCY

    uid = telegram_user["id"]
    pack = make_pack(res, uid, sticker_files["videos"])
    telegram_server.latency_s = 0.2
    pub = asyncio.run(publish(telegram_server, res, pack.id, uid))
    assert 2 <= telegram_server.max_in_flight["uploadStickerFile"] <= min(3, UPLOAD_CONCURRENCY)
    assert telegram_server.calls_to("getFile") == []
    uploaded = {c.files["sticker"] for c in telegram_server.calls_to("uploadStickerFile")}
    assert uploaded == set(sticker_files["videos"])
    assert [s["emoji"] for s in telegram_server.sticker_set_json(pub.name)["stickers"]] == list(EMOJIS)
    assert len(set(unique_ids(telegram_server, pub.name))) == 3


def test_a_failed_upload_keeps_the_finished_ones_and_the_next_publish_sends_only_the_rest(
        res, telegram_server, telegram_user, sticker_files):
    uid = telegram_user["id"]
    pack = make_pack(res, uid, sticker_files["videos"])
    telegram_server.inject("uploadStickerFile", "error", error_code=500, description="connection reset", after=1)
    with pytest.raises(Exception):
        asyncio.run(publish(telegram_server, res, pack.id, uid))
    states = [s.platform_state for s in packs.list_stickers(res.db, pack.id)]
    assert states.count("local") >= 1 and "added" not in states
    assert telegram_server.calls_to("createNewStickerSet") == []
    # an upload cancelled after it reached Telegram is sent again next time: it has no effect on the set
    landed = len([c for c in telegram_server.calls_to("uploadStickerFile") if c.status == 200])
    assert landed >= states.count("uploaded")
    telegram_server.clear_calls()
    pub = asyncio.run(publish(telegram_server, res, pack.id, uid))  # a fresh process: state from the database
    assert len(telegram_server.calls_to("uploadStickerFile")) == states.count("local")
    assert len(telegram_server.calls_to("getFile")) == states.count("uploaded")  # kept file_ids, looked up
    assert [s["emoji"] for s in telegram_server.sticker_set_json(pub.name)["stickers"]] == list(EMOJIS)
    assert [s.platform_state for s in packs.list_stickers(res.db, pack.id)] == ["added"] * 3


def test_name_already_occupied_means_exists(res, telegram_server, telegram_user, sticker_files):
    uid = telegram_user["id"]
    pack = make_pack(res, uid, sticker_files["videos"])
    # the create lands, but the answer is lost; the first read then misses the set
    telegram_server.inject("createNewStickerSet", "retry_after_landed", retry_after=1)
    pub = asyncio.run(publish(telegram_server, res, pack.id, uid, initial_max=2))
    assert [c.status for c in telegram_server.calls_to("createNewStickerSet")] == [429]
    ids = unique_ids(telegram_server, pub.name)
    assert len(ids) == 3 and len(set(ids)) == 3

    telegram_server.inject("getStickerSet", "bad_request", description="STICKERSET_INVALID")
    again = asyncio.run(publish(telegram_server, res, pack.id, uid))
    assert telegram_server.calls_to("createNewStickerSet")[-1].status == 400  # occupied -> verified
    assert unique_ids(telegram_server, pub.name) == ids and again.added == 0


def test_regenerating_the_same_pack_replaces_in_place(res, telegram_server, telegram_user, sticker_files):
    uid = telegram_user["id"]
    vids = sticker_files["videos"]
    pack = make_pack(res, uid, vids)
    pub = asyncio.run(publish(telegram_server, res, pack.id, uid))
    old = unique_ids(telegram_server, pub.name)
    for i, v in enumerate([vids[2], vids[0], vids[1]]):  # new files at every position
        packs.put_sticker(res.db, pack.id, i, EMOJIS[i], "video", res.blobs.put_bytes(v))
    again = asyncio.run(publish(telegram_server, res, pack.id, uid))
    new = unique_ids(telegram_server, pub.name)
    assert again.name == pub.name and again.replaced == 3 and again.added == 0
    assert new == [old[2], old[0], old[1]]
    assert len(telegram_server.calls_to("replaceStickerInSet")) == 3


def test_user_who_never_started_the_bot_is_explained(res, telegram_server, sticker_files):
    stranger = telegram_server.add_user(tgu.user(777, "Eve"), started=False)
    pack = make_pack(res, stranger["id"], sticker_files["videos"][:1])
    with pytest.raises(TelegramNotStarted) as err:
        asyncio.run(publish(telegram_server, res, pack.id, stranger["id"]))
    assert "peer_id_invalid" in err.value.detail.lower()
    text = message(err.value.key, **err.value.params)
    assert "@" + telegram_server.bot.username in text and "Start" in text
    unknown = make_pack(res, 778, sticker_files["videos"][:1])  # Telegram has never seen this user
    with pytest.raises(TelegramNotStarted):
        asyncio.run(publish(telegram_server, res, unknown.id, 778))


def test_set_names_follow_the_rules():
    import re

    for pid, bot in ((1, "emoji3d_test_bot"), (123456789, "a" * 29 + "bot")):
        name = set_name_for(pid, "42", bot)
        assert len(name) <= 64 and name.endswith("_by_" + bot)
        assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|_(?!_))*", name)
    assert set_name_for(5, "42", "x_bot") == set_name_for(5, "42", "x_bot") != set_name_for(6, "42", "x_bot")
