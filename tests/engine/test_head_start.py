"""The head start on the engine side (engine.tasks): a ``prepare_portrait`` job inverts a selfie while its
user picks a style; the order that follows runs from stage 5, and an order that finds the head start still
running on another engine waits for it (showing its progress) instead of inverting twice. An order without
a head start stores its own inversion beside stage 5, and fails before its pack when that store fails.

The real slim engine on the CPU (steps cut down), a real SQLite database and blob folder, real workers."""
from __future__ import annotations

import dataclasses
import functools
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa

from emoji3d.config import Config, EngineConfig, PackConfig, PathsConfig, StickerEntry
from emoji3d.orders import JOB_KIND, PREPARE_KIND, PackOrder, PackResult, PortraitPrep, first_look_key
from emoji3d.pipeline_config import PipelineConfig
from engine.resources import EngineResources
from engine.tasks import artifact_key, await_preparation, handle_make_pack, handle_prepare_portrait
from engine.worker import JobCancelled, JobContext, Worker
from storage import artifacts, jobs, packs, selfies, users
from storage.blobs import BlobStore
from storage.db import open_database


@pytest.fixture(scope="module")
def engine(tmp_path_factory, repo_root):
    from skimage import data

    from emoji3d.images import DecodeLimits, clean_image

    folder = tmp_path_factory.mktemp("head_start")
    cfg = dataclasses.replace(Config(), root=folder, paths=PathsConfig(data_dir="data"),
                              engine=EngineConfig(device="cpu", preset="slim"), pipeline=PipelineConfig().reduced(2),
                              pack=PackConfig(fps=5.0, size=64, stickers=(StickerEntry("turn", "😎", motion="orbit",
                                                                                       seconds=0.4),)))
    db = open_database(cfg.database_url)
    blobs = BlobStore(db, cfg.blob_dir)
    res = EngineResources.load(cfg)
    selfie = blobs.put_bytes(clean_image(_png(data.astronaut()), DecodeLimits()).png)
    style = blobs.put_bytes((repo_root / "styles" / "toon" / "exemplar.png").read_bytes())
    yield cfg, db, blobs, res, selfie, style
    db.dispose()


