"""Job wake-ups (storage.wakeups) on SQLite, and on PostgreSQL when CI provides it.

The waits here are long (30 s) where a wake is expected: returning True well
before them is the wake; a missed wake would show as a 30 s timeout and False.
"""
from __future__ import annotations

import logging
import threading
import time

import pytest
import sqlalchemy as sa

from storage import jobs
from storage.db import open_database
from storage.wakeups import JobWakeups, announce

LONG = 30.0


@pytest.fixture
def other(db_url):
    """A second handle on the same database: another process's writes."""
    d = open_database(db_url)
    yield d
    d.dispose()


@pytest.fixture
def waiter(db):
    w = JobWakeups(db)
    yield w
    w.close()


def _timed(fn):
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


def test_without_a_change_the_wait_times_out(waiter):
    assert waiter.wait(0.2) is False


def test_an_enqueue_elsewhere_ends_the_wait(waiter, other):
    threading.Timer(0.2, lambda: jobs.enqueue(other, "k", {}, "key-1")).start()
    woke, took = _timed(lambda: waiter.wait(LONG))
    assert woke is True and 0.15 < took < LONG / 2
    assert waiter.wait(0.2) is False  # one change, one wake


def test_a_change_between_waits_is_not_lost(waiter, other):
    jobs.enqueue(other, "k", {}, "key-1")  # while the caller was busy, not waiting
    woke, took = _timed(lambda: waiter.wait(LONG))
    assert woke is True and took < LONG / 2


@pytest.mark.parametrize("write", ["complete", "fail", "release", "cancel_queued", "cancel_running"])
def test_the_writes_a_process_waits_for_wake_it(waiter, other, write):
    jid = jobs.enqueue(other, "k", {}, "key-1")
    job = None if write == "cancel_queued" else jobs.claim(other, "w", 60)
    assert waiter.wait(LONG)  # the enqueue (and, on SQLite, the claim): a notification takes a moment to arrive
    waiter.wait(0.05)
    if write == "complete":
        jobs.complete(other, jid, job.lease_token, {})
    elif write == "fail":
        jobs.fail(other, jid, job.lease_token, "broke", retryable=False)
    elif write == "release":
        jobs.release(other, jid, job.lease_token)
    else:
        jobs.cancel(other, jid)
    assert waiter.wait(LONG) is True


def test_a_first_look_still_wakes_the_notifier_and_other_artifacts_need_not(db, waiter, other, blob_location):
    # A bot shows the first look while the job runs; a cached inversion concerns nobody waiting.
    from storage import artifacts
    from storage.blobs import BlobStore

    blobs = BlobStore(other, blob_location)
    artifacts.put_artifact(other, "cache:portrait", "portrait_3d", blobs.put_bytes(b"latents"), None)
    if not db.is_sqlite:  # SQLite's waiter sees every commit: there it woke too
        assert waiter.wait(0.3) is False
    waiter.wait(0.05)
    artifacts.put_artifact(other, "first_look:1:photo_real", "first_look", blobs.put_bytes(b"png"), None,
                           wake_waiters=True)
    assert waiter.wait(LONG) is True


def test_a_worker_s_own_empty_claims_do_not_wake_it(db, waiter):
    # An idle engine claims, finds nothing and waits: that claim must not end its own wait.
    assert jobs.claim(db, "w", 60) is None
    assert waiter.wait(0.3) is False


def test_a_rolled_back_write_does_not_wake(waiter, other):
    with pytest.raises(RuntimeError):
        with other.write() as conn:
            conn.execute(sa.text("INSERT INTO jobs (kind, payload, idempotency_key, priority, status, attempts, "
                                 "max_attempts, not_before, progress, created_at, updated_at) "
                                 "VALUES ('k', '{}', 'x', 0, 'queued', 0, 1, 0, 0, 0, 0)"))
            announce(conn)
            raise RuntimeError("rolled back")
    assert waiter.wait(0.3) is False


def test_stop_and_close_end_a_wait(db, waiter):
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    woke, took = _timed(lambda: waiter.wait(LONG, stop.is_set))
    assert woke is False and took < LONG / 2
    threading.Timer(0.2, waiter.close).start()
    woke, took = _timed(lambda: waiter.wait(LONG))
    assert woke is False and took < LONG / 2
    assert waiter.wait(LONG) is False  # closed: returns at once


def test_a_lost_listener_falls_back_to_the_timeout_then_reconnects(db, other, waiter, caplog):
    if db.is_sqlite:
        pytest.skip("a PostgreSQL listener connection; SQLite's waiter reads the file")
    with other.write() as conn:
        killed = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE query = 'LISTEN emoji3d_jobs' AND datname = current_database()")).scalar()
    assert killed == 1
    with caplog.at_level(logging.WARNING, logger="emoji3d.wakeups"):
        woke, took = _timed(lambda: waiter.wait(0.5))
        assert woke is False and took >= 0.45  # the old poll interval, not a busy loop
        assert "polling until the connection is back" in caplog.text
    assert waiter.wait(0.5) is True  # back: what happened meanwhile was not seen, so look now
    jobs.enqueue(other, "k", {}, "after")
    assert waiter.wait(LONG) is True


def test_a_listener_is_replaced_now_and_then(db, other):
    # A connection cut off without a reset would never say so: the waiter renews it every refresh_s.
    if db.is_sqlite:
        pytest.skip("a PostgreSQL listener connection")

    def listener_pid():
        with other.read() as conn:
            return conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN emoji3d_jobs' "
                                        "AND datname = current_database()")).scalar_one()

    with JobWakeups(db, refresh_s=0.3) as waiter:
        first = listener_pid()
        time.sleep(0.4)
        assert waiter.wait(LONG) is True  # renewed at once (a change meanwhile cannot be told from none)
        assert listener_pid() != first
        jobs.enqueue(other, "k", {}, "after")
        assert waiter.wait(LONG) is True
