-- 0006: which Discord server (guild) stickers a pack has, so a re-render can
-- update them: stickers dropped from the selection are deleted, changed ones
-- replaced. Portable SQL (SQLite >= 3.35, PostgreSQL >= 12); times are UNIX seconds.
--
-- guild_stickers: one row per sticker of a pack that "Add to server" created in
--   a guild: its Discord id, the sticker file (blob digest) it shows, and state
--   'added' (in the guild, showing blob_digest) or 'replacing' (recorded before
--   the old sticker is deleted, until its replacement is created: a restart
--   finishes the replacement instead of taking the gap for a server's removal).
--   Gone with the pack (cascade); the stickers themselves belong to the server.
CREATE TABLE guild_stickers (
    pack_id BIGINT NOT NULL REFERENCES packs(id) ON DELETE CASCADE,
    guild_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    sticker_id TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'added',
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (pack_id, guild_id, idx),
    CHECK (state IN ('added', 'replacing'))
);
