"""Changing a delivered Discord pack against the fake Discord API: the retry button (another seed), the
sticker menu (a re-render with the chosen stickers) and a failed re-render that leaves the pack as it was;
a re-render also updates the stickers and custom emoji already added to a server; a re-render that fails
while the bot is down is reported once after a restart; a retry overtaken by a newer remake while the bot is
down says so, and only the newer one is delivered."""
from __future__ import annotations

import asyncio

import pytest

from bots.core import ensure_user, give_consent
from emoji3d.errors import AvatarGone
from emoji3d.orders import JOB_KIND, REGENERATE_KIND, RERENDER_KIND, PackResult, StickerFiles
from emoji3d.texts import message, text
from bots.discord.server_stickers import emoji_name, sync_server_emoji, sync_server_stickers
from storage import deliveries, guild_emoji, guild_stickers, jobs, packs
from storage import styles as st
from tests.bots.conftest import QUALITY, wait_for
from tests.bots.discord.conftest import EMOJIS, bot_on_fake, run
from tests.fakes import discord_payloads as payloads
from tests.lifecycle import make_ready

pytestmark = pytest.mark.timeout(120)


def components(msg: dict) -> list[dict]:
    return [c for row in msg.get("components", []) for c in row.get("components", []) if "custom_id" in c]


async def delivered(res, h, w, selfie_png, discord_files, names: list[str], quality: dict, *, emoji: bool = False):
    """A published pack of ``names`` (with custom emoji files when ``emoji``); returns (make job, its result
    follow-up, the /emoji create payload)."""
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    give_consent(res, ensure_user(res, "discord", str(w.member["user"]["id"])))
    att = h.upload(selfie_png, "me.png", "image/png")
    payload = h.slash("emoji create", w.member, attachments=[att],
                      options=[payloads.option("selfie", "attachment", att["id"]),
                               payloads.option("style", "string", str(style.id)),
                               payloads.option("strength", "string", "full")])
    await h.deliver(payload)
    job = jobs.claim(res.db, "eng", 60, kinds=[JOB_KIND])
    pack_id = job.payload["pack_id"]
    result = PackResult(pack_id=pack_id, preset="slim", avatar=res.blobs.put_bytes(b"avatar"), quality=quality,
                        stickers=[StickerFiles(i, n, EMOJIS[i], {
                            "discord_sticker": res.blobs.put_bytes(discord_files["stickers"][i]),
                            **({"discord_emoji": res.blobs.put_bytes(discord_files["emoji"][i])} if emoji else {})})
                            for i, n in enumerate(names)])
    make_ready(res.db, pack_id)
    jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
    (fu,) = await wait_for(lambda: h.server.followups(payload["token"]), what="result follow-up")
    await wait_for(lambda: packs.get_pack(res.db, pack_id).status == packs.PUBLISHED, what="published")
    return job, fu, payload


def select(h, member: dict, custom_id: str, msg: dict, values: list[str]) -> dict:
    return payloads.component_interaction(h.context(member), iid=h.server.ids(), token=h._token(),
                                          custom_id=custom_id, message_payload=msg, component_type=3,
                                          values=values)


def test_a_weak_pack_offers_a_retry_first_and_it_remakes_the_pack_with_the_next_seed(res, selfie_png,
                                                                                     discord_files):
    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            job, fu, _ = await delivered(res, h, w, selfie_png, discord_files, ["turn", "smile"], dict(QUALITY))
            pack_id, seed = job.payload["pack_id"], job.payload["seed"] + 1
            ids = [c["custom_id"] for c in components(fu)]
            retry = f"emoji3d:rt:{pack_id}:{seed}"
            assert ids.index(retry) < ids.index(f"emoji3d:rr:{pack_id}:subtle")  # weak: the retry comes first
            await h.deliver(h.click(retry, w.member, message=fu))
            await h.deliver(h.click(retry, w.member, message=fu))  # a double click is one job
            remakes = [j for j in jobs.list_jobs(res.db, kind=JOB_KIND) if j.id != job.id]
            assert len(remakes) == 1
            assert remakes[0].payload["seed"] == seed and remakes[0].payload["pack_id"] == pack_id
            assert remakes[0].payload["regenerate"] and remakes[0].idempotency_key != job.idempotency_key
            h.assert_no_errors()

    run(scenario())


