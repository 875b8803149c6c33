"""Tests of the fake Bot API server, driven by the real python-telegram-bot 22 client.

Each test runs PTB on its own ``asyncio.run`` loop against the server fixture, which
serves from a background thread (see tests/conftest.py).
"""
from __future__ import annotations

import asyncio
import datetime as dtm
import io
import json
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image
from telegram import (ChatMemberAdministrator, ChatMemberLeft, ChatMemberMember,
                      InlineKeyboardButton, InlineKeyboardMarkup, InputFile, InputSticker)
from telegram.error import BadRequest, Conflict, EndPointNotFound, Forbidden, InvalidToken, \
    RetryAfter
from telegram.ext import (AIORateLimiter, Application, CallbackQueryHandler, CommandHandler,
                          MessageHandler, filters)

from tests.fakes import telegram_updates as tgu
from tests.fakes.telegram_api import FakeTelegramServer, is_webm, webm_dimensions
from tests.fakes.telegram_helpers import engine_sticker_verifier, ptb_bot

pytestmark = [
    # Raw do_api_request calls are deliberate; RetryAfter.retry_after's int/timedelta
    # switch is handled by seconds().
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning"),
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning"),
]

# A minimal EBML header with DocType "webm" (what the fake's cheap check reads).
WEBM_HEADER = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d")


def webm(n_bytes: int, seed: int = 0) -> bytes:
    """A WEBM-headed blob of ``n_bytes`` (content varies with ``seed``)."""
    body = bytes((seed + i) % 251 for i in range(max(n_bytes - len(WEBM_HEADER), 0)))
    return WEBM_HEADER + body


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (width, height), (200, 30, 30, 128)).save(buf, format="PNG")
    return buf.getvalue()


def seconds(value: Any) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def by(server: FakeTelegramServer) -> str:
    return f"_by_{server.bot.username}"


# ----------------------------------------------------------------------------- basics

def test_get_me_send_and_edit_message(telegram_server: FakeTelegramServer,
                                      telegram_user: dict) -> None:
    uid = telegram_user["id"]
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Cancel", callback_data="cancel:1")]])

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            assert bot.username == telegram_server.bot.username
            msg = await bot.send_message(uid, "Queued: position 3", reply_markup=markup)
            assert msg.chat.id == uid and msg.from_user.id == telegram_server.bot.id
            edited = await bot.edit_message_text("Stage 1: 10%", chat_id=uid,
                                                 message_id=msg.message_id,
                                                 reply_markup=markup)
            assert edited.text == "Stage 1: 10%"
            with pytest.raises(BadRequest, match="(?i)message is not modified"):
                await bot.edit_message_text("Stage 1: 10%", chat_id=uid,
                                            message_id=msg.message_id, reply_markup=markup)
            # Same text, markup removed: that is a modification.
            await bot.edit_message_text("Stage 1: 10%", chat_id=uid, message_id=msg.message_id)
            with pytest.raises(BadRequest, match="(?i)message to edit not found"):
                await bot.edit_message_text("x", chat_id=uid, message_id=999)
            with pytest.raises(BadRequest, match="(?i)message text is empty"):
                await bot.send_message(uid, "   ")

    run(scenario())
    msgs = telegram_server.messages_in(telegram_user["id"])
    assert [m["text"] for m in msgs] == ["Stage 1: 10%"]
    assert "reply_markup" not in msgs[0]
    assert [c.method for c in telegram_server.calls][:2] == ["getMe", "sendMessage"]


def test_unstarted_blocked_and_unknown_chats(telegram_server: FakeTelegramServer) -> None:
    stranger = telegram_server.add_user(tgu.user(5001, "Eve"), started=False)
    blocker = telegram_server.add_user(tgu.user(5002, "Bob"))
    telegram_server.block(blocker["id"])

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            with pytest.raises(Forbidden, match="(?i)can't initiate"):
                await bot.send_message(stranger["id"], "hi")
            with pytest.raises(Forbidden, match="(?i)blocked"):
                await bot.send_message(blocker["id"], "hi")
            with pytest.raises(BadRequest, match="(?i)chat not found"):
                await bot.send_message(-100999, "hi")

    run(scenario())


def test_wrong_token_and_unknown_method(telegram_server: FakeTelegramServer) -> None:
    async def scenario() -> None:
        from telegram import Bot

        wrong = Bot("999:nope", base_url=telegram_server.base_url,
                    base_file_url=telegram_server.base_file_url)
        with pytest.raises(InvalidToken):
            await wrong.initialize()
        async with ptb_bot(telegram_server) as bot:
            with pytest.raises(EndPointNotFound):
                await bot.do_api_request("notAMethod", api_kwargs={"chat_id": 1})

    run(scenario())


def test_async_start_stop_without_thread() -> None:
    async def scenario() -> None:
        async with FakeTelegramServer() as server:
            async with ptb_bot(server) as bot:
                me = await bot.get_me()
                assert me.id == server.bot.id and me.is_bot
        with pytest.raises(RuntimeError, match="not running"):
            _ = server.url

    run(scenario())


