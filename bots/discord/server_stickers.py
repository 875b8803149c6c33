"""Adding a finished pack to a Discord server: the buttons and what they do.

The "Add to server" button is a ``discord.ui.DynamicItem`` whose custom id
carries the pack id and the guild id (``emoji3d:add:<pack>:<guild>``, guild 0 =
unknown), so it keeps working after a restart. Adding is idempotent: each
sticker's description ends with a marker ``#<pack>.<idx>``, and a sticker whose
marker is already in the guild is not created again (a retried click makes no
duplicates), and after creating, a copy made by a 429 that landed anyway and
was retried by discord.py is deleted again. Such a copy may hold the last free
slot: when Discord answers "maximum number of stickers", duplicates are removed
first and the sticker is tried once more before the slots count as full.
Sticker names start with the display name the member had when ordering
(stored with the pack by ``/emoji create``). When the sticker slots
are full, an "Add as custom emoji instead" button (``emoji3d:emoji:...``)
creates 128×128 custom emoji from the result's ``discord_emoji`` files, named
``e3d<pack>_<idx>_<expression>``, again skipped when the name already exists.

Every sticker created is recorded (:mod:`storage.guild_stickers`: guild,
sticker id, the file it shows). When the pack changes (a re-render, a remake),
the delivery calls :func:`sync_server_stickers` before it publishes: in each
recorded guild, stickers the new selection dropped are deleted and stickers
whose file changed are replaced (deleted, then created again with the new
file, name and marker); unchanged ones stay. It is crash-safe like the
Telegram set sync: the row is marked ``replacing`` before the old sticker is
deleted, so a sync interrupted between delete and create (a crash, a Discord
outage: the delivery fails and is retried) creates the replacement next time,
and a replacement created just before a crash is recognised by its new id.
A sticker the server's moderators removed is not brought back, and a server
the bot left, or where it lost the permission, is forgotten.

Custom emoji added instead are kept in step the same way (:mod:`storage.guild_emoji`,
:func:`sync_server_emoji`, called by the delivery after the stickers): the emoji of a
sticker the selection dropped is deleted, one whose file or name (the expression at
that index) changed is replaced, with the same ``replacing`` step; a replacement made
just before an interruption is recognised by its name and new id. Both syncs run one
loop (``_sync``); a ``_ServerExpressions`` subclass per kind says what differs: what
each row should show, how Discord lists and creates them, what to tidy afterwards.
"""
from __future__ import annotations

import asyncio
import io
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import discord

from emoji3d.texts import text
from storage import deliveries, guild_emoji, guild_stickers, packs, users
from storage.guild_expressions import ADDED, REPLACING, GuildExpression, GuildExpressionTable

from bots.core import BotResources
from bots.discord.interactions import (
    BotMissingPermission, EMOJI_TARGET, MAX_ANIMATED_EMOJIS, MAX_EMOJIS, MAX_STICKERS, MISSING_PERMISSIONS,
    NeedCreateExpressions, PLATFORM, PackGone, STICKER_TARGET, ServerOnly, file_extension, guarded, pack_of,
    result_of_pack, verified_files,
)

log = logging.getLogger("emoji3d.discord")


# ----------------------------------------------------------------------------- buttons

