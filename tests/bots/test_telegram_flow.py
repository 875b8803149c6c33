"""The real python-telegram-bot Application against the fake Bot API: the whole
conversation, bad uploads, cancel, /delete, house styles, /privacy, /mypacks."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any, AsyncIterator

import pytest
from telegram.ext import ExtBot

from bots import core
from bots.core import BotResources
from bots.telegram.app import AppOptions, build_application, serve
from bots.telegram.stickers import publish_pack
from emoji3d.texts import message, text
from storage import deliveries, jobs, packs, selfies, users
from storage import styles as st
from emoji3d.texts import quality_summary
from tests.bots.conftest import QUALITY, finish_job, wait_for
from tests.fakes import telegram_updates as tgu
from tests.fakes.telegram_api import FakeTelegramServer
from tests.lifecycle import make_ready

pytestmark = [pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning"),
              pytest.mark.timeout(120)]


@contextlib.asynccontextmanager
async def running_bot(res: BotResources, server: FakeTelegramServer) -> AsyncIterator[Any]:
    opts = AppOptions(base_url=server.base_url, base_file_url=server.base_file_url, progress_interval_s=0.0,
                      poll_jobs_s=0.05, long_poll_timeout_s=1, retry_s=0.05)
    app = build_application(res, server.token, opts)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, stop, opts))
    await wait_for(lambda: server.calls_to("getUpdates"), what="polling")
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


class Chat:
    """A person typing into a chat with the bot."""

    def __init__(self, server: FakeTelegramServer, user: dict, chat: dict | None = None) -> None:
        self.server, self.user = server, user
        self.chat = chat or tgu.private_chat(user)
        self.q = 0

    @property
    def cid(self) -> int:
        return self.chat["id"]

    def bot_messages(self) -> list[dict]:
        return self.server.messages_in(self.cid)

    def texts(self) -> list[str]:
        return [m.get("text", "") for m in self.bot_messages()]

    def command(self, cmd: str, args: str = "", reply_to: dict | None = None) -> None:
        self.server.push_update(tgu.message_update(tgu.command_message(
            self.server.next_message_id(self.cid), self.chat, self.user, cmd, args=args,
            date=self.server.now(), reply_to=reply_to)))

    def photo(self, data: bytes, *, file_size: int | None = None, reply_to: dict | None = None) -> dict:
        msg = tgu.message(self.server.next_message_id(self.cid), self.chat, self.user, date=self.server.now(),
                          photo=self.server.add_photo(data, file_size=file_size), reply_to=reply_to)
        self.server.push_update(tgu.message_update(msg))
        return msg

    def document(self, data: bytes, name: str, *, file_size: int | None = None) -> None:
        self.server.push_update(tgu.message_update(tgu.message(
            self.server.next_message_id(self.cid), self.chat, self.user, date=self.server.now(),
            doc=self.server.add_document(data, name, file_size=file_size))))

    def press(self, msg: dict, data: str) -> None:
        self.q += 1
        self.server.push_update(tgu.callback_update(tgu.callback_query(f"q{self.user['id']}_{self.q}", self.user,
                                                                       data, msg=msg)))

    async def reply_containing(self, fragment: str, timeout: float = 20.0) -> dict:
        return await wait_for(lambda: next((m for m in self.bot_messages() if fragment in m.get("text", "")), None),
                              timeout, f"a bot message containing {fragment!r}; got {self.texts()}")


def buttons(msg: dict) -> dict[str, str]:
    return {b["text"]: b["callback_data"] for row in msg.get("reply_markup", {}).get("inline_keyboard", [])
            for b in row if "callback_data" in b}


def add_global_style(res: BotResources, name: str, image: bytes) -> st.Style:
    return st.add_style(res.db, name, res.blobs.put_bytes(image), status="ready")


async def consent(chat: Chat) -> None:
    chat.command("start")
    welcome = await chat.reply_containing("Do you agree")
    chat.press(welcome, buttons(welcome)[text("consent_button")])
    await chat.reply_containing(text("consent_thanks"))


async def order_toon_pack(chat: Chat, selfie: bytes) -> dict:
    """Consent, send the selfie, pick the "toon" style at full strength; returns the progress message."""
    await consent(chat)
    chat.photo(selfie)
    styles_msg = await chat.reply_containing(text("selfie_ok"))
    chat.press(styles_msg, buttons(styles_msg)["toon"])
    strength_msg = await chat.reply_containing("how strong")
    chat.press(strength_msg, buttons(strength_msg)[text("strength_full")])
    return await chat.reply_containing("about to start")


def toon_order_before_a_stop(res, server, user, selfie: bytes) -> tuple[Chat, dict]:
    """A bot that took a "toon" order and then stopped: the chat and its progress message."""
    add_global_style(res, "toon", selfie)
    chat = Chat(server, user)

    async def first_life() -> dict:
        async with running_bot(res, server):
            return await order_toon_pack(chat, selfie)

    return chat, asyncio.run(first_life())


def test_whole_conversation_creates_a_set(res, telegram_server, telegram_user, selfie_png, sticker_files):
    style = add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            await consent(chat)
            chat.photo(selfie_png)
            styles_msg = await chat.reply_containing(text("selfie_ok"))
            kb = buttons(styles_msg)
            assert list(kb) == ["toon", text("style_own_button")]
            chat.press(styles_msg, kb["toon"])
            strength_msg = await chat.reply_containing("how strong")
            chat.press(strength_msg, buttons(strength_msg)[text("strength_medium")])
            progress = await chat.reply_containing("about to start")
            assert text("cancel_button") in buttons(progress)
            job = jobs.list_jobs(res.db, kind="make_pack")[0]
            assert job.payload["strength"] == 0.7 and job.payload["style_id"] == style.id
            # the engine reports a stage, then finishes
            claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            jobs.set_progress(res.db, claimed.id, claimed.lease_token, "invert_3d", 0.42)
            await chat.reply_containing("building your 3D head (42%)")
            jobs.release(res.db, claimed.id, claimed.lease_token)
            finish_job(res, job.id, sticker_files)
            done = await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            assert done["message_id"] == progress["message_id"]  # the same message, edited in place
            assert text("slim_warning") in done["text"]
            assert quality_summary(QUALITY, "slim") in done["text"]  # the quality report, one line
            await wait_for(lambda: telegram_server.calls_to("sendSticker"), what="sendSticker")

    asyncio.run(scenario())
    user = users.find_user(res.db, "telegram", str(telegram_user["id"]))
    assert user is not None and user.consent_at is not None
    pack = packs.list_packs(res.db, user.id)[0]
    assert pack.status == "published"
    s = telegram_server.sticker_set_json(pack.platform_set_name)
    assert [x["emoji"] for x in s["stickers"]] == ["😀", "😮", "😉"]
    assert all(x["is_video"] for x in s["stickers"]) and "thumbnail" in s
    assert pack.platform_set_name.endswith("_by_" + telegram_server.bot.username)
    assert [st_.platform_state for st_ in packs.list_stickers(res.db, pack.id)] == ["added"] * 3
    assert len(telegram_server.calls_to("uploadStickerFile")) == 3
    sel = selfies.latest_selfie(res.db, user.id)
    assert sel is not None and sel.expires_at is not None
    assert abs(sel.expires_at - sel.created_at - 24 * 3600) < 1


def test_bad_uploads_are_explained(res, telegram_server, telegram_user, selfie_png, faceless_png):
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            chat.photo(selfie_png)  # before consent
            await chat.reply_containing(message("consent_required")[:30])
            await consent(chat)
            chat.document(b"%PDF-1.4 not a picture", "cv.pdf")
            await chat.reply_containing(message("not_an_image"))
            before = len(telegram_server.calls_to("getFile"))
            chat.document(selfie_png, "huge.png", file_size=25 * 1024 * 1024)
            await chat.reply_containing("That file is too big (25.0 MB)")
            assert len(telegram_server.calls_to("getFile")) == before  # refused before downloading
            chat.photo(faceless_png)
            await chat.reply_containing(message("no_face"))

    asyncio.run(scenario())
    user = users.find_user(res.db, "telegram", str(telegram_user["id"]))
    assert selfies.latest_selfie(res.db, user.id) is None


def test_cancel_from_the_progress_message(res, telegram_server, telegram_user, selfie_png):
    add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            progress = await order_toon_pack(chat, selfie_png)
            chat.press(progress, buttons(progress)[text("cancel_button")])
            await chat.reply_containing(text("cancelled_ok"))

    asyncio.run(scenario())
    job = jobs.list_jobs(res.db, kind="make_pack")[0]
    assert job.status == "cancelled"
    assert packs.get_pack(res.db, job.payload["pack_id"]).status == "failed"


def test_delete_with_confirmation_erases_rows_blobs_and_sets(res, telegram_server, telegram_user, selfie_png,
                                                             sticker_files):
    style = add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> str:
        async with running_bot(res, telegram_server) as app:
            await consent(chat)
            chat.photo(selfie_png)
            await chat.reply_containing(text("selfie_ok"))
            user = users.find_user(res.db, "telegram", str(telegram_user["id"]))
            placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
            app.bot_data["notifier"].watch(placed.job_id, placed.pack.id, user)
            finish_job(res, placed.job_id, sticker_files)
            await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            name = packs.get_pack(res.db, placed.pack.id).platform_set_name
            chat.command("mypacks")
            listed = await chat.reply_containing(name)
            assert quality_summary(QUALITY, "slim") in listed["text"]
            chat.command("delete")
            confirm = await chat.reply_containing("Delete everything?")
            chat.press(confirm, buttons(confirm)[text("delete_no")])
            await chat.reply_containing(text("delete_kept"))
            assert telegram_server.sticker_set_json(name) is not None
            chat.command("delete")
            await wait_for(lambda: sum("Delete everything?" in t for t in chat.texts()) == 1
                           and len([m for m in chat.bot_messages() if "Delete everything?" in m.get("text", "")]) == 1,
                           what="second confirmation")
            confirm = [m for m in chat.bot_messages() if "Delete everything?" in m.get("text", "")][-1]
            chat.press(confirm, buttons(confirm)[text("delete_yes")])
            await chat.reply_containing("sticker set(s)")
            return name

    name = asyncio.run(scenario())
    assert telegram_server.sticker_set_json(name) is None
    assert users.find_user(res.db, "telegram", str(telegram_user["id"])) is None
    assert jobs.list_jobs(res.db, kind="make_pack") == []
    # every blob only this user held is gone; the style exemplar (same bytes as the selfie) stays
    for v in sticker_files["videos"] + [sticker_files["thumb"]]:
        assert not res.blobs.exists(hashlib.sha256(v).hexdigest())
    assert res.blobs.exists(style.exemplar_digest)


def test_house_styles_admin_and_refusal(res, telegram_server, selfie_png):
    admin = telegram_server.add_user(tgu.user(5001, "Grace"))
    member = telegram_server.add_user(tgu.user(5002, "Bob"))
    group = telegram_server.add_chat(tgu.group_chat(-1001234, "Painters"))
    telegram_server.set_chat_member(group["id"], admin, "administrator")
    telegram_server.set_chat_member(group["id"], member, "member")
    a, m = Chat(telegram_server, admin, group), Chat(telegram_server, member, group)

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            img = a.photo(selfie_png)
            a.command("housestyle", "add neon", reply_to=img)
            await a.reply_containing("House style “neon” added")
            m.command("housestyle", "add other", reply_to=img)
            await m.reply_containing(message("not_admin"))
            m.command("housestyle", "remove neon")
            await wait_for(lambda: sum(message("not_admin") in t for t in m.texts()) == 2, what="second refusal")
            m.command("housestyle", "list")
            await m.reply_containing("House styles here: neon")
            a.command("housestyle", "bogus")
            await a.reply_containing("Usage:")

    asyncio.run(scenario())
    community = [s for s in st.list_styles(res.db, community_id=1, include_house=False)]
    assert [s.name for s in community] == ["neon"]
    assert st.find_style(res.db, "other", community[0].community_id) is None
    tune = jobs.list_jobs(res.db, kind="style_finetune")
    assert len(tune) == 1 and tune[0].priority == "batch"
    assert {c.params["user_id"] for c in telegram_server.calls_to("getChatMember")} == {5001, 5002}


def test_privacy_and_mypacks_answer(res, telegram_server, telegram_user):
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            chat.command("privacy")
            await chat.reply_containing("deleted 24 hours after upload")
            chat.command("mypacks")
            await chat.reply_containing(text("mypacks_none"))

    asyncio.run(scenario())


def test_own_style_upload_orders_with_that_image(res, telegram_server, telegram_user, selfie_png, faceless_png):
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            await consent(chat)
            chat.photo(selfie_png)
            styles_msg = await chat.reply_containing(text("selfie_ok"))
            assert list(buttons(styles_msg)) == [text("style_own_button")]  # no styles installed
            chat.press(styles_msg, buttons(styles_msg)[text("style_own_button")])
            prompt = await chat.reply_containing(text("style_own_prompt"))
            chat.photo(faceless_png, reply_to=prompt)  # same hygiene as a selfie
            await chat.reply_containing(message("style_no_face"))
            chat.photo(selfie_png, reply_to=prompt)
            strength_msg = await chat.reply_containing(text("style_own_ok"))
            data = buttons(strength_msg)[text("strength_subtle")]
            assert len(data.encode()) <= 64
            chat.press(strength_msg, data)
            await chat.reply_containing("about to start")
            chat.press(strength_msg, data)  # a second order while one is open
            await chat.reply_containing(message("job_active"))

    asyncio.run(scenario())
    [job] = jobs.list_jobs(res.db, kind="make_pack")
    assert job.payload["style_id"] is None and job.payload["strength"] == 0.35
    assert job.payload["exemplar_digest"] == hashlib.sha256(selfie_png).hexdigest()


def test_restart_while_the_job_runs_edits_the_same_message(res, telegram_server, telegram_user, selfie_png,
                                                          sticker_files):
    chat, progress = toon_order_before_a_stop(res, telegram_server, telegram_user, selfie_png)

    async def second_life() -> None:
        async with running_bot(res, telegram_server):
            job = jobs.list_jobs(res.db, kind="make_pack")[0]
            claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            jobs.set_progress(res.db, claimed.id, claimed.lease_token, "invert_3d", 0.5)
            edited = await chat.reply_containing("building your 3D head (50%)")
            assert edited["message_id"] == progress["message_id"]
            jobs.release(res.db, claimed.id, claimed.lease_token)
            finish_job(res, job.id, sticker_files)
            done = await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            assert done["message_id"] == progress["message_id"]
            await wait_for(lambda: deliveries.get_delivery(res.db, job.id) is None, what="the row deleted")

    n_before = len(chat.bot_messages())
    asyncio.run(second_life())
    assert not any(text("resumed") in t for t in chat.texts())
    assert len([m for m in chat.bot_messages() if "text" in m]) <= n_before  # no new text message
    [pack] = packs.list_packs(res.db, users.find_user(res.db, "telegram", str(telegram_user["id"])).id)
    assert pack.status == "published"
    assert len(telegram_server.sticker_set_json(pack.platform_set_name)["stickers"]) == 3


def test_restart_after_the_set_was_published_but_not_announced_announces_it(res, telegram_server, telegram_user,
                                                                           selfie_png, sticker_files):
    """A bot that published the set and stopped before telling its user: the restarted bot tells
    them in the same progress message and leaves the set as it is (nothing uploaded or added again)."""
    chat, progress = toon_order_before_a_stop(res, telegram_server, telegram_user, selfie_png)

    async def publish_then_stop(job_id: int) -> None:  # what the stopped bot did before telling anyone
        job = jobs.get_job(res.db, job_id)
        pack = packs.get_pack(res.db, int(job.payload["pack_id"]))
        core.materialize_result(res, pack, packs.result_of(job), "telegram_video")
        async with ExtBot(telegram_server.token, base_url=telegram_server.base_url,
                          base_file_url=telegram_server.base_file_url) as bot:
            await publish_pack(bot, res.db, res.blobs, pack.id, telegram_user["id"], bot_username=bot.username,
                               title="My 3D emoji")

    async def second_life(job_id: int) -> None:
        async with running_bot(res, telegram_server):
            done = await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            assert done["message_id"] == progress["message_id"]
            await wait_for(lambda: deliveries.get_delivery(res.db, job_id) is None, what="the row deleted")

    job = jobs.list_jobs(res.db, kind="make_pack")[0]
    finish_job(res, job.id, sticker_files)
    asyncio.run(publish_then_stop(job.id))
    set_changes = ("uploadStickerFile", "createNewStickerSet", "addStickerToSet", "replaceStickerInSet")
    before = {m: len(telegram_server.calls_to(m)) for m in set_changes}
    assert before["createNewStickerSet"] == 1
    asyncio.run(second_life(job.id))
    assert {m: len(telegram_server.calls_to(m)) for m in set_changes} == before
    pack = packs.get_pack(res.db, int(job.payload["pack_id"]))
    assert pack.status == "published"
    assert len(telegram_server.sticker_set_json(pack.platform_set_name)["stickers"]) == 3


def test_restart_while_a_group_job_runs_keeps_talking_in_the_group(res, telegram_server, telegram_user, selfie_png,
                                                                   sticker_files):
    add_global_style(res, "toon", selfie_png)
    group = telegram_server.add_chat(tgu.group_chat(-1007777, "Friends"))
    chat = Chat(telegram_server, telegram_user, group)
    private = Chat(telegram_server, telegram_user)
    seen: dict[str, dict] = {}

    async def first_life() -> None:
        async with running_bot(res, telegram_server):
            chat.command("start")
            welcome = await chat.reply_containing("Do you agree")
            chat.press(welcome, buttons(welcome)[text("consent_button")])
            thanks = await chat.reply_containing(text("consent_thanks"))
            chat.photo(selfie_png, reply_to=thanks)
            styles_msg = await chat.reply_containing(text("selfie_ok"))
            chat.press(styles_msg, buttons(styles_msg)["toon"])
            strength_msg = await chat.reply_containing("how strong")
            chat.press(strength_msg, buttons(strength_msg)[text("strength_full")])
            seen["progress"] = await chat.reply_containing("about to start")
        job = jobs.list_jobs(res.db, kind="make_pack")[0]
        ref = deliveries.get_delivery(res.db, job.id)
        assert (ref.chat_id, ref.message_id) == (str(group["id"]), str(seen["progress"]["message_id"]))

    async def second_life() -> None:
        async with running_bot(res, telegram_server):
            job = jobs.list_jobs(res.db, kind="make_pack")[0]
            claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            jobs.set_progress(res.db, claimed.id, claimed.lease_token, "invert_3d", 0.5)
            edited = await chat.reply_containing("building your 3D head (50%)")
            assert edited["message_id"] == seen["progress"]["message_id"]
            assert text("cancel_button") in buttons(edited)  # still cancellable from the same message
            jobs.release(res.db, claimed.id, claimed.lease_token)
            finish_job(res, job.id, sticker_files)
            done = await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            assert done["message_id"] == seen["progress"]["message_id"]
            (sticker,) = await wait_for(lambda: telegram_server.calls_to("sendSticker"), what="sendSticker")
            assert int(sticker.params["chat_id"]) == group["id"]  # the result arrives in the group
            await wait_for(lambda: deliveries.get_delivery(res.db, job.id) is None, what="the row deleted")

    asyncio.run(first_life())
    asyncio.run(second_life())
    assert private.bot_messages() == []  # nothing went to the private chat
    [pack] = packs.list_packs(res.db, users.find_user(res.db, "telegram", str(telegram_user["id"])).id)
    assert pack.status == "published"


def test_restart_after_the_progress_message_vanished_says_so_in_a_new_one(res, telegram_server, telegram_user,
                                                                         selfie_png, sticker_files):
    add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    async def first_life() -> None:
        async with running_bot(res, telegram_server):
            await order_toon_pack(chat, selfie_png)

    async def second_life() -> None:
        async with running_bot(res, telegram_server):
            job = jobs.list_jobs(res.db, kind="make_pack")[0]
            await chat.reply_containing(text("resumed"))
            fresh = next(m for m in chat.bot_messages() if text("resumed") in m.get("text", ""))
            await wait_for(lambda: deliveries.get_delivery(res.db, job.id).message_id == str(fresh["message_id"]),
                           what="the new progress message recorded")
            finish_job(res, job.id, sticker_files)
            await chat.reply_containing("https://t.me/addstickers/", timeout=30)

    asyncio.run(first_life())
    job = jobs.list_jobs(res.db, kind="make_pack")[0]
    deliveries.update_delivery(res.db, job.id, message_id="999999")  # e.g. deleted by the user
    asyncio.run(second_life())
    [pack] = packs.list_packs(res.db, users.find_user(res.db, "telegram", str(telegram_user["id"])).id)
    assert pack.status == "published"


def test_group_member_who_never_started_the_bot_is_told_how(res, telegram_server, selfie_png, sticker_files):
    add_global_style(res, "toon", selfie_png)
    eve = telegram_server.add_user(tgu.user(6001, "Eve"), started=False)
    group = telegram_server.add_chat(tgu.group_chat(-1005555, "Friends"))
    chat = Chat(telegram_server, eve, group)

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            chat.photo(selfie_png)  # a photo not addressed to the bot is ignored in groups
            chat.command("start")
            welcome = await chat.reply_containing("Do you agree")
            chat.press(welcome, buttons(welcome)[text("consent_button")])
            thanks = await chat.reply_containing(text("consent_thanks"))
            chat.photo(selfie_png, reply_to=thanks)
            styles_msg = await chat.reply_containing(text("selfie_ok"))
            chat.press(styles_msg, buttons(styles_msg)["toon"])
            strength_msg = await chat.reply_containing("how strong")
            chat.press(strength_msg, buttons(strength_msg)[text("strength_full")])
            await chat.reply_containing("about to start")
            finish_job(res, jobs.list_jobs(res.db, kind="make_pack")[0].id, sticker_files)
            await chat.reply_containing("@" + telegram_server.bot.username, timeout=30)

    asyncio.run(scenario())
    assert not any(message("consent_required")[:20] in t for t in chat.texts())
    assert telegram_server.calls_to("uploadStickerFile")[0].status == 400


def test_unexpected_failure_is_answered_politely(res, telegram_server, telegram_user, selfie_png):
    chat = Chat(telegram_server, telegram_user)
    telegram_server.inject("getFile", "error", error_code=500, description="boom")

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            await consent(chat)
            chat.photo(selfie_png)
            await chat.reply_containing(message("internal"))
            chat.photo(selfie_png)  # the bot is still alive
            await chat.reply_containing(text("selfie_ok"))

    asyncio.run(scenario())


def test_run_entry_point_serves_until_stopped(tmp_path, telegram_server, telegram_user):
    """``run(cfg, stop_event)`` as ``emoji3d serve`` calls it: opens its own database,
    answers, and returns once the event is set."""
    import dataclasses
    import threading

    from bots.telegram.app import run
    from emoji3d.config import Config, PathsConfig, Secret

    cfg = dataclasses.replace(Config(), root=tmp_path, paths=PathsConfig(data_dir=str(tmp_path / "data")),
                              telegram_token=Secret(telegram_server.token))
    (tmp_path / "data").mkdir()
    stop = threading.Event()
    opts = AppOptions(base_url=telegram_server.base_url, base_file_url=telegram_server.base_file_url,
                      long_poll_timeout_s=1)
    t = threading.Thread(target=run, args=(cfg, stop, opts), daemon=True)
    t.start()
    chat = Chat(telegram_server, telegram_user)
    chat.command("privacy")

    async def wait() -> None:
        await chat.reply_containing("What I store")

    try:
        asyncio.run(wait())
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()
    assert [c["command"] for c in telegram_server.commands()][:2] == ["start", "privacy"]
    assert (tmp_path / "data" / "emoji3d.sqlite3").exists()


def test_result_without_sticker_files_sends_stills_and_says_why(res, telegram_server, telegram_user, selfie_png):
    """Today's engine renders stills only (PackResult.missing names what is absent)."""
    from emoji3d.orders import PackResult

    style = add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server) as app:
            await consent(chat)
            user = users.find_user(res.db, "telegram", str(telegram_user["id"]))
            core.accept_selfie(res, user, selfie_png)
            placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
            app.bot_data["notifier"].watch(placed.job_id, placed.pack.id, user)
            job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            render = res.blobs.put_bytes(selfie_png)
            result = PackResult(pack_id=placed.pack.id, preset="pretrained", renders=[render],
                                missing=["animated sticker frames"])
            make_ready(res.db, job.payload["pack_id"], job.id)  # as the engine does before completing
            jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
            await chat.reply_containing("cannot make sticker files yet (animated sticker frames)")
            await wait_for(lambda: telegram_server.calls_to("sendPhoto"), what="the still render")

    asyncio.run(scenario())
    assert not telegram_server.calls_to("createNewStickerSet")
    assert packs.list_packs(res.db, users.find_user(res.db, "telegram", str(telegram_user["id"])).id)[0].status \
        == "published"


