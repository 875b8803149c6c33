"""An artifact put on the job cache's own thread (engine.tasks.BlobArtifactCache.put_later): the
pipeline hands the portrait artifact's bytes over so that stage 5 need not wait for them. A read of
that artifact waits for it; a failure reaches the job; leaving the cache waits for it either way, so a
failed job's clean-up sees everything it wrote; and a cancelled or deleted job writes nothing more."""
from __future__ import annotations

import hashlib
import threading
import time

import pytest

from engine.tasks import BlobArtifactCache, artifact_key
from engine.worker import JobAborted, JobContext
from storage import artifacts, jobs, users
from storage.blobs import BlobStore
from storage.db import open_database

WAIT_S = 10


@pytest.fixture
def engine_side(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'later.db'}")
    blobs = BlobStore(db, tmp_path / "blobs")
    user = users.get_or_create_user(db, "telegram", "7")
    jobs.enqueue(db, "make_pack", {}, "the order", user_id=user.id)
    job = jobs.claim(db, "engine", 60, kinds=["make_pack"])
    jc = JobContext(job, db, blobs, job.lease_token, threading.Event(), threading.Event(), True)
    yield db, blobs, user, jc
    db.dispose()


class _Gate:
    """A ``make`` that blocks until opened, and says when it started."""

    def __init__(self, data: bytes) -> None:
        self.data, self.started, self.open = data, threading.Event(), threading.Event()

    def __call__(self) -> bytes:
        self.started.set()
        assert self.open.wait(WAIT_S), "the gate was never opened"
        return self.data


def test_put_later_returns_at_once_and_a_read_waits_for_the_bytes(engine_side):
    db, blobs, user, jc = engine_side
    gate = _Gate(b"latents, noise and the PTI delta")
    with BlobArtifactCache(jc, user.id, shared_style=False) as cache:
        cache.put_later("portrait_3d", "selfie", gate)  # returns while make() has not finished
        assert gate.started.wait(WAIT_S)
        assert artifacts.get_artifact(db, cache.table_key("portrait_3d", "selfie")) is None
        reader = threading.Thread(target=lambda: got.append(cache.digest("portrait_3d", "selfie")))
        got: list[str | None] = []
        reader.start()
        reader.join(0.3)
        assert reader.is_alive() and not got  # the read waits instead of answering "not cached"
        gate.open.set()
        reader.join(WAIT_S)
        assert got == [hashlib.sha256(gate.data).hexdigest()]
        assert cache.get("portrait_3d", "selfie") == gate.data
    assert blobs.read_bytes(got[0]) == gate.data and got[0] in jc.written_blobs
    assert artifacts.get_artifact(db, artifact_key("portrait_3d", "selfie", user.id)).owner_user_id == user.id


def test_leaving_the_cache_waits_for_the_put_and_raises_its_failure(engine_side):
    _, _, user, jc = engine_side
    gate = _Gate(b"")
    with pytest.raises(OSError, match="disk full"):
        with BlobArtifactCache(jc, user.id, shared_style=False) as cache:
            def failing() -> bytes:
                gate()
                raise OSError("disk full")

            cache.put_later("portrait_3d", "selfie", failing)
            assert gate.started.wait(WAIT_S)
            threading.Timer(0.2, gate.open.set).start()
    assert cache._later is None  # its thread is gone


def test_a_read_gets_the_failure_of_the_put_it_waited_for(engine_side):
    _, _, user, jc = engine_side
    def disk_full() -> bytes:
        raise OSError("disk full")

    with BlobArtifactCache(jc, user.id, shared_style=False) as cache:
        cache.put_later("portrait_3d", "selfie", disk_full)
        with pytest.raises(OSError, match="disk full"):
            cache.digest("portrait_3d", "selfie")
        assert cache.get("portrait_3d", "selfie") is None  # raised once; nothing was stored


def test_a_failed_put_is_raised_between_steps_without_waiting_for_one_still_running(engine_side):
    _, _, user, jc = engine_side
    gate = _Gate(b"the style's finetune, still being made")

    def disk_full() -> bytes:
        raise OSError("disk full")

    with BlobArtifactCache(jc, user.id, shared_style=False) as cache:
        cache.put_later("style_2d", "toon", gate)
        cache.put_later("portrait_3d", "selfie", disk_full)  # queued behind the gated put
        assert gate.started.wait(WAIT_S)
        cache.raise_failed_put()  # nothing failed yet, and it does not wait for the running put
        gate.open.set()
        with pytest.raises(OSError, match="disk full"):
            for _ in range(WAIT_S * 100):  # as a stage's steps would, until the put has failed
                cache.raise_failed_put()
                time.sleep(0.01)
    # raised once: leaving the cache raised nothing more, and the other put was stored
    assert cache.get("style_2d", "toon") == gate.data


def test_a_job_failing_meanwhile_keeps_its_error_and_its_clean_up_sees_the_put(engine_side):
    _, blobs, user, jc = engine_side
    gate = _Gate(b"the inversion of a job that then fails")
    with pytest.raises(RuntimeError, match="stage 5 failed"):
        with BlobArtifactCache(jc, user.id, shared_style=False) as cache:
            cache.put_later("portrait_3d", "selfie", gate)
            threading.Timer(0.2, gate.open.set).start()
            raise RuntimeError("stage 5 failed")
    # Leaving the block waited for the put: what it wrote is listed for the worker's clean-up.
    digest = hashlib.sha256(gate.data).hexdigest()
    assert jc.written_blobs == [digest] and blobs.exists(digest)


def test_a_put_made_after_the_user_was_deleted_writes_nothing(engine_side):
    db, blobs, user, jc = engine_side
    gate = _Gate(b"an inversion made from the deleted user's selfie")
    with pytest.raises(JobAborted):  # the job's row went with the user
        with BlobArtifactCache(jc, user.id, shared_style=False) as cache:
            cache.put_later("portrait_3d", "selfie", gate)
            assert gate.started.wait(WAIT_S)
            users.delete_user(db, blobs, user.id)  # /delete while the bytes are being made
            gate.open.set()
    digest = hashlib.sha256(gate.data).hexdigest()
    assert not blobs.exists(digest) and jc.written_blobs == []
    assert artifacts.get_artifact(db, artifact_key("portrait_3d", "selfie", user.id)) is None
