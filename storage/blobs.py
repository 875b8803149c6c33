"""Content-addressed blob store: bytes in a backend (a local folder or S3), rows and
reference counts in the database.

Conventions
-----------
* A blob's id is the lowercase hex sha256 of its bytes (64 chars). Its object is
  named ``<d[0:2]>/<d[2:4]>/<digest>`` inside the backend (a folder, or a bucket
  prefix: :mod:`storage.blob_s3`); objects are immutable once written.
* A backend is chosen by its *location*, one string every process can be given:
  a folder path (the embedded default), or ``s3://bucket/prefix?endpoint_url=...``
  (see :func:`open_backend`).
* Writes are atomic: an object is visible only once complete. The local folder
  writes ``.tmp-*`` in the final directory, fsyncs, renames, fsyncs the
  directory; S3 PUT and CompleteMultipartUpload publish whole objects only.
* Every blob has a row in ``blobs``. References are rows ``(digest, holder)``
  in ``blob_refs``; ``holder`` names the owning row as ``"<table>:<id>"``
  (e.g. ``"selfie:3"``, ``"job:17"``, ``"style:2"``). A blob's reference count
  is the number of its holders, so adding the same holder twice is harmless.
* A blob nobody references is garbage once it is older than the grace period
  (``last_put_at`` — refreshed by every put of the same bytes). The grace
  period covers the window between a put and the transaction that references
  it (a worker writes result blobs, then ``complete`` references them). Blobs
  written by a worker that died are never referenced, and :meth:`BlobStore.gc`
  removes them once the grace period has passed, together with objects that
  have no row and unfinished writes (temp files, multipart uploads) older than
  the grace period.
* An object is deleted inside a transaction that holds its row (the row's
  delete, or a placeholder row for an object that had none), before the
  commit: a concurrent put of the same bytes waits on that row in its own
  transaction, then re-checks the object and writes it again. So several
  processes (several hosts on PostgreSQL) may put and GC at once.
* Sizes are bytes; ``max_bytes`` bounds every put.
* What a backend must do is :class:`storage.blob_backend.BlobBackend`.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from emoji3d.errors import UserFacingError
from storage.blob_backend import DIGEST, BlobBackend, BlobNotFound, StaleObject, check_digest
from storage.db import Database

_HOLDER = re.compile(r"^[a-z_]+:[0-9A-Za-z_.-]+$")
_CHUNK = 1 << 20


class BlobTooLarge(UserFacingError):
    """An upload or generated file exceeds the configured limit."""

    key = "file_too_large"


@dataclass(frozen=True)
class GcReport:
    removed_blobs: int  # rows + objects removed because nothing referenced them
    removed_stray_files: int  # objects without a row (crash between write and record), unfinished writes
    freed_bytes: int


def check_holder(holder: str) -> str:
    if not isinstance(holder, str) or not _HOLDER.match(holder):
        raise ValueError(f"holder must look like 'table:id', got {holder!r}")
    return holder


# ---- reference bookkeeping on an open connection (used inside other transactions) ----

def add_ref(conn: Connection, digest: str, holder: str, now: float | None = None) -> None:
    """Reference ``digest`` from ``holder`` (idempotent). The blob row must exist."""
    check_digest(digest)
    check_holder(holder)
    exists = conn.execute(sa.text("SELECT 1 FROM blobs WHERE digest = :d"), {"d": digest}).first()
    if exists is None:
        raise BlobNotFound(f"blob {digest} is not in the store; put it before referencing it")
    conn.execute(sa.text(
        "INSERT INTO blob_refs (digest, holder, created_at) VALUES (:d, :h, :t) ON CONFLICT DO NOTHING"),
        {"d": digest, "h": holder, "t": time.time() if now is None else now})


def release_ref(conn: Connection, digest: str, holder: str) -> None:
    conn.execute(sa.text("DELETE FROM blob_refs WHERE digest = :d AND holder = :h"),
                 {"d": check_digest(digest), "h": check_holder(holder)})


def release_holder(conn: Connection, holder: str) -> list[str]:
    """Drop every reference held by ``holder``; returns the digests it held."""
    check_holder(holder)
    digests = list(conn.execute(sa.text("SELECT digest FROM blob_refs WHERE holder = :h"), {"h": holder}).scalars())
    conn.execute(sa.text("DELETE FROM blob_refs WHERE holder = :h"), {"h": holder})
    return digests


def refcount(conn: Connection, digest: str) -> int:
    return int(conn.execute(sa.text("SELECT COUNT(*) FROM blob_refs WHERE digest = :d"),
                            {"d": check_digest(digest)}).scalar_one())


def open_backend(location: str | os.PathLike[str] | BlobBackend) -> BlobBackend:
    """The backend a location names: ``s3://...`` (storage.blob_s3), else a local folder."""
    if isinstance(location, str) and location.startswith("s3://"):
        from storage.blob_s3 import S3Backend

        return S3Backend.from_location(location)
    if isinstance(location, (str, os.PathLike)):
        return LocalBackend(location)
    return location


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_chunks(src: Path, digest: str) -> Iterator[bytes]:
    """Chunks of ``src``; raises OSError at the end if they do not hash to ``digest``."""
    check = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            check.update(chunk)
            yield chunk
    if check.hexdigest() != digest:
        raise OSError(f"{src} changed while being stored")


