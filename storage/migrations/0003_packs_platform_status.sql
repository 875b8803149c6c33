-- 0003: the bots' rescan (bots.notify.Notifier._undelivered) selects one
-- platform's packs by status in a single query; this index keeps it from
-- reading every pack ever made. Portable SQL (SQLite, PostgreSQL).
CREATE INDEX packs_platform_status ON packs (platform, status);