def test_html_parse_mode_entities_and_errors(telegram_server: FakeTelegramServer,
                                             telegram_user: dict) -> None:
    uid = telegram_user["id"]

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            msg = await bot.send_message(uid, "<b>Stage</b> 1 &amp; 2 &#128512;",
                                         parse_mode="HTML")
            assert msg.text == "Stage 1 & 2 \U0001F600"
            assert [(e.type, e.offset, e.length) for e in msg.entities] == [("bold", 0, 5)]
            with pytest.raises(BadRequest, match="(?i)not modified"):
                await bot.edit_message_text("<b>Stage</b> 1 &amp; 2 &#128512;", chat_id=uid,
                                            message_id=msg.message_id, parse_mode="HTML")
            # Same plain text without the bold entity is a modification.
            edited = await bot.edit_message_text("Stage 1 & 2 \U0001F600", chat_id=uid,
                                                 message_id=msg.message_id)
            assert edited.entities == ()
            for bad_html, why in [("style <neon>", "unsupported start tag"),
                                  ("<b>open", "can't find end tag"),
                                  ("<b><i>x</b></i>", "unmatched end tag"),
                                  ("a &nbsp; b", "unsupported html entity"),
                                  ("<a>x</a>", "href")]:
                with pytest.raises(BadRequest, match=f"(?i)can't parse entities.*{why}"):
                    await bot.send_message(uid, bad_html, parse_mode="HTML")
            with pytest.raises(BadRequest, match="(?i)unsupported parse_mode"):
                await bot.send_message(uid, "x", parse_mode="BBCode")
            with pytest.raises(BadRequest, match="(?i)message is too long"):
                await bot.send_message(uid, "x" * 4097)

    run(scenario())


def test_delay_injection_times_out_but_lands(telegram_server: FakeTelegramServer,
                                             telegram_user: dict) -> None:
    from telegram.error import TimedOut
    from telegram.request import HTTPXRequest

    telegram_server.inject("sendMessage", "delay", delay_s=1.0)

    async def scenario() -> None:
        async with ptb_bot(telegram_server, request=HTTPXRequest(read_timeout=0.2)) as bot:
            with pytest.raises(TimedOut):
                await bot.send_message(telegram_user["id"], "slow")

    run(scenario())
    assert [m["text"] for m in telegram_server.messages_in(telegram_user["id"])] == ["slow"]


# ----------------------------------------------------------------------------- files

def test_get_file_download_and_20mb_limit(telegram_server: FakeTelegramServer) -> None:
    payload = bytes(range(256)) * 40
    small = telegram_server.add_file(payload, kind="photo")
    huge = telegram_server.add_file(b"x", kind="document", file_size=20 * 1024 * 1024 + 1)

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            f = await bot.get_file(small.file_id)
            assert f.file_size == len(payload)
            assert f.file_path.startswith(telegram_server.base_file_url)
            assert bytes(await f.download_as_bytearray()) == payload
            with pytest.raises(BadRequest, match="(?i)file is too big"):
                await bot.get_file(huge.file_id)
            with pytest.raises(BadRequest, match="(?i)invalid file_id"):
                await bot.get_file("nope")

    run(scenario())


def test_send_photo_document_sticker_action_delete(telegram_server: FakeTelegramServer,
                                                   telegram_user: dict) -> None:
    uid = telegram_user["id"]

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            m1 = await bot.send_photo(uid, InputFile(png(64, 48), filename="p.png"),
                                      caption="preview")
            assert (m1.photo[-1].width, m1.photo[-1].height) == (64, 48)
            m2 = await bot.send_document(uid, InputFile(b"hello", filename="a.txt"))
            assert m2.document.file_name == "a.txt" and m2.document.file_size == 5
            m3 = await bot.send_sticker(uid, InputFile(webm(2000), filename="s.webm"))
            assert m3.sticker.is_video
            with pytest.raises(BadRequest, match="(?i)image_process_failed"):
                await bot.send_photo(uid, InputFile(b"not an image", filename="x.png"))
            assert await bot.send_chat_action(uid, "choose_sticker")
            with pytest.raises(BadRequest, match="(?i)wrong parameter action"):
                await bot.do_api_request("sendChatAction",
                                         api_kwargs={"chat_id": uid, "action": "dance"})
            assert await bot.delete_message(uid, m2.message_id)
            with pytest.raises(BadRequest, match="(?i)message to delete not found"):
                await bot.delete_message(uid, m2.message_id)
            # The photo the bot sent can be fetched back through getFile.
            f = await bot.get_file(m1.photo[-1].file_id)
            assert bytes(await f.download_as_bytearray()) == png(64, 48)

    run(scenario())
    assert len(telegram_server.messages_in(uid)) == 2


# ----------------------------------------------------------------------------- stickers