class LocalBackend:
    """Blob files under ``root/<d[0:2]>/<d[2:4]>/<digest>``, written via ``.tmp-*`` + rename."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"folder {self.root}"

    def path(self, digest: str) -> Path:
        d = check_digest(digest)
        return self.root / d[0:2] / d[2:4] / d

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} has no file under {self.root}") from None

    def write(self, digest: str, source: bytes | Path) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
        chunks: Iterable[bytes] = [source] if isinstance(source, bytes) else _file_chunks(source, digest)
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def stale(self, cutoff: float) -> Iterator[StaleObject]:
        for shard in self.root.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]"):
            for f in shard.iterdir():
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                if st.st_mtime >= cutoff:
                    continue
                if f.name.startswith(".tmp-"):
                    yield StaleObject(str(f), st.st_size, None)
                elif DIGEST.match(f.name):
                    yield StaleObject(str(f), st.st_size, f.name)

    def discard(self, item: StaleObject) -> bool:
        try:
            Path(item.name).unlink()
        except FileNotFoundError:
            return False
        return True


PARALLEL_PUTS = 8  # puts worth running at once where each is a network round trip (a pack's ~20 files)


class BlobStore:
    """Blob bytes in a backend (folder path, ``s3://`` location or a backend object)
    with rows and references in ``db``.

    ``parallel_puts`` is how many puts a caller storing many blobs should run at once (see
    ``engine.worker.JobContext.put_blobs``). By default 1 where every step of a put is local (a
    folder and SQLite, whose writers queue for one lock: 8 at once measured 0.7-1.1x there in
    bench/store_pack.py, noise around 0.05-0.09 s) and :data:`PARALLEL_PUTS` where a step is a
    network round trip (an object store, PostgreSQL)."""

    def __init__(self, db: Database, location: str | os.PathLike[str] | BlobBackend, *,
                 max_bytes: int = 64 << 20, gc_grace_seconds: float = 3600.0, parallel_puts: int | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if gc_grace_seconds < 0:
            raise ValueError(f"gc_grace_seconds must be >= 0, got {gc_grace_seconds}")
        if parallel_puts is not None and parallel_puts < 1:
            raise ValueError(f"parallel_puts must be >= 1, got {parallel_puts}")
        self.db = db
        self.backend = open_backend(location)
        self.max_bytes = int(max_bytes)
        self.gc_grace_seconds = float(gc_grace_seconds)
        local = isinstance(self.backend, LocalBackend) and db.is_sqlite
        self.parallel_puts = parallel_puts or (1 if local else PARALLEL_PUTS)

    # ---- reads ----
    def describe_location(self) -> str:
        """Where the blobs are stored (a folder or a bucket), for an operator's message."""
        return self.backend.describe()

    def exists(self, digest: str) -> bool:
        return self.backend.size(check_digest(digest)) is not None

    def open(self, digest: str) -> BinaryIO:
        return self.backend.open(check_digest(digest))

    def read_bytes(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    # ---- writes ----
    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise BlobTooLarge(f"{size} bytes exceeds the limit of {self.max_bytes} bytes",
                               size_bytes=size, max_bytes=self.max_bytes,
                               max_megabytes=round(self.max_bytes / (1 << 20), 1))

    def _record(self, digest: str, size: int, holder: str | None) -> None:
        now = time.time()
        with self.db.write() as conn:
            conn.execute(sa.text(
                "INSERT INTO blobs (digest, size, created_at, last_put_at) VALUES (:d, :s, :t, :t) "
                "ON CONFLICT (digest) DO UPDATE SET last_put_at = excluded.last_put_at"),
                {"d": digest, "s": size, "t": now})
            if holder is not None:
                add_ref(conn, digest, holder, now)

    def _store(self, digest: str, size: int, source: bytes | Path, holder: str | None) -> str:
        for _ in range(2):
            if self.backend.size(digest) != size:
                self.backend.write(digest, source)
            self._record(digest, size, holder)
            # A concurrent GC may have removed the object before our row update
            # made the blob young again; after _record it cannot any more.
            if self.backend.size(digest) == size:
                return digest
        raise OSError(f"blob {digest} vanished twice while being written to {self.backend.describe()}")

    def put_bytes(self, data: bytes, *, holder: str | None = None) -> str:
        """Store ``data``; returns its digest. With ``holder`` the reference is
        added in the same transaction that records the blob."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_bytes needs bytes, got {type(data).__name__}")
        data = bytes(data)
        self._check_size(len(data))
        if holder is not None:
            check_holder(holder)
        return self._store(hashlib.sha256(data).hexdigest(), len(data), data, holder)

    def put_file(self, src: str | os.PathLike[str], *, holder: str | None = None) -> str:
        """Store the file at ``src`` (streamed; never fully in memory)."""
        src = Path(src)
        size = src.stat().st_size
        self._check_size(size)
        if holder is not None:
            check_holder(holder)
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return self._store(h.hexdigest(), size, src, holder)

    def touch(self, digests: Iterable[str], *, now: float | None = None) -> int:
        """Restart the grace period of ``digests`` (a long job keeps its not yet
        referenced outputs alive this way). Returns how many rows exist."""
        ds = sorted({check_digest(d) for d in digests})
        if not ds:
            return 0
        t = time.time() if now is None else now
        with self.db.write() as conn:
            n = 0
            for d in ds:
                n += conn.execute(sa.text("UPDATE blobs SET last_put_at = :t WHERE digest = :d AND last_put_at < :t"),
                                  {"t": t, "d": d}).rowcount
        return n

    # ---- references (own transaction) ----
    def add_ref(self, digest: str, holder: str) -> None:
        with self.db.write() as conn:
            add_ref(conn, digest, holder)

    def release(self, digest: str, holder: str) -> int:
        """Drop one reference; returns the remaining count. The object stays until :meth:`gc`."""
        with self.db.write() as conn:
            release_ref(conn, digest, holder)
            return refcount(conn, digest)

    def refcount(self, digest: str) -> int:
        with self.db.read() as conn:
            return refcount(conn, digest)

    # ---- deletion ----
    def delete_unreferenced(self, digests: Iterable[str]) -> tuple[int, int]:
        """Remove those of ``digests`` that have no reference now, regardless of age
        (used by user deletion). Returns (blobs removed, bytes freed)."""
        removed = freed = 0
        for d in sorted(set(digests)):
            size = self._delete_if_unreferenced(d, cutoff=None)
            if size is not None:
                removed += 1
                freed += size
        return removed, freed

    def _delete_if_unreferenced(self, digest: str, cutoff: float | None) -> int | None:
        """Delete row and object in one transaction if unreferenced (and older than cutoff)."""
        sql = ("DELETE FROM blobs WHERE digest = :d "
               "AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.digest = :d)")
        params: dict[str, object] = {"d": check_digest(digest)}
        if cutoff is not None:
            sql += " AND last_put_at < :cut"
            params["cut"] = cutoff
        sql += " RETURNING size"
        try:
            with self.db.write() as conn:
                row = conn.execute(sa.text(sql), params).first()
                if row is None:
                    return None
                # Delete before commit: a concurrent put of the same bytes waits
                # on our lock, then re-records the row and rewrites the object.
                self.backend.delete(digest)
                return int(row[0])
        except sa.exc.IntegrityError:  # a reference appeared concurrently (PostgreSQL FK)
            return None

    def gc(self, *, now: float | None = None, grace_seconds: float | None = None) -> GcReport:
        """Remove blobs nobody references that are older than the grace period,
        objects without a row, and stale unfinished writes."""
        now = time.time() if now is None else now
        grace = self.gc_grace_seconds if grace_seconds is None else grace_seconds
        cutoff = now - grace
        with self.db.read() as conn:
            candidates = list(conn.execute(sa.text(
                "SELECT b.digest FROM blobs b WHERE b.last_put_at < :cut "
                "AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.digest = b.digest)"), {"cut": cutoff}).scalars())
        removed = freed = 0
        for d in candidates:
            size = self._delete_if_unreferenced(d, cutoff)
            if size is not None:
                removed += 1
                freed += size
        stray = 0
        for item in list(self.backend.stale(cutoff)):
            if item.digest is None:
                if self.backend.discard(item):
                    stray += 1
                    freed += item.size
                continue
            with self.db.read() as conn:
                if conn.execute(sa.text("SELECT 1 FROM blobs WHERE digest = :d"), {"d": item.digest}).first():
                    continue
            with self.db.write() as conn:
                # Hold the digest while removing: an uncommitted placeholder row makes a
                # concurrent put of these bytes wait in _record, then re-check and rewrite.
                claimed = conn.execute(sa.text(
                    "INSERT INTO blobs (digest, size, created_at, last_put_at) VALUES (:d, :s, 0, 0) "
                    "ON CONFLICT (digest) DO NOTHING RETURNING digest"), {"d": item.digest, "s": item.size}).first()
                if claimed is None:
                    continue
                # Another pass may have removed it (and its placeholder) since we listed it.
                gone = self.backend.size(item.digest) is not None and self.backend.discard(item)
                conn.execute(sa.text("DELETE FROM blobs WHERE digest = :d"), {"d": item.digest})
                if gone:
                    stray += 1
                    freed += item.size
        return GcReport(removed, stray, freed)

    def stats(self) -> dict[str, int]:
        with self.db.read() as conn:
            n, total = conn.execute(sa.text("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs")).one()
            unref = conn.execute(sa.text(
                "SELECT COUNT(*) FROM blobs b WHERE NOT EXISTS "
                "(SELECT 1 FROM blob_refs r WHERE r.digest = b.digest)")).scalar_one()
        return {"blobs": int(n), "bytes": int(total), "unreferenced": int(unref)}


def copy_out(store: BlobStore, digest: str, dest: str | os.PathLike[str]) -> Path:
    """Copy a blob to ``dest`` (a thin IO helper for exports)."""
    dest = Path(dest)
    with store.open(digest) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest
