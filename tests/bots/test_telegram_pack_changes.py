"""Changing a finished Telegram pack against the fake Bot API: retry with another seed, another sticker
selection (the set loses and gains stickers), a failed re-render that leaves the published set alone, remakes
and re-renders followed across a bot restart, and a scheduled regeneration announced as an update."""
from __future__ import annotations

import asyncio

import pytest

from bots import core
from emoji3d.errors import AvatarGone
from emoji3d.orders import JOB_KIND, REGENERATE_KIND, RERENDER_KIND, PackResult, StickerFiles
from emoji3d.texts import message, text
from storage import deliveries, jobs, packs, users
from tests.bots.conftest import QUALITY, wait_for
from tests.bots.test_telegram_flow import Chat, add_global_style, buttons, consent, running_bot
from tests.lifecycle import make_ready

pytestmark = [pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning"),
              pytest.mark.timeout(120)]


def complete(res, kind: str, pack_id: int, names: list[str], videos: list[str], *, avatar: str | None,
             quality: dict | None = None) -> jobs.Job:
    """Play the engine for one job of ``kind``: stickers ``names`` with the ``videos`` blobs."""
    job = jobs.claim(res.db, "eng", 60, kinds=[kind])
    result = PackResult(pack_id=pack_id, preset="slim", avatar=avatar, quality=dict(quality or {}),
                        stickers=[StickerFiles(i, n, "😀", {"telegram_video": d})
                                  for i, (n, d) in enumerate(zip(names, videos))])
    if kind == RERENDER_KIND:
        assert packs.mark_rerendered(res.db, pack_id, job.id, job.payload["strength"])  # as the engine does
    else:
        make_ready(res.db, pack_id, job.id)
    jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
    return job


async def delivered_pack(res, chat, app, selfie_png, videos, names, *, quality=None):
    """A user's published pack made of ``names``; returns (user, pack id, make job, the done message)."""
    style = add_global_style(res, "toon", selfie_png)
    await consent(chat)
    chat.photo(selfie_png)
    await chat.reply_containing(text("selfie_ok"))
    user = users.find_user(res.db, "telegram", str(chat.user["id"]))
    placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
    app.bot_data["notifier"].watch(placed.job_id, placed.pack.id, user)
    job = complete(res, JOB_KIND, placed.pack.id, names, videos, avatar=res.blobs.put_bytes(b"avatar"),
                   quality=quality)
    done = await chat.reply_containing("https://t.me/addstickers/", timeout=30)
    await wait_for(lambda: packs.get_pack(res.db, placed.pack.id).status == packs.PUBLISHED, what="published")
    return user, placed.pack.id, job, done


def set_files(server, res, pack_id: int) -> list[str]:
    got = server.sticker_set_json(packs.get_pack(res.db, pack_id).platform_set_name)
    return [s["file_unique_id"] for s in got["stickers"]]


def test_a_weak_pack_offers_a_retry_with_another_seed_that_replaces_its_stickers(res, telegram_server,
                                                                                 telegram_user, selfie_png,
                                                                                 sticker_files):
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server) as app:
            videos = [res.blobs.put_bytes(v) for v in sticker_files["videos"]]
            user, pack_id, job, done = await delivered_pack(res, chat, app, selfie_png, videos[:2], ["turn", "smile"],
                                                            quality=QUALITY)
            rows = done["reply_markup"]["inline_keyboard"]
            assert rows[0][0]["text"] == text("retry_button")  # weak: the retry comes first
            before = set_files(telegram_server, res, pack_id)
            chat.press(done, rows[0][0]["callback_data"])
            chat.press(done, rows[0][0]["callback_data"])  # a double click is one job
            retry = await wait_for(lambda: [j for j in jobs.list_jobs(res.db, kind=JOB_KIND) if j.id != job.id],
                                   what="the retry job")
            await asyncio.sleep(0.3)
            assert len(jobs.list_jobs(res.db, kind=JOB_KIND)) == 2
            (retry,) = retry
            assert retry.payload["seed"] == job.payload["seed"] + 1 and retry.payload["pack_id"] == pack_id
            assert retry.payload["regenerate"] and retry.payload["selfie_digest"] == job.payload["selfie_digest"]
            assert retry.idempotency_key != job.idempotency_key
            complete(res, JOB_KIND, pack_id, ["turn", "smile"], [videos[2], videos[0]], avatar=None)
            await chat.reply_containing(text("done_updated", link="").strip(), timeout=30)
            await wait_for(lambda: packs.get_pack(res.db, pack_id).status == packs.PUBLISHED, what="republished")
            after = set_files(telegram_server, res, pack_id)
            assert len(after) == 2 and after != before  # the same set, its stickers replaced
            assert packs.get_pack(res.db, pack_id).job_id == retry.id

    asyncio.run(scenario())


