"""A named lock that one process at a time holds, across hosts: who leads.

Conventions
-----------
* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a
  connection kept open for as long as the lock is held. The key is the first
  8 bytes of sha256(name), as a signed 64-bit integer. If the holder dies or
  its connection drops, the server releases the lock, and another process's
  next :meth:`LeaderLock.try_acquire` gets it.
* SQLite (one machine): ``flock`` on ``<database file>.<name>.lock``, released
  by the kernel when the holder exits.
* :meth:`LeaderLock.held` re-checks (a query on the lock's own connection):
  a holder cut off from the database must stop leading. Between the cut and
  that check, two processes may both think they lead; what a leader does must
  be harmless to repeat (the scheduler's actions enqueue with idempotency keys,
  blob GC and retention are safe concurrently).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import sqlalchemy as sa

from storage.db import Database

log = logging.getLogger("storage.leader")


def lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class LeaderLock:
    def __init__(self, db: Database, name: str) -> None:
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"lock name must be letters, digits, '-' or '_', got {name!r}")
        self.db, self.name = db, name
        self._conn: sa.Connection | None = None
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if free; True when this process holds it (also if it already did)."""
        if self._conn is not None or self._fd is not None:
            return self.held()
        if self.db.dialect == "postgresql":
            conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                got = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"),
                                        {"k": lock_key(self.name)}).scalar_one())
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._conn = conn
            return True
        import fcntl

        path = Path(sa.engine.make_url(self.db.url).database or "emoji3d").with_name(
            Path(sa.engine.make_url(self.db.url).database or "emoji3d").name + f".{self.name}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def held(self) -> bool:
        """Whether this process still holds the lock (PostgreSQL: the lock's connection still works)."""
        if self._fd is not None:
            return True
        if self._conn is None:
            return False
        try:
            self._conn.execute(sa.text("SELECT 1")).scalar_one()
            return True
        except Exception:
            log.warning("lock %s: lost the database connection that held it", self.name)
            self._drop_connection()
            return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(self.name)})
            except Exception:  # the connection is gone: the server dropped the lock with it
                pass
            self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never hand a lock-holding session back to the pool
                conn.close()
            except Exception:
                pass
