"""Content-addressed blob store: atomic files, references, limits, garbage collection."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from emoji3d.errors import UserFacingError
from storage.blobs import BlobNotFound, BlobStore, BlobTooLarge


def test_put_is_content_addressed_and_sharded(blobs):
    data = os.urandom(1000)
    d = blobs.put_bytes(data)
    assert d == hashlib.sha256(data).hexdigest()
    assert blobs.path(d) == blobs.root / d[:2] / d[2:4] / d
    assert blobs.read_bytes(d) == data
    assert blobs.put_bytes(data) == d  # same bytes, same blob
    assert blobs.stats() == {"blobs": 1, "bytes": 1000, "unreferenced": 1}
    assert not list(blobs.root.rglob(".tmp-*"))


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
    assert blobs.stats()["blobs"] == 0 and not any(p.is_file() for p in blobs.root.rglob("*"))


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
        blobs.path("../../etc/passwd")
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


def test_gc_removes_stray_files_and_temp_files(blobs):
    stray_data = b"written but never recorded"
    stray = hashlib.sha256(stray_data).hexdigest()
    p = blobs.path(stray)
    p.parent.mkdir(parents=True)
    p.write_bytes(stray_data)
    tmp = p.parent / ".tmp-deadbeef"
    tmp.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(p, (old, old))
    os.utime(tmp, (old, old))
    report = blobs.gc()
    assert report.removed_stray_files == 2 and not p.exists() and not tmp.exists()


def test_gc_leaves_files_whose_row_exists(blobs):
    d = blobs.put_bytes(b"recorded", holder="job:3")
    old = time.time() - 7200
    os.utime(blobs.path(d), (old, old))
    assert blobs.gc().removed_stray_files == 0 and blobs.exists(d)


def test_delete_unreferenced_ignores_grace_but_not_references(blobs):
    a = blobs.put_bytes(b"a")
    b = blobs.put_bytes(b"b", holder="selfie:2")
    removed, freed = blobs.delete_unreferenced([a, b])
    assert (removed, freed) == (1, 1)
    assert not blobs.exists(a) and blobs.exists(b)


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