def test_choosing_stickers_rerenders_and_the_set_loses_the_dropped_one(res, telegram_server, telegram_user,
                                                                       selfie_png, sticker_files):
    chat = Chat(telegram_server, telegram_user)
    names = [e.name for e in res.cfg.pack.stickers][:3]

    async def scenario() -> None:
        async with running_bot(res, telegram_server) as app:
            videos = [res.blobs.put_bytes(v) for v in sticker_files["videos"]]
            user, pack_id, job, done = await delivered_pack(res, chat, app, selfie_png, videos, names)
            assert len(set_files(telegram_server, res, pack_id)) == 3
            chat.press(done, buttons(done)[text("stickers_button")])
            chooser = await chat.reply_containing(text("stickers_choose", apply=text("stickers_apply")))
            offered = buttons(chooser)
            assert text("sticker_chosen", name=names[1]) in offered  # the pack's stickers are preselected
            assert text("sticker_not_chosen", name=res.cfg.pack.stickers[3].name) in offered
            chat.press(chooser, offered[text("sticker_chosen", name=names[1])])  # drop the second one
            await wait_for(lambda: text("sticker_not_chosen", name=names[1]) in buttons(
                next(m for m in chat.bot_messages() if m["message_id"] == chooser["message_id"])), what="toggled")
            chooser = next(m for m in chat.bot_messages() if m["message_id"] == chooser["message_id"])
            chat.press(chooser, buttons(chooser)[text("stickers_apply")])
            (rr,) = await wait_for(lambda: jobs.list_jobs(res.db, kind=RERENDER_KIND), what="re-render job")
            assert rr.payload["stickers"] == [names[0], names[2]] and rr.payload["strength"] == 1.0
            assert packs.get_pack(res.db, pack_id).status == packs.PUBLISHED  # untouched while it runs
            complete(res, RERENDER_KIND, pack_id, [names[0], names[2]], [videos[0], videos[2]], avatar=None)
            await chat.reply_containing(text("done_updated", link="").strip(), timeout=30)
            await wait_for(lambda: len(set_files(telegram_server, res, pack_id)) == 2, what="the set shrank")
            assert telegram_server.calls_to("deleteStickerFromSet")
            assert [s.idx for s in packs.list_stickers(res.db, pack_id)] == [0, 1]
            # the bot tells the user first, then records the pack as published (a crash between them delivers again)
            await wait_for(lambda: packs.get_pack(res.db, pack_id).status == packs.PUBLISHED, what="published")
            lines = core.my_packs(res, user)
            assert lines[0].pack.status == packs.PUBLISHED and lines[0].pack.job_id == rr.id

    asyncio.run(scenario())


def test_a_failed_rerender_keeps_the_published_pack_and_says_so(res, telegram_server, telegram_user, selfie_png,
                                                                sticker_files):
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server) as app:
            videos = [res.blobs.put_bytes(v) for v in sticker_files["videos"]]
            user, pack_id, job, done = await delivered_pack(res, chat, app, selfie_png, videos[:2], ["turn", "smile"])
            before = set_files(telegram_server, res, pack_id)
            chat.press(done, buttons(done)[text("rerender_button", strength=text("strength_subtle"))])
            (rr,) = await wait_for(lambda: jobs.list_jobs(res.db, kind=RERENDER_KIND), what="re-render job")
            claimed = jobs.claim(res.db, "eng", 60, kinds=[RERENDER_KIND])
            jobs.fail(res.db, claimed.id, claimed.lease_token, "avatar expired", retryable=False,
                      error_key=AvatarGone.key)
            await chat.reply_containing(text("rerender_failed", reason=message(AvatarGone.key)), timeout=30)
            pack = packs.get_pack(res.db, pack_id)
            assert (pack.status, pack.job_id, pack.strength) == (packs.PUBLISHED, job.id, 1.0)
            assert set_files(telegram_server, res, pack_id) == before
            assert "failed" not in core.my_packs(res, user)[0].pack.status

    asyncio.run(scenario())


