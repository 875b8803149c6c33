"""Selfies: a user's uploaded photo, kept until ``expires_at`` (UNIX seconds).

The blob is referenced by holder ``selfie:<id>``. Expired selfies are removed
by :func:`purge_expired`, which also deletes blobs nobody else uses.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from storage.blobs import BlobStore, add_ref, release_holder
from storage.db import Database


@dataclass(frozen=True)
class Selfie:
    id: int
    user_id: int
    blob_digest: str
    created_at: float
    expires_at: float | None


def add_selfie(db: Database, user_id: int, blob_digest: str, *, ttl_seconds: float | None = None) -> Selfie:
    """Record a selfie whose blob is already stored (``BlobStore.put_bytes``)."""
    if ttl_seconds is not None and ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive or None, got {ttl_seconds}")
    t = time.time()
    exp = None if ttl_seconds is None else t + ttl_seconds
    with db.write() as conn:
        sid = int(conn.execute(sa.text(
            "INSERT INTO selfies (user_id, blob_digest, created_at, expires_at) VALUES (:u, :d, :t, :e) RETURNING id"),
            {"u": user_id, "d": blob_digest, "t": t, "e": exp}).scalar_one())
        add_ref(conn, blob_digest, f"selfie:{sid}", t)
    return Selfie(sid, user_id, blob_digest, t, exp)


def latest_selfie(db: Database, user_id: int) -> Selfie | None:
    with db.read() as conn:
        r = conn.execute(sa.text("SELECT id, user_id, blob_digest, created_at, expires_at FROM selfies "
                                 "WHERE user_id = :u ORDER BY id DESC LIMIT 1"), {"u": user_id}).first()
    return None if r is None else Selfie(int(r[0]), int(r[1]), r[2], float(r[3]), None if r[4] is None else float(r[4]))


def purge_expired(db: Database, blobs: BlobStore, *, now: float | None = None) -> int:
    """Delete expired selfie rows and their now-unreferenced blobs; returns the rows this call
    deleted (a concurrent call that deleted one first has it counted, not this one)."""
    t = time.time() if now is None else now
    held: set[str] = set()
    deleted = 0
    with db.write() as conn:
        ids = [int(x) for x in conn.execute(sa.text(
            "SELECT id FROM selfies WHERE expires_at IS NOT NULL AND expires_at < :t ORDER BY id"), {"t": t}).scalars()]
        for i in ids:
            # Row first: on PostgreSQL a concurrent purge waits here and then finds it gone.
            if conn.execute(sa.text("DELETE FROM selfies WHERE id = :id"), {"id": i}).rowcount:
                held.update(release_holder(conn, f"selfie:{i}"))
                deleted += 1
    blobs.delete_unreferenced(held)
    return deleted