def test_a_selfie_after_an_own_style_reply_is_a_selfie(res, telegram_server, telegram_user, selfie_png):
    """Issue 16 item 2: the style came as a reply to the prompt; the next photo,
    not a reply, is the user's new selfie, not another style image."""
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            await consent(chat)
            chat.photo(selfie_png)
            styles_msg = await chat.reply_containing(text("selfie_ok"))
            chat.press(styles_msg, buttons(styles_msg)[text("style_own_button")])
            prompt = await chat.reply_containing(text("style_own_prompt"))
            chat.photo(selfie_png, reply_to=prompt)
            strength_msg = await chat.reply_containing(text("style_own_ok"))
            chat.press(strength_msg, buttons(strength_msg)[text("strength_full")])
            await chat.reply_containing("about to start")
            before = len(chat.bot_messages())
            chat.photo(selfie_png)  # a new selfie, sent normally
            await wait_for(lambda: len(chat.bot_messages()) > before, what="an answer to the new photo")
            assert text("selfie_ok") in chat.bot_messages()[before]["text"]
            assert not any(text("style_own_ok") in t for t in chat.texts()[before:])

    asyncio.run(scenario())


def test_a_new_pack_whose_first_publish_failed_is_announced_as_new(res, telegram_server, telegram_user, selfie_png,
                                                                  sticker_files):
    """Issue 16 item 3: the set name is recorded before the set exists, so a
    retried first publish must still say "ready", not "updated"."""
    style = add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)
    telegram_server.inject("createNewStickerSet", "error", error_code=500, description="Internal Server Error")

    async def scenario() -> None:
        async with running_bot(res, telegram_server) as app:
            await consent(chat)
            user = users.find_user(res.db, "telegram", str(telegram_user["id"]))
            core.accept_selfie(res, user, selfie_png)
            placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
            app.bot_data["notifier"].watch(placed.job_id, placed.pack.id, user)
            finish_job(res, placed.job_id, sticker_files)
            await chat.reply_containing("https://t.me/addstickers/", timeout=30)

    asyncio.run(scenario())
    assert [c.status for c in telegram_server.calls_to("createNewStickerSet")] == [500, 200]
    (done,) = [t for t in chat.texts() if "https://t.me/addstickers/" in t]
    assert done.startswith(text("done", link="")) and "updated" not in done


