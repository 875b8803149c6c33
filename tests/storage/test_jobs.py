"""Durable queue semantics (in process, explicit clock) and races between real processes."""
from __future__ import annotations

import pytest

from storage import jobs
from storage.blobs import BlobNotFound, refcount
from storage.jobs import LeaseLost, RetryPolicy
from tests.storage.procs import proc_claim_all, proc_enqueue, run_spawned

T0 = 1_000_000.0


def test_enqueue_is_idempotent(db):
    a = jobs.enqueue(db, "make", {"x": 1}, "user1:selfieA:styleB", now=T0)
    b = jobs.enqueue(db, "make", {"x": 2}, "user1:selfieA:styleB", now=T0 + 5)
    assert a == b
    assert len(jobs.list_jobs(db)) == 1 and jobs.get_job(db, a).payload == {"x": 1}
    assert jobs.find_by_key(db, "user1:selfieA:styleB").id == a


def test_enqueue_validates(db):
    with pytest.raises(ValueError, match="priority"):
        jobs.enqueue(db, "make", {}, "k", priority="urgent")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        jobs.enqueue(db, "make", {}, "k", max_attempts=0)
    with pytest.raises(TypeError, match="JSON"):
        jobs.enqueue(db, "make", {"x": object()}, "k")
    with pytest.raises(ValueError, match="idempotency_key"):
        jobs.enqueue(db, "make", {}, "")


def test_claim_order_interactive_first_then_fifo(db):
    b1 = jobs.enqueue(db, "k", {}, "b1", priority="batch", now=T0)
    i1 = jobs.enqueue(db, "k", {}, "i1", now=T0 + 1)
    b2 = jobs.enqueue(db, "k", {}, "b2", priority="batch", now=T0 + 2)
    i2 = jobs.enqueue(db, "k", {}, "i2", now=T0 + 3)
    assert [jobs.queue_position(db, j) for j in (i1, i2, b1, b2)] == [1, 2, 3, 4]
    got = [jobs.claim(db, "w", 30, now=T0 + 10).id for _ in range(4)]
    assert got == [i1, i2, b1, b2]
    assert jobs.claim(db, "w", 30, now=T0 + 10) is None
    assert jobs.queue_position(db, i1) is None


def test_a_speculative_job_is_claimed_after_the_others_of_its_priority(db):
    guess = jobs.enqueue(db, "prepare", {}, "guess", speculative=True, now=T0)
    order = jobs.enqueue(db, "make", {}, "order", now=T0 + 1)
    batch = jobs.enqueue(db, "make", {}, "batch", priority="batch", now=T0 + 2)
    assert jobs.get_job(db, guess).speculative and not jobs.get_job(db, order).speculative
    assert [jobs.queue_position(db, j) for j in (order, guess, batch)] == [1, 2, 3]
    assert [jobs.claim(db, "w", 30, now=T0 + 10).id for _ in range(3)] == [order, guess, batch]


def test_a_job_waiting_for_a_running_job_is_claimed_once_that_one_ends(db):
    prep = jobs.enqueue(db, "prepare", {}, "head start", speculative=True, now=T0)
    running = jobs.claim(db, "engine-a", 30, now=T0)
    order = jobs.enqueue(db, "make", {}, "order", waits_for=prep, now=T0 + 1)
    later = jobs.enqueue(db, "make", {}, "another user's order", now=T0 + 2)
    assert jobs.get_job(db, order).waits_for == prep
    assert jobs.claim(db, "engine-b", 30, now=T0 + 3).id == later  # held, its place kept
    assert jobs.claim(db, "engine-b", 30, now=T0 + 3) is None
    assert jobs.queue_position(db, order) == 1
    jobs.complete(db, prep, running.lease_token, {}, now=T0 + 4)
    assert jobs.claim(db, "engine-b", 30, now=T0 + 4).id == order


@pytest.mark.parametrize("ending", ["fails", "is cancelled", "loses its engine"])
def test_a_waiting_job_is_released_however_the_awaited_one_ends(db, ending):
    prep = jobs.enqueue(db, "prepare", {}, "head start", speculative=True, max_attempts=1, now=T0)
    running = jobs.claim(db, "engine-a", 30, now=T0)
    order = jobs.enqueue(db, "make", {}, "order", waits_for=prep, now=T0 + 1)
    assert jobs.claim(db, "engine-b", 30, kinds=["make"], now=T0 + 2) is None
    if ending == "fails":
        jobs.fail(db, prep, running.lease_token, "boom", retryable=False, now=T0 + 3)
    elif ending == "is cancelled":
        assert jobs.cancel(db, prep, now=T0 + 3) == "cancel_requested"
        assert jobs.claim(db, "engine-b", 30, kinds=["make"], now=T0 + 3) is None  # still stopping
        jobs.mark_cancelled(db, prep, running.lease_token, now=T0 + 3)
    assert jobs.claim(db, "engine-b", 30, kinds=["make"], now=T0 + 31 if ending == "loses its engine" else T0 + 3
                      ).id == order  # a lapsed lease holds nothing


