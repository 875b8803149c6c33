"""Thin slash-command handlers: ``/emoji create|privacy|delete-my-data`` and
``/housestyle add|remove|list``, plus the persistent consent / delete views.

Every handler turns an interaction into ``bots.core`` calls and renders the
answer with ``emoji3d.texts``. Refusals are :class:`UserFacingError` and are
answered once (ephemeral) by :func:`answer_error`, which the bot installs as
the command tree's error handler; anything else is logged and answered with the ``internal`` text, so nothing a member sends can
crash the bot. Heavy work (decoding, face checks) runs in a worker thread.

``/emoji create`` order of checks: consent (else the consent prompt), the
per-user cooldown (``cfg.discord.cooldown_seconds``, counted from the last
placed order), the attachments' announced ``size`` and ``content_type``
(before any download), then defer (thinking) — all well within Discord's 3 s
— then download, face checks, style, order (which enforces one active job per
user and the daily quota). Style option values are style ids (from
autocomplete) or typed names; without a style or style image the first listed
style (house styles first) is used.

Persistent custom ids: ``emoji3d:consent``, ``emoji3d:del:yes``, ``emoji3d:del:no``.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from emoji3d.errors import UserFacingError
from emoji3d.texts import explain, message, text
from storage import deliveries
from storage import styles as st

from bots import core
from bots.discord.interactions import PLATFORM, InteractionRef, ServerOnly, reply

if TYPE_CHECKING:
    from bots.discord.app import EmojiBot

log = logging.getLogger("emoji3d.discord")

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
AUTOCOMPLETE_MAX = 25


class BadAttachment(UserFacingError):
    """params: ``content_type``."""

    key = "discord_bad_attachment"


class Cooldown(UserFacingError):
    """params: ``seconds`` (left to wait)."""

    key = "discord_cooldown"


class NoStyle(UserFacingError):
    key = "discord_no_style"


class NeedManageExpressions(UserFacingError):
    key = "discord_need_manage_expressions"


def check_attachment(res: core.BotResources, att: discord.Attachment) -> None:
    """Announced size and content type, before any download."""
    core.check_announced_size(res, att.size)
    ctype = (att.content_type or "").split(";")[0].strip().lower()
    if ctype and ctype not in IMAGE_TYPES:
        raise BadAttachment(f"attachment {att.filename!r} is {ctype}", content_type=ctype)


def style_label(c: core.StyleChoice) -> str:
    return ((text("style_house_prefix") if c.house else "") + c.name)[:100]


def resolve_style(choices: list[core.StyleChoice], value: str | None) -> core.StyleChoice:
    """An autocomplete value (style id) or a typed name; None = the first listed style."""
    if not choices and value is None:
        raise NoStyle("no styles are listed")
    if value is None:
        return choices[0]
    v = value.strip()
    for c in choices:
        if v.isdigit() and c.style_id == int(v):
            return c
    folded = v.removeprefix(text("style_house_prefix")).casefold()
    for c in choices:
        if c.name.casefold() == folded:
            return c
    raise st.StyleNotFound(f"no listed style {value!r}", name=v[:50])


class _Base(commands.Cog):
    def __init__(self, bot: "EmojiBot") -> None:
        self.bot = bot

    @property
    def res(self) -> core.BotResources:
        return self.bot.res

    def community(self, interaction: discord.Interaction) -> int | None:
        g = interaction.guild
        if g is None:
            return None
        return core.community_id_for(self.res, PLATFORM, str(g.id), g.name)
    # No cog_app_command_error: discord.py calls the tree's on_error for every
    # failed command as well, and that one (app.py) answers; two would answer twice.


async def answer_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Answer an app-command error: its text for UserFacingErrors, a generic
    apology (and a log line) for anything else."""
    err = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if isinstance(err, UserFacingError):
        log.info("refused for user %s: %s (%s)", interaction.user.id, err.key, err.detail)
        body = explain(err)
    elif isinstance(err, app_commands.NoPrivateMessage):
        body = message("discord_server_only")
    elif isinstance(err, app_commands.MissingPermissions):
        body = message("discord_need_manage_expressions")
    elif isinstance(err, app_commands.BotMissingPermissions):
        body = message("discord_bot_missing_permission", permission=", ".join(err.missing_permissions))
    else:
        log.error("command %s failed for user %s", getattr(interaction.command, "qualified_name", "?"),
                  interaction.user.id, exc_info=err)
        body = message("internal")
    try:
        if interaction.response.is_done() and interaction.response.type is not None \
                and interaction.response.type.value == 5:  # deferred "thinking": replace it
            await interaction.edit_original_response(content=body)
        else:
            await reply(interaction, body)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc)