def test_a_pack_missing_a_sticker_says_so(res, telegram_server, telegram_user, selfie_png, sticker_files):
    """Issue 16 item 8 (its Telegram half): the notes of what could not be made reach the user."""
    from emoji3d.orders import PackResult, StickerFiles

    style = add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)
    note = "the smile sticker needs the smile expression: the boundary file has no 'smile' direction"

    async def scenario() -> None:
        async with running_bot(res, telegram_server) as app:
            await consent(chat)
            user = users.find_user(res.db, "telegram", str(telegram_user["id"]))
            core.accept_selfie(res, user, selfie_png)
            placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
            app.bot_data["notifier"].watch(placed.job_id, placed.pack.id, user)
            job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            stickers = [StickerFiles(i, f"s{i}", "😀", {"telegram_video": res.blobs.put_bytes(v)})
                        for i, v in enumerate(sticker_files["videos"][:2])]
            result = PackResult(pack_id=placed.pack.id, preset="pretrained", stickers=stickers, missing=[note])
            make_ready(res.db, job.payload["pack_id"], job.id)
            jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
            done = await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            assert text("pack_partial", missing=note) in done["text"]

    asyncio.run(scenario())


def test_about_to_start_is_said_once(res, telegram_server, telegram_user, selfie_png):
    """Issue 16 item 8: the first progress view is shown by the order, not again by the notifier."""
    add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server):
            await order_toon_pack(chat, selfie_png)
            await asyncio.sleep(0.5)  # many notifier ticks

    asyncio.run(scenario())
    said = [c for c in telegram_server.calls if c.method in ("sendMessage", "editMessageText")
            and text("queued_soon") in str(c.params.get("text", ""))]
    assert len(said) == 1


