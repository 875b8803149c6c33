"""Discord server custom emoji made from a pack: what "Add as custom emoji instead" created where, for
keeping them in step (the emoji counterpart of :mod:`storage.guild_stickers`).

The ``guild_emoji`` table (migration 0007) through :mod:`storage.guild_expressions`, which states the
conventions (one row per pack, guild and sticker idx; the crash-safe ``added`` → ``replacing`` →
``added`` replacement). The table keeps each emoji's id (``emoji_id``), name and file:
:func:`record_added` requires the name.
"""
from __future__ import annotations

from dataclasses import dataclass

from storage.guild_expressions import ADDED, REPLACING, GuildExpression, GuildExpressionTable

__all__ = ["ADDED", "REPLACING", "TABLE", "GuildEmoji", "for_pack", "forget", "mark_replacing", "record_added"]


@dataclass(frozen=True)
class GuildEmoji(GuildExpression):
    @property
    def emoji_id(self) -> str:
        return self.discord_id


TABLE = GuildExpressionTable("guild_emoji", "emoji_id", "name", GuildEmoji)
record_added, mark_replacing, forget, for_pack = TABLE.record_added, TABLE.mark_replacing, TABLE.forget, TABLE.for_pack
