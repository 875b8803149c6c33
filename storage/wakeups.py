"""Wake a waiting process as soon as a job may have changed.

The queue's producers and consumers are separate processes: a bot enqueues
and the engine claims; the engine finishes and the bot's notifier delivers.
Each side used to poll every second, which added about a second to every
pack (half a poll interval on each side on average, two intervals at worst).
A waiter now blocks on a signal instead:

* PostgreSQL: the waiter holds a connection of its own that LISTENs on
  :data:`CHANNEL`. The writes another process waits for (a job enqueued,
  released, finished or cancelled; a first-look still recorded) call
  :func:`announce` inside their transaction; PostgreSQL delivers the
  notification when it commits, and drops it when it rolls back. The listener
  is replaced every :data:`REFRESH_S`: a connection cut off without a reset (a
  network split) would otherwise never say so.
* SQLite: the waiter holds a connection of its own and reads
  ``PRAGMA data_version`` every ``slice_s``. The value changes when any other
  connection (in any process) commits to the file, so every commit wakes
  the waiter. A spurious wake costs the caller one query.

Contract: :meth:`JobWakeups.wait` returns True when something may have
changed since the previous ``wait`` returned (or since the waiter was
made), and False when ``timeout`` passed without a sign. Callers keep their
timed poll as the floor: a lost signal (a dropped listener connection, a
notification from an old writer) delays them by at most ``timeout``, which
is the poll interval they had before. Correctness never depends on a wake.
A waiter belongs to one thread at a time.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.db import Database

log = logging.getLogger("emoji3d.wakeups")

CHANNEL = "emoji3d_jobs"
SLICE_S = 0.02  # how often a waiter looks (SQLite) or checks ``stop`` (PostgreSQL)
# A LISTEN connection only reads: one cut off without a reset (a network split) would never say so,
# and its waiter would quietly be back to polling. It is replaced this often (seconds).
REFRESH_S = 300.0


def announce(conn: Connection) -> None:
    """Tell the waiters that the jobs table changed, when ``conn``'s transaction
    commits (PostgreSQL; SQLite waiters see every commit by themselves)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def _never() -> bool:
    return False


class JobWakeups:
    """A waiter on one database; see the module docstring."""

    def __init__(self, db: Database, *, slice_s: float = SLICE_S, refresh_s: float = REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not slice_s > 0 or not refresh_s > 0:
            raise ValueError(f"slice_s and refresh_s must be positive, got {slice_s}, {refresh_s}")
        self.db, self.slice_s, self.refresh_s, self.clock = db, float(slice_s), float(refresh_s), clock
        self._connected_at = 0.0
        self._conn: Any = None  # the waiter's own DB-API connection, opened lazily and again after a loss
        self._seen: int | None = None  # SQLite: the data_version last reported
        self._lost_logged = False
        self._closed = False
        self._lock = threading.Lock()  # close() may come from another thread
        try:  # connected now, so that a change before the first wait counts
            self._connect()
        except Exception as exc:  # noqa: BLE001 - the first wait tries again
            self._drop(exc)

    # ------------------------------------------------------------------ public
    def wait(self, timeout: float, stop: Callable[[], bool] = _never) -> bool:
        """Block until a sign of change (True), ``timeout`` seconds (False) or
        ``stop()`` turns true (False); ``stop`` is checked every ``slice_s``."""
        deadline = self.clock() + max(0.0, float(timeout))
        if self._closed:
            return False
        try:
            if not self.db.is_sqlite and self._conn is not None and self.clock() - self._connected_at > self.refresh_s:
                self._disconnect()
                self._connect()
                return True  # a fresh listener: what happened meanwhile was not seen
            if self._connect():
                return True  # (re)connected: what happened meanwhile was not seen
            while not (self._closed or stop()):
                if self._changed(min(self.slice_s, max(0.0, deadline - self.clock()))):
                    return True
                if self.clock() >= deadline:
                    return False
            return False
        except Exception as exc:  # noqa: BLE001 - a lost connection: poll on the timeout until it is back
            self._drop(exc)
            self._sleep_until(deadline, lambda: self._closed or stop())
            return False

    def close(self) -> None:
        """Close the waiter's connection; a ``wait`` running in another thread returns."""
        self._closed = True
        self._disconnect()

    def _disconnect(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def __enter__(self) -> "JobWakeups":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ backends
    def _connect(self) -> bool:
        """Open the waiter's connection if it is not open; True when it was
        opened here after an earlier one was lost."""
        if self._conn is not None:
            return False
        if self.db.is_sqlite:
            conn = sqlite3.connect(self.db.engine.url.database, isolation_level=None, check_same_thread=False)
            self._seen = int(conn.execute("PRAGMA data_version").fetchone()[0])
        else:
            pooled = self.db.engine.raw_connection()
            conn = pooled.driver_connection
            pooled.detach()  # LISTEN belongs to this connection: it must never go back to the pool
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
        with self._lock:
            self._conn = conn
        self._connected_at = self.clock()
        regained = self._lost_logged
        if regained:
            log.info("job wake-ups: connection back")
            self._lost_logged = False
        return regained

    def _changed(self, within_s: float) -> bool:
        """Whether a sign of change arrives within ``within_s`` seconds."""
        if self.db.is_sqlite:
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            if version != self._seen:
                self._seen = version
                return True
            time.sleep(within_s)
            return False
        if not list(self._conn.notifies(timeout=within_s, stop_after=1)):
            return False
        # Several commits may have notified: one wake covers them all. (timeout=0 would mean none.)
        list(self._conn.notifies(timeout=0.001))
        return True

    def _drop(self, exc: BaseException) -> None:
        if self._closed:
            return
        if not self._lost_logged:
            log.warning("job wake-ups: %s; polling until the connection is back",
                        (str(exc).strip().splitlines() or [type(exc).__name__])[0])
            self._lost_logged = True
        self._disconnect()

    def _sleep_until(self, deadline: float, stop: Callable[[], bool]) -> None:
        while not stop() and self.clock() < deadline:
            time.sleep(min(self.slice_s, max(0.0, deadline - self.clock())))