def test_the_sticker_menu_rerenders_the_chosen_stickers_and_a_failure_changes_nothing(res, selfie_png,
                                                                                     discord_files):
    names = [e.name for e in res.cfg.pack.stickers]

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            job, fu, _ = await delivered(res, h, w, selfie_png, discord_files, names[:3], {})
            pack_id = job.payload["pack_id"]
            (menu,) = [c for c in components(fu) if c["custom_id"] == f"emoji3d:pk:{pack_id}"]
            assert [o["value"] for o in menu["options"] if o.get("default")] == names[:3]  # the pack's own
            ids = [c["custom_id"] for c in components(fu)]
            retry = next(i for i in ids if i.startswith(f"emoji3d:rt:{pack_id}:"))
            assert ids.index(retry) > ids.index(f"emoji3d:rr:{pack_id}:medium")  # not weak: the retry after
            await h.deliver(select(h, w.member, menu["custom_id"], fu, [names[0], names[3]]))
            (rr,) = await wait_for(lambda: jobs.list_jobs(res.db, kind=RERENDER_KIND), what="re-render job")
            assert rr.payload["stickers"] == [names[0], names[3]] and rr.payload["source_job_id"] == job.id
            claimed = jobs.claim(res.db, "eng", 60, kinds=[RERENDER_KIND])
            jobs.fail(res.db, claimed.id, claimed.lease_token, "avatar expired", retryable=False,
                      error_key=AvatarGone.key)
            said = text("rerender_failed", reason=message(AvatarGone.key))
            await wait_for(lambda: any(said in m.get("content", "") for channel in list(h.server.messages.values())
                                       for m in list(channel.values())), what="the failure, said")
            pack = packs.get_pack(res.db, pack_id)
            assert (pack.status, pack.job_id, pack.strength) == (packs.PUBLISHED, job.id, 1.0)
            h.assert_no_errors()

    run(scenario())


def test_a_rerender_updates_the_stickers_added_to_a_server_and_resumes_after_a_failure(res, selfie_png,
                                                                                        discord_files):
    names = [e.name for e in res.cfg.pack.stickers]
    files = discord_files["stickers"]

    async def scenario() -> None:
        async with bot_on_fake(res) as (h, w, bot):
            job, fu, _ = await delivered(res, h, w, selfie_png, discord_files, names[:3], {})
            pack_id = job.payload["pack_id"]
            await h.deliver(h.click(f"emoji3d:add:{pack_id}:{w.guild_id}", w.moderator, message=fu))
            before = {s.payload["description"].rsplit(" ", 1)[-1]: s for s in h.server.stickers(w.guild_id)}
            assert sorted(before) == [f"#{pack_id}.{i}" for i in range(3)]
            # keep the first sticker as it is, drop the second: the third moves to index 1
            (menu,) = [c for c in components(fu) if c["custom_id"] == f"emoji3d:pk:{pack_id}"]
            await h.deliver(select(h, w.member, menu["custom_id"], fu, [names[0], names[2]]))
            claimed = await wait_for(lambda: jobs.claim(res.db, "eng", 60, kinds=[RERENDER_KIND]), what="re-render")
            result = PackResult(pack_id=pack_id, preset="slim", avatar=res.blobs.put_bytes(b"avatar"), stickers=[
                StickerFiles(0, names[0], EMOJIS[0], {"discord_sticker": res.blobs.put_bytes(files[0])}),
                StickerFiles(1, names[2], EMOJIS[2], {"discord_sticker": res.blobs.put_bytes(files[2])})])
            # Discord is down for the replacement's first creation, after the old sticker was deleted
            h.server.inject_error("POST", "/guilds/{guild_id}/stickers", status=503, code=0,
                                  message="Service Unavailable")
            assert packs.mark_rerendered(res.db, pack_id, claimed.id, 1.0)
            jobs.complete(res.db, claimed.id, claimed.lease_token, result.to_dict(), result.blob_digests())
            await wait_for(lambda: packs.get_pack(res.db, pack_id).status == packs.PUBLISHED, what="re-published",
                           timeout=60)
            assert said(h.server, text("discord_updated")) == 1  # announced as an update of the user's pack
            after = {s.payload["description"].rsplit(" ", 1)[-1]: s for s in h.server.stickers(w.guild_id)}
            assert sorted(after) == [f"#{pack_id}.0", f"#{pack_id}.1"]  # the dropped one is gone, no duplicate
            assert after[f"#{pack_id}.0"].payload["id"] == before[f"#{pack_id}.0"].payload["id"]  # unchanged: kept
            assert after[f"#{pack_id}.1"].payload["id"] != before[f"#{pack_id}.1"].payload["id"]  # replaced
            assert after[f"#{pack_id}.1"].data == files[2] and names[2] in after[f"#{pack_id}.1"].payload["name"]
            posts = h.server.calls_to("POST", "/guilds/{guild_id}/stickers")
            assert [c.status for c in posts][-2:] == [503, 200]  # the failed creation was made up for
            rows = guild_stickers.for_pack(res.db, pack_id)[str(w.guild_id)]
            assert [(g.idx, g.state, g.sticker_id) for g in rows] == [
                (0, "added", after[f"#{pack_id}.0"].payload["id"]), (1, "added", after[f"#{pack_id}.1"].payload["id"])]
            # a sticker the server's moderators delete is theirs to delete: the next change does not restore it
            h.server._guild(str(w.guild_id)).stickers.pop(after[f"#{pack_id}.0"].payload["id"])
            await sync_server_stickers(bot, res, packs.get_pack(res.db, pack_id))
            assert [g.idx for g in guild_stickers.for_pack(res.db, pack_id)[str(w.guild_id)]] == [1]
            assert len(h.server.stickers(w.guild_id)) == 1

    run(scenario())