def test_a_failed_retry_keeps_the_published_pack_and_says_so(res, telegram_server, telegram_user, selfie_png,
                                                             sticker_files):
    chat = Chat(telegram_server, telegram_user)

    async def scenario() -> None:
        async with running_bot(res, telegram_server) as app:
            videos = [res.blobs.put_bytes(v) for v in sticker_files["videos"]]
            user, pack_id, job, done = await delivered_pack(res, chat, app, selfie_png, videos[:2], ["turn", "smile"],
                                                            quality=QUALITY)
            before = set_files(telegram_server, res, pack_id)
            chat.press(done, buttons(done)[text("retry_button")])
            claimed = await wait_for(lambda: jobs.claim(res.db, "eng", 60, kinds=[JOB_KIND]), what="the retry job")
            assert packs.get_pack(res.db, pack_id).status == packs.PUBLISHED  # untouched while it runs
            assert not packs.mark_rendering(res.db, pack_id)  # as the engine tries: a made pack stays made
            jobs.fail(res.db, claimed.id, claimed.lease_token, "CUDA error", retryable=False, error_key="internal")
            await chat.reply_containing(text("remake_failed", reason=message("internal")), timeout=30)
            pack = packs.get_pack(res.db, pack_id)
            assert (pack.status, pack.job_id) == (packs.PUBLISHED, job.id)
            assert set_files(telegram_server, res, pack_id) == before
            assert core.my_packs(res, user)[0].pack.status == packs.PUBLISHED
            # the pack can still be changed: a retry again (the same seed, a new attempt) is offered and placed
            chat.press(done, buttons(done)[text("retry_button")])
            again = await wait_for(lambda: [j for j in jobs.list_jobs(res.db, kind=JOB_KIND)
                                            if j.status == "queued"], what="a new retry job")
            assert again[0].payload["seed"] == claimed.payload["seed"] and again[0].id != claimed.id

    asyncio.run(scenario())


def said(server, fragment: str) -> int:
    """How many times the bot sent or edited a text containing ``fragment``."""
    return sum(1 for c in server.calls_to("sendMessage") + server.calls_to("editMessageText")
               if fragment in str(c.params.get("text", "")))


async def press_retry(res, chat, done, job) -> tuple[int, int]:
    """Press the delivered pack's retry button: (the retry job's id, its progress message's id) once the
    bot has recorded that message in the retry's delivery row."""
    chat.press(done, buttons(done)[text("retry_button")])
    retry = await wait_for(lambda: [j for j in jobs.list_jobs(res.db, kind=JOB_KIND) if j.id != job.id],
                           what="the retry job")
    ref = await wait_for(lambda: (r := deliveries.get_delivery(res.db, retry[0].id)) and r.message_id and r,
                         what="its progress message recorded")
    return retry[0].id, int(ref.message_id)


def test_a_retry_that_fails_while_the_bot_is_down_is_reported_once_after_the_restart(
        res, telegram_server, telegram_user, selfie_png, sticker_files):
    """The pack points at its old job while the remake runs, so only the delivery row remembers it."""
    chat = Chat(telegram_server, telegram_user)
    seen: dict = {}

    async def first_life() -> None:
        async with running_bot(res, telegram_server) as app:
            videos = [res.blobs.put_bytes(v) for v in sticker_files["videos"]]
            user, pack_id, job, done = await delivered_pack(res, chat, app, selfie_png, videos[:2], ["turn", "smile"],
                                                            quality=QUALITY)
            seen.update(pack_id=pack_id, job=job, before=set_files(telegram_server, res, pack_id))
            _, seen["progress_id"] = await press_retry(res, chat, done, job)

    async def second_life() -> None:
        async with running_bot(res, telegram_server):
            failed = text("remake_failed", reason=message("internal"))
            await chat.reply_containing(failed, timeout=15)
            await asyncio.sleep(0.5)  # a second rescan or tick must not say it again
            assert said(telegram_server, failed) == 1

    async def third_life() -> None:  # nothing left to say
        async with running_bot(res, telegram_server):
            await asyncio.sleep(0.5)

    asyncio.run(first_life())
    # the engine fails the retry while no bot runs
    claimed = jobs.claim(res.db, "eng", 60, kinds=[JOB_KIND])
    assert claimed.payload["regenerate"] and claimed.payload["pack_id"] == seen["pack_id"]
    jobs.fail(res.db, claimed.id, claimed.lease_token, "CUDA error", retryable=False, error_key="internal")
    asyncio.run(second_life())
    edited = next(m for m in chat.bot_messages() if m["message_id"] == seen["progress_id"])
    assert text("remake_failed", reason=message("internal")) in edited["text"]  # the retry's own message
    pack = packs.get_pack(res.db, seen["pack_id"])
    assert (pack.status, pack.job_id) == (packs.PUBLISHED, seen["job"].id)
    assert set_files(telegram_server, res, seen["pack_id"]) == seen["before"]
    asyncio.run(third_life())
    assert said(telegram_server, text("remake_failed", reason=message("internal"))) == 1


