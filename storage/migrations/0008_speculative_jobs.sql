-- 0008: speculative jobs, work done ahead of a request that may never come
-- (a Telegram selfie's head start: its inversion while the user picks a
-- style). Within its priority a speculative job is claimed after the others
-- (storage.jobs). An added column, so engines and bots of the previous version
-- keep working beside this one during a rolling upgrade (they enqueue and see
-- every job as not speculative). The claim's index follows its new order.
-- Portable SQL (SQLite, PostgreSQL).
ALTER TABLE jobs ADD COLUMN speculative INTEGER NOT NULL DEFAULT 0 CHECK (speculative IN (0, 1));
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (status, priority, speculative, id);
