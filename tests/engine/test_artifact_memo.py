"""Shared artifacts in the engine's memory between jobs (engine/blob_memo.py through
engine.tasks.BlobArtifactCache): a house style's finetune is read from the blob store once, not by
every job; nothing owned by a user is ever kept; a forgotten artifact is not served from memory; and
an avatar references its artifacts by digest without reading their bytes. And what one user owns
serves no other user, even for the same photo."""
from __future__ import annotations

import hashlib
import threading

import pytest

from engine.blob_memo import BlobMemo
from engine.tasks import BlobArtifactCache, artifact_key
from engine.worker import JobContext
from storage import artifacts, jobs, users
from storage.blobs import BlobStore
from storage.db import open_database


def test_the_memo_keeps_the_most_recently_used_within_its_bytes():
    memo = BlobMemo(10)
    memo.put("a", b"aaaa")
    memo.put("b", b"bbbb")
    assert memo.get("a") == b"aaaa"  # a is now the most recent
    memo.put("c", b"cccc")  # 12 bytes > 10: the least recently used (b) goes
    assert (memo.get("a"), memo.get("b"), memo.get("c")) == (b"aaaa", None, b"cccc")
    assert memo.size_bytes == 8
    memo.put("big", b"x" * 11)  # larger than the whole budget: not kept, nothing evicted
    assert memo.get("big") is None and len(memo) == 2
    off = BlobMemo(0)
    off.put("a", b"a")
    assert off.get("a") is None
    with pytest.raises(ValueError):
        BlobMemo(-1)


class _Reads:
    """Counts the blob store's reads per digest (the real reads still happen)."""

    def __init__(self, blobs: BlobStore) -> None:
        self.counts: dict[str, int] = {}
        original = blobs.read_bytes

        def read_bytes(digest: str) -> bytes:
            self.counts[digest] = self.counts.get(digest, 0) + 1
            return original(digest)

        blobs.read_bytes = read_bytes


@pytest.fixture
def engine_side(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'memo.db'}")
    blobs = BlobStore(db, tmp_path / "blobs")
    user = users.get_or_create_user(db, "telegram", "7")

    def job_context() -> JobContext:  # one per job, as the worker makes them
        jobs.enqueue(db, "make_pack", {}, f"job-{len(jobs.list_jobs(db))}")
        job = jobs.claim(db, "engine", 60, kinds=["make_pack"])
        return JobContext(job, db, blobs, job.lease_token, threading.Event(), threading.Event(), True)

    yield db, blobs, user, job_context
    db.dispose()


def test_a_house_style_s_finetune_is_read_once_for_every_job_of_the_style(engine_side):
    db, blobs, user, job_context = engine_side
    memo, reads = BlobMemo(1 << 20), _Reads(blobs)
    finetune = b"w_e and the 2D delta" * 1000
    BlobArtifactCache(job_context(), user.id, shared_style=True, memo=memo).put("style_2d", "toon", finetune)
    digest = hashlib.sha256(finetune).hexdigest()
    assert artifacts.get_artifact(db, artifact_key("style_2d", "toon")).owner_user_id is None
    for _ in range(3):  # three later jobs of the same house style
        cache = BlobArtifactCache(job_context(), user.id, shared_style=True, memo=memo)
        assert cache.get("style_2d", "toon") == finetune
    assert reads.counts.get(digest, 0) == 0
    fresh = BlobMemo(1 << 20)  # a restarted engine reads it once, then keeps it
    for _ in range(2):
        cache = BlobArtifactCache(job_context(), user.id, shared_style=True, memo=fresh)
        assert cache.get("style_2d", "toon") == finetune
    assert reads.counts[digest] == 1


def test_nothing_a_user_owns_is_kept_in_memory(engine_side):
    db, blobs, user, job_context = engine_side
    memo, reads = BlobMemo(1 << 20), _Reads(blobs)
    cache = BlobArtifactCache(job_context(), user.id, shared_style=False, memo=memo)
    cache.put("style_2d", "own-upload", b"finetune of the user's own style image")
    cache.put("portrait_3d", "selfie", b"latents, noise, PTI delta")
    for _ in range(2):
        assert cache.get("style_2d", "own-upload") and cache.get("portrait_3d", "selfie")
    assert len(memo) == 0 and sorted(reads.counts.values()) == [2, 2]


