-- 0002: where a bot talks to the user about a job, so a restarted bot resumes
-- editing the same message. Portable SQL (SQLite >= 3.35, PostgreSQL >= 12).
-- One row per watched job; removed when the job is finished and delivered,
-- with the job (cascade), and by storage.users.delete_user.
--
-- chat_id / message_id: the progress message (Telegram chat + message id;
--   Discord: the command's channel and '@original').
-- guild_id: the Discord guild the command came from ("Add to server").
-- application_id / token / started_at: a Discord interaction webhook; token is
--   a short-lived secret (15 min from started_at, UNIX seconds), cleared once
--   expired, never logged.
-- fallback_chat_id / fallback_message_id: the DM (or channel) message used
--   after the token window.
CREATE TABLE delivery_refs (
    job_id BIGINT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    platform TEXT NOT NULL,
    chat_id TEXT,
    message_id TEXT,
    guild_id TEXT,
    application_id TEXT,
    token TEXT,
    started_at DOUBLE PRECISION,
    fallback_chat_id TEXT,
    fallback_message_id TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX delivery_refs_user ON delivery_refs (user_id);
CREATE INDEX delivery_refs_platform ON delivery_refs (platform);
