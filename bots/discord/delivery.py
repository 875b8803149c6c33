"""Discord delivery: progress edits, the finished pack, and adding it to a server.

:class:`DiscordSender` is the ``bots.notify.Sender`` for Discord.

* Within an interaction's token window (15 minutes, less ``margin_s``) it edits
  the deferred ("thinking") original response with progress and delivers the
  result as a follow-up on the same interaction webhook
  (``discord.Webhook.partial(application_id, token)``), which needs no channel
  permission of the bot.
* The interaction (application id, token, channel, guild, arrival time) is
  stored with the job (:mod:`storage.deliveries`), so a restarted bot keeps
  editing ``@original`` while the token is still valid. The token is a
  short-lived secret: it never appears in a repr or a log line, and it is
  cleared from the database as soon as it is known to be expired.
* After the window, or when Discord answers 10015/10062, it falls back to a
  direct message (also stored, and edited in place, across restarts); when
  the member's DMs are closed, to a message in the channel the command was
  used in (mentioning the member). The stored guild id keeps "Add to server"
  pointing at the command's server in that fallback message.
* Every sticker file is checked with ``engine.stickers.verify`` against the
  ``discord_sticker`` target before it is uploaded anywhere (no torch there).

The "Add to server" button is a ``discord.ui.DynamicItem`` whose custom id
carries the pack id and the guild id (``emoji3d:add:<pack>:<guild>``, guild 0 =
unknown), so it keeps working after a restart. Adding is idempotent: each
sticker's description ends with a marker ``#<pack>.<idx>``, and a sticker whose
marker is already in the guild is not created again (a retried click makes no
duplicates), and after creating, a copy made by a 429 that landed anyway and
was retried by discord.py is deleted again. When the sticker slots
are full, an "Add as custom emoji instead" button (``emoji3d:emoji:...``)
creates 128×128 custom emoji from the result's ``discord_emoji`` files, named
``e3d<pack>_<idx>_<expression>``, again skipped when the name already exists.

Times: ``clock`` and ``InteractionRef.started`` are UNIX seconds (they must
survive a restart, so not monotonic); the window is measured from the moment
the bot received the interaction, so ``margin_s`` also covers clock steps.
"""
from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import discord

from emoji3d import orders
from emoji3d.errors import UserFacingError
from emoji3d.texts import explain, message, text
from storage import deliveries, jobs, packs, users

from bots import core
from bots.core import BotResources, ProgressView
from bots.notify import Watch

log = logging.getLogger("emoji3d.discord")

PLATFORM = "discord"
STICKER_TARGET = "discord_sticker"
EMOJI_TARGET = "discord_emoji"
TOKEN_LIFETIME_S = 15 * 60.0
MAX_FILES_PER_MESSAGE = 10
# Discord JSON error codes we act on
UNKNOWN_WEBHOOK, UNKNOWN_INTERACTION = 10015, 10062
MISSING_PERMISSIONS, CANNOT_DM = 50013, 50007
MAX_STICKERS, MAX_EMOJIS, MAX_ANIMATED_EMOJIS = 30039, 30008, 30018


# ----------------------------------------------------------------------------- errors

class ServerOnly(UserFacingError):
    key = "discord_server_only"


class NeedCreateExpressions(UserFacingError):
    key = "discord_need_create_expressions"


class BotMissingPermission(UserFacingError):
    """params: ``permission`` (its name as Discord shows it)."""

    key = "discord_bot_missing_permission"


class PackGone(UserFacingError):
    key = "discord_pack_gone"


class FilesInvalid(UserFacingError):
    """params: ``detail``."""

    key = "discord_files_invalid"


class Unreachable(UserFacingError):
    key = "discord_unreachable"


# ----------------------------------------------------------------------------- interaction refs

@dataclass(frozen=True)
class InteractionRef:
    """What is needed to talk through an interaction's webhook later."""

    application_id: int
    token: str | None = field(repr=False)  # secret; None once expired or refused
    channel_id: int | None
    guild_id: int | None
    started: float  # UNIX seconds when the interaction arrived


def _int_or_none(v: str | None) -> int | None:
    return None if v is None else int(v)


def ref_from_row(row: deliveries.DeliveryRef) -> InteractionRef | None:
    """The interaction stored for a job, or None when none was stored."""
    if row.application_id is None or row.started_at is None:
        return None
    return InteractionRef(int(row.application_id), row.token, _int_or_none(row.chat_id),
                          _int_or_none(row.guild_id), float(row.started_at))


