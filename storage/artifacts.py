"""Cache of intermediate results (style finetunes, inversions, ...).

Conventions
-----------
* ``cache_key`` is the sha256 hex of a canonical JSON of everything the
  result depends on: input blob digests, the relevant config values and the
  engine version (see :func:`cache_key`). Same inputs → same key → cache hit.
* ``owner_user_id`` is the user whose data the artifact derives from (deleted
  with them), or ``None`` for shared artifacts such as a style finetune.
* The blob is referenced by holder ``artifact:<id>``; ``last_used_at`` is
  refreshed on every hit so that eviction can drop the least recently used.
* Eviction spares the artifacts of a user who has a queued or running job: a
  retention of 0 ("keep nothing for later") must not pull a cached inversion
  from under the job that is making it.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from storage.blobs import BlobStore, add_ref, release_holder
from storage.db import Database
from storage.wakeups import announce


@dataclass(frozen=True)
class Artifact:
    id: int
    cache_key: str
    kind: str
    blob_digest: str
    owner_user_id: int | None
    last_used_at: float


def cache_key(kind: str, inputs: dict[str, Any], config: dict[str, Any], engine_version: str) -> str:
    """Digest of (kind, inputs, config, engine version); key order does not matter."""
    canon = json.dumps({"kind": kind, "inputs": inputs, "config": config, "engine": engine_version},
                       sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def put_artifact(db: Database, key: str, kind: str, blob_digest: str, owner_user_id: int | None, *,
                 wake_waiters: bool = False) -> Artifact:
    """Record (or replace) the artifact for ``key``; its blob must be stored already. With
    ``wake_waiters`` the processes waiting on job changes are woken at commit (a first-look still,
    which a bot shows while the job runs; :mod:`storage.wakeups`)."""
    t = time.time()
    with db.write() as conn:
        old = conn.execute(sa.text("SELECT id FROM artifacts WHERE cache_key = :k"), {"k": key}).scalar()
        if old is not None:
            release_holder(conn, f"artifact:{int(old)}")
            conn.execute(sa.text("DELETE FROM artifacts WHERE id = :id"), {"id": old})
        aid = int(conn.execute(sa.text(
            "INSERT INTO artifacts (cache_key, kind, blob_digest, owner_user_id, created_at, last_used_at) "
            "VALUES (:k, :kind, :d, :o, :t, :t) RETURNING id"),
            {"k": key, "kind": kind, "d": blob_digest, "o": owner_user_id, "t": t}).scalar_one())
        add_ref(conn, blob_digest, f"artifact:{aid}", t)
        if wake_waiters:
            announce(conn)
    return Artifact(aid, key, kind, blob_digest, owner_user_id, t)


def has_artifact(db: Database, key: str) -> bool:
    """Whether ``key`` is stored; unlike :func:`get_artifact` this is no use of it."""
    with db.read() as conn:
        return conn.execute(sa.text("SELECT 1 FROM artifacts WHERE cache_key = :k"), {"k": key}).first() is not None


def get_artifact(db: Database, key: str) -> Artifact | None:
    """Look up ``key``; a hit refreshes ``last_used_at``."""
    t = time.time()
    with db.write() as conn:
        r = conn.execute(sa.text("SELECT id, cache_key, kind, blob_digest, owner_user_id FROM artifacts "
                                 "WHERE cache_key = :k"), {"k": key}).first()
        if r is None:
            return None
        conn.execute(sa.text("UPDATE artifacts SET last_used_at = :t WHERE id = :id"), {"t": t, "id": r[0]})
    return Artifact(int(r[0]), r[1], r[2], r[3], None if r[4] is None else int(r[4]), t)


def list_artifacts(db: Database, *, owner_user_id: int | None = None) -> list[Artifact]:
    """Every artifact (or one user's), oldest first; does not count as a use."""
    sql = "SELECT id, cache_key, kind, blob_digest, owner_user_id, last_used_at FROM artifacts"
    params: dict[str, Any] = {}
    if owner_user_id is not None:
        sql += " WHERE owner_user_id = :o"
        params["o"] = owner_user_id
    with db.read() as conn:
        rows = conn.execute(sa.text(sql + " ORDER BY id"), params).all()
    return [Artifact(int(r[0]), r[1], r[2], r[3], None if r[4] is None else int(r[4]), float(r[5])) for r in rows]


def evict_unused(db: Database, blobs: BlobStore, older_than_seconds: float, *, now: float | None = None) -> int:
    """Drop artifacts unused for ``older_than_seconds``; returns how many this call dropped
    (safe next to a concurrent call: each artifact is counted by the one that deleted it)."""
    t = time.time() if now is None else now
    held: set[str] = set()
    dropped = 0
    with db.write() as conn:
        ids = [int(x) for x in conn.execute(sa.text(
            "SELECT id FROM artifacts WHERE last_used_at < :c AND (owner_user_id IS NULL OR owner_user_id NOT IN "
            "(SELECT user_id FROM jobs WHERE user_id IS NOT NULL AND status IN ('queued', 'running', "
            "'cancel_requested'))) ORDER BY id"), {"c": t - older_than_seconds}).scalars()]
        for i in ids:
            # Re-checked in the DELETE: a hit since the SELECT (or a concurrent eviction) keeps it.
            if conn.execute(sa.text("DELETE FROM artifacts WHERE id = :id AND last_used_at < :c"),
                            {"id": i, "c": t - older_than_seconds}).rowcount:
                held.update(release_holder(conn, f"artifact:{i}"))
                dropped += 1
    blobs.delete_unreferenced(held)
    return dropped
