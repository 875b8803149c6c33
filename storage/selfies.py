"""Selfies: a user's uploaded photo, kept until ``expires_at`` (UNIX seconds).

The blob is referenced by holder ``selfie:<id>``. Expired selfies are removed
by :func:`purge_expired`, which also deletes blobs nobody else uses, except a
selfie a queued or running pack job still needs (it goes at the first purge
after that job ended). A selfie kept for no time (retention 0: ``expires_at ==
created_at``) can be ordered with until the next purge deletes it
(:func:`usable`); one with a positive retention only until it expires.

A selfie's head start (``emoji3d.orders.PREPARE_KIND``: its inversion, made
while the user picked a style) that no order used goes with the selfie: when
the purge deletes a selfie and no ``make_pack`` job of its user ever named
that photo (and no other selfie row of the user holds it), the artifacts the
user's head starts for it recorded (``result["artifact"]``) are deleted too.
An inversion an order used follows the artifact retention instead.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import sqlalchemy as sa

from emoji3d.orders import JOB_KIND, PREPARE_KIND
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


def _jobs_naming(conn: sa.Connection, kind: str, user_id: int, digest: str) -> list[str | None]:
    """The results (JSON text, None before one) of the user's jobs of ``kind`` whose payload names the
    selfie ``digest``."""
    rows = conn.execute(sa.text("SELECT payload, result FROM jobs WHERE kind = :k AND user_id = :u "
                                "AND payload LIKE :d"), {"k": kind, "u": user_id, "d": f"%{digest}%"})
    return [result for payload, result in rows if json.loads(payload).get("selfie_digest") == digest]


def _drop_unused_head_starts(conn: sa.Connection, user_id: int, digest: str) -> set[str]:
    """Delete the artifacts of the user's head starts for ``digest`` when no order named that photo and
    no selfie row still holds it; returns the blob digests they released."""
    if _jobs_naming(conn, JOB_KIND, user_id, digest) or conn.execute(sa.text(
            "SELECT 1 FROM selfies WHERE user_id = :u AND blob_digest = :d"), {"u": user_id, "d": digest}).first():
        return set()
    held: set[str] = set()
    for result in _jobs_naming(conn, PREPARE_KIND, user_id, digest):
        key = json.loads(result).get("artifact") if result else None
        if not isinstance(key, str):
            continue
        for (aid,) in conn.execute(sa.text("SELECT id FROM artifacts WHERE cache_key = :k AND owner_user_id = :u"),
                                   {"k": key, "u": user_id}).all():
            if conn.execute(sa.text("DELETE FROM artifacts WHERE id = :id"), {"id": aid}).rowcount:
                held.update(release_holder(conn, f"artifact:{int(aid)}"))
    return held


def purge_expired(db: Database, blobs: BlobStore, *, now: float | None = None) -> int:
    """Delete expired selfie rows and their now-unreferenced blobs; returns the rows this call
    deleted (a concurrent call that deleted one first has it counted, not this one)."""
    t = time.time() if now is None else now
    held: set[str] = set()
    deleted = 0
    with db.write() as conn:
        needed = _needed_by_open_jobs(conn)
        rows = [(int(r[0]), int(r[1]), r[2]) for r in conn.execute(sa.text(
            "SELECT id, user_id, blob_digest FROM selfies WHERE expires_at IS NOT NULL AND expires_at <= :t "
            "ORDER BY id"), {"t": t}) if r[2] not in needed]
        for i, user_id, digest in rows:
            # Row first: on PostgreSQL a concurrent purge waits here and then finds it gone.
            if conn.execute(sa.text("DELETE FROM selfies WHERE id = :id"), {"id": i}).rowcount:
                held.update(release_holder(conn, f"selfie:{i}"))
                held.update(_drop_unused_head_starts(conn, user_id, digest))
                deleted += 1
    blobs.delete_unreferenced(held)
    return deleted
