"""A pack's Telegram custom emoji set (``sticker_type`` ``custom_emoji``), kept in sync like its sticker set.

The engine makes one 100x100 video emoji per sticker from the same frames
(target ``telegram_emoji``, ``PackResult`` sticker files). :func:`publish_custom_emoji`
writes them into the pack's emoji rows (:mod:`storage.custom_emoji`), records the
set name before the set exists, and publishes with the sticker set's crash-safe
machinery (:func:`bots.telegram.stickers.publish_rows`: upload once, re-read the
set, dedupe, replace in place on a regenerated pack). Any bot can create such a
set; only Telegram Premium users can use its emoji in messages.

Names: ``e3d<pack id>e<hash>_by_<bot>`` (the sticker set's is ``...x...``), so
the two sets of a pack never collide. Link: ``https://t.me/addemoji/<name>``.
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from telegram.error import BadRequest

from emoji3d.orders import CUSTOM_EMOJI_TARGETS, PackResult
from emoji3d.texts import text
from storage import custom_emoji as emoji_rows_store
from storage import users
from storage.blobs import BlobStore
from storage.db import Database

from bots.core import BotResources
from bots.telegram.stickers import Published, SetRows, StickerSetFailed, publish_rows, set_name_for

log = logging.getLogger("emoji3d.telegram.custom_emoji")

EMOJI_TARGET = CUSTOM_EMOJI_TARGETS["telegram"]
SET_MAX = 200  # Bot API: a custom emoji set holds at most 200


def emoji_set_link(name: str) -> str:
    return f"https://t.me/addemoji/{name}"


def emoji_rows(db: Database, pack_id: int) -> SetRows:
    return SetRows(lambda: emoji_rows_store.list_emoji(db, pack_id),
                   lambda row_id, state, file_id=None: emoji_rows_store.set_emoji_platform_state(db, row_id, state, file_id))


def materialize_emoji(db: Database, pack_id: int, result: PackResult) -> list[emoji_rows_store.CustomEmoji]:
    """Write the result's custom emoji files into the pack's emoji rows (idempotent, like stickers'); rows
    past the result's last emoji go, as sticker rows do (``bots.core.materialize_result``)."""
    made = [s.idx for s in result.stickers if EMOJI_TARGET in s.files]
    if made:
        emoji_rows_store.trim_emoji(db, pack_id, max(made) + 1)
    for sf in sorted(result.stickers, key=lambda s: s.idx):
        digest = sf.files.get(EMOJI_TARGET)
        if digest is not None:
            emoji_rows_store.put_emoji(db, pack_id, sf.idx, sf.emoji, digest)
    return emoji_rows_store.list_emoji(db, pack_id)


def has_custom_emoji(result: PackResult) -> bool:
    return any(EMOJI_TARGET in s.files for s in result.stickers)


async def publish_custom_emoji(bot: Any, db: Database, blobs: BlobStore, pack_id: int, result: PackResult,
                               tg_user_id: int, *, bot_username: str, title: str, **kw: Any) -> Published | None:
    """Make the pack's custom emoji set hold the result's emoji; None when the result has none
    (``[telegram] custom_emoji`` was off when the engine made it)."""
    if not has_custom_emoji(result):
        return None
    rows = materialize_emoji(db, pack_id, result)
    if len(rows) > SET_MAX:
        raise ValueError(f"pack {pack_id} has {len(rows)} custom emoji; a set holds at most {SET_MAX}")
    name = emoji_rows_store.record_set_name(db, pack_id, set_name_for(pack_id, str(tg_user_id), bot_username, kind="e"))
    pub = await publish_rows(bot, emoji_rows(db, pack_id), blobs, tg_user_id, name, title,
                             bot_username=bot_username, sticker_type="custom_emoji", link=emoji_set_link, **kw)
    emoji_rows_store.mark_set_published(db, pack_id)
    return pub


async def deliver_custom_emoji(bot: Any, res: BotResources, pack_id: int, result: PackResult, tg_user_id: int, *,
                               title: str, regenerated: bool) -> str | None:
    """Publish the pack's custom emoji set when ``[telegram] custom_emoji`` is on; the line to tell the
    user, or None when there is nothing to say. Telegram refusing the set is told, not fatal (the sticker
    set is delivered regardless); anything transient propagates, so the delivery is retried whole."""
    if not res.cfg.telegram.custom_emoji:
        return None
    try:
        pub = await publish_custom_emoji(bot, res.db, res.blobs, pack_id, result, tg_user_id,
                                         bot_username=bot.username, title=title)
    except StickerSetFailed as exc:
        log.warning("pack %s: custom emoji set refused: %s", pack_id, exc)
        return text("custom_emoji_failed", detail=exc.params.get("detail", ""))
    if pub is None:
        return None
    return text("custom_emoji_updated" if regenerated else "custom_emoji_ready", link=pub.link)


async def delete_custom_emoji_sets(db: Database, platform: str, platform_user_id: str,
                                   delete_set: Callable[[str], Awaitable[None]]) -> tuple[list[str], list[str]]:
    """Delete every custom emoji set recorded for the user; call it before their rows go
    (:func:`bots.core.delete_my_data`). Returns (deleted, failed) names."""
    user = users.find_user(db, platform, str(platform_user_id))
    if user is None:
        return [], []
    done, failed = [], []
    for name in emoji_rows_store.set_names_of_user(db, user.id):
        try:
            await delete_set(name)
            done.append(name)
        except Exception:  # noqa: BLE001 - reported to the caller; the rows are deleted regardless
            failed.append(name)
    return done, failed


async def delete_set_ignoring_gone(bot: Any, name: str) -> None:
    """``deleteStickerSet``; a set that is already gone is fine."""
    try:
        await bot.delete_sticker_set(name)
    except BadRequest as exc:
        if "stickerset_invalid" not in exc.message.lower():
            raise