def _pack_of(res: BotResources, pack_id: int) -> packs.Pack:
    try:
        return packs.get_pack(res.db, pack_id)
    except packs.PackNotFound:
        raise PackGone(f"pack {pack_id} does not exist") from None


def _result_of_pack(res: BotResources, pack: packs.Pack) -> orders.PackResult | None:
    if pack.job_id is None:
        return None
    try:
        return orders.result_of(jobs.get_job(res.db, pack.job_id))
    except jobs.JobNotFound:
        return None


def _ext(data: bytes) -> str:
    return "gif" if data[:6] in (b"GIF87a", b"GIF89a") else "png"


def verified_files(res: BotResources, digests: list[tuple[str, str]], target: str) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Read and verify ``(label, digest)`` blobs for ``target``. Returns the
    passing ``(filename, bytes)`` and one line per refused file. Blocking (decodes)."""
    from engine.stickers.verify import verify

    ok, bad = [], []
    for label, digest in digests:
        try:
            data = res.blobs.read_bytes(digest)
        except Exception as exc:  # noqa: BLE001 - a missing blob is a refused file
            bad.append(f"{label}: {exc}")
            continue
        report = verify(data, target)
        if report.ok:
            ok.append((f"{label}.{_ext(data)}", data))
        else:
            bad.append(f"{label}: " + "; ".join(str(v) for v in report.reasons))
    return ok, bad


def _discord_files(items: list[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in items]


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


async def reply(interaction: discord.Interaction, body: str, *, view: discord.ui.View | None = None,
                ephemeral: bool = True) -> None:
    """Answer an interaction whether or not it was already acknowledged."""
    kw: dict[str, Any] = {} if view is None else {"view": view}
    if not interaction.response.is_done():
        await interaction.response.send_message(body, ephemeral=ephemeral, **kw)
    else:
        await interaction.followup.send(body, ephemeral=ephemeral, **kw)


async def guarded(interaction: discord.Interaction, work: Any) -> None:
    """Run a component callback's coroutine; answer refusals with their text and
    log anything else, so nothing a member clicks can crash the bot."""
    try:
        await work
    except UserFacingError as err:
        log.info("refused for user %s: %s (%s)", interaction.user.id, err.key, err.detail)
        await _safe_reply(interaction, explain(err))
    except Exception:  # noqa: BLE001 - logged with context, answered politely
        log.exception("component %s failed for user %s", (interaction.data or {}).get("custom_id"),
                      interaction.user.id)
        await _safe_reply(interaction, message("internal"))


async def _safe_reply(interaction: discord.Interaction, body: str) -> None:
    try:
        await reply(interaction, body)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc)


async def _target_guild(interaction: discord.Interaction, guild_id: int) -> tuple[discord.Guild, discord.Permissions]:
    """The guild to add to and the clicker's permissions there."""
    if interaction.guild is not None:
        if guild_id and interaction.guild.id != guild_id:
            guild_id = interaction.guild.id  # a forwarded/copied button: act where it was clicked
        return interaction.guild, interaction.permissions
    guild = interaction.client.get_guild(guild_id) if guild_id else None
    if guild is None:
        raise ServerOnly("button used outside a server")
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
    try:
        u = users.get_user(res.db, pack.user_id)
        du = client.get_user(int(u.platform_user_id))
        if du is not None:
            return du.display_name
    except Exception:  # noqa: BLE001 - a name is cosmetic
        pass
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
    pack = _pack_of(res, pack_id)
    if pack.platform != PLATFORM or pack.status != "published":
        raise PackGone(f"pack {pack_id} is {pack.status} on {pack.platform}")
    await interaction.response.defer(ephemeral=True, thinking=True)
    return res, pack, guild