def test_a_rerender_running_across_a_restart_is_followed_and_delivered_once(res, telegram_server, telegram_user,
                                                                           selfie_png, sticker_files):
    chat = Chat(telegram_server, telegram_user)
    seen: dict = {}

    async def first_life() -> None:
        async with running_bot(res, telegram_server) as app:
            videos = [res.blobs.put_bytes(v) for v in sticker_files["videos"]]
            user, pack_id, job, done = await delivered_pack(res, chat, app, selfie_png, videos[:2], ["turn", "smile"])
            seen.update(pack_id=pack_id, videos=videos)
            chat.press(done, buttons(done)[text("rerender_button", strength=text("strength_subtle"))])
            (seen["rr"],) = await wait_for(lambda: jobs.list_jobs(res.db, kind=RERENDER_KIND), what="re-render job")
            await wait_for(lambda: deliveries.get_delivery(res.db, seen["rr"].id), what="its delivery row")
            seen["claimed"] = jobs.claim(res.db, "eng", 60, kinds=[RERENDER_KIND])

    async def second_life() -> None:
        async with running_bot(res, telegram_server):
            claimed = seen["claimed"]
            jobs.set_progress(res.db, claimed.id, claimed.lease_token, "render", 0.5)
            progress = await chat.reply_containing("(50%)", timeout=15)  # followed after the restart
            assert packs.get_pack(res.db, seen["pack_id"]).status == packs.PUBLISHED
            jobs.release(res.db, claimed.id, claimed.lease_token)
            complete(res, RERENDER_KIND, seen["pack_id"], ["turn"], [seen["videos"][2]], avatar=None)
            await wait_for(lambda: text("done_updated", link="").strip()
                           in next(m for m in chat.bot_messages()
                                   if m["message_id"] == progress["message_id"]).get("text", ""),
                           what="the same message says updated")
            await wait_for(lambda: packs.get_pack(res.db, seen["pack_id"]).status == packs.PUBLISHED,
                           what="republished")
            await asyncio.sleep(0.5)
            assert said(telegram_server, text("done_updated", link="").strip()) == 1

    asyncio.run(first_life())
    asyncio.run(second_life())
    pack = packs.get_pack(res.db, seen["pack_id"])
    assert (pack.status, pack.job_id, pack.strength) == (packs.PUBLISHED, seen["rr"].id, seen["rr"].payload["strength"])
    assert len(set_files(telegram_server, res, seen["pack_id"])) == 1


def test_a_scheduled_regeneration_is_announced_as_an_update(res, telegram_server, telegram_user, selfie_png,
                                                            sticker_files):
    """The scheduler's ``regenerate_pack`` payload names only the pack: the kind says it is a remake."""
    from shell.scheduler import regenerate_outdated_packs

    chat = Chat(telegram_server, telegram_user)
    seen: dict = {}

    async def first_life() -> None:
        async with running_bot(res, telegram_server) as app:
            videos = [res.blobs.put_bytes(v) for v in sticker_files["videos"]]
            user, pack_id, job, done = await delivered_pack(res, chat, app, selfie_png, videos[:2], ["turn", "smile"])
            seen.update(pack_id=pack_id, videos=videos)

    async def second_life() -> None:
        async with running_bot(res, telegram_server):
            await chat.reply_containing(text("done_updated", link="").strip(), timeout=15)
            await wait_for(lambda: packs.get_pack(res.db, seen["pack_id"]).status == packs.PUBLISHED,
                           what="republished")

    asyncio.run(first_life())
    (regen_id,) = regenerate_outdated_packs(res.db, {}, "999.0")  # as the scheduler's action does
    assert jobs.get_job(res.db, regen_id).kind == REGENERATE_KIND
    complete(res, REGENERATE_KIND, seen["pack_id"], ["turn", "smile"], [seen["videos"][2], seen["videos"][0]],
             avatar=None)
    asyncio.run(second_life())
    assert said(telegram_server, text("done", link="").strip()) == 1  # the first make's only
    assert packs.get_pack(res.db, seen["pack_id"]).job_id == regen_id


