"""Discord interactions: what the cogs, the buttons and the sender share.

Constants of the Discord API we act on, the errors a member can be told about,
the stored interaction (:class:`InteractionRef`: application id, token,
channel, guild, arrival time; the token is a short-lived secret that never
appears in a repr or a log line), reading and verifying a pack's files
(``engine.stickers.verify`` against the target, no torch there), and replying
to an interaction whether or not it was acknowledged.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import discord

from emoji3d import orders
from emoji3d.errors import UserFacingError
from emoji3d.texts import explain, message
from storage import deliveries, jobs, packs

from bots.core import BotResources

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


def pack_of(res: BotResources, pack_id: int) -> packs.Pack:
    try:
        return packs.get_pack(res.db, pack_id)
    except packs.PackNotFound:
        raise PackGone(f"pack {pack_id} does not exist") from None


def result_of_pack(res: BotResources, pack: packs.Pack) -> orders.PackResult | None:
    if pack.job_id is None:
        return None
    try:
        return packs.result_of(jobs.get_job(res.db, pack.job_id))
    except jobs.JobNotFound:
        return None


def file_extension(data: bytes) -> str:
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
            ok.append((f"{label}.{file_extension(data)}", data))
        else:
            bad.append(f"{label}: " + "; ".join(str(v) for v in report.reasons))
    return ok, bad


def discord_files(items: list[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in items]



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