def test_sticker_set_round_trip(telegram_server: FakeTelegramServer,
                                telegram_user: dict) -> None:
    uid = telegram_user["id"]
    name = "ada_pack" + by(telegram_server)

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            up = await bot.upload_sticker_file(uid, InputFile(webm(3000, 1), filename="a.webm"),
                                               "video")
            assert up.file_id and up.file_size == 3000
            assert await bot.create_new_sticker_set(
                uid, name, "Ada's pack",
                [InputSticker(up.file_id, ["😀"], "video"),
                 InputSticker(webm(2500, 2), ["😮", "😲"],
                              "video")])
            assert await bot.add_sticker_to_set(
                uid, name, InputSticker(webm(2600, 3), ["😠"],
                                        "video"))
            s = await bot.get_sticker_set(name)
            assert s.name == name and s.sticker_type == "regular"
            assert [x.emoji for x in s.stickers] == ["😀", "😮", "😠"]
            assert all(x.is_video and x.set_name == name for x in s.stickers)
            assert s.stickers[0].file_unique_id == up.file_unique_id
            # PTB sends a bare InputFile (attach=False) inside InputSticker without a
            # reference; Telegram cannot read that sticker. Pass bytes instead.
            with pytest.raises(BadRequest, match="(?i)can't parse inputsticker"):
                await bot.add_sticker_to_set(uid, name, InputSticker(
                    InputFile(webm(900), filename="x.webm"), ["😀"], "video"))
            # Stickers of the set download like any file.
            f = await bot.get_file(s.stickers[2].file_id)
            assert bytes(await f.download_as_bytearray()) == webm(2600, 3)
            # Replace keeps the position.
            assert await bot.replace_sticker_in_set(
                uid, name, s.stickers[1].file_id,
                InputSticker(webm(2700, 4), ["😲"], "video"))
            s2 = await bot.get_sticker_set(name)
            assert [x.emoji for x in s2.stickers] == ["😀", "😲", "😠"]
            assert s2.stickers[1].file_id != s.stickers[1].file_id
            with pytest.raises(BadRequest, match="(?i)sticker_invalid"):
                await bot.replace_sticker_in_set(
                    uid, name, s.stickers[1].file_id, InputSticker(up.file_id, ["😀"], "video"))
            # Thumbnail: video thumbnails up to 32 KB.
            assert await bot.set_sticker_set_thumbnail(
                name, uid, "video", InputFile(webm(1000, 5), filename="t.webm"))
            assert (await bot.get_sticker_set(name)).thumbnail is not None
            with pytest.raises(BadRequest, match="(?i)file is too big"):
                await bot.set_sticker_set_thumbnail(
                    name, uid, "video", InputFile(webm(33 * 1024), filename="t.webm"))
            with pytest.raises(BadRequest, match="(?i)thumbnail format must match"):
                await bot.set_sticker_set_thumbnail(
                    name, uid, "static", InputFile(png(100, 100), filename="t.png"))
            # The bot can send a sticker of the set.
            sent = await bot.send_sticker(uid, s2.stickers[0].file_id)
            assert sent.sticker.set_name == name
            assert await bot.delete_sticker_from_set(s2.stickers[0].file_id)
            assert len((await bot.get_sticker_set(name)).stickers) == 2
            assert await bot.delete_sticker_set(name)
            with pytest.raises(BadRequest, match="(?i)stickerset_invalid"):
                await bot.get_sticker_set(name)

    run(scenario())
    uploads = telegram_server.calls_to("uploadStickerFile")
    assert uploads[0].files and list(uploads[0].files.values())[0] == webm(3000, 1)


@pytest.mark.parametrize("suffix_name", [
    "1pack{by}",          # must start with a letter
    "my__pack{by}",       # consecutive underscores
    "my-pack{by}",        # only letters, digits, underscores
    "mypack_by_other_bot",  # wrong bot
    "mypack",             # no _by_ suffix
    "p" * 60 + "{by}",    # over 64 characters
    "päck{by}",           # English letters only
])
def test_sticker_set_name_rules(telegram_server: FakeTelegramServer, telegram_user: dict,
                                suffix_name: str) -> None:
    name = suffix_name.format(by=by(telegram_server))

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            with pytest.raises(BadRequest, match="(?i)sticker set name invalid"):
                await bot.create_new_sticker_set(
                    telegram_user["id"], name, "t",
                    [InputSticker(webm(900), ["😀"], "video")])

    run(scenario())
    assert telegram_server.sticker_set_json(name) is None