# ----------------------------------------------------------------------------- views

class ConsentView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)
        self.agree.label = text("consent_button")

    @discord.ui.button(label="I agree", style=discord.ButtonStyle.success, custom_id="emoji3d:consent")
    async def agree(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        res: core.BotResources = interaction.client.res  # type: ignore[attr-defined]
        core.give_consent(res, core.ensure_user(res, PLATFORM, str(interaction.user.id)))
        await interaction.response.send_message(text("discord_consent_thanks"), ephemeral=True)

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item) -> None:
        await answer_error(interaction, error)


class DeleteView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)
        self.yes.label, self.no.label = text("delete_yes"), text("delete_no")

    @discord.ui.button(label="yes", style=discord.ButtonStyle.danger, custom_id="emoji3d:del:yes")
    async def yes(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        bot: "EmojiBot" = interaction.client  # type: ignore[assignment]
        await interaction.response.defer(ephemeral=True, thinking=True)

        async def no_sets(name: str) -> None:  # Discord packs have no platform-owned sets
            return None

        uid = str(interaction.user.id)
        result = await core.delete_my_data(bot.res, PLATFORM, uid, no_sets)
        for job_id, w in list(bot.notifier.watches.items()):
            if w.platform_user_id == uid:
                bot.notifier.watches.pop(job_id, None)
                bot.sender.forget(job_id)
        bot.forget_cooldown(interaction.user.id)
        if result.summary is None:
            await interaction.followup.send(text("delete_nothing"), ephemeral=True)
            return
        await interaction.followup.send(text("discord_delete_done", packs=result.summary.packs,
                                             selfies=result.summary.selfies), ephemeral=True)

    @discord.ui.button(label="no", style=discord.ButtonStyle.secondary, custom_id="emoji3d:del:no")
    async def no(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_message(text("delete_kept"), ephemeral=True)

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item) -> None:
        await answer_error(interaction, error)


# ----------------------------------------------------------------------------- /emoji

STRENGTH_CHOICES = [app_commands.Choice(name=p, value=p) for p in core.STRENGTHS]


class EmojiCog(_Base):
    emoji = app_commands.Group(name="emoji", description="Make animated 3D cartoon emoji from a selfie")

    @emoji.command(name="create", description="Make a 3D emoji pack from your selfie")
    @app_commands.describe(selfie="A photo of your face", style="A house or global style",
                           style_image="Or your own style image (a portrait drawn in that style)",
                           strength="How strong the style is")
    @app_commands.choices(strength=STRENGTH_CHOICES)
    async def create(self, interaction: discord.Interaction, selfie: discord.Attachment,
                     style: str | None = None, style_image: discord.Attachment | None = None,
                     strength: app_commands.Choice[str] | None = None) -> None:
        started = self.bot.sender.clock()
        res = self.res
        user = core.ensure_user(res, PLATFORM, str(interaction.user.id))
        if user.consent_at is None:
            await interaction.response.send_message(text("discord_consent", **core.privacy_params(res.cfg)),
                                                    view=ConsentView(), ephemeral=True)
            return
        self.bot.check_cooldown(interaction.user.id)
        check_attachment(res, selfie)
        if style_image is not None:
            check_attachment(res, style_image)
        community = self.community(interaction)
        choice = None if style_image is not None else resolve_style(core.list_style_choices(res, community), style)
        preset = strength.value if strength is not None else "medium"
        core.strength_value(preset)
        core.check_limits(res, user)  # fail fast, before downloading (place_order checks again)
        await interaction.response.defer(thinking=True)
        accepted = await asyncio.to_thread(core.accept_selfie, res, user, await selfie.read())
        if style_image is not None:
            digest = await asyncio.to_thread(core.accept_style_image, res, user, await style_image.read())
            placed = core.place_order(res, user, PLATFORM, preset=preset, own_exemplar=digest,
                                      seed=res.cfg.engine.seed)
        else:
            placed = core.place_order(res, user, PLATFORM, preset=preset, style_id=choice.style_id,
                                      seed=res.cfg.engine.seed)
        self.bot.stamp_cooldown(interaction.user.id)
        # sticker names use the name the member has here and now (no members intent needed later)
        deliveries.record_owner_name(res.db, placed.pack.id, PLATFORM, interaction.user.display_name)
        ref = InteractionRef(interaction.application_id, interaction.token, interaction.channel_id,
                             interaction.guild_id, started)
        self.bot.sender.attach(placed.job_id, ref)
        await self.bot.notifier.start(placed.job_id, placed.pack.id, user,
                                      chat_id=None if interaction.channel_id is None else str(interaction.channel_id),
                                      message_id="@original")
        if accepted.warnings:
            notes = "; ".join(message(k, **p) for k, p in accepted.warnings)
            await interaction.followup.send(text("discord_selfie_notes", notes=notes), ephemeral=True)

    @create.autocomplete("style")
    async def style_autocomplete(self, interaction: discord.Interaction,
                                 current: str) -> list[app_commands.Choice[str]]:
        try:
            choices = core.list_style_choices(self.res, self.community(interaction))
        except Exception:  # noqa: BLE001 - autocomplete must answer something
            log.exception("style autocomplete failed")
            return []
        q = (current or "").casefold().strip()
        out = [app_commands.Choice(name=style_label(c), value=str(c.style_id))
               for c in choices if q in c.name.casefold()]
        return out[:AUTOCOMPLETE_MAX]

    @emoji.command(name="privacy", description="What is stored about you and for how long")
    async def privacy(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(text("discord_privacy", **core.privacy_params(self.res.cfg)),
                                                ephemeral=True)

    @emoji.command(name="delete-my-data", description="Delete everything stored about you")
    async def delete_my_data(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(text("discord_delete_confirm"), view=DeleteView(), ephemeral=True)


# ----------------------------------------------------------------------------- /housestyle

def _require_manager(interaction: discord.Interaction) -> int:
    """Runtime check behind ``default_permissions`` (a server may grant the
    command to anyone). Returns the guild id."""
    if interaction.guild is None:
        raise ServerOnly("house styles belong to a server")
    p = interaction.permissions
    if not (p.manage_expressions or p.administrator):
        raise NeedManageExpressions(f"user {interaction.user.id} cannot manage expressions")
    return interaction.guild.id


class HouseStyleCog(_Base):
    housestyle = app_commands.Group(name="housestyle", description="This server's house styles",
                                    default_permissions=discord.Permissions(manage_expressions=True),
                                    guild_only=True)

    @housestyle.command(name="add", description="Add a house style from a portrait drawn in that style")
    @app_commands.describe(name="The style's name", image="A portrait in the style (one clear face)")
    async def add(self, interaction: discord.Interaction, name: str, image: discord.Attachment) -> None:
        _require_manager(interaction)
        check_attachment(self.res, image)
        await interaction.response.defer(ephemeral=True, thinking=True)
        community = self.community(interaction)
        adder = core.ensure_user(self.res, PLATFORM, str(interaction.user.id))
        data = await image.read()
        style = await asyncio.to_thread(core.house_style_add, self.res, community, True, name, data, adder)
        await interaction.followup.send(text("housestyle_added", name=style.name), ephemeral=True)

    @housestyle.command(name="remove", description="Remove a house style")
    @app_commands.describe(name="The style to remove")
    async def remove(self, interaction: discord.Interaction, name: str) -> None:
        _require_manager(interaction)
        style = core.house_style_remove(self.res, self.community(interaction), True, name)
        await interaction.response.send_message(text("housestyle_removed", name=style.name), ephemeral=True)

    @remove.autocomplete("name")
    async def remove_autocomplete(self, interaction: discord.Interaction,
                                  current: str) -> list[app_commands.Choice[str]]:
        if interaction.guild is None:
            return []
        q = (current or "").casefold()
        try:
            names = [s.name for s in core.house_style_list(self.res, self.community(interaction))]
        except Exception:  # noqa: BLE001 - autocomplete must answer something
            log.exception("house style autocomplete failed")
            return []
        return [app_commands.Choice(name=n, value=n) for n in names if q in n.casefold()][:AUTOCOMPLETE_MAX]

    @housestyle.command(name="list", description="List this server's house styles")
    async def list_(self, interaction: discord.Interaction) -> None:
        _require_manager(interaction)
        styles = core.house_style_list(self.res, self.community(interaction))
        if not styles:
            await interaction.response.send_message(text("discord_housestyle_none"), ephemeral=True)
            return
        names = ", ".join(f"{s.name} ({text('discord_style_state_' + s.status)})" for s in styles)
        await interaction.response.send_message(text("discord_housestyle_list", names=names), ephemeral=True)