def test_a_forgotten_shared_artifact_is_not_served_from_memory(engine_side):
    db, blobs, user, job_context = engine_side
    memo = BlobMemo(1 << 20)
    BlobArtifactCache(job_context(), None, shared_style=True, memo=memo).put("style_2d", "toon", b"finetune")
    assert len(memo) == 1
    assert artifacts.evict_unused(db, blobs, 0.0, now=artifacts.get_artifact(
        db, artifact_key("style_2d", "toon")).last_used_at + 1) == 1  # unused long enough: evicted
    assert BlobArtifactCache(job_context(), None, shared_style=True, memo=memo).get("style_2d", "toon") is None


def test_an_artifact_s_digest_comes_without_reading_it(engine_side):
    db, blobs, user, job_context = engine_side
    reads = _Reads(blobs)
    cache = BlobArtifactCache(job_context(), user.id, shared_style=False)
    cache.put("portrait_3d", "selfie", b"latents")
    assert cache.digest("portrait_3d", "selfie") == hashlib.sha256(b"latents").hexdigest()
    assert cache.digest("portrait_3d", "other") is None
    assert reads.counts == {}


def test_the_same_photo_from_two_users_gives_each_their_own_inversion(engine_side):
    """A second user sending byte-identical photo bytes finds nothing of the first user's (no faster
    order that would tell them someone sent it), stores their own, and keeps it when the first deletes."""
    db, blobs, first, job_context = engine_side
    second = users.get_or_create_user(db, "telegram", "8")
    mine = BlobArtifactCache(job_context(), first.id, shared_style=False)
    theirs = BlobArtifactCache(job_context(), second.id, shared_style=False)
    mine.put("portrait_3d", "same-photo-key", b"the first user's inversion")
    assert theirs.get("portrait_3d", "same-photo-key") is None
    assert theirs.digest("portrait_3d", "same-photo-key") is None
    theirs.put("portrait_3d", "same-photo-key", b"the second user's inversion")
    assert mine.get("portrait_3d", "same-photo-key") == b"the first user's inversion"
    assert theirs.get("portrait_3d", "same-photo-key") == b"the second user's inversion"
    assert mine.table_key("portrait_3d", "same-photo-key") != theirs.table_key("portrait_3d", "same-photo-key")
    users.delete_user(db, blobs, first.id)
    assert theirs.get("portrait_3d", "same-photo-key") == b"the second user's inversion"


def test_artifacts_stored_before_keys_named_their_owner_serve_that_owner_alone(engine_side):
    """An avatar made before owned keys named the artifacts it was made from by the shared key form:
    its owner still reads them (a pack renders again), and nobody else does."""
    db, blobs, owner, job_context = engine_side
    other = users.get_or_create_user(db, "telegram", "8")
    artifacts.put_artifact(db, artifact_key("portrait_3d", "old-photo"), "portrait_3d", blobs.put_bytes(b"old"),
                           owner.id)
    artifacts.put_artifact(db, artifact_key("style_2d", "own-style"), "style_2d", blobs.put_bytes(b"own"), owner.id)
    reader = BlobArtifactCache(job_context(), owner.id, shared_style=True)  # as a re-render reads an avatar
    assert reader.get("portrait_3d", "old-photo") == b"old" and reader.get("style_2d", "own-style") == b"own"
    stranger = BlobArtifactCache(job_context(), other.id, shared_style=True)
    assert stranger.get("portrait_3d", "old-photo") is None and stranger.get("style_2d", "own-style") is None
    BlobArtifactCache(job_context(), None, shared_style=True).put("style_2d", "toon", b"house style")
    assert stranger.get("style_2d", "toon") == b"house style"  # a house style's finetune is everyone's