class AddToServerButton(discord.ui.DynamicItem[discord.ui.Button], template=r"emoji3d:add:(?P<pack>\d+):(?P<guild>\d+)"):
    """Stateless "Add to server" button: adds the pack's stickers to the guild."""

    def __init__(self, pack_id: int, guild_id: int = 0) -> None:
        super().__init__(discord.ui.Button(label=text("discord_add_button"), style=discord.ButtonStyle.primary,
                                           custom_id=f"emoji3d:add:{int(pack_id)}:{int(guild_id)}", emoji="➕"))
        self.pack_id, self.guild_id = int(pack_id), int(guild_id)

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str], /
                             ) -> "AddToServerButton":
        return cls(int(match["pack"]), int(match["guild"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, add_stickers(interaction, self.pack_id, self.guild_id))


class AddAsEmojiButton(discord.ui.DynamicItem[discord.ui.Button], template=r"emoji3d:emoji:(?P<pack>\d+):(?P<guild>\d+)"):
    """Offered when the sticker slots are full: add custom emoji instead."""

    def __init__(self, pack_id: int, guild_id: int = 0) -> None:
        super().__init__(discord.ui.Button(label=text("discord_emoji_button"), style=discord.ButtonStyle.secondary,
                                           custom_id=f"emoji3d:emoji:{int(pack_id)}:{int(guild_id)}"))
        self.pack_id, self.guild_id = int(pack_id), int(guild_id)

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str], /
                             ) -> "AddAsEmojiButton":
        return cls(int(match["pack"]), int(match["guild"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, add_emoji(interaction, self.pack_id, self.guild_id))


def result_view(pack_id: int, guild_id: int | None) -> discord.ui.View:
    v = discord.ui.View(timeout=None)
    v.add_item(AddToServerButton(pack_id, guild_id or 0))
    return v



async def _target_guild(interaction: discord.Interaction, guild_id: int) -> tuple[discord.Guild, discord.Permissions]:
    """The guild to add to and the clicker's permissions there."""
    if interaction.guild is not None:
        if guild_id and interaction.guild.id != guild_id:
            guild_id = interaction.guild.id  # a forwarded/copied button: act where it was clicked
        return interaction.guild, interaction.permissions
    if not guild_id:
        raise ServerOnly("button used outside a server")
    guild = interaction.client.get_guild(guild_id)
    if guild is None:  # not in this process's cache: another shard's process holds it
        try:
            guild = await interaction.client.fetch_guild(guild_id)
        except (discord.NotFound, discord.Forbidden):
            raise ServerOnly(f"the bot is no longer in server {guild_id}") from None
    member = guild.get_member(interaction.user.id)
    if member is None:
        try:
            member = await guild.fetch_member(interaction.user.id)
        except discord.NotFound:
            raise NeedCreateExpressions("not a member of the pack's server") from None
    return guild, member.guild_permissions


def _can_create(perms: discord.Permissions) -> bool:
    return bool(perms.create_expressions or perms.manage_expressions or perms.administrator)


def _bot_can_create(interaction: discord.Interaction, guild: discord.Guild) -> bool:
    """From the interaction's ``app_permissions`` when clicked in the guild;
    otherwise (a DM) unknown here, so True and Discord's 50013 answers."""
    if interaction.guild is not None and interaction.guild.id == guild.id:
        return _can_create(interaction.app_permissions)
    return True


def _owner_name(client: discord.Client, res: BotResources, pack: packs.Pack) -> str:
    """The display name the member had when ordering (stored with the pack); for
    packs ordered before names were kept, the cached user's name; else "emoji3d"."""
    try:
        stored = deliveries.owner_name(res.db, pack.id)
        if stored:
            return stored
        u = users.get_user(res.db, pack.user_id)
        du = client.get_user(int(u.platform_user_id))
        if du is not None:
            return du.display_name
    except Exception:  # noqa: BLE001 - a name is cosmetic
        log.warning("pack %s: owner name unavailable", pack.id, exc_info=True)
    return "emoji3d"


def sticker_marker(pack_id: int, idx: int) -> str:
    return f"#{pack_id}.{idx}"


def sticker_fields(owner: str, expression: str, pack_id: int, idx: int) -> tuple[str, str]:
    """(name 2-30 chars, description 2-100 chars ending with the marker)."""
    name = f"{owner[:18]} {expression}".strip()[:30]
    if len(name) < 2:
        name = f"emoji {idx}"
    marker = sticker_marker(pack_id, idx)
    desc = text("discord_sticker_description", name=owner, expression=expression)
    desc = f"{desc[:100 - len(marker) - 1]} {marker}"
    return name, desc


async def _checked_pack(interaction: discord.Interaction, pack_id: int, guild_id: int
                        ) -> tuple[BotResources, packs.Pack, discord.Guild]:
    res: BotResources = interaction.client.res  # type: ignore[attr-defined]
    guild, perms = await _target_guild(interaction, guild_id)
    if not _can_create(perms):
        raise NeedCreateExpressions(f"user {interaction.user.id} lacks Create Expressions")
    if not _bot_can_create(interaction, guild):
        raise BotMissingPermission("bot lacks Create Expressions", permission="Create Expressions")
    pack = pack_of(res, pack_id)
    if pack.platform != PLATFORM or pack.status != "published":
        raise PackGone(f"pack {pack_id} is {pack.status} on {pack.platform}")
    await interaction.response.defer(ephemeral=True, thinking=True)
    return res, pack, guild


async def add_stickers(interaction: discord.Interaction, pack_id: int, guild_id: int) -> None:
    res, pack, guild = await _checked_pack(interaction, pack_id, guild_id)
    rows = [s for s in packs.list_stickers(res.db, pack.id)]
    if not rows:
        raise PackGone(f"pack {pack.id} has no stickers")
    result = result_of_pack(res, pack)
    names = {s.idx: s.name for s in result.stickers} if result is not None else {}
    items, bad = await asyncio.to_thread(verified_files, res, [(f"s{r.idx}", r.blob_digest) for r in rows],
                                         STICKER_TARGET)
    data_by_idx = {int(n.split(".")[0][1:]): d for n, d in items}
    existing = await guild.fetch_stickers()
    present = {s.description.rsplit(" ", 1)[-1]: s for s in existing if s.description}
    recorded = {g.idx for g in guild_stickers.for_pack(res.db, pack.id).get(str(guild.id), [])}
    for r in rows:  # added before they were recorded: taken to show the pack's current files
        if r.idx not in recorded and sticker_marker(pack.id, r.idx) in present:
            guild_stickers.record_added(res.db, pack.id, guild.id, r.idx, present[sticker_marker(pack.id, r.idx)].id,
                                        r.blob_digest)
    owner = _owner_name(interaction.client, res, pack)
    added, already, failed, full = 0, 0, len(bad), False
    used = len(existing)
    for r in rows:
        if sticker_marker(pack.id, r.idx) in present:
            already += 1
            continue
        data = data_by_idx.get(r.idx)
        if data is None:
            continue
        if used >= guild.sticker_limit:
            full = True
            break
        name, desc = sticker_fields(owner, names.get(r.idx, f"emoji {r.idx}"), pack.id, r.idx)
        for attempt in (1, 2):
            try:
                created = await guild.create_sticker(
                    name=name, description=desc, emoji=r.emoji,
                    file=discord.File(io.BytesIO(data), filename=f"{name}.{file_extension(data)}"),
                    reason=f"emoji3d pack {pack.id} added by {interaction.user.id}")
            except discord.HTTPException as exc:
                if exc.code == MAX_STICKERS and attempt == 1 and await _drop_duplicates(guild, pack.id):
                    continue  # a copy made by a retried 429 held the slot; it is gone now: try again
                if exc.code == MAX_STICKERS:
                    full = True
                elif exc.code == MISSING_PERMISSIONS:
                    raise BotMissingPermission(str(exc), permission="Create Expressions") from None
                else:
                    log.warning("pack %s sticker %s refused by Discord: %s", pack.id, r.idx, exc)
                    failed += 1
                break
            guild_stickers.record_added(res.db, pack.id, guild.id, r.idx, created.id, r.blob_digest)
            packs.set_sticker_platform_state(res.db, r.id, "added")
            added += 1
            used += 1
            break
        if full:
            break
    if added:
        await _drop_duplicates(guild, pack.id)
    if full:
        body = text("discord_slots_full", limit=guild.sticker_limit, added=added, total=len(rows) - already)
        v = discord.ui.View(timeout=None)
        v.add_item(AddAsEmojiButton(pack.id, guild.id))
        await interaction.followup.send(body, ephemeral=True, view=v)
        return
    lines = [text("discord_added", added=added, existing=already)]
    if failed:
        lines.append(text("discord_add_failed", failed=failed))
    await interaction.followup.send("\n".join(lines), ephemeral=True)


async def _drop_duplicates(guild: discord.Guild, pack_id: int) -> int:
    """A 429 whose request landed anyway makes discord.py's retry create a
    second copy; keep the oldest sticker per marker of this pack, delete the
    rest. Returns how many were deleted."""
    seen: set[str] = set()
    dropped = 0
    prefix = f"#{pack_id}."
    for s in sorted(await guild.fetch_stickers(), key=lambda s: s.id):
        marker = (s.description or "").rsplit(" ", 1)[-1]
        if not marker.startswith(prefix):
            continue
        if marker in seen:
            try:
                await s.delete(reason="emoji3d: duplicate from a retried request")
                dropped += 1
            except discord.HTTPException as exc:
                log.warning("could not delete duplicate sticker %s: %s", s.id, exc)
            continue
        seen.add(marker)
    return dropped


def emoji_name(pack_id: int, idx: int, expression: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", f"e3d{pack_id}_{idx}_{expression}")
    return base[:32]


async def add_emoji(interaction: discord.Interaction, pack_id: int, guild_id: int) -> None:
    res, pack, guild = await _checked_pack(interaction, pack_id, guild_id)
    result = result_of_pack(res, pack)
    wanted = [s for s in (result.stickers if result else []) if EMOJI_TARGET in s.files]
    if not wanted:
        raise PackGone(f"pack {pack.id} has no emoji files")
    items, bad = await asyncio.to_thread(verified_files, res, [(f"s{s.idx}", s.files[EMOJI_TARGET]) for s in wanted],
                                         EMOJI_TARGET)
    data_by_idx = {int(n.split(".")[0][1:]): d for n, d in items}
    present = {e.name: e for e in await guild.fetch_emojis()}
    recorded = {g.idx for g in guild_emoji.for_pack(res.db, pack.id).get(str(guild.id), [])}
    added, already, failed, full = 0, 0, len(bad), False
    for s in wanted:
        name = emoji_name(pack.id, s.idx, s.name)
        if name in present:
            if s.idx not in recorded:  # added before they were recorded: taken to show the pack's current file
                guild_emoji.record_added(res.db, pack.id, guild.id, s.idx, present[name].id, s.files[EMOJI_TARGET],
                                         name=name)
            already += 1
            continue
        data = data_by_idx.get(s.idx)
        if data is None:
            continue
        try:
            created = await guild.create_custom_emoji(name=name, image=data,
                                                      reason=f"emoji3d pack {pack.id} added by {interaction.user.id}")
        except discord.HTTPException as exc:
            if exc.code in (MAX_EMOJIS, MAX_ANIMATED_EMOJIS):
                full = True
                break
            if exc.code == MISSING_PERMISSIONS:
                raise BotMissingPermission(str(exc), permission="Create Expressions") from None
            log.warning("pack %s emoji %s refused by Discord: %s", pack.id, s.idx, exc)
            failed += 1
            continue
        guild_emoji.record_added(res.db, pack.id, guild.id, s.idx, created.id, s.files[EMOJI_TARGET], name=name)
        added += 1
    if full:
        body = text("discord_emoji_slots_full", added=added, total=len(wanted) - already)
    else:
        body = text("discord_emoji_added", added=added, existing=already)
    if failed:
        body += "\n" + text("discord_add_failed", failed=failed)
    await interaction.followup.send(body, ephemeral=True)


# ----------------------------------------------------------------------------- keeping them in step

async def sync_server_stickers(client: discord.Client, res: BotResources, pack: packs.Pack) -> None:
    """Bring the pack's stickers in every recorded guild in step with its sticker rows (see the module
    docstring). Raises on a transient Discord failure: the delivery is retried and the sync resumes."""
    await _sync(client, res, pack, _ServerStickers())


async def sync_server_emoji(client: discord.Client, res: BotResources, pack: packs.Pack) -> None:
    """Bring the pack's custom emoji in every recorded guild in step with its current result (see the
    module docstring). Raises on a transient Discord failure: the delivery is retried and the sync resumes."""
    await _sync(client, res, pack, _ServerEmoji())


@dataclass(frozen=True)
class _Wanted:
    """What the expression of one sticker idx should be now: its file, the name its row records (None
    where the table keeps none: stickers), and the rest Discord needs to create it."""
    digest: str
    name: str | None
    fields: dict[str, Any]


class _ServerExpressions(ABC):
    """One kind of expression a pack puts in servers, as :func:`_sync` keeps it in step: the loop over
    the recorded rows is shared; what they should be and how Discord lists and creates them differ."""
    table: GuildExpressionTable
    plural: str  # in log lines, with ``singular``
    singular: str
    label: str  # of the files in verification errors
    target: str  # the file kind they are made from

    @abstractmethod
    def wanted(self, client: discord.Client, res: BotResources, pack: packs.Pack) -> dict[int, _Wanted]:
        """By sticker idx; an idx missing was dropped from the selection."""

    @abstractmethod
    async def find(self, guild: discord.Guild, pack: packs.Pack, recorded: list[GuildExpression],
                   wanted: dict[int, _Wanted]) -> dict[int, tuple[Any, Any]]:
        """By recorded idx: the guild's expression the row stands for, and the one taken for its replacement
        (None: not in the guild)."""

    @abstractmethod
    async def create(self, guild: discord.Guild, want: _Wanted, data: bytes, reason: str) -> Any: ...

    async def tidy(self, guild: discord.Guild, pack: packs.Pack) -> None:
        """After creating some: clean up what retried requests may have left."""


class _ServerStickers(_ServerExpressions):
    table, plural, singular, label, target = guild_stickers.TABLE, "stickers", "sticker", "s", STICKER_TARGET

    def wanted(self, client: discord.Client, res: BotResources, pack: packs.Pack) -> dict[int, _Wanted]:
        rows = packs.list_stickers(res.db, pack.id)
        result = result_of_pack(res, pack)
        names = {s.idx: s.name for s in result.stickers} if result is not None else {}
        owner = _owner_name(client, res, pack)
        out = {}
        for r in rows:
            name, desc = sticker_fields(owner, names.get(r.idx, f"emoji {r.idx}"), pack.id, r.idx)
            out[r.idx] = _Wanted(r.blob_digest, None, {"name": name, "description": desc, "emoji": r.emoji})
        return out

    async def find(self, guild: discord.Guild, pack: packs.Pack, recorded: list[GuildExpression],
                   wanted: dict[int, _Wanted]) -> dict[int, tuple[Any, Any]]:
        prefix = f"#{pack.id}."
        present = {}
        for s in await guild.fetch_stickers():
            marker = (s.description or "").rsplit(" ", 1)[-1]
            if marker.startswith(prefix):
                present.setdefault(marker, s)
        # by marker both: a replacement carries the marker of the sticker it replaces
        return {rec.idx: (present.get(sticker_marker(pack.id, rec.idx)),) * 2 for rec in recorded}

    async def create(self, guild: discord.Guild, want: _Wanted, data: bytes, reason: str) -> discord.GuildSticker:
        file = discord.File(io.BytesIO(data), filename=f"{want.fields['name']}.{file_extension(data)}")
        return await guild.create_sticker(**want.fields, file=file, reason=reason)

    async def tidy(self, guild: discord.Guild, pack: packs.Pack) -> None:
        await _drop_duplicates(guild, pack.id)


class _ServerEmoji(_ServerExpressions):
    table, plural, singular, label, target = guild_emoji.TABLE, "emoji", "emoji", "e", EMOJI_TARGET

    def wanted(self, client: discord.Client, res: BotResources, pack: packs.Pack) -> dict[int, _Wanted]:
        """An idx whose sticker the new result has no emoji file for counts as dropped."""
        result = result_of_pack(res, pack)
        return {s.idx: _Wanted(s.files[EMOJI_TARGET], emoji_name(pack.id, s.idx, s.name), {})
                for s in (result.stickers if result is not None else []) if EMOJI_TARGET in s.files}

    async def find(self, guild: discord.Guild, pack: packs.Pack, recorded: list[GuildExpression],
                   wanted: dict[int, _Wanted]) -> dict[int, tuple[Any, Any]]:
        emojis = await guild.fetch_emojis()
        by_id = {str(e.id): e for e in emojis}
        by_name: dict[str, discord.Emoji] = {}
        for e in sorted(emojis, key=lambda e: e.id):
            by_name.setdefault(e.name, e)
        # the recorded one by its id; a replacement by its name (the expression now at that idx)
        return {rec.idx: (by_id.get(rec.discord_id), by_name.get(wanted[rec.idx].name) if rec.idx in wanted else None)
                for rec in recorded}

    async def create(self, guild: discord.Guild, want: _Wanted, data: bytes, reason: str) -> discord.Emoji:
        return await guild.create_custom_emoji(name=want.name, image=data, reason=reason)


async def _sync(client: discord.Client, res: BotResources, pack: packs.Pack, kind: _ServerExpressions) -> None:
    by_guild = kind.table.for_pack(res.db, pack.id)
    if not by_guild:
        return
    wanted = kind.wanted(client, res, pack)
    for guild_id, recorded in by_guild.items():
        try:
            guild = client.get_guild(int(guild_id)) or await client.fetch_guild(int(guild_id))
            await _sync_guild(res, guild, pack, kind, recorded, wanted)
        except (discord.NotFound, discord.Forbidden) as exc:
            log.warning("pack %s: its %s in server %s cannot be updated (%s); no longer tracked",
                        pack.id, kind.plural, guild_id, exc)
            kind.table.forget(res.db, pack.id, guild_id)


async def _sync_guild(res: BotResources, guild: discord.Guild, pack: packs.Pack, kind: _ServerExpressions,
                      recorded: list[GuildExpression], wanted: dict[int, _Wanted]) -> None:
    table = kind.table
    found = await kind.find(guild, pack, recorded, wanted)
    created_any = False
    for rec in recorded:
        (old, made), want = found[rec.idx], wanted.get(rec.idx)
        if want is None:  # dropped from the selection
            if old is not None:
                await _delete_expression(old, f"emoji3d pack {pack.id}: dropped from the pack")
            table.forget(res.db, pack.id, guild.id, rec.idx)
            continue
        if old is None and rec.state == ADDED:
            table.forget(res.db, pack.id, guild.id, rec.idx)  # the server removed it: its choice
            continue
        if rec.state == REPLACING and made is not None and str(made.id) != rec.discord_id:
            # the replacement was created just before an interruption
            table.record_added(res.db, pack.id, guild.id, rec.idx, made.id, want.digest, name=want.name)
            continue
        if rec.state == ADDED and (rec.blob_digest, rec.name) == (want.digest, want.name):
            continue  # unchanged
        items, bad = await asyncio.to_thread(verified_files, res, [(f"{kind.label}{rec.idx}", want.digest)],
                                             kind.target)
        if not items:
            log.error("pack %s %s %s: new file failed verification (%s); the server keeps the old one",
                      pack.id, kind.singular, rec.idx, "; ".join(bad))
            continue
        if old is not None:
            table.mark_replacing(res.db, pack.id, guild.id, rec.idx, old.id)
            await _delete_expression(old, f"emoji3d pack {pack.id}: replaced by its new render")
        try:
            created = await kind.create(guild, want, items[0][1], f"emoji3d pack {pack.id}: its new render")
        except discord.HTTPException as exc:
            if exc.status >= 500 or isinstance(exc, discord.Forbidden):
                raise  # transient (the delivery retries and this resumes), or the bot lost the permission
            log.warning("pack %s %s %s: Discord refused its replacement in server %s: %s",
                        pack.id, kind.singular, rec.idx, guild.id, exc)
            table.forget(res.db, pack.id, guild.id, rec.idx)
            continue
        table.record_added(res.db, pack.id, guild.id, rec.idx, created.id, want.digest, name=want.name)
        created_any = True
    if created_any:
        await kind.tidy(guild, pack)


async def _delete_expression(expression: discord.GuildSticker | discord.Emoji, reason: str) -> None:
    try:
        await expression.delete(reason=reason)
    except discord.NotFound:
        pass  # already gone
