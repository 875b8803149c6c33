"""The head start on the producer side (bots.core, bots.head_starts): a selfie accepted where the user
still picks a style enqueues its inversion (``emoji3d.orders.PREPARE_KIND``), one per user; it is no
order (no quota, no active-job rule), an order cancels one no engine has taken yet, and /delete
cancels it."""
from __future__ import annotations

import asyncio
import dataclasses

from bots import core
from emoji3d import orders
from emoji3d.config import EngineConfig
from storage import jobs, users
from storage import styles as st


def consented(res, pid: str = "1") -> users.User:
    user = core.ensure_user(res, "telegram", pid)
    core.give_consent(res, user)
    return users.get_user(res.db, user.id)


def preparations(res, user, status=None) -> list[jobs.Job]:
    return jobs.list_jobs(res.db, user_id=user.id, kind=orders.PREPARE_KIND, status=status)


def test_a_selfie_with_a_style_still_to_pick_gets_its_inversion_enqueued(res, selfie_png):
    user = consented(res)
    accepted = core.accept_selfie(res, user, selfie_png, head_start=True)
    [prep] = preparations(res, user)
    assert prep.status == "queued" and prep.priority == "interactive" and prep.user_id == user.id
    assert prep.speculative  # engines take orders first, and another user's waiting order preempts it
    assert orders.PortraitPrep.from_payload(prep.payload) == orders.PortraitPrep(
        user.id, accepted.selfie.blob_digest, res.cfg.engine.seed)
    # the same photo again: the same job, not a second one
    core.accept_selfie(res, user, selfie_png, head_start=True)
    assert [j.id for j in preparations(res, user)] == [prep.id]
    # it is no order: the user can order at once
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id, seed=res.cfg.engine.seed)
    assert jobs.get_job(res.db, placed.job_id).kind == orders.JOB_KIND


def test_the_same_photo_again_gets_a_new_head_start_once_its_inversion_is_deleted(res, selfie_png):
    import time

    from storage import artifacts

    user = consented(res)
    core.accept_selfie(res, user, selfie_png, head_start=True)
    [first] = preparations(res, user)
    taken = jobs.claim(res.db, "engine", 60, kinds=[orders.PREPARE_KIND])
    made = artifacts.put_artifact(res.db, "portrait_3d:the-photo", "portrait_3d", res.blobs.put_bytes(b"inverted"),
                                  user.id)
    jobs.complete(res.db, taken.id, taken.lease_token, {"artifact": made.cache_key, "prepared": True})
    core.accept_selfie(res, user, selfie_png, head_start=True)
    assert [j.id for j in preparations(res, user)] == [first.id]  # still prepared: nothing to do again

    assert artifacts.evict_unused(res.db, res.blobs, 0, now=time.time() + 1) == 1  # retention took it
    core.accept_selfie(res, user, selfie_png, head_start=True)
    newer, older = preparations(res, user)
    assert older.id == first.id and older.status == "succeeded" and newer.status == "queued"
    assert newer.idempotency_key == first.idempotency_key
    assert older.idempotency_key == f"{first.idempotency_key}#{first.id}"
    core.accept_selfie(res, user, selfie_png, head_start=True)
    assert [j.id for j in preparations(res, user)] == [newer.id, older.id]  # and that one is the photo's now


def test_no_head_start_where_the_order_comes_with_the_selfie_or_config_says_no(res, selfie_png):
    user = consented(res)
    core.accept_selfie(res, user, selfie_png)  # Discord: the style comes in the same command
    assert preparations(res, user) == []
    off = dataclasses.replace(res, cfg=dataclasses.replace(res.cfg, engine=EngineConfig(head_start=False)))
    core.accept_selfie(off, user, selfie_png, head_start=True)
    assert preparations(res, user) == []