def test_first_look_stills_arrive_once_each_before_the_pack(res, telegram_server, telegram_user, selfie_png,
                                                            sticker_files):
    """The engine records a still after pivotal tuning and after stage 5; the bot sends each as one photo."""
    from emoji3d.orders import first_look_key
    from storage import artifacts

    style = add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    def photo_captions() -> list[str]:
        return [c.params.get("caption", "") for c in telegram_server.calls_to("sendPhoto")]

    async def scenario() -> None:
        async with running_bot(res, telegram_server) as app:
            await consent(chat)
            chat.photo(selfie_png)
            await chat.reply_containing(text("selfie_ok"))
            user = users.find_user(res.db, "telegram", str(telegram_user["id"]))
            placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
            app.bot_data["notifier"].watch(placed.job_id, placed.pack.id, user)
            claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            jobs.set_progress(res.db, claimed.id, claimed.lease_token, "dual_branch", 0.5)
            artifacts.put_artifact(res.db, first_look_key(claimed.id, "photo_real"), "first_look",
                                   res.blobs.put_bytes(sticker_files["thumb"]), user.id)
            await wait_for(lambda: photo_captions() == [text("first_look_photo_real")], what="first photo")
            artifacts.put_artifact(res.db, first_look_key(claimed.id, "stylized"), "first_look",
                                   res.blobs.put_bytes(selfie_png), user.id)
            await wait_for(lambda: len(photo_captions()) == 2, what="second photo")
            assert photo_captions()[1] == text("first_look_stylized")
            await asyncio.sleep(0.3)  # more ticks: nothing is sent again
            assert len(photo_captions()) == 2
            jobs.release(res.db, claimed.id, claimed.lease_token)
            finish_job(res, placed.job_id, sticker_files)
            await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            assert len(photo_captions()) == 2

    asyncio.run(scenario())