def test_name_occupied_case_insensitive_and_user_errors(telegram_server: FakeTelegramServer,
                                                        telegram_user: dict) -> None:
    uid = telegram_user["id"]
    name = "Ada_pack" + by(telegram_server).upper()
    telegram_server.add_user(tgu.user(777, "Never"), started=False)

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            up = await bot.upload_sticker_file(uid, InputFile(webm(900), filename="a.webm"),
                                               "video")
            sticker = InputSticker(up.file_id, ["😀"], "video")
            assert await bot.create_new_sticker_set(uid, name, "t", [sticker])
            with pytest.raises(BadRequest, match="(?i)already occupied"):
                await bot.create_new_sticker_set(uid, name.lower(), "t", [sticker])
            with pytest.raises(BadRequest, match="(?i)peer_id_invalid"):
                await bot.create_new_sticker_set(777, "other" + by(telegram_server), "t",
                                                 [sticker])
            with pytest.raises(BadRequest, match="(?i)user not found"):
                await bot.create_new_sticker_set(31337, "other" + by(telegram_server), "t",
                                                 [sticker])
            with pytest.raises(BadRequest, match="(?i)user_is_bot"):
                await bot.create_new_sticker_set(telegram_server.bot.id,
                                                 "other" + by(telegram_server), "t", [sticker])
            with pytest.raises(BadRequest, match="(?i)stickerset_invalid"):
                await bot.add_sticker_to_set(uid, "missing" + by(telegram_server), sticker)

    run(scenario())


def test_sticker_file_checks_and_verifier_hook(telegram_server: FakeTelegramServer,
                                               telegram_user: dict) -> None:
    uid = telegram_user["id"]
    seen: list[tuple[int, str, str]] = []

    def verifier(data: bytes, fmt: str, role: str) -> str | None:
        seen.append((len(data), fmt, role))
        return "STICKER_VIDEO_LONG" if len(data) == 4321 else None

    telegram_server.sticker_verifier = verifier

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            with pytest.raises(BadRequest, match="(?i)file is too big"):
                await bot.upload_sticker_file(uid, InputFile(webm(256 * 1024 + 1),
                                                             filename="a.webm"), "video")
            assert await bot.upload_sticker_file(uid, InputFile(webm(256 * 1024),
                                                                filename="a.webm"), "video")
            with pytest.raises(BadRequest, match="(?i)sticker_video_nowebm"):
                await bot.upload_sticker_file(uid, InputFile(b"\x00" * 100, filename="a.webm"),
                                              "video")
            with pytest.raises(BadRequest, match="(?i)sticker_video_long"):
                await bot.upload_sticker_file(uid, InputFile(webm(4321), filename="a.webm"),
                                              "video")
            assert await bot.upload_sticker_file(uid, InputFile(png(512, 300), filename="s.png"),
                                                 "static")
            with pytest.raises(BadRequest, match="(?i)sticker_png_dimensions"):
                await bot.upload_sticker_file(uid, InputFile(png(300, 300), filename="s.png"),
                                              "static")
            static_name = "still" + by(telegram_server)
            assert await bot.create_new_sticker_set(
                uid, static_name, "t", [InputSticker(png(512, 512), ["🙂"], "static")])
            with pytest.raises(BadRequest, match="(?i)thumb_png_dimensions"):
                await bot.set_sticker_set_thumbnail(
                    static_name, uid, "static", InputFile(png(120, 100), filename="t.png"))
            assert await bot.set_sticker_set_thumbnail(
                static_name, uid, "static", InputFile(png(100, 100), filename="t.png"))
            assert (await bot.get_sticker_set(static_name)).thumbnail.width == 100
            with pytest.raises(BadRequest, match="(?i)invalid sticker format"):
                await bot.do_api_request("uploadStickerFile", api_kwargs={
                    "user_id": uid, "sticker_format": "gif",
                    "sticker": InputFile(webm(900), filename="a.webm")})

    run(scenario())
    assert (256 * 1024, "video", "upload") in seen


def test_engine_verifier_plugs_in(telegram_server: FakeTelegramServer,
                                  telegram_user: dict) -> None:
    telegram_server.sticker_verifier = engine_sticker_verifier()
    uid = telegram_user["id"]

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            # Passes the cheap header check, but is no decodable video.
            with pytest.raises(BadRequest, match="(?i)sticker_file_invalid: decode_failed"):
                await bot.upload_sticker_file(uid, InputFile(webm(3000), filename="a.webm"),
                                              "video")
            assert await bot.upload_sticker_file(uid, InputFile(png(512, 512),
                                                                filename="s.png"), "static")

    run(scenario())


