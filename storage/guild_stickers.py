"""Discord server stickers made from a pack: what "Add to server" created where, for keeping them in step.

One row per (pack, guild, sticker idx): the Discord sticker id and the sticker
file (blob digest) it shows. ``state`` makes a replacement crash-safe:
``added`` (in the guild, showing ``blob_digest``) → ``replacing`` (recorded
before the old sticker is deleted) → ``added`` again with the new sticker's id
and file. A ``replacing`` row whose sticker is missing is finished by the next
sync; an ``added`` row whose sticker is missing was removed by the server's
moderators and is forgotten (the server owns its stickers). Rows go with their
pack (``/delete``); the stickers stay in the servers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from storage.db import Database

ADDED, REPLACING = "added", "replacing"


@dataclass(frozen=True)
class GuildSticker:
    pack_id: int
    guild_id: str
    idx: int
    sticker_id: str
    blob_digest: str
    state: str


def record_added(db: Database, pack_id: int, guild_id: int | str, idx: int, sticker_id: int | str,
                 blob_digest: str) -> None:
    """The sticker ``idx`` of the pack is in the guild as ``sticker_id``, showing ``blob_digest``."""
    params = {"p": int(pack_id), "g": str(guild_id), "i": int(idx), "s": str(sticker_id), "d": blob_digest,
              "t": time.time()}
    with db.write() as conn:
        conn.execute(sa.text(
            "INSERT INTO guild_stickers (pack_id, guild_id, idx, sticker_id, blob_digest, state, updated_at) "
            "VALUES (:p, :g, :i, :s, :d, 'added', :t) ON CONFLICT (pack_id, guild_id, idx) DO UPDATE SET "
            "sticker_id = excluded.sticker_id, blob_digest = excluded.blob_digest, state = 'added', "
            "updated_at = excluded.updated_at"), params)


def mark_replacing(db: Database, pack_id: int, guild_id: int | str, idx: int, sticker_id: int | str) -> None:
    """About to delete the sticker ``sticker_id`` to replace it (see the module docstring)."""
    with db.write() as conn:
        conn.execute(sa.text("UPDATE guild_stickers SET state = 'replacing', sticker_id = :s, updated_at = :t "
                             "WHERE pack_id = :p AND guild_id = :g AND idx = :i"),
                     {"p": int(pack_id), "g": str(guild_id), "i": int(idx), "s": str(sticker_id), "t": time.time()})


def forget(db: Database, pack_id: int, guild_id: int | str, idx: int | None = None) -> None:
    """Drop the row of sticker ``idx`` (None: every row of the pack in that guild)."""
    sql = "DELETE FROM guild_stickers WHERE pack_id = :p AND guild_id = :g"
    params: dict[str, object] = {"p": int(pack_id), "g": str(guild_id)}
    if idx is not None:
        sql += " AND idx = :i"
        params["i"] = int(idx)
    with db.write() as conn:
        conn.execute(sa.text(sql), params)


def for_pack(db: Database, pack_id: int) -> dict[str, list[GuildSticker]]:
    """The pack's server stickers by guild id (rows in idx order)."""
    out: dict[str, list[GuildSticker]] = {}
    with db.read() as conn:
        for r in conn.execute(sa.text("SELECT pack_id, guild_id, idx, sticker_id, blob_digest, state FROM "
                                      "guild_stickers WHERE pack_id = :p ORDER BY guild_id, idx"), {"p": int(pack_id)}):
            out.setdefault(r[1], []).append(GuildSticker(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5]))
    return out