def engine_finishes(res, claimed: jobs.Job, pack_id: int, names: list[str], videos: list[str]) -> bool:
    """Play the engine's last steps for a claimed remake: move the pack (as ``engine.tasks`` does; False when
    the pack keeps another job's result), then record the success either way. Returns what the pack did."""
    result = PackResult(pack_id=pack_id, preset="slim", avatar=None,
                        stickers=[StickerFiles(i, n, "😀", {"telegram_video": d})
                                  for i, (n, d) in enumerate(zip(names, videos))])
    moved = packs.mark_made(res.db, pack_id, claimed.id)
    jobs.complete(res.db, claimed.id, claimed.lease_token, result.to_dict(), result.blob_digests())
    return moved


@pytest.mark.parametrize("first", ["retry", "regeneration"])
def test_a_retry_overtaken_by_a_newer_remake_while_the_bot_is_down_says_so_and_the_newer_one_is_published(
        res, telegram_server, telegram_user, selfie_png, sticker_files, first):
    """A user's retry and a later scheduled regeneration of the same pack both succeed while no bot runs, in
    either order: the pack keeps the newer order's result, which is published as an update; the retry's own
    progress message says it was not published; nothing is left to resume."""
    from shell.scheduler import regenerate_outdated_packs

    chat = Chat(telegram_server, telegram_user)
    seen: dict = {}

    async def first_life() -> None:
        async with running_bot(res, telegram_server) as app:
            videos = [res.blobs.put_bytes(v) for v in sticker_files["videos"]]
            user, pack_id, job, done = await delivered_pack(res, chat, app, selfie_png, videos[:2], ["turn", "smile"],
                                                            quality=QUALITY)
            seen.update(pack_id=pack_id, videos=videos)
            seen["retry"], seen["progress_id"] = await press_retry(res, chat, done, job)

    async def second_life() -> None:
        async with running_bot(res, telegram_server):
            await chat.reply_containing(text("done_updated", link="").strip(), timeout=15)
            await wait_for(lambda: text("remake_outdated") in next(
                m for m in chat.bot_messages() if m["message_id"] == seen["progress_id"]).get("text", ""),
                what="the retry's own message says it was not published")
            await wait_for(lambda: deliveries.get_delivery(res.db, seen["retry"]) is None, what="its row deleted")
            await asyncio.sleep(0.5)  # a second rescan or tick must not say anything again

    async def third_life() -> None:  # nothing left to say
        async with running_bot(res, telegram_server) as app:
            await asyncio.sleep(0.5)
            assert app.bot_data["notifier"].watches == {}

    asyncio.run(first_life())
    (regen_id,) = regenerate_outdated_packs(res.db, {}, "999.0")  # ordered after the retry
    retry = jobs.claim(res.db, "eng", 60, kinds=[JOB_KIND])
    regen = jobs.claim(res.db, "eng2", 60, kinds=[REGENERATE_KIND])
    assert (retry.id, regen.id) == (seen["retry"], regen_id)
    retry_files, regen_files = seen["videos"][2:3], [seen["videos"][1], seen["videos"][0]]
    if first == "retry":
        assert engine_finishes(res, retry, seen["pack_id"], ["turn"], retry_files)
        assert engine_finishes(res, regen, seen["pack_id"], ["smile", "turn"], regen_files)
    else:
        assert engine_finishes(res, regen, seen["pack_id"], ["smile", "turn"], regen_files)
        assert not engine_finishes(res, retry, seen["pack_id"], ["turn"], retry_files)  # the newer order is kept
    asyncio.run(second_life())
    pack = packs.get_pack(res.db, seen["pack_id"])
    assert (pack.status, pack.job_id) == (packs.PUBLISHED, regen_id)
    got = telegram_server.sticker_set_json(pack.platform_set_name)["stickers"]
    assert len(got) == 2  # the regeneration's two stickers, not the retry's one
    assert said(telegram_server, text("done_updated", link="").strip()) == 1
    assert said(telegram_server, text("remake_outdated")) == 1
    assert deliveries.undelivered_job_ids(res.db, "telegram") == []
    asyncio.run(third_life())
    assert said(telegram_server, text("remake_outdated")) == 1
    assert deliveries.list_deliveries(res.db, "telegram") == []