def test_raw_json_and_get_requests_validate_input_sticker(telegram_server: FakeTelegramServer,
                                                          telegram_user: dict) -> None:
    """The fake also takes JSON bodies and GET query strings, as Telegram does."""
    uid = telegram_user["id"]
    name = "raw" + by(telegram_server)
    api = f"{telegram_server.base_url}{telegram_server.token}"
    up = telegram_server.add_file(webm(800), kind="document")

    def sticker(**over: Any) -> dict:
        return {"sticker": up.file_id, "format": "video", "emoji_list": ["😀"], **over}

    async def post(session: aiohttp.ClientSession, method: str, body: dict) -> tuple[int, dict]:
        async with session.post(f"{api}/{method}", json=body) as r:
            return r.status, await r.json()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as s:
            base = {"user_id": uid, "name": name, "title": "t"}
            cases = [
                ({**base, "stickers": []}, "stickers must be non-empty"),
                ({**base, "stickers": [sticker()] * 51}, "STICKERS_TOO_MUCH"),
                ({**base, "stickers": [sticker(emoji_list=[])]}, "invalid sticker emojis"),
                ({**base, "stickers": [sticker(emoji_list=["😀"] * 21)]},
                 "invalid sticker emojis"),
                ({**base, "stickers": [sticker(emoji_list=["ab"])]}, "invalid sticker emojis"),
                ({**base, "stickers": [sticker(format="png")]}, "Invalid sticker format"),
                ({**base, "stickers": [sticker(keywords=["k" * 65])]},
                 "invalid sticker keywords"),
                ({**base, "stickers": [sticker(sticker="https://example.com/a.webm")]},
                 "failed to get HTTP URL content"),
                ({**base, "stickers": [sticker(sticker="attach://nothing")]},
                 "can't find attached file"),
                ({**base, "title": "", "stickers": [sticker()]}, "is required"),
                ({"user_id": "abc", "name": name, "title": "t", "stickers": [sticker()]},
                 "invalid user_id"),
                ({**base, "stickers": "[not json"}, "can't parse stickers JSON object"),
            ]
            for body, text in cases:
                status, reply = await post(s, "createNewStickerSet", body)
                assert status == 400, (body, reply)
                assert reply["ok"] is False and reply["error_code"] == 400
                assert reply["description"].startswith("Bad Request: ")
                assert text.lower() in reply["description"].lower(), (text, reply)
            status, reply = await post(s, "createNewStickerSet", {**base, "stickers":
                                                                  [sticker()] * 50})
            assert (status, reply) == (200, {"ok": True, "result": True})
            async with s.get(f"{api}/getStickerSet", params={"name": name}) as r:
                got = await r.json()
            assert len(got["result"]["stickers"]) == 50
            # Case-insensitive method names; 120 stickers per regular set.
            for _ in range(70):
                status, reply = await post(s, "ADDSTICKERTOSET", {"user_id": uid, "name": name,
                                                                  "sticker": sticker()})
                assert status == 200, reply
            status, reply = await post(s, "addStickerToSet", {"user_id": uid, "name": name,
                                                              "sticker": sticker()})
            assert status == 400 and "STICKERS_TOO_MUCH" in reply["description"]

    run(scenario())
    assert len(telegram_server.sticker_set_json(name)["stickers"]) == 120


# ----------------------------------------------------------------------------- faults

def test_retry_after_raised_and_not_landed(telegram_server: FakeTelegramServer,
                                           telegram_user: dict) -> None:
    telegram_server.inject("sendMessage", retry_after=7)

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            with pytest.raises(RetryAfter) as err:
                await bot.send_message(telegram_user["id"], "hello")
            assert seconds(err.value.retry_after) == 7
            await bot.send_message(telegram_user["id"], "again")

    run(scenario())
    assert [m["text"] for m in telegram_server.messages_in(telegram_user["id"])] == ["again"]
    assert [c.status for c in telegram_server.calls_to("sendMessage")] == [429, 200]


def test_aio_rate_limiter_retries(telegram_server: FakeTelegramServer,
                                  telegram_user: dict) -> None:
    telegram_server.inject("sendMessage", retry_after=1, times=1)

    async def scenario() -> float:
        async with ptb_bot(telegram_server, rate_limiter=AIORateLimiter(max_retries=2)) as bot:
            t0 = time.monotonic()
            msg = await bot.send_message(telegram_user["id"], "through")
            assert msg.text == "through"
            return time.monotonic() - t0

    elapsed = run(scenario())
    assert elapsed >= 1.0  # it honoured retry_after
    assert [c.status for c in telegram_server.calls_to("sendMessage")] == [429, 200]


def test_flooded_add_lands_anyway_and_injection_counts(telegram_server: FakeTelegramServer,
                                                       telegram_user: dict) -> None:
    uid = telegram_user["id"]
    name = "flood" + by(telegram_server)
    telegram_server.inject("addStickerToSet", "retry_after_landed", retry_after=1, after=1)
    telegram_server.inject("getStickerSet", "bad_request", description="custom failure")

    async def scenario() -> list[str]:
        async with ptb_bot(telegram_server) as bot:
            up = await bot.upload_sticker_file(uid, InputFile(webm(900), filename="a.webm"),
                                               "video")
            await bot.create_new_sticker_set(uid, name, "t",
                                             [InputSticker(up.file_id, ["😀"], "video")])
            b = await bot.upload_sticker_file(uid, InputFile(webm(901, 9), filename="b.webm"),
                                              "video")
            assert await bot.add_sticker_to_set(uid, name, InputSticker(up.file_id, ["😀"],
                                                                        "video"))
            with pytest.raises(RetryAfter):  # second add: lands, then 429
                await bot.add_sticker_to_set(uid, name, InputSticker(b.file_id, ["😮"], "video"))
            with pytest.raises(BadRequest, match="(?i)custom failure"):
                await bot.get_sticker_set(name)
            s = await bot.get_sticker_set(name)
            # A naive retry now duplicates the sticker (what the bot's dedupe must avoid).
            await bot.add_sticker_to_set(uid, name, InputSticker(b.file_id, ["😮"], "video"))
            s2 = await bot.get_sticker_set(name)
            assert s2.stickers[-1].file_unique_id == s2.stickers[-2].file_unique_id
            assert s2.stickers[-1].file_id != s2.stickers[-2].file_id
            return [x.emoji for x in s.stickers]

    assert run(scenario()) == ["😀", "😀", "😮"]
    assert [c.status for c in telegram_server.calls_to("addStickerToSet")] == [200, 429, 200]


