"""Discord server expressions (stickers, custom emoji) made from a pack: what the bot created where, for
keeping them in step. One implementation over two tables (:mod:`storage.guild_stickers` over
``guild_stickers``, migration 0006; :mod:`storage.guild_emoji` over ``guild_emoji``, migration 0007).

One row per (pack, guild, sticker idx): the Discord id of the expression, its name where the table keeps
one (``guild_emoji`` does, ``guild_stickers`` does not: :attr:`GuildExpression.name` is then None), and
the file (blob digest) it shows. ``state`` makes a replacement crash-safe: ``added`` (in the guild,
showing ``blob_digest``) → ``replacing`` (recorded before the old expression is deleted) → ``added``
again with the new expression's id, name and file. A ``replacing`` row whose expression is missing is
finished by the next sync; an ``added`` row whose expression is missing was removed by the server's
moderators and is forgotten (the server owns its expressions). Rows go with their pack (``/delete``);
the expressions stay in the servers.

Guild ids and Discord ids are stored as text (snowflakes), taken as int or str. Table and column names
are fixed by the two modules above, never by input, so they are written into the SQL directly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Generic, TypeVar

import sqlalchemy as sa

from storage.db import Database

ADDED, REPLACING = "added", "replacing"


@dataclass(frozen=True)
class GuildExpression:
    pack_id: int
    guild_id: str
    idx: int
    discord_id: str
    name: str | None
    blob_digest: str
    state: str


Row = TypeVar("Row", bound=GuildExpression)


class GuildExpressionTable(Generic[Row]):
    """The rows of one table: ``id_column`` holds the Discord id, ``name_column`` (None: none) the name;
    ``for_pack`` builds ``row`` objects."""

    def __init__(self, table: str, id_column: str, name_column: str | None, row: type[Row]) -> None:
        self.table, self.id_column, self.name_column, self.row = table, id_column, name_column, row

    def record_added(self, db: Database, pack_id: int, guild_id: int | str, idx: int, discord_id: int | str,
                     blob_digest: str, name: str | None = None) -> None:
        """The expression of sticker ``idx`` of the pack is in the guild as ``discord_id`` (named ``name``,
        which a table with a name column requires), showing ``blob_digest``."""
        if (name is None) != (self.name_column is None):
            raise ValueError(f"{self.table}: a name is {'required' if self.name_column else 'not kept'}")
        params = {"pack_id": int(pack_id), "guild_id": str(guild_id), "idx": int(idx),
                  self.id_column: str(discord_id), "blob_digest": blob_digest}
        if self.name_column is not None:
            params[self.name_column] = name
        columns = list(params)
        changed = "".join(f"{c} = excluded.{c}, " for c in columns[3:])  # all but the key
        with db.write() as conn:
            conn.execute(sa.text(
                f"INSERT INTO {self.table} ({', '.join(columns)}, state, updated_at) "
                f"VALUES ({', '.join(':' + c for c in columns)}, 'added', :updated_at) "
                f"ON CONFLICT (pack_id, guild_id, idx) DO UPDATE SET {changed}"
                "state = 'added', updated_at = excluded.updated_at"), {**params, "updated_at": time.time()})

    def mark_replacing(self, db: Database, pack_id: int, guild_id: int | str, idx: int,
                       discord_id: int | str) -> None:
        """About to delete the expression ``discord_id`` to replace it (see the module docstring)."""
        with db.write() as conn:
            conn.execute(sa.text(f"UPDATE {self.table} SET state = 'replacing', {self.id_column} = :d, "
                                 "updated_at = :t WHERE pack_id = :p AND guild_id = :g AND idx = :i"),
                         {"p": int(pack_id), "g": str(guild_id), "i": int(idx), "d": str(discord_id),
                          "t": time.time()})

    def forget(self, db: Database, pack_id: int, guild_id: int | str, idx: int | None = None) -> None:
        """Drop the row of sticker ``idx`` (None: every row of the pack in that guild)."""
        sql = f"DELETE FROM {self.table} WHERE pack_id = :p AND guild_id = :g"
        params: dict[str, object] = {"p": int(pack_id), "g": str(guild_id)}
        if idx is not None:
            sql += " AND idx = :i"
            params["i"] = int(idx)
        with db.write() as conn:
            conn.execute(sa.text(sql), params)

    def for_pack(self, db: Database, pack_id: int) -> dict[str, list[Row]]:
        """The pack's expressions by guild id (rows in idx order)."""
        name = self.name_column or "NULL"
        out: dict[str, list[Row]] = {}
        with db.read() as conn:
            for r in conn.execute(sa.text(
                    f"SELECT pack_id, guild_id, idx, {self.id_column}, {name}, blob_digest, state "
                    f"FROM {self.table} WHERE pack_id = :p ORDER BY guild_id, idx"), {"p": int(pack_id)}):
                out.setdefault(r[1], []).append(self.row(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], r[6]))
        return out
