-- 0007: which Discord server (guild) custom emoji a pack has ("Add as custom
-- emoji instead"), so a re-render or remake can update them as 0006 does for
-- stickers: emoji of stickers dropped from the selection are deleted, changed
-- ones replaced. Portable SQL (SQLite >= 3.35, PostgreSQL >= 12); times are UNIX seconds.
--
-- guild_emoji: one row per custom emoji of a pack that the bot created in a
--   guild: its Discord id, its name (e3d<pack>_<idx>_<expression>), the emoji
--   file (blob digest) it shows, and state 'added' (in the guild, showing
--   blob_digest) or 'replacing' (recorded before the old emoji is deleted, until
--   its replacement is created: a restart finishes the replacement instead of
--   taking the gap for a server's removal).
--   Gone with the pack (cascade); the emoji themselves belong to the server.
CREATE TABLE guild_emoji (
    pack_id BIGINT NOT NULL REFERENCES packs(id) ON DELETE CASCADE,
    guild_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    emoji_id TEXT NOT NULL,
    name TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'added',
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (pack_id, guild_id, idx),
    CHECK (state IN ('added', 'replacing'))
);
