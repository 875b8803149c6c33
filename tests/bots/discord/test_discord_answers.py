"""What a member sees, exactly: one answer per refused command, one "about to
start", sticker slots used to the last one after a 429 that landed, sticker
names with the member's display name, and a pack that lacks a sticker saying so
(issue 16, items 5-8), against the fake Discord REST API."""
from __future__ import annotations

import asyncio

import pytest

from emoji3d.orders import PackResult, StickerFiles
from emoji3d.texts import message, text
from storage import jobs, packs
from tests.bots.conftest import wait_for
from tests.bots.discord.conftest import EMOJIS, NAMES, bot_on_fake, finish_discord_job, run
from tests.bots.discord.test_discord_flow import (
    CALLBACK, FOLLOWUP, STICKERS, consented, create_and_deliver, create_payload, custom_ids, global_style, only_job,
    original,
)
from tests.lifecycle import make_ready

pytestmark = pytest.mark.timeout(120)

EDIT_ORIGINAL = "/webhooks/{application_id}/{token}/messages/{message_id}"


def _for(calls: list, token: str) -> list:
    return [c for c in calls if c.params.get("token") == token]


def test_a_refused_command_is_answered_once(res, selfie_png, faceless_png):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            # refused before deferring (the cooldown): one interaction response, no follow-up
            first = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(first)
            again = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(again)
            await asyncio.sleep(0.2)
            assert original(h, again)["content"].startswith("Please wait")
            assert len(_for(h.server.calls_to("POST", CALLBACK), again["token"])) == 1
            assert _for(h.server.calls_to("POST", FOLLOWUP), again["token"]) == []
            # refused after deferring (no face): one edit of the "thinking" response, no follow-up
            bot.forget_cooldown(int(w.member["user"]["id"]))
            for job in jobs.list_jobs(res.db, kind="make_pack"):
                jobs.cancel(res.db, job.id)
            noface = create_payload(h, w.member, faceless_png, style=str(style.id))
            await h.deliver(noface)
            await asyncio.sleep(0.2)
            assert original(h, noface)["content"] == message("no_face")
            assert len(_for(h.server.calls_to("PATCH", EDIT_ORIGINAL), noface["token"])) == 1
            assert _for(h.server.calls_to("POST", FOLLOWUP), noface["token"]) == []
            h.assert_no_errors()

    run(scenario())


def test_about_to_start_is_said_once(res, selfie_png):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            payload = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(payload)
            await asyncio.sleep(0.5)  # many notifier ticks (poll 0.03 s, no rate limit)
            edits = [c for c in _for(h.server.calls_to("PATCH", EDIT_ORIGINAL), payload["token"])
                     if text("queued_soon") in (c.json or {}).get("content", "")]
            assert len(edits) == 1
            h.assert_no_errors()

    run(scenario())


def test_a_429_that_landed_does_not_take_the_last_free_slot(res, selfie_png, discord_files):
    """Two free slots, three stickers, and the first create is rate limited after
    it took effect: discord.py's retry makes a duplicate that fills the slots.
    The duplicate goes first, then the refused sticker is tried again."""
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res, existing_stickers=3) as (h, w, bot):  # tier 0: 5 slots, 2 free
            _, fu = await create_and_deliver(h, w, res, selfie_png, discord_files, style)
            h.server.inject_rate_limit("POST", STICKERS, retry_after=0.02, lands=True)
            click = h.click(custom_ids(fu)[0], w.moderator, message=fu)
            await h.deliver(click)
            h.assert_no_errors()
            pack = packs.list_packs(res.db, only_job(res).user_id)[0]
            ours = sorted(s.payload["description"].rsplit(" ", 1)[-1] for s in h.server.stickers(w.guild_id)
                          if s.payload["description"].endswith(tuple(f"#{pack.id}.{i}" for i in range(3))))
            assert ours == [f"#{pack.id}.0", f"#{pack.id}.1"]
            assert len(h.server.stickers(w.guild_id)) == 5
            (body,) = h.server.followups(click["token"])
            assert body["content"] == text("discord_slots_full", limit=5, added=2, total=3)

    run(scenario())


def test_sticker_names_carry_the_members_display_name(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            nicknamed = {**w.member, "nick": "Bobby"}  # the server nickname is the display name there
            payload = create_payload(h, nicknamed, selfie_png, style=str(style.id))
            await h.deliver(payload)
            finish_discord_job(res, only_job(res).id, discord_files)
            (fu,) = await wait_for(lambda: h.server.followups(payload["token"]), what="the result")
            # the pack is marked published just after the follow-up: "Add to server" refuses it before
            await wait_for(lambda: packs.list_packs(res.db, only_job(res).user_id)[0].status == "published",
                           what="published")
            await h.deliver(h.click(custom_ids(fu)[0], w.moderator, message=fu))
            h.assert_no_errors()
            names = [c.form["name"] for c in h.server.calls_to("POST", STICKERS, ok_only=True)]
            assert names == [f"Bobby {n}" for n in NAMES]
            descriptions = [s.payload["description"] for s in h.server.stickers(w.guild_id)]
            assert all(d.startswith(text("discord_sticker_description", name="Bobby", expression="")[:12])
                       for d in descriptions)

    run(scenario())


def test_a_pack_missing_a_sticker_says_so(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)
    note = "the smile sticker needs the smile expression: the boundary file has no 'smile' direction"

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            payload = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(payload)
            job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            stickers = [StickerFiles(i, NAMES[i], EMOJIS[i], {"discord_sticker": res.blobs.put_bytes(data)})
                        for i, data in enumerate(discord_files["stickers"][:2])]
            result = PackResult(pack_id=job.payload["pack_id"], preset="pretrained", stickers=stickers,
                                missing=[note])
            make_ready(res.db, job.payload["pack_id"], job.id)
            jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
            (fu,) = await wait_for(lambda: h.server.followups(payload["token"]), what="the result")
            assert fu["content"].startswith(text("discord_done"))
            assert text("pack_partial", missing=note) in fu["content"]
            h.assert_no_errors()

    run(scenario())
