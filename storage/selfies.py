"""Selfies: a user's uploaded photo, kept until ``expires_at`` (UNIX seconds).

The blob is referenced by holder ``selfie:<id>``. Expired selfies are removed
by :func:`purge_expired`, which also deletes blobs nobody else uses, except a
selfie a queued or running pack job still needs (it goes at the first purge
after that job ended). A selfie kept for no time (retention 0: ``expires_at ==
created_at``) can be ordered with until the next purge deletes it
(:func:`usable`); one with a positive retention only until it expires.
"""
from __future__ import annotations

import json
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
    if ttl_seconds is not None and ttl_seconds < 0:
        raise ValueError(f"ttl_seconds must be >= 0 or None, got {ttl_seconds}")
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


def usable(selfie: Selfie, now: float) -> bool:
    """The selfie may be ordered with at ``now`` (see the module docstring)."""
    return selfie.expires_at is None or selfie.expires_at == selfie.created_at or now < selfie.expires_at


def _needed_by_open_jobs(conn: sa.Connection) -> set[str]:
    """Selfie digests named by queued or running jobs' payloads."""
    needed = set()
    for (payload,) in conn.execute(sa.text(
            "SELECT payload FROM jobs WHERE status IN ('queued', 'running', 'cancel_requested') "
            "AND payload LIKE '%selfie_digest%'")):
        digest = json.loads(payload).get("selfie_digest")
        if isinstance(digest, str):
            needed.add(digest)
    return needed


def purge_expired(db: Database, blobs: BlobStore, *, now: float | None = None) -> int:
    """Delete expired selfie rows and their now-unreferenced blobs; returns the rows this call
    deleted (a concurrent call that deleted one first has it counted, not this one)."""
    t = time.time() if now is None else now
    held: set[str] = set()
    deleted = 0
    with db.write() as conn:
        needed = _needed_by_open_jobs(conn)
        ids = [int(r[0]) for r in conn.execute(sa.text(
            "SELECT id, blob_digest FROM selfies WHERE expires_at IS NOT NULL AND expires_at <= :t ORDER BY id"),
            {"t": t}) if r[1] not in needed]
        for i in ids:
            # Row first: on PostgreSQL a concurrent purge waits here and then finds it gone.
            if conn.execute(sa.text("DELETE FROM selfies WHERE id = :id"), {"id": i}).rowcount:
                held.update(release_holder(conn, f"selfie:{i}"))
                deleted += 1
    blobs.delete_unreferenced(held)
    return deleted