def test_claim_filters_kinds(db):
    a = jobs.enqueue(db, "render", {}, "a", now=T0)
    b = jobs.enqueue(db, "tune", {}, "b", now=T0)
    assert jobs.claim(db, "w", 30, kinds=["tune"], now=T0).id == b
    assert jobs.claim(db, "w", 30, kinds=["tune"], now=T0) is None
    assert jobs.claim(db, "w", 30, kinds=[], now=T0) is None
    assert jobs.claim(db, "w", 30, kinds=["render", "x"], now=T0).id == a


def test_claim_can_be_narrowed_to_given_jobs(db):
    theirs = jobs.enqueue(db, "make_pack", {}, "someone else's order")
    mine = jobs.enqueue(db, "make_pack", {}, "my order")
    assert jobs.claim(db, "local", 30, job_ids=[]) is None
    assert jobs.claim(db, "local", 30, job_ids=[mine]).id == mine
    assert jobs.claim(db, "local", 30, job_ids=[mine]) is None  # taken; theirs is not a candidate
    assert jobs.get_job(db, theirs).status == "queued"


def test_expired_lease_is_reclaimed_and_old_token_refused(db):
    jid = jobs.enqueue(db, "k", {}, "k1", now=T0)
    first = jobs.claim(db, "w1", 10, now=T0)
    assert first.attempts == 1 and first.lease_owner == "w1"
    assert jobs.claim(db, "w2", 10, now=T0 + 9) is None  # lease still valid
    second = jobs.claim(db, "w2", 10, now=T0 + 11)
    assert second.id == jid and second.attempts == 2 and second.lease_token != first.lease_token
    for write in (lambda: jobs.heartbeat(db, jid, first.lease_token, 10, now=T0 + 12),
                  lambda: jobs.set_progress(db, jid, first.lease_token, "x", 0.5, now=T0 + 12),
                  lambda: jobs.complete(db, jid, first.lease_token, {"by": "w1"}, now=T0 + 12),
                  lambda: jobs.fail(db, jid, first.lease_token, "boom", now=T0 + 12),
                  lambda: jobs.release(db, jid, first.lease_token, now=T0 + 12)):
        with pytest.raises(LeaseLost):
            write()
    jobs.complete(db, jid, second.lease_token, {"by": "w2"}, now=T0 + 13)
    with pytest.raises(LeaseLost):  # exactly once, even for the rightful owner
        jobs.complete(db, jid, second.lease_token, {"by": "w2 again"}, now=T0 + 14)
    job = jobs.get_job(db, jid)
    assert job.status == "succeeded" and job.result == {"by": "w2"} and job.progress == 1.0


def test_heartbeat_extends_the_lease(db):
    jid = jobs.enqueue(db, "k", {}, "hb", now=T0)
    j = jobs.claim(db, "w1", 10, now=T0)
    assert jobs.heartbeat(db, jid, j.lease_token, 10, now=T0 + 8) == "running"
    assert jobs.claim(db, "w2", 10, now=T0 + 15) is None
    assert jobs.claim(db, "w2", 10, now=T0 + 18.5).attempts == 2


def test_lease_expiry_after_last_attempt_fails_the_job(db):
    jid = jobs.enqueue(db, "k", {}, "k1", max_attempts=2, now=T0)
    jobs.claim(db, "w", 5, now=T0)
    jobs.claim(db, "w", 5, now=T0 + 6)
    assert jobs.claim(db, "w", 5, now=T0 + 12) is None
    job = jobs.get_job(db, jid)
    assert job.status == "failed" and job.error_key == "worker_lost" and "2 time" in job.error


def test_fail_retries_with_exponential_backoff_then_fails(db):
    policy = RetryPolicy(base_seconds=10, factor=2, max_seconds=1000)
    jid = jobs.enqueue(db, "k", {}, "k1", max_attempts=3, now=T0)
    j = jobs.claim(db, "w", 30, now=T0)
    assert jobs.fail(db, jid, j.lease_token, "gpu oom", policy=policy, now=T0 + 1) == "queued"
    assert jobs.get_job(db, jid).not_before == pytest.approx(T0 + 11)
    assert jobs.claim(db, "w", 30, now=T0 + 10) is None
    j = jobs.claim(db, "w", 30, now=T0 + 11)
    assert jobs.fail(db, jid, j.lease_token, "gpu oom", policy=policy, now=T0 + 12) == "queued"
    assert jobs.get_job(db, jid).not_before == pytest.approx(T0 + 32)
    j = jobs.claim(db, "w", 30, now=T0 + 32)
    assert jobs.fail(db, jid, j.lease_token, "gpu oom again", policy=policy, now=T0 + 33) == "failed"
    job = jobs.get_job(db, jid)
    assert job.status == "failed" and job.error == "gpu oom again" and job.attempts == 3
    assert job.finished_at == pytest.approx(T0 + 33)


def test_non_retryable_failure_keeps_its_key(db):
    jid = jobs.enqueue(db, "k", {}, "k1", now=T0)
    j = jobs.claim(db, "w", 30, now=T0)
    assert jobs.fail(db, jid, j.lease_token, "no face", retryable=False, error_key="no_face", now=T0) == "failed"
    assert jobs.get_job(db, jid).error_key == "no_face"


def test_a_failed_or_cancelled_job_gives_its_key_to_a_new_attempt(db):
    first = jobs.enqueue(db, "k", {"n": 1}, "order-1", now=T0)
    j = jobs.claim(db, "w", 30, now=T0)
    jobs.fail(db, first, j.lease_token, "disk full", retryable=False, now=T0)
    second = jobs.enqueue(db, "k", {"n": 1}, "order-1", now=T0 + 1)
    assert second != first and jobs.get_job(db, second).status == "queued"
    assert jobs.find_by_key(db, "order-1").id == second
    assert jobs.get_job(db, first).idempotency_key == f"order-1#{first}"  # kept, as history
    assert jobs.enqueue(db, "k", {"n": 1}, "order-1") == second  # the new attempt holds the key again
    jobs.cancel(db, second)
    third = jobs.enqueue(db, "k", {"n": 1}, "order-1")
    assert third not in (first, second)
    done = jobs.claim(db, "w", 30)
    jobs.complete(db, done.id, done.lease_token, {"ok": True})
    assert jobs.enqueue(db, "k", {"n": 1}, "order-1") == third  # a success keeps its key for good


def test_a_finished_jobs_key_can_be_retired_for_a_new_job(db):
    done = jobs.enqueue(db, "k", {}, "photo", now=T0)
    j = jobs.claim(db, "w", 30, now=T0)
    assert not jobs.retire_key(db, done, now=T0 + 1)  # running: the key still names it
    assert jobs.enqueue(db, "k", {}, "photo", now=T0 + 1) == done
    jobs.complete(db, done, j.lease_token, {"made": "gone since"}, now=T0 + 2)
    assert jobs.retire_key(db, done, now=T0 + 3)
    again = jobs.enqueue(db, "k", {}, "photo", now=T0 + 4)
    assert again != done and jobs.get_job(db, again).status == "queued"
    assert jobs.get_job(db, done).status == "succeeded" and jobs.get_job(db, done).idempotency_key == f"photo#{done}"


def test_release_returns_job_without_using_an_attempt(db):
    jid = jobs.enqueue(db, "k", {}, "k1", max_attempts=1, now=T0)
    j = jobs.claim(db, "w1", 300, now=T0)
    assert jobs.release(db, jid, j.lease_token, now=T0 + 1) == "queued"
    j2 = jobs.claim(db, "w2", 300, now=T0 + 1)  # at once, no waiting for the lease
    assert j2.id == jid and j2.attempts == 1


def test_cancel_queued_and_running(db):
    a = jobs.enqueue(db, "k", {}, "a", now=T0)
    b = jobs.enqueue(db, "k", {}, "b", now=T0)
    assert jobs.cancel(db, a, now=T0) == "cancelled"
    jb = jobs.claim(db, "w", 30, now=T0)
    assert jb.id == b  # the cancelled job is never handed out
    assert jobs.cancel(db, b, now=T0) == "cancel_requested"
    assert jobs.heartbeat(db, b, jb.lease_token, 30, now=T0 + 1) == "cancel_requested"
    jobs.mark_cancelled(db, b, jb.lease_token, now=T0 + 2)
    assert jobs.get_job(db, b).status == "cancelled"
    assert jobs.cancel(db, b) == "cancelled"  # finished jobs stay as they are
    with pytest.raises(jobs.JobNotFound):
        jobs.cancel(db, 12345)


def test_cancel_requested_job_whose_worker_died_ends_cancelled(db):
    jid = jobs.enqueue(db, "k", {}, "a", now=T0)
    jobs.claim(db, "w", 5, now=T0)
    jobs.cancel(db, jid, now=T0 + 1)
    assert jobs.claim(db, "w2", 5, now=T0 + 10) is None
    assert jobs.get_job(db, jid).status == "cancelled"


