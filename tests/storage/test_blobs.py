"""Content-addressed blob store: atomic objects, references, limits, garbage collection.

Every test that takes ``blobs`` runs on each backend the session has (the local
folder always, S3 when .ci/run started its server; see tests/conftest.py).
``_plant_stray`` and ``_objects`` reach into the backend itself, the way a crash
between a write and its row would leave things.
"""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from emoji3d.errors import UserFacingError
from storage.blobs import BlobNotFound, BlobStore, BlobTooLarge, LocalBackend


def _objects(blobs) -> list[str]:
    """Every object name the backend holds (relative to its folder / prefix), unfinished writes included."""
    backend = blobs.backend
    if isinstance(backend, LocalBackend):
        return sorted(str(p.relative_to(backend.root)) for p in backend.root.rglob("*") if p.is_file())
    listed = backend.client.list_objects_v2(Bucket=backend.loc.bucket, Prefix=backend.loc.prefix)
    uploads = backend.client.list_multipart_uploads(Bucket=backend.loc.bucket, Prefix=backend.loc.prefix)
    return sorted([o["Key"][len(backend.loc.prefix):] for o in listed.get("Contents", [])]
                  + [f"upload:{u['Key'][len(backend.loc.prefix):]}" for u in uploads.get("Uploads", [])])


def test_put_is_content_addressed_and_sharded(blobs):
    data = os.urandom(1000)
    d = blobs.put_bytes(data)
    assert d == hashlib.sha256(data).hexdigest()
    assert _objects(blobs) == [f"{d[:2]}/{d[2:4]}/{d}"]  # nothing else: no temp file, no partial upload
    assert blobs.read_bytes(d) == data
    assert blobs.put_bytes(data) == d  # same bytes, same blob
    assert blobs.stats() == {"blobs": 1, "bytes": 1000, "unreferenced": 1}


def test_put_file_streams_and_matches_put_bytes(blobs, tmp_path):
    src = tmp_path / "in.bin"
    data = os.urandom(300_000)
    src.write_bytes(data)
    d = blobs.put_file(src, holder="selfie:1")
    assert d == hashlib.sha256(data).hexdigest() and blobs.refcount(d) == 1
    with blobs.open(d) as f:
        assert f.read() == data


def test_size_limit_is_a_user_facing_error(blobs, tmp_path):
    with pytest.raises(BlobTooLarge) as ei:
        blobs.put_bytes(b"x" * (blobs.max_bytes + 1))
    assert isinstance(ei.value, UserFacingError) and ei.value.key == "file_too_large"
    assert ei.value.params["max_bytes"] == blobs.max_bytes
    big = tmp_path / "big"
    big.write_bytes(b"y" * (blobs.max_bytes + 1))
    with pytest.raises(BlobTooLarge):
        blobs.put_file(big)
    assert blobs.stats()["blobs"] == 0 and _objects(blobs) == []


def test_refcounts_count_distinct_holders(blobs):
    d = blobs.put_bytes(b"shared")
    blobs.add_ref(d, "selfie:1")
    blobs.add_ref(d, "selfie:1")  # idempotent
    blobs.add_ref(d, "sticker:7")
    assert blobs.refcount(d) == 2
    assert blobs.release(d, "selfie:1") == 1
    assert blobs.release(d, "sticker:7") == 0
    assert blobs.exists(d)  # files go only through gc / explicit deletion


def test_bad_digests_and_holders_are_rejected(blobs):
    with pytest.raises(ValueError, match="sha256"):
        blobs.open("../../etc/passwd")
    with pytest.raises(ValueError, match="sha256"):
        blobs.exists("0" * 63)
    with pytest.raises(ValueError, match="table:id"):
        blobs.put_bytes(b"a", holder="no holder")
    with pytest.raises(BlobNotFound):
        blobs.add_ref("0" * 64, "selfie:1")
    with pytest.raises(BlobNotFound):
        blobs.open("0" * 64)


def test_gc_removes_only_old_unreferenced_blobs(blobs):
    kept = blobs.put_bytes(b"kept", holder="style:1")
    old = blobs.put_bytes(b"old orphan")
    t = time.time()
    young_report = blobs.gc(now=t, grace_seconds=60)  # everything is younger than the grace period
    assert young_report.removed_blobs == 0 and blobs.exists(old)
    report = blobs.gc(now=t + 120, grace_seconds=60)
    assert report.removed_blobs == 1 and report.freed_bytes == len(b"old orphan")
    assert not blobs.exists(old) and blobs.exists(kept)
    assert blobs.stats() == {"blobs": 1, "bytes": 4, "unreferenced": 0}
    # A re-put after GC brings the blob back intact.
    assert blobs.put_bytes(b"old orphan") == old and blobs.read_bytes(old) == b"old orphan"


