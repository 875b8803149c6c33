"""The real ``EmojiBot`` (discord.py 2.7 ``commands.Bot``) against the fake Discord
REST API: create flow, delivery, "Add to server", slots full → custom emoji,
a 429 on sticker creation, expired tokens, restarts (the stored interaction within
its window, DM after it), bad
attachments, autocomplete, house styles, consent, privacy, delete-my-data."""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import pytest

from bots.core import BotResources, give_consent, ensure_user
from emoji3d.texts import message, text
from storage import deliveries, jobs, packs, users
from storage import styles as st
from storage.communities import get_or_create_community
from tests.bots.conftest import make_resources, wait_for
from emoji3d.texts import quality_summary
from tests.bots.conftest import QUALITY
from tests.bots.discord.conftest import EMOJIS, bot_on_fake, finish_discord_job, run
from tests.fakes import discord_payloads as payloads
from tests.fakes.discord_harness import DiscordHarness, World
from tests.lifecycle import make_ready

pytestmark = pytest.mark.timeout(120)

CALLBACK = "/interactions/{interaction_id}/{token}/callback"
FOLLOWUP = "/webhooks/{application_id}/{token}"
STICKERS = "/guilds/{guild_id}/stickers"
EMOJI_ROUTE = "/guilds/{guild_id}/emojis"
CDN = "/cdn/attachments/{channel_id}/{attachment_id}/{filename}"


def uid(member: dict) -> str:
    return str(member["user"]["id"])


def consented(res: BotResources, member: dict) -> users.User:
    u = ensure_user(res, "discord", uid(member))
    give_consent(res, u)
    return users.get_user(res.db, u.id)


def global_style(res: BotResources, name: str, image: bytes) -> st.Style:
    return st.add_style(res.db, name, res.blobs.put_bytes(image), status="ready")


def create_payload(h: DiscordHarness, member: dict, selfie: bytes, *, style: str | None = None,
                   strength: str | None = None, ctype: str = "image/png", filename: str = "me.png") -> dict:
    att = h.upload(selfie, filename, ctype)
    opts = [payloads.option("selfie", "attachment", att["id"])]
    if style is not None:
        opts.append(payloads.option("style", "string", style))
    if strength is not None:
        opts.append(payloads.option("strength", "string", strength))
    return h.slash("emoji create", member, attachments=[att], options=opts)


def original(h: DiscordHarness, payload: dict) -> dict:
    msg = h.server.original_response(payload["token"])
    assert msg is not None, "no original response"
    return msg


def custom_ids(msg: dict) -> list[str]:
    return [c["custom_id"] for row in msg.get("components", []) for c in row.get("components", [])
            if "custom_id" in c]


def add_ids(msg: dict) -> list[str]:
    """The "Add to server" buttons (the pack-change items of bots.discord.rerender left out)."""
    return [i for i in custom_ids(msg) if i.startswith("emoji3d:add:")]


def only_job(res: BotResources) -> jobs.Job:
    (job,) = jobs.list_jobs(res.db, kind="make_pack")
    return job


async def create_and_deliver(h: DiscordHarness, w: World, res: BotResources, selfie: bytes,
                             files: dict[str, Any], style: st.Style) -> tuple[dict, dict]:
    """Run /emoji create, finish the job, return (command payload, result follow-up)."""
    consented(res, w.member)
    payload = create_payload(h, w.member, selfie, style=str(style.id), strength="full")
    await h.deliver(payload)
    h.assert_no_errors()
    job = only_job(res)
    finish_discord_job(res, job.id, files)
    fu = await wait_for(lambda: h.server.followups(payload["token"]), what="the result follow-up")
    # the pack is marked published just after the follow-up: "Add to server" refuses it before
    await wait_for(lambda: packs.get_pack(res.db, job.payload["pack_id"]).status == "published", what="published")
    return payload, fu[0]


# ----------------------------------------------------------------------------- the create flow