def test_a_rerender_updates_the_custom_emoji_added_to_a_server_and_resumes_after_a_failure(res, selfie_png,
                                                                                           discord_files):
    """"Add as custom emoji instead" follows the pack as "Add to server" does: dropped deleted, changed replaced."""
    names = [e.name for e in res.cfg.pack.stickers]
    stickers, emoji = discord_files["stickers"], discord_files["emoji"]

    async def scenario() -> None:
        async with bot_on_fake(res, existing_stickers=5) as (h, w, bot):  # tier 0: no sticker slot free
            job, fu, _ = await delivered(res, h, w, selfie_png, discord_files, names[:3], {}, emoji=True)
            pack_id = job.payload["pack_id"]
            add = h.click(f"emoji3d:add:{pack_id}:{w.guild_id}", w.moderator, message=fu)
            await h.deliver(add)
            (full,) = h.server.followups(add["token"])
            await h.deliver(h.click(f"emoji3d:emoji:{pack_id}:{w.guild_id}", w.moderator, message=full))
            h.assert_no_errors()
            before = {e["name"]: e for e in h.server.emojis(w.guild_id)}
            first, second, third = (emoji_name(pack_id, i, names[i]) for i in range(3))
            assert sorted(before) == sorted([first, second, third])
            # keep the first emoji as it is, drop the second: the third moves to index 1
            (menu,) = [c for c in components(fu) if c["custom_id"] == f"emoji3d:pk:{pack_id}"]
            await h.deliver(select(h, w.member, menu["custom_id"], fu, [names[0], names[2]]))
            claimed = await wait_for(lambda: jobs.claim(res.db, "eng", 60, kinds=[RERENDER_KIND]), what="re-render")
            result = PackResult(pack_id=pack_id, preset="slim", avatar=res.blobs.put_bytes(b"avatar"), stickers=[
                StickerFiles(i, names[k], EMOJIS[k], {"discord_sticker": res.blobs.put_bytes(stickers[k]),
                                                      "discord_emoji": res.blobs.put_bytes(emoji[k])})
                for i, k in enumerate((0, 2))])
            # Discord is down for the replacement's first creation, after the old emoji was deleted
            h.server.inject_error("POST", "/guilds/{guild_id}/emojis", status=503, code=0,
                                  message="Service Unavailable")
            assert packs.mark_rerendered(res.db, pack_id, claimed.id, 1.0)
            jobs.complete(res.db, claimed.id, claimed.lease_token, result.to_dict(), result.blob_digests())
            await wait_for(lambda: packs.get_pack(res.db, pack_id).status == packs.PUBLISHED, what="re-published",
                           timeout=60)
            moved = emoji_name(pack_id, 1, names[2])
            after = {e["name"]: e for e in h.server.emojis(w.guild_id)}
            assert sorted(after) == sorted([first, moved])  # the dropped one and the old third are gone
            assert after[first]["id"] == before[first]["id"]  # unchanged: kept
            assert after[moved]["id"] not in {e["id"] for e in before.values()}  # replaced
            posts = h.server.calls_to("POST", "/guilds/{guild_id}/emojis")
            assert [c.status for c in posts][-2:] == [503, 200]  # the failed creation was made up for
            rows = guild_emoji.for_pack(res.db, pack_id)[str(w.guild_id)]
            assert [(g.idx, g.state, g.emoji_id, g.name) for g in rows] == [
                (0, "added", after[first]["id"], first), (1, "added", after[moved]["id"], moved)]
            # an emoji the server's moderators delete is theirs to delete: the next change does not restore it
            h.server._guild(str(w.guild_id)).emojis.pop(after[first]["id"])
            await sync_server_emoji(bot, res, packs.get_pack(res.db, pack_id))
            assert [g.idx for g in guild_emoji.for_pack(res.db, pack_id)[str(w.guild_id)]] == [1]
            assert [e["name"] for e in h.server.emojis(w.guild_id)] == [moved]
            # interrupted after the replacement was created, before it was recorded: recognised, not made twice
            guild_emoji.mark_replacing(res.db, pack_id, w.guild_id, 1, 123456789)  # the deleted old one's id
            n_posts = len(h.server.calls_to("POST", "/guilds/{guild_id}/emojis"))
            await sync_server_emoji(bot, res, packs.get_pack(res.db, pack_id))
            (row,) = guild_emoji.for_pack(res.db, pack_id)[str(w.guild_id)]
            assert (row.state, row.emoji_id) == ("added", after[moved]["id"])
            assert len(h.server.calls_to("POST", "/guilds/{guild_id}/emojis")) == n_posts
            h.assert_no_errors()

    run(scenario())


