"""The fake Discord REST API, driven by the real discord.py 2.7 client.

Part 1 runs a real ``commands.Bot`` with a throwaway cog (a ``/emoji create``
slash command with an attachment and an autocompleted option, plus a
persistent "Add to server" button) through :class:`DiscordHarness`.
Part 2 talks to the fake with plain aiohttp to pin down the Discord rules it
enforces (error codes, headers). Every test runs its own ``asyncio.run`` loop.
"""
from __future__ import annotations

import asyncio
import io
import json
from typing import Any, Awaitable, Callable

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakes import discord_payloads as payloads
from tests.fakes.discord_api import FakeDiscord, ServerConfig, animation_timing, sniff_image
from tests.fakes.discord_harness import DiscordHarness, World, build_world, running_bot

STYLES = ["pixar", "pixel-art", "anime", "clay"]
ADD_ID = "emoji3d:add"


png_bytes = payloads.make_png


# ------------------------------------------------------------ throwaway cog


class AddToServer(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Add to server", custom_id=ADD_ID)
    async def add(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if not interaction.permissions.create_expressions:
            await interaction.response.send_message("no-permission", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild is not None
        try:
            sticker = await interaction.guild.create_sticker(
                name="my avatar", description="made by emoji3d", emoji="😀",
                file=discord.File(io.BytesIO(png_bytes(animated=True)), "avatar.png"))
        except discord.HTTPException as e:
            await interaction.followup.send(f"failed:{e.code}", ephemeral=True)
            return
        await interaction.followup.send(f"added:{sticker.id}", ephemeral=True)


class RenameModal(discord.ui.Modal, title="Rename"):
    name = discord.ui.TextInput(label="Name", max_length=30)


class Extras(discord.ui.View):
    """Buttons answering with UPDATE_MESSAGE (7), DEFERRED_UPDATE (6) and MODAL (9)."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Refresh", custom_id="emoji3d:refresh")
    async def refresh(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content="refreshed", view=None)

    @discord.ui.button(label="Later", custom_id="emoji3d:later")
    async def later(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="updated later")

    @discord.ui.button(label="Rename", custom_id="emoji3d:rename")
    async def rename(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_modal(RenameModal())


class EmojiCog(commands.Cog):
    emoji = app_commands.Group(name="emoji", description="Make 3D emoji")

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    @emoji.command(name="create", description="Make an avatar from a selfie")
    @app_commands.describe(selfie="A photo of your face", style="House or global style")
    async def create(self, interaction: discord.Interaction, selfie: discord.Attachment,
                     style: str | None = None) -> None:
        await interaction.response.defer(thinking=True)
        data = await selfie.read()
        self.seen.append({"filename": selfie.filename, "size": selfie.size, "bytes": data,
                          "content_type": selfie.content_type, "style": style})
        await interaction.edit_original_response(content="progress 50%")
        await interaction.followup.send("done", file=discord.File(io.BytesIO(png_bytes()),
                                                                   "sticker.png"),
                                        view=AddToServer())

    @create.autocomplete("style")
    async def style_autocomplete(self, interaction: discord.Interaction,
                                 current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=s, value=s) for s in STYLES if current in s]

    @emoji.command(name="later", description="Defer, then deliver from a background task")
    async def later(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)

        async def deliver() -> None:
            await asyncio.sleep(0.05)
            await interaction.followup.send("background result")

        self.tasks.add(asyncio.create_task(deliver()))

    @emoji.command(name="wait", description="Defer and do nothing else")
    async def wait(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)


class HouseStyleCog(commands.Cog):
    housestyle = app_commands.Group(
        name="housestyle", description="Server house styles",
        default_permissions=discord.Permissions(manage_expressions=True), guild_only=True)

    @housestyle.command(name="list", description="List house styles")
    @app_commands.checks.has_permissions(manage_expressions=True)
    async def list_(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("styles:" + ",".join(STYLES), ephemeral=True)

    async def cog_app_command_error(self, interaction: discord.Interaction,
                                    error: app_commands.AppCommandError) -> None:
        if isinstance(error, app_commands.MissingPermissions):
            await interaction.response.send_message("refused:" + ",".join(error.missing_permissions),
                                                    ephemeral=True)
            return
        raise error


class ThrowawayBot(commands.Bot):
    def __init__(self) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default())
        self.cog = EmojiCog()

    async def setup_hook(self) -> None:
        await self.add_cog(self.cog)
        await self.add_cog(HouseStyleCog())
        self.add_view(AddToServer())
        self.add_view(Extras())


def run_bot(test: Callable[[DiscordHarness, World], Awaitable[None]], **world_kw: Any) -> None:
    async def main() -> None:
        async with running_bot(ThrowawayBot(), **world_kw) as (h, world):
            await test(h, world)

    asyncio.run(asyncio.wait_for(main(), timeout=60))


# ----------------------------------------------------------- part 1: real bot


def test_login_ready_and_sync_reach_the_fake() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        bot = h.bot
        assert bot.user is not None and str(bot.user.id) == w.bot_user["id"]
        guild = bot.get_guild(int(w.guild_id))
        assert guild is not None and guild.sticker_limit == 5
        assert guild.me is not None and guild.member_count == 4
        assert guild.get_channel(int(w.channel["id"])) is not None
        keys = [c.key for c in h.server.calls]
        assert keys[:2] == ["GET /users/@me", "GET /oauth2/applications/@me"]
        put = h.server.calls_to("PUT", "/applications/{application_id}/commands", ok_only=True)
        assert len(put) == 1
        emoji_cmd, house_cmd = sorted(put[0].json, key=lambda c: c["name"])
        assert {o["name"] for o in emoji_cmd["options"]} == {"create", "later", "wait"}
        assert int(house_cmd["default_member_permissions"]) == payloads.permission_bits(
            "MANAGE_GUILD_EXPRESSIONS")
        assert all(c.headers["Authorization"] == "Bot fake-bot-token" for c in h.server.calls)
        h.assert_no_errors()

    run_bot(t)


def test_create_flow_defers_edits_and_follows_up_with_a_file() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        selfie = png_bytes(64, 48)
        att = h.upload(selfie, "me.png", "image/png")
        payload = h.slash("emoji create", w.member, attachments=[att], options=[
            payloads.option("selfie", "attachment", att["id"]), payloads.option("style", "string", "anime")])
        interaction = await h.deliver(payload)
        h.assert_no_errors()
        assert isinstance(interaction, discord.Interaction)
        assert interaction.command is not None and interaction.command.qualified_name == "emoji create"
        (seen,) = h.bot.cog.seen
        assert seen == {"filename": "me.png", "size": len(selfie), "bytes": selfie,
                        "content_type": "image/png", "style": "anime"}
        s = h.server
        (cb,) = s.calls_to("POST", "/interactions/{interaction_id}/{token}/callback")
        assert cb.json["type"] == 5 and cb.status == 200
        (edit,) = s.calls_to("PATCH", "/webhooks/{application_id}/{token}/messages/{message_id}")
        assert edit.params["message_id"] == "@original" and edit.json["content"] == "progress 50%"
        (fu,) = s.calls_to("POST", "/webhooks/{application_id}/{token}")
        assert fu.json["content"] == "done"
        (f,) = fu.files
        assert f.filename == "sticker.png" and sniff_image(f.data) == ("png", 320, 320)
        assert fu.json["components"][0]["components"][0]["custom_id"] == ADD_ID
        original = s.original_response(payload["token"])
        assert original is not None and original["content"] == "progress 50%"
        assert not original["flags"] & (1 << 7)  # no longer "thinking"
        (msg,) = s.followups(payload["token"])
        assert s.file_bytes(msg["attachments"][0]["url"]) == f.data

    run_bot(t)


def test_background_follow_up_survives_a_webhook_429() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        route = "/webhooks/{application_id}/{token}"
        h.server.inject_rate_limit("POST", route, retry_after=0.02)
        payload = h.slash("emoji later", w.member)
        await h.deliver(payload)
        assert h.server.followups(payload["token"]) == []  # the task is still sleeping
        call = await h.server.wait_for_call(lambda c: c.key == f"POST {route}" and c.status == 200)
        assert call.json["content"] == "background result"
        assert [c.status for c in h.server.calls_to("POST", route)] == [429, 200]
        assert len(h.server.followups(payload["token"])) == 1
        h.assert_no_errors()

    run_bot(t)


def test_autocomplete_answers_choices() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        att = h.upload(png_bytes(8, 8), "me.png", "image/png")
        payload = h.autocomplete("emoji create", w.member, attachments=[att], options=[
            payloads.option("selfie", "attachment", att["id"]),
            payloads.option("style", "string", "pix", focused=True)])
        await h.deliver(payload)
        h.assert_no_errors()
        (cb,) = h.server.calls_to("POST", "/interactions/{interaction_id}/{token}/callback")
        assert cb.json["type"] == 8
        assert h.server.interaction(payload["token"]).response_data == [
            {"name": "pixar", "value": "pixar"}, {"name": "pixel-art", "value": "pixel-art"}]
        assert h.bot.cog.seen == []  # the command itself did not run

    run_bot(t)


async def _result_message(h: DiscordHarness, w: World) -> dict[str, Any]:
    att = h.upload(png_bytes(8, 8), "me.png", "image/png")
    payload = h.slash("emoji create", w.member, attachments=[att],
                      options=[payloads.option("selfie", "attachment", att["id"])])
    await h.deliver(payload)
    (msg,) = h.server.followups(payload["token"])
    return msg


def test_button_creates_one_sticker_despite_a_429() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        msg = await _result_message(h, w)
        route = "/guilds/{guild_id}/stickers"
        h.server.inject_rate_limit("POST", route, retry_after=0.05)
        click = h.click(ADD_ID, w.moderator, message=msg)
        await h.deliver(click)
        h.assert_no_errors()
        attempts = h.server.calls_to("POST", route)
        assert [c.status for c in attempts] == [429, 200]
        assert attempts[0].injected == "rate_limit"
        assert attempts[1].form == {"name": "my avatar", "description": "made by emoji3d",
                                    "tags": "😀"}
        assert attempts[0].files[0].data == attempts[1].files[0].data  # file re-sent whole
        (sticker,) = h.server.stickers(w.guild_id)
        assert sticker.payload["format_type"] == 2 and (sticker.width, sticker.height) == (320, 320)
        (fu,) = h.server.followups(click["token"])
        assert fu["content"] == f"added:{sticker.payload['id']}" and fu["flags"] & 64

    run_bot(t)


def test_a_429_that_lands_anyway_makes_a_duplicate() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        msg = await _result_message(h, w)
        h.server.inject_rate_limit("POST", "/guilds/{guild_id}/stickers", retry_after=0.01,
                                   lands=True)
        await h.deliver(h.click(ADD_ID, w.moderator, message=msg))
        assert len(h.server.stickers(w.guild_id)) == 2

    run_bot(t)


def test_component_update_deferred_update_and_modal() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        channel = h.bot.get_channel(int(w.channel["id"]))
        sent = await channel.send("result", view=Extras())
        stored = h.server.channel_messages(w.channel["id"])[0]
        assert [c["custom_id"] for c in stored["components"][0]["components"]] == [
            "emoji3d:refresh", "emoji3d:later", "emoji3d:rename"]
        click = h.click("emoji3d:later", w.member, message=stored)
        await h.deliver(click)
        assert h.server.interaction(click["token"]).response_type == 6
        assert h.server.channel_messages(w.channel["id"])[0]["content"] == "updated later"
        click = h.click("emoji3d:rename", w.member, message=stored)
        await h.deliver(click)
        rec = h.server.interaction(click["token"])
        assert rec.response_type == 9 and rec.response_data["title"] == "Rename"
        click = h.click("emoji3d:refresh", w.member, message=stored)
        await h.deliver(click)
        msg = h.server.channel_messages(w.channel["id"])[0]
        assert h.server.interaction(click["token"]).response_type == 7
        assert msg["id"] == str(sent.id) and msg["content"] == "refreshed"
        assert msg["components"] == []
        h.assert_no_errors()

    run_bot(t)


def test_button_refused_without_create_expressions() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        msg = await _result_message(h, w)
        click = h.click(ADD_ID, w.member, message=msg)
        await h.deliver(click)
        h.assert_no_errors()
        assert h.server.stickers(w.guild_id) == []
        rec = h.server.interaction(click["token"])
        assert rec.response_type == 4
        original = h.server.original_response(click["token"])
        assert original["content"] == "no-permission" and original["flags"] & 64

    run_bot(t)


def test_sticker_slots_full_gives_30039() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        msg = await _result_message(h, w)
        click = h.click(ADD_ID, w.moderator, message=msg)
        await h.deliver(click)
        (fu,) = h.server.followups(click["token"])
        assert fu["content"] == "failed:30039"
        assert len(h.server.stickers(w.guild_id)) == 5

    run_bot(t, existing_stickers=5)


def test_bot_missing_permission_gives_50013() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        msg = await _result_message(h, w)
        click = h.click(ADD_ID, w.moderator, message=msg)
        await h.deliver(click)
        (fu,) = h.server.followups(click["token"])
        assert fu["content"] == "failed:50013"

    run_bot(t, bot_permissions=payloads.permission_bits("VIEW_CHANNEL", "SEND_MESSAGES", "ATTACH_FILES"))


def test_expired_token_edit_fails_and_a_dm_works() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        payload = h.slash("emoji wait", w.member)
        interaction = await h.deliver(payload)
        h.server.expire_token(payload["token"])
        with pytest.raises(discord.NotFound) as err:
            await interaction.edit_original_response(content="late result")
        assert err.value.code == 10015
        with pytest.raises(discord.NotFound):
            await interaction.followup.send("late result")
        dm = await interaction.user.send("your stickers", file=discord.File(
            io.BytesIO(png_bytes()), "sticker.png"))
        (sent,) = h.server.dm_messages(w.member["user"]["id"])
        assert str(dm.id) == sent["id"] and sent["content"] == "your stickers"
        assert len(sent["attachments"]) == 1
        (open_dm,) = h.server.calls_to("POST", "/users/@me/channels")
        assert str(open_dm.json["recipient_id"]) == w.member["user"]["id"]

    run_bot(t)


def test_dm_to_a_user_with_closed_dms_is_forbidden() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        h.server.close_dms(w.member["user"]["id"])
        user = await h.bot.fetch_user(int(w.member["user"]["id"]))
        with pytest.raises(discord.Forbidden) as err:
            await user.send("hi")
        assert err.value.code == 50007

    run_bot(t)


def test_second_initial_response_is_rejected_by_discord_py_or_the_fake() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        payload = h.slash("emoji wait", w.member)
        interaction = await h.deliver(payload)
        # discord.py tracks its own state; a fresh Interaction object for the same
        # payload bypasses that, so the server rule is what answers.
        again = discord.Interaction(data=payload, state=h.state)
        with pytest.raises(discord.HTTPException) as err:
            await again.response.send_message("second")
        assert err.value.code == 40060
        with pytest.raises(discord.InteractionResponded):
            await interaction.response.send_message("second")

    run_bot(t)


def test_house_style_permission_check_allowed_and_refused() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        assert h.command_visible("housestyle list", w.moderator)
        assert not h.command_visible("housestyle list", w.member)
        ok = h.slash("housestyle list", w.moderator)
        await h.deliver(ok)
        assert h.server.original_response(ok["token"])["content"].startswith("styles:pixar")
        # A server may grant the command to everyone; the runtime check still refuses.
        no = h.slash("housestyle list", w.member)
        interaction = await h.deliver(no)
        assert not interaction.permissions.manage_expressions
        assert h.server.original_response(no["token"])["content"] == "refused:manage_expressions"
        h.assert_no_errors()

    run_bot(t)


def test_emit_feeds_other_gateway_events() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        sticker = payloads.guild_sticker(h.server.ids(), w.guild_id, "from gateway", tags="smile")
        h.emit("GUILD_STICKERS_UPDATE", {"guild_id": w.guild_id, "stickers": [sticker]})
        guild = h.bot.get_guild(int(w.guild_id))
        assert [s.name for s in guild.stickers] == ["from gateway"]
        with pytest.raises(ValueError, match="no parser"):
            h.emit("NOT_AN_EVENT", {})

    run_bot(t)


def test_slash_command_in_a_dm() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        user = w.member["user"]
        payload = h.slash("emoji wait", user)
        interaction = await h.deliver(payload)
        h.assert_no_errors()
        assert interaction.guild is None and isinstance(interaction.channel, discord.DMChannel)
        assert isinstance(interaction.user, discord.User) and str(interaction.user.id) == user["id"]
        (msg,) = h.server.dm_messages(user["id"])
        assert msg["flags"] & (1 << 7)  # deferred: "thinking"
        await interaction.edit_original_response(content="done")
        assert h.server.dm_messages(user["id"])[0]["content"] == "done"

    run_bot(t)


def test_unknown_command_is_logged_not_raised() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        payload = h.slash("emoji wait", w.member)
        payload["data"]["name"] = "nosuch"
        await h.deliver(payload)
        assert any("nosuch" in str(r.exc_info[1]) for r in h.errors if r.exc_info)
        with pytest.raises(AssertionError, match="logged errors"):
            h.assert_no_errors()

    run_bot(t)


def test_malformed_payload_raises_from_deliver() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        payload = h.slash("emoji wait", w.member)
        del payload["version"]
        with pytest.raises(KeyError, match="version"):
            await h.deliver(payload)

    run_bot(t)


def test_restarted_bot_delivers_by_webhook_then_falls_back_to_dm() -> None:
    async def main() -> None:
        async with FakeDiscord() as server:
            w = build_world(server)
            async with DiscordHarness(ThrowawayBot(), server) as h1:
                payload = h1.slash("emoji wait", w.member)
                await h1.deliver(payload)
            app_id, token = int(w.application["id"]), payload["token"]
            # A new process: fresh Bot, same Discord; it only kept app id + token.
            async with DiscordHarness(ThrowawayBot(), server) as h2:
                hook = discord.Webhook.partial(app_id, token, client=h2.bot)
                sent = await hook.send("result", wait=True, file=discord.File(
                    io.BytesIO(png_bytes()), "s.png"))
                assert [m["id"] for m in server.followups(token)] == [str(sent.id)]
                server.expire_token(token)
                with pytest.raises(discord.NotFound):
                    await hook.send("later result", wait=True)
                user = await h2.bot.fetch_user(int(w.member["user"]["id"]))
                await user.send("later result")
                assert server.dm_messages(w.member["user"]["id"])[0]["content"] == "later result"
                h2.assert_no_errors()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_channel_message_with_file_and_edit() -> None:
    async def t(h: DiscordHarness, w: World) -> None:
        channel = h.bot.get_channel(int(w.channel["id"]))
        assert isinstance(channel, discord.TextChannel)
        m = await channel.send("hello", file=discord.File(io.BytesIO(b"GIF89a\x10\x00\x10\x00"),
                                                          "a.gif"))
        assert m.attachments[0].filename == "a.gif"
        m = await m.edit(content="edited", attachments=[])
        stored = h.server.channel_messages(w.channel["id"])[0]
        assert stored["content"] == "edited" and stored["attachments"] == []
        assert stored["edited_timestamp"] is not None and m.edited_at is not None
        emoji = await channel.guild.create_custom_emoji(name="me_small", image=png_bytes(128, 128))
        assert h.server.emojis(w.guild_id)[0]["id"] == str(emoji.id)
        member = await channel.guild.fetch_member(int(w.moderator["user"]["id"]))
        assert member.get_role(int(w.mod_role_id)) is not None

    run_bot(t)


# ------------------------------------------------------- part 2: raw HTTP rules


class ManualClock:
    """Seconds that only move when a test says so (for the token clocks)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def run_raw(test: Callable[[FakeDiscord, World, aiohttp.ClientSession], Awaitable[None]],
            **kw: Any) -> None:
    async def main() -> None:
        async with FakeDiscord(config=ServerConfig(**kw), clock=ManualClock()) as server:
            world = build_world(server)
            headers = {"Authorization": f"Bot {server.config.bot_token}"}
            async with aiohttp.ClientSession(headers=headers) as session:
                await test(server, world, session)

    asyncio.run(asyncio.wait_for(main(), timeout=30))


def _ctx(server: FakeDiscord, w: World) -> payloads.InteractionContext:
    return payloads.InteractionContext(application_id=w.application["id"], channel=w.channel,
                                invoker=w.member, guild_id=w.guild_id)


def _sticker_form(name: str, data: bytes, *, tags: str = "😀") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="s.png", content_type="image/png")
    form.add_field("name", name)
    form.add_field("description", "")
    form.add_field("tags", tags)
    return form


def test_raw_rate_limit_answer_has_the_headers_discord_py_needs() -> None:
    async def t(server: FakeDiscord, w: World, s: aiohttp.ClientSession) -> None:
        server.inject_rate_limit("GET", "/users/@me", retry_after=1.5, is_global=True)
        async with s.get(server.api_base + "/users/@me") as r:
            assert r.status == 429 and r.content_type == "application/json"
            assert r.headers["Via"] and r.headers["Retry-After"] == "2"
            assert r.headers["X-RateLimit-Global"] == "true"
            assert float(r.headers["X-RateLimit-Reset-After"]) == 1.5
            body = await r.json()
            assert body["retry_after"] == 1.5 and body["global"] is True
        async with s.get(server.api_base + "/users/@me") as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert int(r.headers["X-RateLimit-Remaining"]) > 0

    run_raw(t)


def test_raw_unauthorized_and_unknown_routes() -> None:
    async def t(server: FakeDiscord, w: World, s: aiohttp.ClientSession) -> None:
        async with s.get(server.api_base + "/users/@me", headers={"Authorization": "Bot nope"}) as r:
            assert r.status == 401 and (await r.json())["code"] == 0
        async with s.get(server.api_base + "/no/such/route") as r:
            assert r.status == 404 and r.content_type == "application/json"
        async with s.get(server.api_base + f"/guilds/{w.guild_id}/members/1") as r:
            assert r.status == 404 and (await r.json())["code"] == 10007

    run_raw(t)


def test_raw_interaction_timing_rules() -> None:
    async def t(server: FakeDiscord, w: World, s: aiohttp.ClientSession) -> None:
        ctx = _ctx(server, w)
        late = payloads.slash_interaction(ctx, iid=server.ids(), token="tok-late", command="emoji",
                                   command_id="1")
        server.register_interaction(late)
        server.clock.advance(3.5)  # type: ignore[attr-defined]
        url = f"{server.api_base}/interactions/{late['id']}/tok-late/callback"
        async with s.post(url, json={"type": 5}) as r:
            assert r.status == 404 and (await r.json())["code"] == 10062
        ok = payloads.slash_interaction(ctx, iid=server.ids(), token="tok-ok", command="emoji",
                                 command_id="1")
        server.register_interaction(ok)
        url = f"{server.api_base}/interactions/{ok['id']}/tok-ok/callback"
        async with s.post(url, json={"type": 5}) as r:
            assert r.status == 204
        async with s.post(url, json={"type": 4, "data": {"content": "x"}}) as r:
            assert r.status == 400 and (await r.json())["code"] == 40060
        hook = f"{server.api_base}/webhooks/{w.application['id']}/tok-ok/messages/@original"
        server.clock.advance(14 * 60)  # type: ignore[attr-defined]
        async with s.patch(hook, json={"content": "still in time"}) as r:
            assert r.status == 200 and (await r.json())["content"] == "still in time"
        server.clock.advance(61)  # type: ignore[attr-defined]
        async with s.patch(hook, json={"content": "too late"}) as r:
            assert r.status == 404 and (await r.json())["code"] == 10015

    run_raw(t)


def test_raw_sticker_rules() -> None:
    async def t(server: FakeDiscord, w: World, s: aiohttp.ClientSession) -> None:
        url = f"{server.api_base}/guilds/{w.guild_id}/stickers"

        async def post(form: aiohttp.FormData) -> tuple[int, dict[str, Any]]:
            async with s.post(url, data=form) as r:
                return r.status, await r.json()

        status, body = await post(_sticker_form("x", png_bytes(8, 8)))
        assert status == 400 and body["code"] == 50035 and "name" in body["errors"]
        big = png_bytes(8, 8) + b"\x00" * (512 * 1024)
        status, body = await post(_sticker_form("big one", big))
        assert status == 400 and body["code"] == 50045
        status, body = await post(_sticker_form("jpeg one", b"\xff\xd8\xff\xe0" + b"0" * 64))
        assert status == 400 and body["code"] == 50046
        lottie = json.dumps({"v": "5.5.2", "w": 320, "h": 320, "layers": []}).encode()
        status, body = await post(_sticker_form("lottie one", lottie))
        assert status == 400 and body["code"] == 50046
        status, body = await post(_sticker_form("bad gif", b"GIF89a\x40\x01\x40\x01\x00"))
        assert status == 400 and body["code"] == 50046
        status, body = await post(_sticker_form("gif one", _animation("GIF", 3, 100)))
        assert status == 200 and body["format_type"] == 4
        for i in range(4):
            status, body = await post(_sticker_form(f"apng {i}", png_bytes(8, 8, animated=True)))
            assert status == 200 and body["format_type"] == 2
        status, body = await post(_sticker_form("sixth", png_bytes(8, 8)))
        assert status == 400 and body["code"] == 30039
        server.set_bot_permissions(w.guild_id, payloads.permission_bits("SEND_MESSAGES"))
        sid = server.stickers(w.guild_id)[0].payload["id"]
        async with s.delete(f"{url}/{sid}") as r:
            assert r.status == 403 and (await r.json())["code"] == 50013

    run_raw(t)


def test_raw_ephemeral_messages_are_only_reachable_by_webhook() -> None:
    async def t(server: FakeDiscord, w: World, s: aiohttp.ClientSession) -> None:
        p = payloads.slash_interaction(_ctx(server, w), iid=server.ids(), token="tok-e",
                                command="emoji", command_id="1")
        server.register_interaction(p)
        url = f"{server.api_base}/interactions/{p['id']}/tok-e/callback?with_response=true"
        async with s.post(url, json={"type": 4, "data": {"content": "secret", "flags": 64}}) as r:
            body = await r.json()
            assert r.status == 200 and body["interaction"]["response_message_ephemeral"] is True
            mid = body["resource"]["message"]["id"]
        async with s.get(f"{server.api_base}/channels/{w.channel['id']}/messages/{mid}") as r:
            assert r.status == 404 and (await r.json())["code"] == 10008
        hook = f"{server.api_base}/webhooks/{w.application['id']}/tok-e/messages/@original"
        async with s.get(hook) as r:
            assert r.status == 200 and (await r.json())["content"] == "secret"

    run_raw(t)


def test_raw_strict_sticker_size() -> None:
    async def t(server: FakeDiscord, w: World, s: aiohttp.ClientSession) -> None:
        url = f"{server.api_base}/guilds/{w.guild_id}/stickers"
        async with s.post(url, data=_sticker_form("small", png_bytes(8, 8))) as r:
            assert r.status == 400
        async with s.post(url, data=_sticker_form("exact", png_bytes(320, 320))) as r:
            assert r.status == 200

    run_raw(t, strict_sticker_size=True)


# ---------------------------------------------------------------- payloads


def test_payload_validation_and_permissions() -> None:
    ids = payloads.Snowflakes()
    a, b = ids.next(), ids.next()
    assert b > a and payloads.snowflake_time(a).year == 2026
    with pytest.raises(ValueError, match="unknown Discord permission"):
        payloads.permission_bits("MAKE_COFFEE")
    with pytest.raises(ValueError, match="premium_tier"):
        payloads.sticker_limit(4)
    assert [payloads.sticker_limit(t) for t in range(4)] == [5, 15, 30, 60]
    gid = ids()
    mod = ids()
    roles = [payloads.role(gid, "@everyone", payloads.permission_bits("VIEW_CHANNEL", "SEND_MESSAGES")),
             payloads.role(mod, "mods", payloads.permission_bits("MANAGE_GUILD_EXPRESSIONS"))]
    m = payloads.member(payloads.user(ids(), "carol"), roles=[mod])
    g = payloads.guild(gid, "g", owner_id=ids(), roles=roles)
    ch = payloads.text_channel(ids(), gid, overwrites=[
        payloads.overwrite(gid, kind=0, deny=payloads.permission_bits("SEND_MESSAGES")),
        payloads.overwrite(m["user"]["id"], kind=1, allow=payloads.permission_bits("ATTACH_FILES"))])
    perms = payloads.compute_permissions(g, m, ch)
    assert perms & payloads.permission_bits("MANAGE_GUILD_EXPRESSIONS", "ATTACH_FILES", "VIEW_CHANNEL")\
        == payloads.permission_bits("MANAGE_GUILD_EXPRESSIONS", "ATTACH_FILES", "VIEW_CHANNEL")
    assert not perms & payloads.permission_bits("SEND_MESSAGES")
    ctx = payloads.InteractionContext(application_id="1", channel=ch, invoker=m, guild_id=gid)
    with pytest.raises(ValueError, match="not listed"):
        payloads.slash_interaction(ctx, iid="5", token="t", command="emoji create", command_id="2",
                            options=[payloads.option("selfie", "attachment", "99")])
    with pytest.raises(ValueError, match="exactly one focused"):
        payloads.autocomplete_interaction(ctx, iid="5", token="t", command="emoji create",
                                   command_id="2", options=[payloads.option("style", "string", "a")])
    data = payloads.slash_interaction(ctx, iid="5", token="t", command="emoji group create",
                               command_id="2", options=[payloads.option("n", "integer", 3)])["data"]
    assert data["options"][0]["type"] == 2 and data["options"][0]["options"][0]["type"] == 1
    assert data["options"][0]["options"][0]["options"] == [{"name": "n", "type": 4, "value": 3}]


def _animation(fmt: str, frames: int, ms: int) -> bytes:
    from PIL import Image

    imgs = [Image.new("RGB", (32, 32), (i * 5 % 256, 0, 0)) for i in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, format=fmt, save_all=True, append_images=imgs[1:], duration=ms, loop=0)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_animation_timing_reads_pillow_files(fmt: str) -> None:
    frames, seconds = animation_timing(_animation(fmt, 12, 250))
    assert frames == 12 and seconds == pytest.approx(3.0)
    assert animation_timing(png_bytes(4, 4)) == (1, 0.0)
    with pytest.raises(ValueError):
        animation_timing(_animation("GIF", 3, 100)[:40])


def test_raw_sticker_animation_limits() -> None:
    async def t(server: FakeDiscord, w: World, s: aiohttp.ClientSession) -> None:
        url = f"{server.api_base}/guilds/{w.guild_id}/stickers"
        async with s.post(url, data=_sticker_form("long gif", _animation("GIF", 30, 200))) as r:
            assert r.status == 400 and (await r.json())["code"] == 170007
        async with s.post(url, data=_sticker_form("ok apng", _animation("PNG", 20, 200))) as r:
            body = await r.json()
            assert r.status == 200 and body["format_type"] == 2

    run_raw(t)