def test_complete_references_result_blobs_in_the_same_transaction(db, blobs):
    d = blobs.put_bytes(b"sticker")
    jid = jobs.enqueue(db, "k", {}, "a", now=T0)
    j = jobs.claim(db, "w", 30, now=T0)
    with pytest.raises(BlobNotFound):
        jobs.complete(db, jid, j.lease_token, {"ok": True}, ["f" * 64])  # unknown blob: nothing recorded
    assert jobs.get_job(db, jid).status == "running"
    jobs.complete(db, jid, j.lease_token, {"ok": True}, [d, d])
    with db.read() as c:
        assert refcount(c, d) == 1


def test_progress_is_validated_and_listed(db):
    jid = jobs.enqueue(db, "k", {}, "a", user_id=None, now=T0)
    j = jobs.claim(db, "w", 30, now=T0)
    jobs.set_progress(db, jid, j.lease_token, "invert", 0.25)
    job = jobs.get_job(db, jid)
    assert (job.stage, job.progress) == ("invert", 0.25)
    with pytest.raises(ValueError, match="fraction"):
        jobs.set_progress(db, jid, j.lease_token, "invert", 1.5)
    assert [x.id for x in jobs.list_jobs(db, status="running")] == [jid]
    assert jobs.list_jobs(db, status=["queued"]) == []
    assert jobs.counts_by_status(db) == {"running": 1}
    with pytest.raises(ValueError, match="unknown job status"):
        jobs.list_jobs(db, status="done")


def test_concurrent_enqueue_from_two_processes_gives_one_job_per_key(db_url, db, tmp_path):
    keys = [f"key-{i}" for i in range(40)]
    go = tmp_path / "go"
    outs = [tmp_path / "ids-a", tmp_path / "ids-b"]
    run_spawned([(proc_enqueue, db_url, keys, str(go), str(outs[0])),
                 (proc_enqueue, db_url, list(reversed(keys)), str(go), str(outs[1]))], go)
    a = outs[0].read_text().split()
    b = list(reversed(outs[1].read_text().split()))
    assert a == b  # both producers got the same id for each key
    assert len(jobs.list_jobs(db, limit=1000)) == 40


def test_concurrent_claims_never_hand_a_job_to_two_workers(db_url, db, tmp_path):
    ids = [jobs.enqueue(db, "k", {}, f"j{i}") for i in range(60)]
    go = tmp_path / "go"
    outs = [tmp_path / f"claimed-{i}" for i in range(3)]
    run_spawned([(proc_claim_all, db_url, f"w{i}", str(go), str(outs[i])) for i in range(3)], go)
    claimed = [int(x) for o in outs for x in o.read_text().split()]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    assert all(j.status == "succeeded" and j.attempts == 1 for j in jobs.list_jobs(db, limit=1000))


def test_lease_status_tells_the_holder_apart(db):
    jid = jobs.enqueue(db, "k", {}, "a", now=T0)
    first = jobs.claim(db, "w1", 5, now=T0)
    assert jobs.lease_status(db, jid, first.lease_token) == "running"
    second = jobs.claim(db, "w2", 5, now=T0 + 6)
    with pytest.raises(LeaseLost):
        jobs.lease_status(db, jid, first.lease_token)
    jobs.cancel(db, jid)
    assert jobs.lease_status(db, jid, second.lease_token) == "cancel_requested"


def test_jobs_queued_before_the_speculative_column_stay_ordinary(tmp_path):
    """Migration 0008 on a database with a queue: the jobs already there are not speculative and
    keep their order; a head start enqueued after the upgrade goes after them."""
    import sqlalchemy as sa

    from storage.db import apply_migrations, load_migrations, open_database

    db = open_database(f"sqlite:///{tmp_path / 'old.db'}", migrate=False)
    migs = load_migrations()
    apply_migrations(db, [m for m in migs if m.version < 8])
    with db.write() as c:  # as the previous version's enqueue wrote them
        for key in ("first", "second"):
            c.execute(sa.text("INSERT INTO jobs (kind, payload, idempotency_key, priority, status, attempts, "
                              "max_attempts, not_before, progress, created_at, updated_at) VALUES "
                              "('make', '{}', :k, 0, 'queued', 0, 3, :t, 0, :t, :t)"), {"k": key, "t": T0})
    assert apply_migrations(db) == [m.version for m in migs if m.version >= 8]
    guess = jobs.enqueue(db, "prepare", {}, "guess", speculative=True, now=T0)
    first, second = (jobs.find_by_key(db, k) for k in ("first", "second"))
    assert not first.speculative and not second.speculative
    assert [jobs.claim(db, "w", 30, now=T0 + 1).id for _ in range(3)] == [first.id, second.id, guess]
    db.dispose()