def test_injection_rejects_unknown_method_and_kind(telegram_server: FakeTelegramServer) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        telegram_server.inject("sendDice")
    with pytest.raises(ValueError, match="unknown injection kind"):
        telegram_server.inject("sendMessage", "teapot")


# ----------------------------------------------------------------------------- updates

def test_get_updates_offset_allowed_updates_and_conflict(
        telegram_server: FakeTelegramServer, telegram_user: dict) -> None:
    chat = tgu.private_chat(telegram_user)
    group = tgu.group_chat(-1001)
    ids = [telegram_server.push_update(tgu.message_update(
        tgu.message(i + 1, chat, telegram_user, date=1_700_000_000, text=f"m{i}")))
        for i in range(3)]
    telegram_server.push_update(tgu.update("chat_member", tgu.chat_member_updated(
        group, telegram_user, tgu.chat_member(telegram_user, "left"),
        tgu.chat_member(telegram_user, "member"), date=1_700_000_000)))
    assert ids == [1, 2, 3]

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            got = await bot.get_updates(limit=2, timeout=0)
            assert [u.update_id for u in got] == [1, 2]
            got = await bot.get_updates(offset=3, timeout=0)
            assert [u.message.text for u in got] == ["m2"]  # chat_member not opted in
            t0 = time.monotonic()
            assert await bot.get_updates(offset=4, timeout=1) == ()
            assert time.monotonic() - t0 >= 0.9  # long poll waited
            # A second poller terminates the first with 409 Conflict (PTB's own
            # get_updates pool has one connection, so the rival is a second Bot).
            rival = ptb_bot(telegram_server)
            await rival.initialize()
            first = asyncio.create_task(bot.get_updates(offset=4, timeout=3))
            await asyncio.sleep(0.3)
            assert await rival.get_updates(offset=4, timeout=0) == ()
            with pytest.raises(Conflict, match="(?i)terminated by other getUpdates"):
                await first
            await rival.shutdown()

    run(scenario())


def test_allowed_updates_opt_in(telegram_server: FakeTelegramServer,
                                telegram_user: dict) -> None:
    group = tgu.group_chat(-1002)
    telegram_server.push_update(tgu.update("chat_member", tgu.chat_member_updated(
        group, telegram_user, tgu.chat_member(telegram_user, "left"),
        tgu.chat_member(telegram_user, "member"), date=1_700_000_000)))

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            got = await bot.get_updates(timeout=0, allowed_updates=["message", "chat_member"])
            assert got[0].chat_member.new_chat_member.status == "member"

    run(scenario())


def test_get_chat_member_and_commands(telegram_server: FakeTelegramServer,
                                      telegram_user: dict) -> None:
    group = telegram_server.add_chat(tgu.group_chat(-100123, "Club"))
    admin = tgu.user(9001, "Admin")
    telegram_server.set_chat_member(group["id"], admin, "administrator")
    telegram_server.set_chat_member(group["id"], telegram_user, "member")
    telegram_server.add_user(tgu.user(9002, "Gone"))

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            assert isinstance(await bot.get_chat_member(group["id"], admin["id"]),
                              ChatMemberAdministrator)
            assert isinstance(await bot.get_chat_member(group["id"], telegram_user["id"]),
                              ChatMemberMember)
            assert isinstance(await bot.get_chat_member(group["id"], 9002), ChatMemberLeft)
            with pytest.raises(BadRequest, match="(?i)user not found"):
                await bot.get_chat_member(group["id"], 123)
            with pytest.raises(BadRequest, match="(?i)chat not found"):
                await bot.get_chat_member(-5, admin["id"])
            assert await bot.set_my_commands([("start", "Start"), ("mypacks", "My packs")])
            with pytest.raises(BadRequest, match="(?i)bot_command_invalid"):
                await bot.set_my_commands([("Bad-Cmd", "x")])

    run(scenario())
    assert [c["command"] for c in telegram_server.commands()] == ["start", "mypacks"]