def test_a_finished_pack_offers_a_rerender_at_another_strength(res, telegram_server, telegram_user, selfie_png,
                                                               sticker_files):
    from emoji3d.orders import RERENDER_KIND, PackResult, StickerFiles

    style = add_global_style(res, "toon", selfie_png)
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server) as app:
            await consent(chat)
            chat.photo(selfie_png)
            await chat.reply_containing(text("selfie_ok"))
            user = users.find_user(res.db, "telegram", str(telegram_user["id"]))
            placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
            app.bot_data["notifier"].watch(placed.job_id, placed.pack.id, user)
            job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            videos = [res.blobs.put_bytes(v) for v in sticker_files["videos"]]
            result = PackResult(pack_id=placed.pack.id, preset="slim", avatar=res.blobs.put_bytes(b"avatar"),
                                stickers=[StickerFiles(i, f"s{i}", "😀", {"telegram_video": d})
                                          for i, d in enumerate(videos)])
            make_ready(res.db, placed.pack.id)
            jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
            done = await chat.reply_containing("https://t.me/addstickers/", timeout=30)
            offered = buttons(done)
            assert {text("rerender_button", strength=text("strength_subtle")),
                    text("rerender_button", strength=text("strength_medium"))} <= set(offered)
            assert text("rerender_button", strength=text("strength_full")) not in offered  # not "full" again
            chat.press(done, offered[text("rerender_button", strength=text("strength_subtle"))])
            rerender = await wait_for(lambda: jobs.list_jobs(res.db, kind=RERENDER_KIND), what="re-render job")
            assert rerender[0].payload["strength"] == 0.35 and rerender[0].payload["source_job_id"] == job.id
            claimed = jobs.claim(res.db, "eng", 60, kinds=[RERENDER_KIND])
            again = PackResult(pack_id=placed.pack.id, preset="slim", avatar=result.avatar,
                               stickers=[StickerFiles(0, "s0", "😀", {"telegram_video": videos[1]})])
            assert packs.mark_rerendered(res.db, placed.pack.id, claimed.id, 0.35)  # as the engine does
            jobs.complete(res.db, claimed.id, claimed.lease_token, again.to_dict(), again.blob_digests())
            await chat.reply_containing(text("done_updated", link="").strip(), timeout=30)

    asyncio.run(scenario())
