-- 0001: initial schema. Portable SQL (SQLite >= 3.35, PostgreSQL >= 12).
-- {pk} is replaced by the dialect's auto-increment integer primary key.
-- Times are UNIX epoch seconds (DOUBLE PRECISION); sizes are bytes.

-- Content-addressed blobs (sha256 hex). Files live in the blob folder;
-- last_put_at protects a freshly written, not yet referenced blob from GC.
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_put_at DOUBLE PRECISION NOT NULL
);

-- One row per (blob, holder); holder is "<table>:<id>", e.g. "selfie:12".
-- A blob's reference count is the number of its rows here.
CREATE TABLE blob_refs (
    digest TEXT NOT NULL REFERENCES blobs(digest),
    holder TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (digest, holder)
);
CREATE INDEX blob_refs_holder ON blob_refs (holder);

CREATE TABLE users (
    id {pk},
    platform TEXT NOT NULL,
    platform_user_id TEXT NOT NULL,
    consent_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (platform, platform_user_id)
);

CREATE TABLE communities (
    id {pk},
    platform TEXT NOT NULL,
    platform_id TEXT NOT NULL,
    name TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    UNIQUE (platform, platform_id)
);

-- Styles: house styles (community_id NULL, scope 'global') or community-owned
-- (scope 'community:<id>'). version increases whenever the exemplar changes,
-- so packs can tell that their style changed since they were made.
CREATE TABLE styles (
    id {pk},
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    community_id BIGINT REFERENCES communities(id) ON DELETE CASCADE,
    exemplar_digest TEXT,
    added_by BIGINT REFERENCES users(id) ON DELETE SET NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    status_reason TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    UNIQUE (scope, name),
    CHECK (status IN ('pending', 'tuning', 'ready', 'failed', 'disabled'))
);

-- The durable job queue. priority: 0 interactive, 1 batch (lower runs first).
CREATE TABLE jobs (
    id {pk},
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_token TEXT,
    lease_expires_at DOUBLE PRECISION,
    stage TEXT,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    result TEXT,
    error_key TEXT,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    CHECK (priority IN (0, 1)),
    CHECK (status IN ('queued', 'running', 'cancel_requested', 'succeeded', 'failed', 'cancelled')),
    CHECK (max_attempts >= 1)
);
CREATE INDEX jobs_ready ON jobs (status, priority, id);
CREATE INDEX jobs_user ON jobs (user_id);

CREATE TABLE packs (
    id {pk},
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    style_id BIGINT REFERENCES styles(id) ON DELETE SET NULL,
    style_version INTEGER,
    strength DOUBLE PRECISION NOT NULL,
    engine_version TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    platform TEXT,
    platform_set_name TEXT,
    job_id BIGINT REFERENCES jobs(id) ON DELETE SET NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    CHECK (status IN ('pending', 'rendering', 'ready', 'uploading', 'published', 'failed', 'superseded'))
);
CREATE INDEX packs_user ON packs (user_id);
CREATE INDEX packs_style ON packs (style_id);

-- platform_state: 'local' (rendered only) -> 'uploaded' (file_id known)
-- -> 'added' (part of the platform's set); crash-safe resume reads it.
CREATE TABLE stickers (
    id {pk},
    pack_id BIGINT NOT NULL REFERENCES packs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    emoji TEXT NOT NULL,
    kind TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    platform_state TEXT NOT NULL DEFAULT 'local',
    platform_file_id TEXT,
    updated_at DOUBLE PRECISION NOT NULL,
    UNIQUE (pack_id, idx),
    CHECK (platform_state IN ('local', 'uploaded', 'added'))
);

CREATE TABLE selfies (
    id {pk},
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    blob_digest TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION
);
CREATE INDEX selfies_user ON selfies (user_id);

-- Cached intermediate results, keyed by a digest of inputs + config + engine
-- version. owner_user_id NULL means shared (e.g. a style finetune).
CREATE TABLE artifacts (
    id {pk},
    cache_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    owner_user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    created_at DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX artifacts_owner ON artifacts (owner_user_id);
