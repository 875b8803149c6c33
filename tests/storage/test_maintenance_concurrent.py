"""Two maintenance passes (storage.maintenance.run_maintenance) at once, each on its own
database connection pool and blob store object, as two ``serve`` processes would run them:
on SQLite and PostgreSQL, with blobs in the folder and in S3 (when configured; conftest).

Shown: neither pass raises; every expired selfie, stale artifact, old avatar, unreferenced
blob and stray object is gone; everything still referenced (a blob an expired selfie shared
with a live one, live selfies, fresh artifacts, recent avatars, stickers) is intact; and
nothing is deleted twice: each object is removed by one pass only, and the passes' reports
add up to what there was to delete.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import Counter

import sqlalchemy as sa

from emoji3d.orders import JOB_KIND
from storage import artifacts, jobs, selfies, users
from storage.blob_backend import StaleObject
from storage.blobs import BlobStore, LocalBackend, open_backend
from storage.db import open_database
from storage.maintenance import run_maintenance

RETENTION = 30 * 86400.0
K = 6  # things of each kind to expire, and as many to keep
OLD = time.time() - 2 * RETENTION


class CountingBackend:
    """The real backend, recording which objects were actually removed (and by how many calls)."""

    def __init__(self, inner, removed: Counter, lock: threading.Lock) -> None:
        self.inner, self.removed, self.lock = inner, removed, lock

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def delete(self, digest: str) -> None:
        present = self.inner.size(digest) is not None
        self.inner.delete(digest)
        if present:
            with self.lock:
                self.removed[digest] += 1

    def discard(self, item: StaleObject) -> bool:
        gone = self.inner.discard(item)
        if gone:
            with self.lock:
                self.removed[item.digest or item.name] += 1
        return gone


def _blob(store: BlobStore, what: str) -> str:
    return store.put_bytes(f"{what} {uuid.uuid4().hex}".encode())


def _finished_pack_job(db, store: BlobStore, n: int, *, at: float | None) -> tuple[int, str, str]:
    """A succeeded make_pack job finished at ``at`` with an avatar and a sticker blob."""
    avatar, sticker = _blob(store, f"avatar {n}"), _blob(store, f"sticker {n}")
    jid = jobs.enqueue(db, JOB_KIND, {"n": n}, f"maint:{n}:{uuid.uuid4().hex}", now=at)
    job = jobs.claim(db, "setup", 60, job_ids=[jid], now=at)
    assert job is not None
    jobs.complete(db, jid, job.lease_token, {"avatar": avatar, "stickers": [sticker]}, [avatar, sticker], now=at)
    return jid, avatar, sticker


def test_two_maintenance_passes_at_once_delete_each_expired_thing_once(db, db_url, blob_location):
    setup = BlobStore(db, blob_location)
    owner = users.get_or_create_user(db, "telegram", "maintained")
    shared = _blob(setup, "selfie shared by an expired and a live selfie")
    expired_selfie_blobs, expired_selfies = [], []
    for i in range(K):
        d = _blob(setup, f"old selfie {i}")
        expired_selfie_blobs.append(d)
        expired_selfies.append(selfies.add_selfie(db, owner.id, d, ttl_seconds=60).id)
    expired_selfies.append(selfies.add_selfie(db, owner.id, shared, ttl_seconds=60).id)
    live_blobs = [shared] + [_blob(setup, f"live selfie {i}") for i in range(K)]
    for d in live_blobs:
        selfies.add_selfie(db, owner.id, d, ttl_seconds=3600)
    stale_artifact_blobs = [_blob(setup, f"stale artifact {i}") for i in range(K)]
    for i, d in enumerate(stale_artifact_blobs):
        artifacts.put_artifact(db, f"stale-{i}", "inversion", d, owner.id)
    for i in range(K):
        d = _blob(setup, f"fresh artifact {i}")
        artifacts.put_artifact(db, f"fresh-{i}", "inversion", d, owner.id)
        live_blobs.append(d)
    old_avatars = []
    for n in range(K):
        _jid, avatar, sticker = _finished_pack_job(db, setup, n, at=OLD)
        old_avatars.append(avatar)
        live_blobs.append(sticker)
    for n in range(K, 2 * K):
        _jid, avatar, sticker = _finished_pack_job(db, setup, n, at=None)
        live_blobs += [avatar, sticker]
    unreferenced = [_blob(setup, f"orphan {i}") for i in range(K)]
    stray = []  # objects without a row: a writer that crashed between write and record
    for i in range(K):
        data = f"stray {i} {uuid.uuid4().hex}".encode()
        d = hashlib.sha256(data).hexdigest()
        setup.backend.write(d, data)
        stray.append(d)
    temp_files = []
    if isinstance(setup.backend, LocalBackend):  # unfinished writes of a crashed writer
        shard = setup.backend.path(stray[0]).parent
        for i in range(K):
            f = shard / f".tmp-{uuid.uuid4().hex}"
            f.write_bytes(b"half written")
            temp_files.append(str(f))
    with db.write() as conn:
        conn.execute(sa.text("UPDATE selfies SET expires_at = 1 WHERE id IN (%s)" % ",".join(map(str, expired_selfies))))
        conn.execute(sa.text("UPDATE artifacts SET last_used_at = :t WHERE cache_key LIKE 'stale-%'"), {"t": OLD})
    time.sleep(1.1)  # object stores keep whole-second modification times; the passes' GC cutoff is "now"

    removed: Counter = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(2)
    reports: list[dict] = []
    errors: list[BaseException] = []

    def one_pass() -> None:
        pass_db = open_database(db_url)
        try:
            store = BlobStore(pass_db, CountingBackend(open_backend(blob_location), removed, lock),
                              gc_grace_seconds=0)
            barrier.wait(10)
            reports.append(run_maintenance(pass_db, store, RETENTION))
        except BaseException as exc:  # reported below: the assertion names it
            errors.append(exc)
        finally:
            pass_db.dispose()

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, f"a maintenance pass failed: {errors!r}"
    assert len(reports) == 2

    # everything expired is gone, row and object
    doomed = expired_selfie_blobs + stale_artifact_blobs + old_avatars + unreferenced + stray
    with db.read() as conn:
        rows = set(conn.execute(sa.text("SELECT digest FROM blobs")).scalars())
        left_selfies = set(conn.execute(sa.text("SELECT id FROM selfies")).scalars())
        left_keys = set(conn.execute(sa.text("SELECT cache_key FROM artifacts")).scalars())
    assert not rows & set(doomed)
    assert [d for d in doomed if setup.exists(d)] == []
    assert [f for f in temp_files if os.path.exists(f)] == []
    assert not left_selfies & set(expired_selfies)
    assert left_keys == {f"fresh-{i}" for i in range(K)}
    # everything still referenced is intact
    assert [d for d in live_blobs if d not in rows or not setup.exists(d)] == []
    assert all(setup.read_bytes(d) for d in live_blobs)
    # each object was removed by exactly one pass, and the reports add up
    twice = {name: n for name, n in removed.items() if n > 1}
    assert twice == {}, f"deleted more than once: {twice}"
    assert set(removed) == set(doomed) | set(temp_files)
    total = {key: sum(r[key] for r in reports) for key in ("selfies_purged", "artifacts_evicted", "avatars_expired")}
    assert total == {"selfies_purged": K + 1, "artifacts_evicted": K, "avatars_expired": K}
    assert sum(r["gc"].removed_stray_files for r in reports) == len(stray) + len(temp_files)