def test_a_newer_selfie_cancels_the_head_start_of_the_older(res, selfie_png):
    import io

    from PIL import Image

    user = consented(res)
    core.accept_selfie(res, user, selfie_png, head_start=True)
    [older] = preparations(res, user)
    flipped = io.BytesIO()
    Image.open(io.BytesIO(selfie_png)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped, "PNG")
    newer = core.accept_selfie(res, user, flipped.getvalue(), head_start=True)
    assert jobs.get_job(res.db, older.id).status == "cancelled"
    [live] = preparations(res, user, status="queued")
    assert live.payload["selfie_digest"] == newer.selfie.blob_digest
    other = consented(res, "2")  # another user's head start is theirs
    core.accept_selfie(res, other, selfie_png, head_start=True)
    assert jobs.get_job(res.db, live.id).status == "queued"


def test_an_order_cancels_a_head_start_no_engine_took_and_leaves_a_running_one(res, selfie_png):
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    user = consented(res)
    core.accept_selfie(res, user, selfie_png, head_start=True)
    [queued] = preparations(res, user)
    placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id, seed=res.cfg.engine.seed)
    assert jobs.get_job(res.db, queued.id).status == "cancelled"  # the order inverts the selfie itself
    assert jobs.get_job(res.db, placed.job_id).waits_for is None

    second = consented(res, "2")
    core.accept_selfie(res, second, selfie_png, head_start=True)
    running = jobs.claim(res.db, "engine-a", 60, kinds=[orders.PREPARE_KIND])
    assert running.user_id == second.id
    placed = core.place_order(res, second, "telegram", preset="full", style_id=style.id, seed=res.cfg.engine.seed)
    assert jobs.get_job(res.db, running.id).status == "running"
    # the order waits for it in the queue: no other engine takes it (to sit waiting) before it ends
    assert jobs.get_job(res.db, placed.job_id).waits_for == running.id
    assert jobs.claim(res.db, "engine-b", 60, job_ids=[placed.job_id]) is None
    jobs.complete(res.db, running.id, running.lease_token, {"prepared": True})
    assert jobs.claim(res.db, "engine-b", 60, job_ids=[placed.job_id]).id == placed.job_id


def test_delete_my_data_cancels_the_head_start_and_removes_it(res, selfie_png):
    user = consented(res)
    core.accept_selfie(res, user, selfie_png, head_start=True)
    running = jobs.claim(res.db, "engine-a", 60, kinds=[orders.PREPARE_KIND])

    async def no_sets(_name: str) -> None:
        raise AssertionError("this user has no sticker set")

    deleted = asyncio.run(core.delete_my_data(res, "telegram", "1", no_sets))
    assert deleted.summary.jobs == 1
    assert jobs.find_by_key(res.db, running.idempotency_key) is None  # the engine's next write finds it gone


def test_privacy_says_a_selfie_is_processed_before_an_order_only_when_it_is(res):
    from emoji3d.texts import text

    said = text("privacy", **core.privacy_params(res.cfg))
    assert "as soon as you send a selfie" in said and "deleted together with the selfie" in said
    off = dataclasses.replace(res.cfg, engine=EngineConfig(head_start=False))
    assert "as soon as you send a selfie" not in text("privacy", **core.privacy_params(off))


def test_an_order_queued_behind_its_running_head_start_shows_that_progress(res, selfie_png):
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    user = consented(res)
    core.accept_selfie(res, user, selfie_png, head_start=True)
    running = jobs.claim(res.db, "the-only-engine", 60, kinds=[orders.PREPARE_KIND])
    jobs.set_progress(res.db, running.id, running.lease_token, "pivotal_tuning", 0.41)
    placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id, seed=res.cfg.engine.seed)
    view = core.progress_view(res, jobs.get_job(res.db, placed.job_id))
    assert (view.key, view.params, view.stage_key) == ("progress", {"percent": 41}, "stage_pivotal_tuning")
    jobs.complete(res.db, running.id, running.lease_token, {"prepared": True})
    assert core.progress_view(res, jobs.get_job(res.db, placed.job_id)).key == "queued_soon"  # its turn is next
