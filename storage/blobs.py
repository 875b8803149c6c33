"""Content-addressed blob store: files in a local folder, reference counts in the database.

Conventions
-----------
* A blob's id is the lowercase hex sha256 of its bytes (64 chars). Its file is
  ``root/<d[0:2]>/<d[2:4]>/<digest>``; files are immutable once written.
* Writes are atomic: bytes go to ``.tmp-*`` in the final directory, are
  fsynced, renamed into place, then the directory is fsynced. A reader never
  sees a partial file.
* Every blob has a row in ``blobs``. References are rows ``(digest, holder)``
  in ``blob_refs``; ``holder`` names the owning row as ``"<table>:<id>"``
  (e.g. ``"selfie:3"``, ``"job:17"``, ``"style:2"``). A blob's reference count
  is the number of its holders, so adding the same holder twice is harmless.
* A blob nobody references is garbage once it is older than the grace period
  (``last_put_at`` — refreshed by every put of the same bytes). The grace
  period covers the window between a put and the transaction that references
  it (a worker writes result blobs, then ``complete`` references them). Blobs
  written by a worker that died are never referenced, and :meth:`BlobStore.gc`
  removes them once the grace period has passed.
* Sizes are bytes; ``max_bytes`` bounds every put.
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
from typing import BinaryIO, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from emoji3d.errors import UserFacingError
from storage.db import Database

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_HOLDER = re.compile(r"^[a-z_]+:[0-9A-Za-z_.-]+$")
_CHUNK = 1 << 20


class BlobTooLarge(UserFacingError):
    """An upload or generated file exceeds the configured limit."""

    key = "file_too_large"


class BlobNotFound(Exception):
    """A digest has no row or no file (internal: callers pass digests they were given)."""


@dataclass(frozen=True)
class GcReport:
    removed_blobs: int  # rows + files removed because nothing referenced them
    removed_stray_files: int  # files without a row (crash between write and record), temp files
    freed_bytes: int


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blob files under ``root`` with rows and references in ``db``."""

    def __init__(self, db: Database, root: str | os.PathLike[str], *, max_bytes: int = 64 << 20,
                 gc_grace_seconds: float = 3600.0) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if gc_grace_seconds < 0:
            raise ValueError(f"gc_grace_seconds must be >= 0, got {gc_grace_seconds}")
        self.db = db
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.gc_grace_seconds = float(gc_grace_seconds)
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- paths and reads ----
    def describe_location(self) -> str:
        """Where the blobs are stored, for an operator's message."""
        return str(self.root)

    def path(self, digest: str) -> Path:
        d = check_digest(digest)
        return self.root / d[0:2] / d[2:4] / d

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        p = self.path(digest)
        try:
            return open(p, "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} has no file under {self.root}") from None

    def read_bytes(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    # ---- writes ----
    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise BlobTooLarge(f"{size} bytes exceeds the limit of {self.max_bytes} bytes",
                               size_bytes=size, max_bytes=self.max_bytes,
                               max_megabytes=round(self.max_bytes / (1 << 20), 1))

    def _write_atomic(self, digest: str, chunks: Iterable[bytes]) -> None:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{uuid.uuid4().hex}"
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

    def _record(self, digest: str, size: int, holder: str | None) -> None:
        now = time.time()
        with self.db.write() as conn:
            conn.execute(sa.text(
                "INSERT INTO blobs (digest, size, created_at, last_put_at) VALUES (:d, :s, :t, :t) "
                "ON CONFLICT (digest) DO UPDATE SET last_put_at = excluded.last_put_at"),
                {"d": digest, "s": size, "t": now})
            if holder is not None:
                add_ref(conn, digest, holder, now)

    def _file_ok(self, digest: str, size: int) -> bool:
        try:
            return self.path(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    def put_bytes(self, data: bytes, *, holder: str | None = None) -> str:
        """Store ``data``; returns its digest. With ``holder`` the reference is
        added in the same transaction that records the blob."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put_bytes needs bytes, got {type(data).__name__}")
        data = bytes(data)
        self._check_size(len(data))
        if holder is not None:
            check_holder(holder)
        digest = hashlib.sha256(data).hexdigest()
        for _ in range(2):
            if not self._file_ok(digest, len(data)):
                self._write_atomic(digest, [data])
            self._record(digest, len(data), holder)
            # A concurrent GC may have removed the file before our row update
            # made the blob young again; after _record it cannot any more.
            if self._file_ok(digest, len(data)):
                return digest
        raise OSError(f"blob {digest} vanished twice while being written under {self.root}")

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
        digest = h.hexdigest()

        def chunks() -> Iterable[bytes]:
            check = hashlib.sha256()
            with open(src, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    check.update(chunk)
                    yield chunk
            if check.hexdigest() != digest:
                raise OSError(f"{src} changed while being stored")

        for _ in range(2):
            if not self._file_ok(digest, size):
                self._write_atomic(digest, chunks())
            self._record(digest, size, holder)
            if self._file_ok(digest, size):
                return digest
        raise OSError(f"blob {digest} vanished twice while being written under {self.root}")

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
        """Drop one reference; returns the remaining count. The file stays until :meth:`gc`."""
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
        """Delete row and file in one transaction if unreferenced (and older than cutoff)."""
        sql = ("DELETE FROM blobs WHERE digest = :d "
               "AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.digest = :d)")
        params: dict[str, object] = {"d": digest}
        if cutoff is not None:
            sql += " AND last_put_at < :cut"
            params["cut"] = cutoff
        sql += " RETURNING size"
        try:
            with self.db.write() as conn:
                row = conn.execute(sa.text(sql), params).first()
                if row is None:
                    return None
                # Unlink before commit: a concurrent put of the same bytes waits
                # on our lock, then re-records the row and rewrites the file.
                self.path(digest).unlink(missing_ok=True)
                return int(row[0])
        except sa.exc.IntegrityError:  # a reference appeared concurrently (PostgreSQL FK)
            return None

    def gc(self, *, now: float | None = None, grace_seconds: float | None = None) -> GcReport:
        """Remove blobs nobody references that are older than the grace period,
        files on disk without a row, and stale temp files."""
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
        for shard in self.root.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]"):
            for f in shard.iterdir():
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                if st.st_mtime >= cutoff:
                    continue
                if f.name.startswith(".tmp-"):
                    f.unlink(missing_ok=True)
                    stray += 1
                    freed += st.st_size
                elif _DIGEST.match(f.name):
                    with self.db.read() as conn:
                        if conn.execute(sa.text("SELECT 1 FROM blobs WHERE digest = :d"), {"d": f.name}).first():
                            continue
                    with self.db.write() as conn:  # re-check under the write lock, then unlink
                        known = conn.execute(sa.text("SELECT 1 FROM blobs WHERE digest = :d"), {"d": f.name}).first()
                        if known is None:
                            f.unlink(missing_ok=True)
                            stray += 1
                            freed += st.st_size
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
