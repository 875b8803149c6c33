"""Discord server stickers made from a pack: what "Add to server" created where, for keeping them in step.

The ``guild_stickers`` table (migration 0006) through :mod:`storage.guild_expressions`, which states the
conventions (one row per pack, guild and sticker idx; the crash-safe ``added`` → ``replacing`` →
``added`` replacement). The table keeps each sticker's id (``sticker_id``) and file, not its name:
:func:`record_added` takes no name and the rows' ``name`` is None.
"""
from __future__ import annotations

from dataclasses import dataclass

from storage.guild_expressions import ADDED, REPLACING, GuildExpression, GuildExpressionTable

__all__ = ["ADDED", "REPLACING", "TABLE", "GuildSticker", "for_pack", "forget", "mark_replacing", "record_added"]


@dataclass(frozen=True)
class GuildSticker(GuildExpression):
    @property
    def sticker_id(self) -> str:
        return self.discord_id


TABLE = GuildExpressionTable("guild_stickers", "sticker_id", None, GuildSticker)
record_added, mark_replacing, forget, for_pack = TABLE.record_added, TABLE.mark_replacing, TABLE.forget, TABLE.for_pack