async def add_stickers(interaction: discord.Interaction, pack_id: int, guild_id: int) -> None:
    res, pack, guild = await _checked_pack(interaction, pack_id, guild_id)
    rows = [s for s in packs.list_stickers(res.db, pack.id)]
    if not rows:
        raise PackGone(f"pack {pack.id} has no stickers")
    result = _result_of_pack(res, pack)
    names = {s.idx: s.name for s in result.stickers} if result is not None else {}
    items, bad = await asyncio.to_thread(verified_files, res, [(f"s{r.idx}", r.blob_digest) for r in rows],
                                         STICKER_TARGET)
    data_by_idx = {int(n.split(".")[0][1:]): d for n, d in items}
    existing = await guild.fetch_stickers()
    present = {s.description.rsplit(" ", 1)[-1] for s in existing if s.description}
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
        try:
            await guild.create_sticker(name=name, description=desc, emoji=r.emoji,
                                       file=discord.File(io.BytesIO(data), filename=f"{name}.{_ext(data)}"),
                                       reason=f"emoji3d pack {pack.id} added by {interaction.user.id}")
        except discord.HTTPException as exc:
            if exc.code == MAX_STICKERS:
                full = True
                break
            if exc.code == MISSING_PERMISSIONS:
                raise BotMissingPermission(str(exc), permission="Create Expressions") from None
            log.warning("pack %s sticker %s refused by Discord: %s", pack.id, r.idx, exc)
            failed += 1
            continue
        packs.set_sticker_platform_state(res.db, r.id, "added")
        added += 1
        used += 1
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
    result = _result_of_pack(res, pack)
    wanted = [s for s in (result.stickers if result else []) if EMOJI_TARGET in s.files]
    if not wanted:
        raise PackGone(f"pack {pack.id} has no emoji files")
    items, bad = await asyncio.to_thread(verified_files, res, [(f"s{s.idx}", s.files[EMOJI_TARGET]) for s in wanted],
                                         EMOJI_TARGET)
    data_by_idx = {int(n.split(".")[0][1:]): d for n, d in items}
    present = {e.name for e in await guild.fetch_emojis()}
    added, already, failed, full = 0, 0, len(bad), False
    for s in wanted:
        name = emoji_name(pack.id, s.idx, s.name)
        if name in present:
            already += 1
            continue
        data = data_by_idx.get(s.idx)
        if data is None:
            continue
        try:
            await guild.create_custom_emoji(name=name, image=data,
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
        added += 1
    if full:
        body = text("discord_emoji_slots_full", added=added, total=len(wanted) - already)
    else:
        body = text("discord_emoji_added", added=added, existing=already)
    if failed:
        body += "\n" + text("discord_add_failed", failed=failed)
    await interaction.followup.send(body, ephemeral=True)


# ----------------------------------------------------------------------------- sender

class DiscordSender:
    """``bots.notify.Sender`` for Discord (see the module docstring)."""

    def __init__(self, client: discord.Client, res: BotResources, *, margin_s: float = 30.0,
                 token_lifetime_s: float = TOKEN_LIFETIME_S, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.res = res
        self.margin_s = float(margin_s)
        self.token_lifetime_s = float(token_lifetime_s)
        self.clock = clock
        # in-memory views of the job's delivery_refs row (loaded from it after a restart)
        self.refs: dict[int, InteractionRef] = {}                 # job id -> interaction
        self.fallback_msgs: dict[int, tuple[int, int]] = {}       # job id -> (channel id, message id)
        self._loaded: set[int] = set()                            # jobs whose row was read

    # ------------------------------------------------------------------ bookkeeping
    def attach(self, job_id: int, ref: InteractionRef) -> None:
        """Use ``ref`` for the job and store it, so a restart can use it too."""
        self.refs[job_id] = ref
        self._loaded.add(job_id)
        self._persist(job_id, application_id=ref.application_id, token=ref.token, started_at=ref.started,
                      guild_id=ref.guild_id, **({} if ref.channel_id is None else {"chat_id": ref.channel_id}))

    def forget(self, job_id: int) -> None:
        """Drop the in-memory state (the notifier deletes the stored row)."""
        self.refs.pop(job_id, None)
        self.fallback_msgs.pop(job_id, None)
        self._loaded.discard(job_id)

    def _persist(self, job_id: int, **fields: Any) -> None:
        try:
            deliveries.record_delivery(self.res.db, job_id, PLATFORM, **fields)
        except deliveries.DeliveryJobMissing:
            pass  # the user deleted their data meanwhile
        except Exception:  # noqa: BLE001 - delivery in this process still works
            log.warning("job %s: could not store its delivery reference", job_id, exc_info=True)

    def _load(self, job_id: int) -> None:
        """After a restart: the interaction and fallback message stored for the job."""
        if job_id in self._loaded:
            return
        self._loaded.add(job_id)
        row = deliveries.get_delivery(self.res.db, job_id)
        if row is None or row.platform != PLATFORM:
            return
        ref = ref_from_row(row)
        if ref is not None:
            self.refs.setdefault(job_id, ref)
        if row.fallback_chat_id is not None and row.fallback_message_id is not None:
            self.fallback_msgs.setdefault(job_id, (int(row.fallback_chat_id), int(row.fallback_message_id)))

    def ref(self, job_id: int) -> InteractionRef | None:
        """The job's interaction, live or not (its guild id still names where
        "Add to server" applies)."""
        self._load(job_id)
        return self.refs.get(job_id)

    def _live_ref(self, job_id: int) -> InteractionRef | None:
        ref = self.ref(job_id)
        if ref is None or ref.token is None:
            return None
        if self.clock() - ref.started >= self.token_lifetime_s - self.margin_s:
            self._expire(job_id)  # the secret is useless now: do not keep it stored
            return None
        return ref

    def _expire(self, job_id: int) -> None:
        """The token expired or Discord refused it: clear it, keep the rest."""
        ref = self.refs.get(job_id)
        if ref is not None and ref.token is not None:
            self.refs[job_id] = replace(ref, token=None)
            try:
                deliveries.forget_token(self.res.db, job_id)
            except Exception:  # noqa: BLE001 - an unusable token left behind is deleted with its row
                log.warning("job %s: could not clear its expired token", job_id, exc_info=True)

    def _hook(self, ref: InteractionRef) -> discord.Webhook:
        if ref.token is None:
            raise ValueError("interaction token is no longer usable")
        return discord.Webhook.partial(ref.application_id, ref.token, client=self.client)

    @staticmethod
    def _expired(exc: discord.HTTPException) -> bool:
        return isinstance(exc, discord.NotFound) and exc.code in (UNKNOWN_WEBHOOK, UNKNOWN_INTERACTION)

    async def _edit_original(self, w: Watch, body: str) -> bool:
        ref = self._live_ref(w.job_id)
        if ref is None:
            return False
        try:
            await self._hook(ref).edit_message("@original", content=body)  # type: ignore[arg-type]
            return True
        except discord.HTTPException as exc:
            if not self._expired(exc):
                raise
            self._expire(w.job_id)
            return False

    async def _dm_channel(self, w: Watch) -> discord.abc.Messageable:
        uid = int(w.platform_user_id)
        user = self.client.get_user(uid) or await self.client.fetch_user(uid)
        return user.dm_channel or await user.create_dm()

    async def _fallback_text(self, w: Watch, body: str) -> None:
        """Progress/final text outside the token window: edit our DM (or channel)
        message, or send one."""
        self._load(w.job_id)
        known = self.fallback_msgs.get(w.job_id)
        if known is not None:
            ch = self.client.get_partial_messageable(known[0])
            try:
                await ch.get_partial_message(known[1]).edit(content=body)
                return
            except discord.NotFound:
                self.fallback_msgs.pop(w.job_id, None)
        if w.resumed:
            body = text("resumed") + "\n" + body
        sent = await self._send_somewhere(w, content=body)
        self.fallback_msgs[w.job_id] = (sent.channel.id, sent.id)
        self._persist(w.job_id, fallback_chat_id=sent.channel.id, fallback_message_id=sent.id)

    async def _send_somewhere(self, w: Watch, **kw: Any) -> discord.Message:
        """DM the member; if their DMs are closed, the command's channel with a mention."""
        files_factory = kw.pop("files_factory", None)
        try:
            dm = await self._dm_channel(w)
            return await dm.send(**kw, **({"files": files_factory()} if files_factory else {}))
        except discord.Forbidden as exc:
            if w.chat_id is None:
                raise Unreachable(f"DM to {w.platform_user_id} refused ({exc.code}) and no channel known") from None
            log.info("DM to user %s refused (%s); using channel %s", w.platform_user_id, exc.code, w.chat_id)
        ch = self.client.get_partial_messageable(int(w.chat_id))
        content = text("discord_done_channel", mention=f"<@{int(w.platform_user_id)}>") + "\n" + kw.pop("content", "")
        try:
            return await ch.send(content=content, allowed_mentions=discord.AllowedMentions(users=True),
                                 **kw, **({"files": files_factory()} if files_factory else {}))
        except discord.Forbidden as exc:
            raise Unreachable(f"channel {w.chat_id} refused ({exc.code})") from None

    # ------------------------------------------------------------------ Sender protocol
    async def show_progress(self, w: Watch, view: ProgressView) -> None:
        body = core.progress_text(view)
        if not await self._edit_original(w, body):
            await self._fallback_text(w, body)

    async def finish(self, w: Watch, view: ProgressView) -> None:
        await self.show_progress(w, view)
        self.forget(w.job_id)

    async def report_error(self, w: Watch, err: UserFacingError) -> None:
        body = explain(err)
        try:
            if not await self._edit_original(w, body):
                await self._fallback_text(w, body)
        except (discord.HTTPException, UserFacingError) as exc:
            log.warning("could not tell user %s about %s: %s", w.platform_user_id, err.key, exc)
        self.forget(w.job_id)

    async def deliver(self, w: Watch, job: jobs.Job) -> None:
        result = orders.result_of(job)
        if result is None:
            raise RuntimeError(f"job {job.id} succeeded without a result")
        pack = _pack_of(self.res, w.pack_id if w.pack_id is not None else int(job.payload["pack_id"]))
        stickers = sorted((s for s in result.stickers if STICKER_TARGET in s.files), key=lambda s: s.idx)
        lines: list[str] = []
        if stickers:
            core.materialize_result(self.res, pack, result, STICKER_TARGET, kind="animated")
            items, bad = await asyncio.to_thread(
                verified_files, self.res, [(f"{s.idx:02d}_{re.sub(r'[^A-Za-z0-9_-]', '_', s.name)}", s.files[STICKER_TARGET])
                                           for s in stickers], STICKER_TARGET)
            if bad:
                log.error("job %s: sticker files failed verification: %s", job.id, bad)
            if not items:
                raise FilesInvalid("; ".join(bad), detail="; ".join(bad)[:200])
        else:  # this build made an avatar but no sticker files: still renders instead
            items = []
            for i, digest in enumerate(result.renders[:3]):
                try:
                    items.append((f"render{i}.png", self.res.blobs.read_bytes(digest)))
                except Exception:  # noqa: BLE001 - skip an unreadable render
                    log.warning("job %s: render blob %s unreadable", job.id, digest)
            lines.append(text("pack_incomplete", missing="; ".join(result.missing) or "sticker files"))
        preview = result.preview_png or (result.renders[0] if result.renders and stickers else None)
        if preview is not None:
            try:
                items.append(("preview.png", self.res.blobs.read_bytes(preview)))
            except Exception:  # noqa: BLE001 - the preview is a courtesy
                log.warning("job %s: preview blob %s unreadable", job.id, preview)
        if result.preset == "slim":
            lines.append(text("slim_warning"))
        ref = self._live_ref(w.job_id)
        known = self.ref(w.job_id)
        guild_id = known.guild_id if known is not None else None
        view = result_view(pack.id, guild_id) if stickers and guild_id else None
        chunks = [items[i:i + MAX_FILES_PER_MESSAGE] for i in range(0, len(items), MAX_FILES_PER_MESSAGE)] or [[]]
        delivered = False
        if ref is not None:
            try:
                hook = self._hook(ref)
                for k, chunk in enumerate(chunks):
                    last = k == len(chunks) - 1
                    body = "\n".join([*([text("discord_done")] if stickers else []), *lines]) if k == 0 else "\u200b"
                    kw: dict[str, Any] = {"view": view} if (last and view is not None) else {}
                    await hook.send(body, files=_discord_files(chunk), wait=True, **kw)
                delivered = True
                try:
                    await hook.edit_message("@original", content=text("discord_delivered_below"))  # type: ignore[arg-type]
                except discord.HTTPException as exc:
                    log.info("job %s: could not edit the original response: %s", job.id, exc)
            except discord.HTTPException as exc:
                if not self._expired(exc):
                    raise
                self._expire(w.job_id)
                log.info("job %s: interaction token expired; delivering by DM", job.id)
        if not delivered:
            for k, chunk in enumerate(chunks):
                last = k == len(chunks) - 1
                body = "\n".join([*([text("discord_done_later")] if stickers else []), *lines]) if k == 0 else "\u200b"
                kw = {"view": view} if (last and view is not None) else {}
                await self._send_somewhere(w, content=body, files_factory=lambda c=chunk: _discord_files(c), **kw)
            if ref is not None:
                try:
                    await self._hook(ref).edit_message("@original", content=text("discord_delivered_elsewhere"))  # type: ignore[arg-type]
                except discord.HTTPException:
                    pass
        packs.update_pack(self.res.db, pack.id, status="published")
        self.forget(w.job_id)
