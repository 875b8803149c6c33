"""Discord server custom emoji made from a pack: what "Add as custom emoji instead" created where, for
keeping them in step (the emoji counterpart of :mod:`storage.guild_stickers`).

One row per (pack, guild, sticker idx): the Discord emoji id, its name and the
emoji file (blob digest) it shows. ``state`` makes a replacement crash-safe:
``added`` (in the guild, showing ``blob_digest``) → ``replacing`` (recorded
before the old emoji is deleted) → ``added`` again with the new emoji's id,
name and file. A ``replacing`` row whose emoji is missing is finished by the
next sync; an ``added`` row whose emoji is missing was removed by the server's
moderators and is forgotten (the server owns its emoji). Rows go with their
pack (``/delete``); the emoji stay in the servers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from storage.db import Database

ADDED, REPLACING = "added", "replacing"


@dataclass(frozen=True)
class GuildEmoji:
    pack_id: int
    guild_id: str
    idx: int
    emoji_id: str
    name: str
    blob_digest: str
    state: str


def record_added(db: Database, pack_id: int, guild_id: int | str, idx: int, emoji_id: int | str, name: str,
                 blob_digest: str) -> None:
    """The emoji of sticker ``idx`` of the pack is in the guild as ``emoji_id`` named ``name``, showing
    ``blob_digest``."""
    params = {"p": int(pack_id), "g": str(guild_id), "i": int(idx), "e": str(emoji_id), "n": name,
              "d": blob_digest, "t": time.time()}
    with db.write() as conn:
        conn.execute(sa.text(
            "INSERT INTO guild_emoji (pack_id, guild_id, idx, emoji_id, name, blob_digest, state, updated_at) "
            "VALUES (:p, :g, :i, :e, :n, :d, 'added', :t) ON CONFLICT (pack_id, guild_id, idx) DO UPDATE SET "
            "emoji_id = excluded.emoji_id, name = excluded.name, blob_digest = excluded.blob_digest, "
            "state = 'added', updated_at = excluded.updated_at"), params)


def mark_replacing(db: Database, pack_id: int, guild_id: int | str, idx: int, emoji_id: int | str) -> None:
    """About to delete the emoji ``emoji_id`` to replace it (see the module docstring)."""
    with db.write() as conn:
        conn.execute(sa.text("UPDATE guild_emoji SET state = 'replacing', emoji_id = :e, updated_at = :t "
                             "WHERE pack_id = :p AND guild_id = :g AND idx = :i"),
                     {"p": int(pack_id), "g": str(guild_id), "i": int(idx), "e": str(emoji_id), "t": time.time()})


def forget(db: Database, pack_id: int, guild_id: int | str, idx: int | None = None) -> None:
    """Drop the row of emoji ``idx`` (None: every row of the pack in that guild)."""
    sql = "DELETE FROM guild_emoji WHERE pack_id = :p AND guild_id = :g"
    params: dict[str, object] = {"p": int(pack_id), "g": str(guild_id)}
    if idx is not None:
        sql += " AND idx = :i"
        params["i"] = int(idx)
    with db.write() as conn:
        conn.execute(sa.text(sql), params)


def for_pack(db: Database, pack_id: int) -> dict[str, list[GuildEmoji]]:
    """The pack's server emoji by guild id (rows in idx order)."""
    out: dict[str, list[GuildEmoji]] = {}
    with db.read() as conn:
        for r in conn.execute(sa.text("SELECT pack_id, guild_id, idx, emoji_id, name, blob_digest, state FROM "
                                      "guild_emoji WHERE pack_id = :p ORDER BY guild_id, idx"), {"p": int(pack_id)}):
            out.setdefault(r[1], []).append(GuildEmoji(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], r[6]))
    return out