def test_a_rerender_that_fails_while_the_bot_is_down_is_reported_once_after_a_restart(res, selfie_png,
                                                                                     discord_files):
    """The pack points at its old job while the re-render runs: only the job's delivery row remembers it."""
    from tests.bots.discord.test_discord_flow import _restarted_bot
    from tests.fakes.discord_api import FakeDiscord
    from tests.fakes.discord_harness import DiscordHarness, build_world

    said = text("rerender_failed", reason=message(AvatarGone.key))

    def times_said(server) -> int:
        return sum(said in m.get("content", "") for channel in list(server.messages.values())
                   for m in list(channel.values()))

    async def scenario() -> None:
        async with FakeDiscord() as server:
            w = build_world(server)
            async with DiscordHarness(_restarted_bot(res), server) as h1:
                job, fu, _ = await delivered(res, h1, w, selfie_png, discord_files, ["turn", "smile"], {})
                pack_id = job.payload["pack_id"]
                await h1.deliver(h1.click(f"emoji3d:rr:{pack_id}:subtle", w.member, message=fu))
                (rr,) = jobs.list_jobs(res.db, kind=RERENDER_KIND)
                h1.assert_no_errors()
            claimed = jobs.claim(res.db, "eng", 60, kinds=[RERENDER_KIND])  # fails while no bot runs
            jobs.fail(res.db, claimed.id, claimed.lease_token, "avatar expired", retryable=False,
                      error_key=AvatarGone.key)
            async with DiscordHarness(_restarted_bot(res), server) as h2:
                await wait_for(lambda: times_said(server), what="the failure, said after the restart")
                await wait_for(lambda: deliveries.get_delivery(res.db, rr.id) is None, what="its row deleted")
                h2.assert_no_errors()
            async with DiscordHarness(_restarted_bot(res), server):
                await asyncio.sleep(0.3)  # another restart: nothing left to say
            assert times_said(server) == 1
            pack = packs.get_pack(res.db, pack_id)
            assert (pack.status, pack.job_id, pack.strength) == (packs.PUBLISHED, job.id, 1.0)

    run(scenario())


def said(server, fragment: str) -> int:
    """How many messages the bot sent or edited (channels, DMs, interaction responses) with a text
    containing ``fragment``."""
    return sum(1 for c in server.calls if c.method in ("POST", "PATCH") and isinstance(c.json, dict)
               and fragment in str(c.json.get("content") or ""))


def engine_finishes(res, claimed: jobs.Job, pack_id: int, stickers: list[bytes]) -> bool:
    """Play the engine's last steps for a claimed remake whose result is the Discord sticker files
    ``stickers``: move the pack (as ``engine.tasks`` does; False when the pack keeps another job's result),
    then record the success either way. Returns what the pack did."""
    result = PackResult(pack_id=pack_id, preset="slim", avatar=None,
                        stickers=[StickerFiles(i, f"sticker{i}", EMOJIS[i],
                                               {"discord_sticker": res.blobs.put_bytes(data)})
                                  for i, data in enumerate(stickers)])
    moved = packs.mark_made(res.db, pack_id, claimed.id)
    jobs.complete(res.db, claimed.id, claimed.lease_token, result.to_dict(), result.blob_digests())
    return moved