def test_reput_refreshes_the_grace_period(blobs):
    d = blobs.put_bytes(b"again")
    time.sleep(0.05)
    cutoff_after_first = time.time()
    blobs.put_bytes(b"again")
    assert blobs.gc(now=cutoff_after_first, grace_seconds=0).removed_blobs == 0
    assert blobs.exists(d)


def test_gc_removes_stray_objects_and_unfinished_writes(blobs):
    stray_data = b"written but never recorded"
    stray = hashlib.sha256(stray_data).hexdigest()
    blobs.backend.write(stray, stray_data)  # a crash between the write and the row
    unfinished = _plant_unfinished_write(blobs, stray)
    assert blobs.gc().removed_stray_files == 0  # younger than the grace period
    report = blobs.gc(now=time.time() + 7200)
    assert report.removed_stray_files == 2 and _objects(blobs) == [] and not blobs.exists(stray)
    assert unfinished not in _objects(blobs)


def _plant_unfinished_write(blobs, digest: str) -> str:
    """What a process killed mid-write leaves: a temp file / an open multipart upload."""
    backend = blobs.backend
    if isinstance(backend, LocalBackend):
        tmp = backend.path(digest).parent / ".tmp-deadbeef"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"half")
        return str(tmp.relative_to(backend.root))
    backend.client.create_multipart_upload(Bucket=backend.loc.bucket, Key=backend.key(digest))
    return f"upload:{backend.key(digest)[len(backend.loc.prefix):]}"


def test_gc_leaves_objects_whose_row_exists(blobs):
    d = blobs.put_bytes(b"recorded", holder="job:3")
    assert blobs.gc(now=time.time() + 7200).removed_stray_files == 0 and blobs.exists(d)


def test_delete_unreferenced_ignores_grace_but_not_references(blobs):
    a = blobs.put_bytes(b"a")
    b = blobs.put_bytes(b"b", holder="selfie:2")
    removed, freed = blobs.delete_unreferenced([a, b])
    assert (removed, freed) == (1, 1)
    assert not blobs.exists(a) and blobs.exists(b)


def test_local_files_are_sharded_and_old_stray_files_go(db, tmp_path):
    blobs = BlobStore(db, tmp_path / "blobs")
    d = blobs.put_bytes(b"on disk")
    assert blobs.backend.path(d) == tmp_path / "blobs" / d[:2] / d[2:4] / d
    stray_data = b"stray"
    p = blobs.backend.path(hashlib.sha256(stray_data).hexdigest())
    p.parent.mkdir(parents=True)
    p.write_bytes(stray_data)
    old = time.time() - 7200
    os.utime(p, (old, old))
    assert blobs.gc().removed_stray_files == 1 and not p.exists() and blobs.exists(d)


def test_store_arguments_are_checked(db, tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        BlobStore(db, tmp_path, max_bytes=0)
    with pytest.raises(TypeError, match="bytes"):
        BlobStore(db, tmp_path).put_bytes("text")  # type: ignore[arg-type]


def test_touch_restarts_the_grace_period(blobs):
    d = blobs.put_bytes(b"long job output")
    t = time.time()
    assert blobs.touch([d], now=t + 100) == 1
    assert blobs.gc(now=t + 150, grace_seconds=60).removed_blobs == 0
    assert blobs.gc(now=t + 170, grace_seconds=60).removed_blobs == 1


def test_a_file_that_changes_while_stored_leaves_nothing(blobs, tmp_path, monkeypatch):
    src = tmp_path / "in.bin"
    src.write_bytes(b"first version")
    real_write = blobs.backend.write

    def write_after_edit(digest, source):  # the file is edited between hashing and copying
        src.write_bytes(b"edited meanwhile")
        return real_write(digest, source)

    monkeypatch.setattr(blobs.backend, "write", write_after_edit)
    with pytest.raises(OSError, match="changed while being stored"):
        blobs.put_file(src)
    assert _objects(blobs) == [] and blobs.stats()["blobs"] == 0


def test_a_blob_larger_than_a_multipart_part_round_trips(db, blob_location, tmp_path):
    blobs = BlobStore(db, blob_location, max_bytes=32 << 20)
    src = tmp_path / "big.bin"
    data = os.urandom(17 << 20)  # three parts on S3 (8 MiB parts)
    src.write_bytes(data)
    d = blobs.put_file(src, holder="job:1")
    assert d == hashlib.sha256(data).hexdigest() and blobs.read_bytes(d) == data
    assert _objects(blobs) == [f"{d[:2]}/{d[2:4]}/{d}"]


def test_parallel_puts_only_where_a_put_crosses_a_network(db, blob_location):
    from storage.blobs import PARALLEL_PUTS

    store = BlobStore(db, blob_location)
    local = db.is_sqlite and not blob_location.startswith("s3://")
    assert store.parallel_puts == (1 if local else PARALLEL_PUTS)
    assert BlobStore(db, blob_location, parallel_puts=3).parallel_puts == 3
    with pytest.raises(ValueError, match="parallel_puts"):
        BlobStore(db, blob_location, parallel_puts=0)
