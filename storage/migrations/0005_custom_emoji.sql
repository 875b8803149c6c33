-- 0005: Telegram custom emoji sets (issue 19): a pack's second set, of
-- sticker_type custom_emoji, made from the same renders as its stickers.
-- Portable SQL (SQLite >= 3.35, PostgreSQL >= 12); times are UNIX seconds.
--
-- custom_emoji_sets: the set's name, recorded before the set is created (so a
--   restart finds it), one per pack; gone with the pack (cascade).
-- custom_emoji: one row per emoji of the set, like stickers: platform_state
--   'local' (made only) -> 'uploaded' (platform_file_id known) -> 'added' (in
--   the set); the file blob is referenced by holder "custom_emoji:<id>".
CREATE TABLE custom_emoji_sets (
    pack_id BIGINT PRIMARY KEY REFERENCES packs(id) ON DELETE CASCADE,
    set_name TEXT NOT NULL UNIQUE,
    published_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE custom_emoji (
    id {pk},
    pack_id BIGINT NOT NULL REFERENCES packs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    emoji TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    platform_state TEXT NOT NULL DEFAULT 'local',
    platform_file_id TEXT,
    updated_at DOUBLE PRECISION NOT NULL,
    UNIQUE (pack_id, idx),
    CHECK (platform_state IN ('local', 'uploaded', 'added'))
);