@pytest.mark.parametrize("first", ["retry", "regeneration"])
def test_a_retry_overtaken_by_a_newer_remake_while_the_bot_is_down_says_so_and_the_newer_one_is_delivered(
        res, selfie_png, discord_files, first):
    """A user's retry and a later scheduled regeneration of the same pack both succeed while no bot runs, in
    either order: the pack keeps the newer order's result, which is delivered by DM (the regeneration has no
    interaction) as an update; the retry's own progress message says it was not published; nothing is left to
    resume."""
    from shell.scheduler import regenerate_outdated_packs
    from tests.bots.discord.test_discord_flow import _restarted_bot
    from tests.fakes.discord_api import FakeDiscord
    from tests.fakes.discord_harness import DiscordHarness, build_world

    files = discord_files["stickers"]
    outdated, updated = text("remake_outdated"), text("discord_updated")

    async def scenario() -> None:
        async with FakeDiscord() as server:
            w = build_world(server)
            async with DiscordHarness(_restarted_bot(res), server) as h1:
                job, fu, _ = await delivered(res, h1, w, selfie_png, discord_files, ["turn", "smile"], dict(QUALITY))
                pack_id = job.payload["pack_id"]
                await h1.deliver(h1.click(f"emoji3d:rt:{pack_id}:{job.payload['seed'] + 1}", w.member, message=fu))
                (retry_id,) = [j.id for j in jobs.list_jobs(res.db, kind=JOB_KIND) if j.id != job.id]
                ref = await wait_for(lambda: (r := deliveries.get_delivery(res.db, retry_id))
                                     and r.fallback_message_id and r, what="its progress message recorded")
                progress = (ref.fallback_chat_id, ref.fallback_message_id)
                h1.assert_no_errors()
            (regen_id,) = regenerate_outdated_packs(res.db, {}, "999.0")  # ordered after the retry
            retry = jobs.claim(res.db, "eng", 60, kinds=[JOB_KIND])
            regen = jobs.claim(res.db, "eng2", 60, kinds=[REGENERATE_KIND])
            assert (retry.id, regen.id) == (retry_id, regen_id)
            retry_files, regen_files = files[2:3], [files[1], files[0]]
            if first == "retry":
                assert engine_finishes(res, retry, pack_id, retry_files)
                assert engine_finishes(res, regen, pack_id, regen_files)
            else:
                assert engine_finishes(res, regen, pack_id, regen_files)
                assert not engine_finishes(res, retry, pack_id, retry_files)  # the newer order is kept
            async with DiscordHarness(_restarted_bot(res), server) as h2:
                def results_by_dm() -> list[dict]:
                    return [m for m in server.dm_messages(w.member["user"]["id"])
                            if updated in m.get("content", "")]

                await wait_for(results_by_dm, what="the regeneration delivered by DM")
                await wait_for(lambda: outdated in server.messages[progress[0]][progress[1]]["content"],
                               what="the retry's own message says it was not published")
                await wait_for(lambda: deliveries.get_delivery(res.db, retry_id) is None, what="its row deleted")
                await wait_for(lambda: packs.get_pack(res.db, pack_id).status == packs.PUBLISHED,
                               what="republished")
                await asyncio.sleep(0.5)  # a second rescan or tick must not say anything again
                h2.assert_no_errors()
            (dm,) = results_by_dm()  # the regeneration's: the retry's older result is not delivered
            # the regeneration's two stickers, not the retry's one
            assert [server.file_bytes(a["url"]) for a in dm["attachments"]] == regen_files
            pack = packs.get_pack(res.db, pack_id)
            assert (pack.status, pack.job_id) == (packs.PUBLISHED, regen_id)
            assert said(server, updated) == 1  # the regeneration, announced once as an update
            assert said(server, text("discord_done_later")) == 0  # no "original message" ever expired here
            assert said(server, text("discord_done")) == 1  # the first make's follow-up only
            assert said(server, outdated) == 1
            assert deliveries.undelivered_job_ids(res.db, "discord") == []
            async with DiscordHarness(_restarted_bot(res), server) as h3:  # nothing left to say
                await asyncio.sleep(0.5)
                assert h3.bot.notifier.watches == {}
                h3.assert_no_errors()
            assert said(server, outdated) == 1
            assert deliveries.list_deliveries(res.db, "discord") == []

    run(scenario())
