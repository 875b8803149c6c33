"""Several serve processes: schedules fire once, and a standby takes over when the leader stops.

Three real processes run :func:`shell.scheduler.run_as_leader` on one database
(SQLite: a file lock; PostgreSQL: an advisory lock) with a schedule that falls
due every second; the first starts 2 s before the others (so it leads) and stops half way.
"""
from __future__ import annotations

import json
import time

from storage.leader import LeaderLock
from tests.storage.procs import proc_leader, run_spawned


def test_a_schedule_fires_once_per_due_time_across_processes_and_survives_the_leader(db_url, db, tmp_path):
    start = time.time() + 3.0  # after the spawned interpreters have started
    first_stops, others_stop = start + 5.0, start + 10.0
    reports = [tmp_path / f"fired-{i}.json" for i in range(3)]
    run_spawned([(proc_leader, db_url, "* * * * * *", start if i == 0 else start + 2.0,
                  first_stops if i == 0 else others_stop, str(reports[i])) for i in range(3)], tmp_path / "go")
    fired = [json.loads(r.read_text()) for r in reports]
    every = [t for times in fired for t in times]
    assert len(every) == len(set(every)), f"a due time fired twice: {fired}"
    assert fired[0] and max(fired[0]) <= first_stops, fired  # the first led while it ran
    assert fired[1] or fired[2], f"nobody took over from the first leader: {fired}"
    assert max(every) > first_stops + 1  # fired after the first process had stopped
    assert len(every) >= 6


def test_the_lock_is_held_by_one_holder_until_released(db):
    a, b = LeaderLock(db, "scheduler"), LeaderLock(db, "scheduler")
    assert a.try_acquire() and a.held()
    assert not b.try_acquire() and not b.held()
    a.release()
    assert not a.held() and b.try_acquire()
    b.release()