def _png(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _user(db, blobs, selfie: str, name: str) -> users.User:
    user = users.get_or_create_user(db, "telegram", name)
    selfies.add_selfie(db, user.id, selfie, ttl_seconds=3600)
    return user


def _run_one(db, blobs, res, kind: str) -> None:
    handler = {JOB_KIND: handle_make_pack, PREPARE_KIND: handle_prepare_portrait}[kind]
    assert Worker(db, blobs, {kind: functools.partial(handler, res)}, f"test-{kind}", 60.0,
                  poll_interval=0.05).run_once()


def test_an_order_after_the_head_start_runs_from_stage_5(engine):
    cfg, db, blobs, res, selfie, style = engine
    user = _user(db, blobs, selfie, "ahead")
    prep = PortraitPrep(user.id, selfie, cfg.engine.seed)
    prep_id = jobs.enqueue(db, PREPARE_KIND, prep.to_payload(), prep.idempotency_key(), user_id=user.id)
    _run_one(db, blobs, res, PREPARE_KIND)
    done = jobs.get_job(db, prep_id)
    assert done.status == "succeeded", done.error
    assert done.result["prepared"] and set(done.result["timings"]) == {"invert_3d", "pivotal_tuning"}
    made = artifacts.get_artifact(db, done.result["artifact"])
    assert made.kind == "portrait_3d" and made.owner_user_id == user.id  # the user's: /delete and retention reach it

    _pack, order_id = packs.order_pack(db, PackOrder(user_id=user.id, selfie_digest=selfie, exemplar_digest=style,
                                                     platform="telegram", seed=cfg.engine.seed))
    _run_one(db, blobs, res, JOB_KIND)
    order = jobs.get_job(db, order_id)
    assert order.status == "succeeded", order.error
    result = PackResult.from_dict(order.result)
    assert {"invert_3d", "pivotal_tuning"} <= set(result.skipped) and "dual_branch" not in result.skipped
    assert result.stickers and result.stickers[0].files
    # the photo-real first look came from the prepared inversion
    assert artifacts.get_artifact(db, first_look_key(order_id, "photo_real")) is not None

    # A second head start for the same photo finds the inversion made and does nothing.
    jobs.enqueue(db, PREPARE_KIND, prep.to_payload(), prep.idempotency_key() + "-again", user_id=user.id)
    _run_one(db, blobs, res, PREPARE_KIND)
    again = jobs.list_jobs(db, kind=PREPARE_KIND, user_id=user.id)[0]
    assert again.status == "succeeded" and again.result == {"artifact": done.result["artifact"], "prepared": False}

    # One stored before owned keys named their owner is found too, and recorded under the key it has
    # (the selfie's purge deletes a head start's unused inversion by that key).
    legacy = artifact_key("portrait_3d", res.pipeline.portrait_key(selfie, prep.seed + cfg.engine.seed))
    with db.write() as conn:
        conn.execute(sa.text("UPDATE artifacts SET cache_key = :old WHERE cache_key = :new"),
                     {"old": legacy, "new": done.result["artifact"]})
    jobs.enqueue(db, PREPARE_KIND, prep.to_payload(), prep.idempotency_key() + "-legacy", user_id=user.id)
    _run_one(db, blobs, res, PREPARE_KIND)
    assert jobs.list_jobs(db, kind=PREPARE_KIND, user_id=user.id)[0].result == {"artifact": legacy, "prepared": False}


def test_a_head_start_for_a_deleted_selfie_prepares_nothing(engine):
    cfg, db, blobs, res, _selfie, _style = engine
    user = users.get_or_create_user(db, "telegram", "gone")
    prep = PortraitPrep(user.id, "f" * 64, cfg.engine.seed)
    prep_id = jobs.enqueue(db, PREPARE_KIND, prep.to_payload(), prep.idempotency_key(), user_id=user.id)
    _run_one(db, blobs, res, PREPARE_KIND)
    assert jobs.get_job(db, prep_id).result == {"prepared": False}
    assert artifacts.list_artifacts(db, owner_user_id=user.id) == []


def test_an_order_whose_inversion_cannot_be_stored_fails_with_that_error_in_stage_5(engine, monkeypatch):
    """Without a head start the order stores the inversion itself, on its cache's thread while stage 5 runs
    (``ArtifactCache.put_later``). When that fails, the job fails with the store's error at stage 5's next
    step, not after its last one, and before any sticker is rendered; the photo-real first look was shown
    meanwhile from the values stage 5 started from."""
    from engine import tasks
    from engine.avatar import portrait_artifact

    cfg, db, blobs, res, selfie, style = engine
    user = _user(db, blobs, selfie, "disk-full")

    def disk_full(self) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(portrait_artifact.QuantisedPortrait, "to_bytes", disk_full)
    rounds = 12
    monkeypatch.setattr(res.pipeline, "cfg", dataclasses.replace(
        res.pipeline.cfg, dual=dataclasses.replace(res.pipeline.cfg.dual, steps=rounds)))
    reported: list[tuple[str, int]] = []
    stage_progress = tasks.stage_progress

    def recorded(jc):
        report = stage_progress(jc)

        def progress(stage: str, step: int, total: int) -> None:
            reported.append((stage, step))
            report(stage, step, total)
        return progress

    monkeypatch.setattr(tasks, "stage_progress", recorded)
    _pack, order_id = packs.order_pack(db, PackOrder(user_id=user.id, selfie_digest=selfie, exemplar_digest=style,
                                                     platform="telegram", seed=cfg.engine.seed))
    _run_one(db, blobs, res, JOB_KIND)
    order = jobs.get_job(db, order_id)
    assert order.result is None and "disk full" in (order.error or ""), (order.status, order.error)
    assert order.stage == "dual_branch"  # the pack's render never began
    assert 1 <= max(step for stage, step in reported if stage == "dual_branch") < rounds / 2
    assert artifacts.get_artifact(db, first_look_key(order_id, "photo_real")) is not None
    assert "portrait_3d" not in {a.kind for a in artifacts.list_artifacts(db, owner_user_id=user.id)}


# --------------------------------------------------------------------------- waiting for a running head start

@pytest.fixture
def waiting(tmp_path, db_url):  # SQLite, and PostgreSQL when the CI run provides it
    """A claimed order and its selfie's head start, claimed by another engine; the order's JobContext."""
    db = open_database(db_url)
    blobs = BlobStore(db, tmp_path / "blobs")
    user = users.get_or_create_user(db, "telegram", "waiter")
    order = PackOrder(user_id=user.id, selfie_digest=blobs.put_bytes(b"selfie"),
                      exemplar_digest=blobs.put_bytes(b"style"), platform="telegram")
    prep = PortraitPrep.for_order(order)
    jobs.enqueue(db, PREPARE_KIND, prep.to_payload(), prep.idempotency_key(), user_id=user.id)
    running = jobs.claim(db, "engine-a", 60, kinds=[PREPARE_KIND])
    packs.order_pack(db, order)
    claimed = jobs.claim(db, "engine-b", 60, kinds=[JOB_KIND])
    jc = JobContext(claimed, db, blobs, claimed.lease_token, threading.Event(), threading.Event(), False,
                    progress_interval=0.0)
    yield db, order, running, jc
    db.dispose()


def _later(seconds: float, fn) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_an_order_waits_for_the_running_head_start_and_shows_its_progress(waiting):
    db, order, running, jc = waiting
    seen = []

    def engine_a() -> None:
        jobs.set_progress(db, running.id, running.lease_token, "pivotal_tuning", 0.4)
        time.sleep(0.4)
        seen.append(jobs.get_job(db, jc.job.id))  # the order, while it waits
        jobs.complete(db, running.id, running.lease_token, {"prepared": True})

    t = _later(0.2, engine_a)
    t0 = time.monotonic()
    assert await_preparation(jc, order) is True
    assert time.monotonic() - t0 >= 0.6
    t.join(5)
    assert (seen[0].stage, seen[0].progress) == ("pivotal_tuning", 0.4)


def test_an_order_stops_waiting_for_a_head_start_that_ends_without_a_result(waiting):
    db, order, running, jc = waiting
    _later(0.2, lambda: jobs.fail(db, running.id, running.lease_token, "out of memory", retryable=False))
    assert await_preparation(jc, order) is False


def test_an_order_stops_waiting_for_a_head_start_whose_engine_went_silent(waiting):
    db, order, running, jc = waiting
    with db.write() as conn:  # engine A's lease ran out without a heartbeat
        import sqlalchemy as sa

        conn.execute(sa.text("UPDATE jobs SET lease_expires_at = :t WHERE id = :id"),
                     {"t": time.time() - 1, "id": running.id})
    t0 = time.monotonic()
    assert await_preparation(jc, order) is False
    assert time.monotonic() - t0 < 1.0


def test_a_cancelled_order_stops_waiting(waiting):
    db, order, _running, jc = waiting
    _later(0.2, lambda: jobs.cancel(db, jc.job.id))
    with pytest.raises(JobCancelled):
        await_preparation(jc, order)


def test_an_order_without_a_head_start_does_not_wait(waiting):
    db, order, running, jc = waiting
    other = dataclasses.replace(order, selfie_digest="c" * 64)
    t0 = time.monotonic()
    assert await_preparation(jc, other) is False
    assert time.monotonic() - t0 < 0.5


def test_an_order_does_not_wait_for_a_head_start_being_cancelled(waiting):
    db, order, running, jc = waiting
    jobs.cancel(db, running.id)  # the user's newer selfie: it stops at its next step
    t0 = time.monotonic()
    assert await_preparation(jc, order) is False
    assert time.monotonic() - t0 < 0.5