def test_create_flow_defers_shows_progress_and_delivers_files(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            payload = create_payload(h, w.member, selfie_png, style=str(style.id), strength="full")
            await h.deliver(payload)
            h.assert_no_errors()
            (cb,) = h.server.calls_to("POST", CALLBACK)
            assert cb.json["type"] == 5 and cb.status in (200, 204)  # deferred, thinking
            assert "about to start" in original(h, payload)["content"]
            job = only_job(res)
            assert job.payload["strength"] == 1.0 and job.payload["style_id"] == style.id
            assert job.payload["platform"] == "discord"
            # the engine reports a stage: the original response is edited in place
            claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            jobs.set_progress(res.db, claimed.id, claimed.lease_token, "invert_3d", 0.42)
            await wait_for(lambda: "building your 3D head (42%)" in original(h, payload)["content"],
                           what="progress edit")
            jobs.release(res.db, claimed.id, claimed.lease_token)
            finish_discord_job(res, job.id, discord_files)
            (fu,) = await wait_for(lambda: h.server.followups(payload["token"]), what="result follow-up")
            assert fu["content"].startswith(text("discord_done"))
            assert quality_summary(QUALITY, "pretrained") in fu["content"]  # the quality report, one line
            assert "Weak on: likeness (stylized)" in fu["content"]
            names = [a["filename"] for a in fu["attachments"]]
            assert len(names) == 4 and names[-1] == "preview.png"
            assert all(n.endswith(".png") or n.endswith(".gif") for n in names)
            pack = packs.list_packs(res.db, job.user_id)[0]
            # the quality report is weak and there is no stored avatar: a retry with the next seed only
            assert custom_ids(fu) == [f"emoji3d:add:{pack.id}:{w.guild_id}",
                                      f"emoji3d:rt:{pack.id}:{job.payload['seed'] + 1}"]
            await wait_for(lambda: original(h, payload)["content"] == text("discord_delivered_below"),
                           what="original response says done")
            assert packs.get_pack(res.db, pack.id).status == "published"
            rows = packs.list_stickers(res.db, pack.id)
            assert [r.emoji for r in rows] == list(EMOJIS) and {r.kind for r in rows} == {"animated"}
            # the uploaded sticker files are exactly the engine's files
            (post,) = [c for c in h.server.calls_to("POST", FOLLOWUP) if c.files]
            assert [f.data for f in post.files[:3]] == discord_files["stickers"]
            assert not h.server.dm_messages(uid(w.member))
            h.assert_no_errors()

    run(scenario())


def test_add_to_server_creates_each_sticker_once_and_needs_create_expressions(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            _, fu = await create_and_deliver(h, w, res, selfie_png, discord_files, style)
            (cid,) = add_ids(fu)
            # an ordinary member may not add stickers
            no = h.click(cid, w.member, message=fu)
            await h.deliver(no)
            assert original(h, no)["content"] == message("discord_need_create_expressions")
            assert original(h, no)["flags"] & 64 and h.server.stickers(w.guild_id) == []
            # a moderator may; the first attempt is rate limited and retried by discord.py
            h.server.inject_rate_limit("POST", STICKERS, retry_after=0.05)
            ok = h.click(cid, w.moderator, message=fu)
            await h.deliver(ok)
            h.assert_no_errors()
            attempts = h.server.calls_to("POST", STICKERS)
            assert [c.status for c in attempts] == [429, 200, 200, 200]
            created = h.server.stickers(w.guild_id)
            assert len(created) == 3
            assert [c.form["tags"] for c in attempts[1:]] == list(EMOJIS)
            assert all(2 <= len(c.form["name"]) <= 30 for c in attempts)
            assert [s.data for s in created] == discord_files["stickers"]
            (done,) = h.server.followups(ok["token"])
            assert done["content"] == text("discord_added", added=3, existing=0) and done["flags"] & 64
            # a second click (or a retry after a crash) creates nothing new
            again = h.click(cid, w.moderator, message=fu)
            await h.deliver(again)
            assert len(h.server.stickers(w.guild_id)) == 3
            assert h.server.followups(again["token"])[0]["content"] == text("discord_added", added=0, existing=3)
            pack = packs.list_packs(res.db, only_job(res).user_id)[0]
            assert {r.platform_state for r in packs.list_stickers(res.db, pack.id)} == {"added"}

    run(scenario())


def test_slots_full_offers_custom_emoji(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res, existing_stickers=4) as (h, w, bot):  # tier 0: 5 slots, 1 free
            _, fu = await create_and_deliver(h, w, res, selfie_png, discord_files, style)
            click = h.click(custom_ids(fu)[0], w.moderator, message=fu)
            await h.deliver(click)
            h.assert_no_errors()
            assert len(h.server.stickers(w.guild_id)) == 5
            (full,) = h.server.followups(click["token"])
            assert full["content"] == text("discord_slots_full", limit=5, added=1, total=3)
            pack = packs.list_packs(res.db, only_job(res).user_id)[0]
            assert custom_ids(full) == [f"emoji3d:emoji:{pack.id}:{w.guild_id}"]
            em = h.click(custom_ids(full)[0], w.moderator, message=full)
            await h.deliver(em)
            h.assert_no_errors()
            emojis = h.server.emojis(w.guild_id)
            assert len(emojis) == 3 and all(e["animated"] for e in emojis)
            assert sorted(e["name"] for e in emojis) == [f"e3d{pack.id}_{i}_{n}" for i, n in
                                                          enumerate(("turn", "surprise", "wink"))]
            (body,) = h.server.followups(em["token"])
            assert body["content"] == text("discord_emoji_added", added=3, existing=0)

    run(scenario())


def test_bot_without_create_expressions_says_so(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)
    perms = payloads.permission_bits("VIEW_CHANNEL", "SEND_MESSAGES", "ATTACH_FILES", "EMBED_LINKS")

    async def scenario() -> None:
        async with bot_on_fake(res, bot_permissions=perms) as (h, w, bot):
            _, fu = await create_and_deliver(h, w, res, selfie_png, discord_files, style)
            click = h.click(custom_ids(fu)[0], w.moderator, message=fu)
            await h.deliver(click)
            h.assert_no_errors()
            assert original(h, click)["content"] == message("discord_bot_missing_permission",
                                                            permission="Create Expressions")
            assert not h.server.calls_to("POST", STICKERS)

    run(scenario())


# ----------------------------------------------------------------------------- late delivery

def test_expired_token_delivers_by_dm(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            payload = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(payload)
            h.server.expire_token(payload["token"])
            finish_discord_job(res, only_job(res).id, discord_files)
            # (a progress DM may come first: the notifier can tick between expiry and the result)
            (dm,) = await wait_for(lambda: [m for m in h.server.dm_messages(uid(w.member)) if m["attachments"]],
                                   what="a DM with the files")
            assert dm["content"].startswith(text("discord_done_later"))
            assert len(dm["attachments"]) == 4
            pack = packs.list_packs(res.db, only_job(res).user_id)[0]
            assert add_ids(dm) == [f"emoji3d:add:{pack.id}:{w.guild_id}"]
            await wait_for(lambda: packs.get_pack(res.db, pack.id).status == "published", what="published")
            assert not h.server.followups(payload["token"])
            # "Add to server" clicked in the DM still adds to the server it came from
            click = h.click(custom_ids(dm)[0], w.moderator["user"], message=dm)
            await h.deliver(click)
            h.assert_no_errors()
            assert len(h.server.stickers(w.guild_id)) == 3

    run(scenario())


def test_closed_dms_fall_back_to_the_channel(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            h.server.close_dms(uid(w.member))
            payload = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(payload)
            h.server.expire_token(payload["token"])
            finish_discord_job(res, only_job(res).id, discord_files)
            msg = await wait_for(lambda: [m for m in h.server.channel_messages(w.channel["id"])
                                          if m.get("attachments")], what="a channel message")
            assert msg[0]["content"].startswith(f"<@{uid(w.member)}>")
            assert len(msg[0]["attachments"]) == 4

    run(scenario())


def _restarted_bot(res: BotResources, *, late_s: float = 0.0) -> Any:
    """A fresh EmojiBot (a restarted process); its wall clock runs ``late_s`` ahead."""
    from bots.discord.app import EmojiBot
    from tests.bots.discord.conftest import FAST

    bot = EmojiBot(res, FAST)
    if late_s:
        bot.sender.clock = lambda: time.time() + late_s
    return bot


def test_restart_within_the_token_window_edits_the_original_response(res, selfie_png, discord_files, caplog):
    from tests.fakes.discord_api import FakeDiscord
    from tests.fakes.discord_harness import build_world

    style = global_style(res, "toon", selfie_png)
    caplog.set_level(logging.DEBUG, logger="emoji3d")

    async def scenario() -> None:
        async with FakeDiscord() as server:
            w = build_world(server)
            async with DiscordHarness(_restarted_bot(res), server) as h1:
                consented(res, w.member)
                payload = create_payload(h1, w.member, selfie_png, style=str(style.id))
                await h1.deliver(payload)
                h1.assert_no_errors()
            job = only_job(res)
            stored = deliveries.get_delivery(res.db, job.id)
            assert stored.token == payload["token"] and stored.guild_id == w.guild_id
            # the engine works on while the bot is down
            claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            jobs.set_progress(res.db, claimed.id, claimed.lease_token, "invert_3d", 0.5)
            async with DiscordHarness(_restarted_bot(res), server) as h2:
                await wait_for(lambda: "building your 3D head (50%)" in original(h2, payload)["content"],
                               what="the original response edited after the restart")
                jobs.release(res.db, claimed.id, claimed.lease_token)
                finish_discord_job(res, job.id, discord_files)
                (fu,) = await wait_for(lambda: server.followups(payload["token"]), what="the result follow-up")
                assert fu["content"].startswith(text("discord_done"))
                assert len(fu["attachments"]) == 4
                pack = packs.list_packs(res.db, job.user_id)[0]
                # the quality report is weak and there is no stored avatar: a retry with the next seed only
                assert custom_ids(fu) == [f"emoji3d:add:{pack.id}:{w.guild_id}",
                                          f"emoji3d:rt:{pack.id}:{job.payload['seed'] + 1}"]
                await wait_for(lambda: original(h2, payload)["content"] == text("discord_delivered_below"),
                               what="original response says done")
                await wait_for(lambda: deliveries.get_delivery(res.db, job.id) is None,
                               what="the delivery row deleted once delivered")
                assert packs.get_pack(res.db, pack.id).status == "published"
                assert not server.dm_messages(uid(w.member))
                # "Add to server" from the follow-up works
                await h2.deliver(h2.click(custom_ids(fu)[0], w.moderator, message=fu))
                assert len(server.stickers(w.guild_id)) == 3
                h2.assert_no_errors()
            # our own log lines never carry the token (discord.py itself logs webhook URLs at DEBUG)
            ours = [r for r in caplog.records if r.name.startswith("emoji3d")]
            assert not [r for r in ours if payload["token"] in r.getMessage()], "token logged"

    run(scenario())


def test_restart_after_the_token_window_delivers_by_dm_for_the_right_guild(res, selfie_png, discord_files):
    from tests.fakes.discord_api import FakeDiscord
    from tests.fakes.discord_harness import build_world

    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with FakeDiscord() as server:
            w = build_world(server)
            async with DiscordHarness(_restarted_bot(res), server) as h1:
                consented(res, w.member)
                payload = create_payload(h1, w.member, selfie_png, style=str(style.id))
                await h1.deliver(payload)
                h1.assert_no_errors()
            job = only_job(res)
            finish_discord_job(res, job.id, discord_files)  # finished while the bot was down
            server.expire_token(payload["token"])           # ... for longer than 15 minutes
            calls_before = len(server.calls)
            async with DiscordHarness(_restarted_bot(res, late_s=16 * 60.0), server) as h2:
                (dm,) = await wait_for(lambda: [m for m in server.dm_messages(uid(w.member)) if m["attachments"]],
                                       what="a DM with the files after the restart")
                assert dm["content"].startswith(text("discord_done_later"))
                assert len(dm["attachments"]) == 4
                pack = packs.list_packs(res.db, job.user_id)[0]
                assert add_ids(dm) == [f"emoji3d:add:{pack.id}:{w.guild_id}"]
                await wait_for(lambda: packs.get_pack(res.db, pack.id).status == "published", what="published")
                await wait_for(lambda: deliveries.get_delivery(res.db, job.id) is None, what="row deleted")
                # the expired token was not even tried
                assert not [c for c in server.calls[calls_before:] if payload["token"] in c.path]
                assert not server.followups(payload["token"])
                # clicked in the DM, "Add to server" adds to the server the command came from
                await h2.deliver(h2.click(custom_ids(dm)[0], w.moderator["user"], message=dm))
                h2.assert_no_errors()
                assert len(server.stickers(w.guild_id)) == 3

    run(scenario())


def test_restart_after_the_window_keeps_editing_the_same_progress_dm(res, selfie_png):
    from tests.fakes.discord_api import FakeDiscord
    from tests.fakes.discord_harness import build_world

    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with FakeDiscord() as server:
            w = build_world(server)
            async with DiscordHarness(_restarted_bot(res), server) as h1:
                consented(res, w.member)
                payload = create_payload(h1, w.member, selfie_png, style=str(style.id))
                await h1.deliver(payload)
                assert deliveries.get_delivery(res.db, only_job(res).id).token == payload["token"]
                server.expire_token(payload["token"])  # Discord refuses it from now on (10015)
                job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
                jobs.set_progress(res.db, job.id, job.lease_token, "invert_3d", 0.25)
                await wait_for(lambda: [m for m in server.dm_messages(uid(w.member))
                                        if "building your 3D head (25%)" in m["content"]], what="a progress DM")
                assert deliveries.get_delivery(res.db, job.id).token is None  # refused: not kept
            jobs.set_progress(res.db, job.id, job.lease_token, "render", 0.9)
            async with DiscordHarness(_restarted_bot(res, late_s=16 * 60.0), server) as h2:
                await wait_for(lambda: "rendering the stickers (90%)" in server.dm_messages(uid(w.member))[0]["content"],
                               what="the same DM edited after the restart")
                assert len(server.dm_messages(uid(w.member))) == 1
                h2.assert_no_errors()

    run(scenario())


# ----------------------------------------------------------------------------- refusals

def test_bad_attachments_are_refused_before_download(tmp_path, face_check, selfie_png, faceless_png):
    res = make_resources(tmp_path, face_check, max_upload_mb=1)
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            big = create_payload(h, w.member, selfie_png + b"\0" * (1 << 20), style=str(style.id))
            await h.deliver(big)
            assert original(h, big)["content"].startswith("That file is too big")
            pdf = create_payload(h, w.member, selfie_png, style=str(style.id), ctype="application/pdf",
                                 filename="me.pdf")
            await h.deliver(pdf)
            assert original(h, pdf)["content"] == message("discord_bad_attachment", content_type="application/pdf")
            assert original(h, pdf)["flags"] & 64
            assert not h.server.calls_to("GET", CDN)  # nothing was downloaded
            noface = create_payload(h, w.member, faceless_png, style=str(style.id))
            await h.deliver(noface)
            assert original(h, noface)["content"] == message("no_face")
            unknown = create_payload(h, w.member, selfie_png, style="no such style")
            await h.deliver(unknown)
            assert original(h, unknown)["content"] == message("style_not_found", name="no such style")
            garbage = create_payload(h, w.member, b"not an image at all", style=str(style.id))
            await h.deliver(garbage)
            assert original(h, garbage)["content"] == message("not_an_image")
            assert jobs.list_jobs(res.db, kind="make_pack") == []
            h.assert_no_errors()

    run(scenario())


def test_consent_first_then_cooldown_and_one_active_job(res, selfie_png):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            first = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(first)
            prompt = original(h, first)
            assert "I agree" in prompt["content"] and prompt["flags"] & 64
            assert custom_ids(prompt) == ["emoji3d:consent"]
            await h.deliver(h.click("emoji3d:consent", w.member, message=prompt))
            assert users.find_user(res.db, "discord", uid(w.member)).consent_at is not None
            ok = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(ok)
            assert len(jobs.list_jobs(res.db, kind="make_pack")) == 1
            again = create_payload(h, w.member, selfie_png, style=str(style.id), strength="subtle")
            await h.deliver(again)
            assert original(h, again)["content"].startswith("Please wait")
            bot.forget_cooldown(int(uid(w.member)))
            third = create_payload(h, w.member, selfie_png, style=str(style.id), strength="subtle")
            await h.deliver(third)
            assert original(h, third)["content"] == message("job_active")
            assert len(jobs.list_jobs(res.db, kind="make_pack")) == 1
            h.assert_no_errors()

    run(scenario())


# ----------------------------------------------------------------------------- autocomplete, house styles

def test_style_autocomplete_lists_house_styles_first(res, selfie_png):
    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            community = get_or_create_community(res.db, "discord", w.guild_id).id
            digest = res.blobs.put_bytes(selfie_png)
            st.add_style(res.db, "zine", digest, community_id=community, status="ready")
            g1 = st.add_style(res.db, "toon", digest, status="ready")
            st.add_style(res.db, "anime", digest, status="tuning")
            st.add_style(res.db, "broken", digest, status="failed")
            ac = h.autocomplete("emoji create", w.member, options=[payloads.option("style", "string", "", focused=True)])
            await h.deliver(ac)
            choices = h.server.interaction(ac["token"]).response_data
            assert [c["name"] for c in choices] == [text("style_house_prefix") + "zine", "anime", "toon"]
            ac = h.autocomplete("emoji create", w.member, options=[payloads.option("style", "string", "TO", focused=True)])
            await h.deliver(ac)
            assert h.server.interaction(ac["token"]).response_data == [{"name": "toon", "value": str(g1.id)}]
            h.assert_no_errors()

    run(scenario())


def test_housestyle_allowed_for_moderators_refused_for_members(res, selfie_png):
    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            assert h.command_visible("housestyle add", w.moderator)
            assert not h.command_visible("housestyle add", w.member)
            att = h.upload(selfie_png, "style.png", "image/png")
            # a server that granted the command to everyone: the runtime check still refuses
            no = h.slash("housestyle add", w.member, attachments=[att],
                         options=[payloads.option("name", "string", "zine"), payloads.option("image", "attachment", att["id"])])
            await h.deliver(no)
            assert original(h, no)["content"] == message("discord_need_manage_expressions")
            assert st.list_styles(res.db) == [] or all(not s.is_house for s in st.list_styles(res.db))
            ok = h.slash("housestyle add", w.moderator, attachments=[att],
                         options=[payloads.option("name", "string", "zine"), payloads.option("image", "attachment", att["id"])])
            await h.deliver(ok)
            (fu,) = h.server.followups(ok["token"])
            assert fu["content"] == text("housestyle_added", name="zine") and fu["flags"] & 64
            community = get_or_create_community(res.db, "discord", w.guild_id).id
            (style,) = st.list_styles(res.db, community_id=community, include_house=False)
            assert style.name == "zine"
            (tune,) = jobs.list_jobs(res.db, kind="style_finetune")
            assert tune.priority == "batch" and tune.payload["style_id"] == style.id
            lst = h.slash("housestyle list", w.moderator)
            await h.deliver(lst)
            assert "zine" in original(h, lst)["content"]
            rm = h.slash("housestyle remove", w.moderator, options=[payloads.option("name", "string", "zine")])
            await h.deliver(rm)
            assert original(h, rm)["content"] == text("housestyle_removed", name="zine")
            assert st.list_styles(res.db, community_id=community, include_house=False) == []
            h.assert_no_errors()

    run(scenario())


# ----------------------------------------------------------------------------- privacy, delete

def test_privacy_and_delete_my_data(res, selfie_png):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            pv = h.slash("emoji privacy", w.member)
            await h.deliver(pv)
            body = original(h, pv)
            assert f"{res.cfg.privacy.selfie_retention_hours} hours" in body["content"] and body["flags"] & 64
            consented(res, w.member)
            made = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(made)
            assert jobs.list_jobs(res.db, kind="make_pack")
            (stored,) = deliveries.list_deliveries(res.db, "discord")
            assert stored.token == made["token"] and stored.guild_id == w.guild_id
            ask = h.slash("emoji delete-my-data", w.member)
            await h.deliver(ask)
            confirm = original(h, ask)
            assert confirm["content"] == text("discord_delete_confirm")
            assert custom_ids(confirm) == ["emoji3d:del:yes", "emoji3d:del:no"]
            keep = h.click("emoji3d:del:no", w.member, message=confirm)
            await h.deliver(keep)
            assert original(h, keep)["content"] == text("delete_kept")
            assert users.find_user(res.db, "discord", uid(w.member)) is not None
            yes = h.click("emoji3d:del:yes", w.member, message=confirm)
            await h.deliver(yes)
            (done,) = h.server.followups(yes["token"])
            assert done["content"] == text("discord_delete_done", packs=1, selfies=1)
            assert users.find_user(res.db, "discord", uid(w.member)) is None
            assert jobs.list_jobs(res.db, kind="make_pack") == []
            assert deliveries.list_deliveries(res.db, "discord") == []  # the token went with the data
            assert bot.notifier.watches == {} and bot.sender.refs == {}
            h.assert_no_errors()

    run(scenario())


def test_importing_the_discord_bot_does_not_import_torch():
    code = ("import sys, bots.discord, bots.discord.app, bots.discord.cogs, bots.discord.delivery, bots.discord.interactions, bots.discord.server_stickers; "
            "bad = [m for m in ('torch', 'engine.avatar.pipeline', 'engine.nets') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_429_that_landed_anyway_leaves_no_duplicate(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            _, fu = await create_and_deliver(h, w, res, selfie_png, discord_files, style)
            h.server.inject_rate_limit("POST", STICKERS, retry_after=0.02, lands=True)
            click = h.click(custom_ids(fu)[0], w.moderator, message=fu)
            await h.deliver(click)
            h.assert_no_errors()
            assert [c.status for c in h.server.calls_to("POST", STICKERS)] == [429, 200, 200, 200]
            markers = sorted(s.payload["description"].rsplit(" ", 1)[-1] for s in h.server.stickers(w.guild_id))
            pack = packs.list_packs(res.db, only_job(res).user_id)[0]
            assert markers == [f"#{pack.id}.{i}" for i in range(3)]
            assert len(h.server.calls_to("DELETE", STICKERS + "/{sticker_id}", ok_only=True)) == 1

    run(scenario())


def test_unexpected_errors_are_answered_and_the_bot_keeps_working(tmp_path, selfie_png):
    def broken_face_check(rgb: Any) -> Any:
        raise RuntimeError("detector crashed")

    res = make_resources(tmp_path, broken_face_check)
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            p1 = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(p1)
            assert original(h, p1)["content"] == message("internal")
            pv = h.slash("emoji privacy", w.member)
            await h.deliver(pv)
            assert "hours" in original(h, pv)["content"]
            # a button for a pack that does not exist
            msg = payloads.message(h.server.ids(), w.channel["id"], w.bot_user, guild_id=w.guild_id)
            msg["components"] = [payloads.action_row(payloads.button(f"emoji3d:add:999:{w.guild_id}", "Add"))]
            click = h.click(f"emoji3d:add:999:{w.guild_id}", w.moderator, message=msg)
            await h.deliver(click)
            assert original(h, click)["content"] == message("discord_pack_gone")
            h.assert_no_errors()

    run(scenario())


def test_run_refuses_without_a_token():
    import threading

    from bots.discord.app import run as run_bot
    from emoji3d.config import Config

    with pytest.raises(RuntimeError, match="DISCORD_BOT_TOKEN"):
        run_bot(Config(), threading.Event())


def test_progress_after_the_token_window_goes_to_one_dm_edited_in_place(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            payload = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(payload)
            h.server.expire_token(payload["token"])
            job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            jobs.set_progress(res.db, job.id, job.lease_token, "invert_3d", 0.25)
            await wait_for(lambda: [m for m in h.server.dm_messages(uid(w.member))
                                    if "building your 3D head (25%)" in m["content"]], what="a progress DM")
            jobs.set_progress(res.db, job.id, job.lease_token, "render", 0.9)
            await wait_for(lambda: "rendering the stickers (90%)" in h.server.dm_messages(uid(w.member))[0]["content"],
                           what="the DM edited")
            assert len(h.server.dm_messages(uid(w.member))) == 1
            jobs.fail(res.db, job.id, job.lease_token, "boom", retryable=False, error_key="worker_lost")
            await wait_for(lambda: h.server.dm_messages(uid(w.member))[0]["content"]
                           == text("failed", reason=message("worker_lost")), what="the failure in the DM")
            assert packs.list_packs(res.db, job.user_id)[0].status == "failed"
            assert bot.notifier.watches == {} and bot.sender.refs == {}
            h.assert_no_errors()

    run(scenario())


def test_a_failed_job_edits_the_original_response(res, selfie_png):
    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            payload = create_payload(h, w.member, selfie_png, style=str(style.id))
            await h.deliver(payload)
            job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            jobs.fail(res.db, job.id, job.lease_token, "no weights", retryable=False, error_key="weights_missing")
            await wait_for(lambda: original(h, payload)["content"] == text("failed", reason=message("weights_missing")),
                           what="the failure shown")
            assert not h.server.dm_messages(uid(w.member))
            h.assert_no_errors()

    run(scenario())


def test_dm_command_and_a_stills_only_result(res, selfie_png, discord_files):
    from emoji3d.orders import PackResult

    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            payload = create_payload(h, w.member["user"], selfie_png, style=str(style.id))  # in a DM
            await h.deliver(payload)
            h.assert_no_errors()
            job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            renders = [res.blobs.put_bytes(discord_files["preview"])]
            result = PackResult(pack_id=job.payload["pack_id"], preset="slim", renders=renders,
                                missing=["dual-branch training"])
            make_ready(res.db, job.payload["pack_id"], job.id)  # as the engine does before completing
            jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
            (fu,) = await wait_for(lambda: h.server.followups(payload["token"]), what="the stills")
            assert fu["content"].startswith(text("pack_incomplete", missing="dual-branch training"))
            assert text("slim_warning") in fu["content"]
            assert [a["filename"] for a in fu["attachments"]] == ["render0.png"]
            assert add_ids(fu) == []  # nothing to add to a server
            await wait_for(lambda: packs.list_packs(res.db, job.user_id)[0].status == "published", what="published")
            h.assert_no_errors()

    run(scenario())


def test_first_look_stills_arrive_as_one_follow_up_each(res, selfie_png, discord_files):
    """The engine records a still after pivotal tuning and after stage 5; each is one follow-up, once."""
    import asyncio

    from emoji3d.orders import first_look_key
    from storage import artifacts

    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            user = consented(res, w.member)
            payload = create_payload(h, w.member["user"], selfie_png, style=str(style.id))
            await h.deliver(payload)
            h.assert_no_errors()
            job = only_job(res)
            claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            jobs.set_progress(res.db, claimed.id, claimed.lease_token, "dual_branch", 0.5)
            artifacts.put_artifact(res.db, first_look_key(job.id, "photo_real"), "first_look",
                                   res.blobs.put_bytes(discord_files["preview"]), user.id)
            (fu,) = await wait_for(lambda: h.server.followups(payload["token"]), what="first look")
            assert fu["content"] == text("first_look_photo_real")
            assert [a["filename"] for a in fu["attachments"]] == ["photo_real.png"]
            artifacts.put_artifact(res.db, first_look_key(job.id, "stylized"), "first_look",
                                   res.blobs.put_bytes(selfie_png), user.id)
            second = await wait_for(lambda: h.server.followups(payload["token"])[1:], what="stylized look")
            assert second[0]["content"] == text("first_look_stylized")
            await asyncio.sleep(0.3)
            assert len(h.server.followups(payload["token"])) == 2  # each still once
            jobs.release(res.db, claimed.id, claimed.lease_token)
            finish_discord_job(res, job.id, discord_files)
            await wait_for(lambda: len(h.server.followups(payload["token"])) == 3, what="the pack")
            h.assert_no_errors()

    run(scenario())


def test_a_delivered_pack_offers_a_rerender_at_another_strength(res, selfie_png, discord_files):
    from emoji3d.orders import RERENDER_KIND, PackResult, StickerFiles

    style = global_style(res, "toon", selfie_png)

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            consented(res, w.member)
            payload = create_payload(h, w.member, selfie_png, style=str(style.id), strength="full")
            await h.deliver(payload)
            h.assert_no_errors()
            job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
            pack_id = job.payload["pack_id"]
            result = PackResult(pack_id=pack_id, preset="slim", avatar=res.blobs.put_bytes(b"avatar"),
                                stickers=[StickerFiles(0, "turn", EMOJIS[0], {
                                    "discord_sticker": res.blobs.put_bytes(discord_files["stickers"][0])})])
            make_ready(res.db, pack_id)
            jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
            (fu,) = await wait_for(lambda: h.server.followups(payload["token"]), what="result follow-up")
            ids = custom_ids(fu)
            assert f"emoji3d:rr:{pack_id}:subtle" in ids and f"emoji3d:rr:{pack_id}:medium" in ids
            assert f"emoji3d:rr:{pack_id}:full" not in ids  # the pack's own strength is not offered
            await wait_for(lambda: packs.get_pack(res.db, pack_id).status == "published", what="published")
            await h.deliver(h.click(f"emoji3d:rr:{pack_id}:medium", w.member, message=fu))
            (rerender,) = await wait_for(lambda: jobs.list_jobs(res.db, kind=RERENDER_KIND), what="re-render job")
            assert rerender.payload["strength"] == 0.7 and rerender.payload["source_job_id"] == job.id
            h.assert_no_errors()

    run(scenario())