def test_application_polling_handles_command_and_callback(
        telegram_server: FakeTelegramServer, telegram_user: dict) -> None:
    """The real Application polls the fake, gets pushed updates, handlers reply."""
    uid = telegram_user["id"]
    chat = tgu.private_chat(telegram_user)

    async def on_start(update: Any, context: Any) -> None:
        kb = InlineKeyboardMarkup([[InlineKeyboardButton("Go", callback_data="go")]])
        await update.message.reply_text(f"hello {update.effective_user.first_name}",
                                        reply_markup=kb, do_quote=True)

    async def on_photo(update: Any, context: Any) -> None:
        f = await update.message.photo[-1].get_file()
        await update.message.reply_text(f"got {len(await f.download_as_bytearray())} bytes")

    async def on_button(update: Any, context: Any) -> None:
        await update.callback_query.answer("ok")
        await update.callback_query.edit_message_text(f"pressed {update.callback_query.data}")

    async def wait_for(pred: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        app = (Application.builder().token(telegram_server.token)
               .base_url(telegram_server.base_url).base_file_url(telegram_server.base_file_url)
               .build())
        app.add_handler(CommandHandler("start", on_start))
        app.add_handler(CallbackQueryHandler(on_button))
        app.add_handler(MessageHandler(filters.PHOTO, on_photo))
        await app.initialize()
        await app.start()
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        try:
            mid = telegram_server.next_message_id(uid)
            telegram_server.push_update(tgu.message_update(tgu.command_message(
                mid, chat, telegram_user, "start", date=telegram_server.now())))
            await wait_for(lambda: telegram_server.messages_in(uid))
            sent = telegram_server.messages_in(uid)[0]
            assert sent["text"] == "hello Ada"
            assert sent["reply_to_message"]["message_id"] == mid
            assert sent["message_id"] == mid + 1
            # A selfie sent as a photo: the handler downloads the largest size.
            photo = telegram_server.add_photo(png(40, 30))
            telegram_server.push_update(tgu.message_update(tgu.message(
                telegram_server.next_message_id(uid), chat, telegram_user,
                date=telegram_server.now(), photo=photo)))
            await wait_for(lambda: len(telegram_server.messages_in(uid)) == 2)
            assert telegram_server.messages_in(uid)[1]["text"] == f"got {len(png(40, 30))} bytes"
            telegram_server.push_update(tgu.callback_update(
                tgu.callback_query("q1", telegram_user, "go", msg=sent)))
            await wait_for(lambda: telegram_server.messages_in(uid)[0]["text"] == "pressed go")
            await wait_for(lambda: telegram_server.calls_to("answerCallbackQuery"))
        finally:
            await app.updater.stop()
            await app.stop()
            await app.shutdown()

    t0 = time.monotonic()
    run(scenario())
    assert time.monotonic() - t0 < 15
    assert telegram_server.calls_to("deleteWebhook")
    assert [c.status for c in telegram_server.calls_to("answerCallbackQuery")] == [200]
    assert not [c for c in telegram_server.calls if c.status == 409]


def test_answer_callback_query_once(telegram_server: FakeTelegramServer,
                                    telegram_user: dict) -> None:
    telegram_server.push_update(tgu.callback_update(tgu.callback_query("q9", telegram_user,
                                                                       "x")))

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            assert await bot.answer_callback_query("q9", text="done")
            with pytest.raises(BadRequest, match="(?i)query is too old"):
                await bot.answer_callback_query("q9")

    run(scenario())


def test_factories_parse_with_ptb(telegram_user: dict) -> None:
    from telegram import Update

    chat = tgu.private_chat(telegram_user)
    photo = [tgu.photo_size("f1", "u1", 90, 90, 1000), tgu.photo_size("f2", "u2", 800, 800)]
    upd = Update.de_json(tgu.message_update(tgu.message(3, chat, telegram_user, date=1,
                                                        photo=photo, caption="me"),
                                            update_id=5), None)
    assert upd.message.photo[-1].width == 800 and upd.effective_user.id == telegram_user["id"]
    cmd = tgu.command_message(4, tgu.group_chat(-100), telegram_user, "housestyle",
                              args="add neon", bot_username="emoji3d_test_bot", date=1)
    parsed = Update.de_json(tgu.message_update(cmd, update_id=6), None).message
    assert parsed.text == "/housestyle@emoji3d_test_bot add neon"
    assert parsed.entities[0].length == len("/housestyle@emoji3d_test_bot")
    for status in tgu.CHAT_MEMBER_STATUSES:
        from telegram import ChatMember

        assert ChatMember.de_json(tgu.chat_member(telegram_user, status), None).status == status
    with pytest.raises(ValueError):
        tgu.callback_query("q", telegram_user, "x" * 65)
    assert is_webm(WEBM_HEADER) and not is_webm(b"\x1a\x45\xdf\xa3matroska")
    json.dumps(tgu.document("d", "u", file_name="a.png", mime_type="image/png", file_size=3))


def test_add_document_and_photo_helpers(telegram_server: FakeTelegramServer) -> None:
    doc = telegram_server.add_document(png(20, 20), "selfie.png", file_size=25 * 1024 * 1024)
    assert doc["mime_type"] == "image/png" and doc["file_size"] == 25 * 1024 * 1024
    photo = telegram_server.add_photo(png(33, 22))
    assert (photo[0]["width"], photo[0]["height"]) == (33, 22)
    with pytest.raises(ValueError, match="no decodable image"):
        telegram_server.add_photo(b"nope")

    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            with pytest.raises(BadRequest, match="(?i)file is too big"):
                await bot.get_file(doc["file_id"])

    run(scenario())


# ----------------------------------------------------------------------------- webhooks

async def wait_for(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


class _Receiver:
    """A minimal webhook endpoint: answers ``status`` and keeps (secret header, update)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.got: list[tuple[str | None, dict]] = []
        self.runner: Any = None
        self.url = ""

    async def __aenter__(self) -> "_Receiver":
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            self.got.append((request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.json()))
            return web.Response(status=self.status)

        app = web.Application()
        app.router.add_post("/hook", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def test_webhook_receives_pushed_updates_in_order_with_the_secret(telegram_server: FakeTelegramServer,
                                                                  telegram_user: dict) -> None:
    async def scenario() -> None:
        async with _Receiver() as hook, ptb_bot(telegram_server) as bot:
            assert await bot.set_webhook(hook.url, secret_token="s3cret_T-1", allowed_updates=["message"])
            info = await bot.get_webhook_info()
            assert info.url == hook.url and info.pending_update_count == 0
            with pytest.raises(Conflict, match="webhook is active"):
                await bot.get_updates()
            chat = tgu.private_chat(telegram_user)
            for i in range(3):
                telegram_server.push_update(tgu.message_update(tgu.message(
                    telegram_server.next_message_id(chat["id"]), chat, telegram_user,
                    date=telegram_server.now(), text=f"m{i}")))
            telegram_server.push_update(tgu.callback_update(tgu.callback_query("q1", telegram_user, "x")))
            await wait_for(lambda: len(hook.got) == 3)
            await asyncio.sleep(0.1)
            assert [u["message"]["text"] for _, u in hook.got] == ["m0", "m1", "m2"]
            assert {s for s, _ in hook.got} == {"s3cret_T-1"}
            assert telegram_server.pending_updates == []  # the callback query was not asked for
            assert await bot.delete_webhook()
            assert await bot.get_updates() == ()

    run(scenario())


def test_webhook_keeps_an_update_until_it_is_accepted(telegram_server: FakeTelegramServer,
                                                      telegram_user: dict) -> None:
    async def scenario() -> None:
        async with _Receiver(status=500) as hook, ptb_bot(telegram_server) as bot:
            await bot.set_webhook(hook.url)
            chat = tgu.private_chat(telegram_user)
            telegram_server.push_update(tgu.message_update(tgu.message(
                telegram_server.next_message_id(chat["id"]), chat, telegram_user, date=telegram_server.now(),
                text="hi")))
            await wait_for(lambda: len(hook.got) >= 2)
            info = await bot.get_webhook_info()
            assert info.pending_update_count == 1 and "500" in info.last_error_message
            assert hook.got[0][0] is None  # no secret set: no header
            hook.status = 200
            await wait_for(lambda: not telegram_server.pending_updates)
            statuses = [p.status for p in telegram_server.webhook_posts]
            assert statuses[-1] == 200 and set(statuses[:-1]) == {500}

    run(scenario())


def test_set_webhook_validates_like_telegram(telegram_server: FakeTelegramServer) -> None:
    async def scenario() -> None:
        async with ptb_bot(telegram_server) as bot:
            with pytest.raises(BadRequest, match="(?i)https url"):
                await bot.set_webhook("http://bot.example.com/hook")
            with pytest.raises(BadRequest, match="(?i)ports 80, 88, 443 or 8443"):
                await bot.set_webhook("https://bot.example.com:9000/hook")
            with pytest.raises(BadRequest, match="(?i)unallowed characters"):
                await bot.set_webhook("https://bot.example.com/hook", secret_token="no spaces allowed")
            assert await bot.set_webhook("https://bot.example.com:8443/hook", secret_token="ok")
            assert telegram_server.webhook["secret_token"] == "ok"

    run(scenario())


def test_post_to_webhook_sends_any_secret_header(telegram_server: FakeTelegramServer,
                                                 telegram_user: dict) -> None:
    async def scenario() -> None:
        async with _Receiver() as hook:
            upd = tgu.callback_update(tgu.callback_query("q2", telegram_user, "x"))
            assert await telegram_server.post_to_webhook(upd, secret="wrong", url=hook.url) == 200
            assert await telegram_server.post_to_webhook(upd, secret=None, url=hook.url) == 200
            assert [s for s, _ in hook.got] == ["wrong", None]

    run(scenario())


def test_webm_frame_size_is_read_from_the_ebml_header():
    """The fake's own EBML reader (not the engine's decoder) agrees with PyAV on real files."""
    import av

    from engine.stickers.encode import encode
    from tests.engine.stickers.content import cartoon

    for target, side in (("telegram_emoji", 100), ("telegram_video", 512)):
        data = encode(cartoon(4, 64, 64), 10.0, target).data
        with av.open(io.BytesIO(data)) as box:
            ctx = box.streams.video[0].codec_context
            assert webm_dimensions(data) == (ctx.width, ctx.height) == (side, side)
    assert webm_dimensions(b"\x1a\x45\xdf\xa3" + b"\x00" * 40) is None
    assert webm_dimensions(b"") is None
