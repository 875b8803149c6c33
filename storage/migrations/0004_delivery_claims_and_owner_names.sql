-- 0004: several bot processes at once (webhook replicas, Discord shards in
-- separate processes) and the pack owner's display name.
-- Portable SQL (SQLite >= 3.35, PostgreSQL >= 12); times are UNIX seconds.
--
-- delivery_claims: which bot process talks to the user about a job. A process
--   claims the job before it sends anything about it (progress, result,
--   failure) and renews the claim while it works; expires_at lets another
--   process take over when the holder died. done_at is set once the outcome
--   was delivered (or refused): nobody sends it again. One row per job, gone
--   with the job (cascade).
-- pack_owner_names: the member's display name captured when the pack was
--   ordered (Discord sticker names; no members intent needed later). Gone
--   with the pack (cascade), so with the user's data.
CREATE TABLE delivery_claims (
    job_id BIGINT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    platform TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    done_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX delivery_claims_platform ON delivery_claims (platform, done_at);

CREATE TABLE pack_owner_names (
    pack_id BIGINT PRIMARY KEY REFERENCES packs(id) ON DELETE CASCADE,
    platform TEXT NOT NULL,
    display_name TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
