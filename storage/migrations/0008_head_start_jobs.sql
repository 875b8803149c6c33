-- 0008: what the queue knows of a Telegram selfie's head start (its inversion
-- while the user picks a style; bots.head_starts):
--
-- jobs.speculative: work done ahead of a request that may never come. Within
--   its priority a speculative job is claimed after the others.
-- jobs.waits_for: a job (an order) that no engine may claim while that other
--   job (its head start) runs with a live lease, so no engine sits idle
--   waiting for it; it becomes claimable the moment the other one ends.
--
-- Added columns, so engines and bots of the previous version keep working
-- beside this one during a rolling upgrade (they see every job as ordinary,
-- and their engines wait for a running head start inside the order). The
-- claim's index follows its new order. Portable SQL (SQLite, PostgreSQL).
ALTER TABLE jobs ADD COLUMN speculative INTEGER NOT NULL DEFAULT 0 CHECK (speculative IN (0, 1));
ALTER TABLE jobs ADD COLUMN waits_for BIGINT REFERENCES jobs(id) ON DELETE SET NULL;
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (status, priority, speculative, id);
