"""Engine worker loop against a real database (SQLite; PostgreSQL too in CI), with real worker processes.

Worker processes run ``python -m engine.worker`` with the small handlers in
tests/storage/jobhandlers.py; tests kill, stop, signal and cancel them.
"""
from __future__ import annotations

import hashlib
import math
import signal
import threading
import time

import pytest
import sqlalchemy as sa

from engine.worker import PROGRESS_INTERVAL, JobCancelled, Worker
from storage import jobs
from storage.blobs import BlobStore
from storage.db import open_database
from storage.jobs import RetryPolicy
from storage.wakeups import JobWakeups
from tests.storage import jobhandlers
from tests.storage.procs import start_worker, stop, wait_for


@pytest.fixture
def env(tmp_path, db_url):  # SQLite, and PostgreSQL when the CI run provides it (tests/conftest.py)
    url = db_url
    db = open_database(url)
    marks = tmp_path / "marks"
    marks.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    blobs = BlobStore(db, tmp_path / "blobs", gc_grace_seconds=0)
    procs = []
    yield {"url": url, "db": db, "marks": marks, "logs": logs, "blobs": blobs, "root": tmp_path / "blobs",
           "procs": procs}
    for p in procs:
        stop(p)
    db.dispose()


def _spawn(env, wid, **kw):
    p = start_worker(env["url"], env["root"], wid, env["logs"], **kw)
    env["procs"].append(p)
    return p


def _payload(env, n, delay, **extra):
    return {"n": n, "delay": delay, "marks": str(env["marks"]), **extra}


def _status(env, jid):
    return jobs.get_job(env["db"], jid).status


def _logs(env):
    return "\n".join(p.read_text() for p in env["logs"].iterdir())


def _sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def _refs(db, holder):
    with db.read() as c:
        return list(c.execute(sa.text("SELECT digest FROM blob_refs WHERE holder = :h"), {"h": holder}).scalars())


def test_sigkill_mid_job_is_retaken_after_lease_and_stored_once(env):
    db, marks = env["db"], env["marks"]
    jid = jobs.enqueue(db, "steps", _payload(env, 6, 0.3), "kill-1")
    w1 = _spawn(env, "w1", lease=2.0)
    wait_for(lambda: (marks / f"{jid}-step-1").exists(), 60, "w1 to run two steps")
    w1.send_signal(signal.SIGKILL)
    w1.wait(timeout=10)
    assert _status(env, jid) == "running"  # nobody knows yet that w1 died
    killed_at = time.time()
    w2 = _spawn(env, "w2", lease=2.0)
    wait_for(lambda: _status(env, jid) == "succeeded", 60, "w2 to complete the job\n" + _logs(env))
    job = jobs.get_job(db, jid)
    assert job.attempts == 2 and job.result["attempt"] == 2 and job.result["pid"] == w2.pid
    assert job.finished_at - killed_at >= 1.0  # not before w1's lease ran out
    assert (marks / f"{jid}-finished").read_text().count("\n") == 1
    # The job references exactly what the successful attempt wrote.
    expected = {_sha(f"final job={jid}"), _sha(f"partial job={jid} attempt=2")}
    assert set(_refs(db, f"job:{jid}")) == expected and job.result["digest"] in expected
    # The killed attempt's blob is on disk but nothing references it: GC removes it.
    orphan = _sha(f"partial job={jid} attempt=1")
    assert env["blobs"].exists(orphan) and env["blobs"].refcount(orphan) == 0
    assert env["blobs"].stats()["unreferenced"] == 1
    report = env["blobs"].gc(grace_seconds=0)
    assert report.removed_blobs == 1 and not env["blobs"].exists(orphan)
    assert env["blobs"].stats()["unreferenced"] == 0
    files = {p.name for p in env["root"].rglob("*") if p.is_file()}
    assert files == expected
    w2.send_signal(signal.SIGTERM)
    assert w2.wait(timeout=20) == 0


def test_stalled_worker_resumed_later_cannot_overwrite(env):
    db, marks = env["db"], env["marks"]
    jid = jobs.enqueue(db, "steps", _payload(env, 10, 0.3), "stall-1")
    w1 = _spawn(env, "w1", lease=1.5)
    wait_for(lambda: (marks / f"{jid}-step-1").exists(), 60, "w1 to run two steps")
    w1.send_signal(signal.SIGSTOP)
    try:
        w2 = _spawn(env, "w2", lease=1.5)
        wait_for(lambda: _status(env, jid) == "succeeded", 90, "w2 to complete the job\n" + _logs(env))
    finally:
        w1.send_signal(signal.SIGCONT)
    result = jobs.get_job(db, jid).result
    # w1 runs again: its next write must be refused, and it notices.
    wait_for(lambda: "lease lost" in (env["logs"] / "w1.log").read_text(), 30, "w1 to notice the lost lease")
    time.sleep(0.5)
    job = jobs.get_job(db, jid)
    assert job.status == "succeeded" and job.result == result and job.result["pid"] == w2.pid
    assert (marks / f"{jid}-finished").read_text().count("\n") == 1
    assert w1.poll() is None  # it survives and goes on polling


def test_heartbeat_keeps_a_long_job_with_its_worker(env):
    db, marks = env["db"], env["marks"]
    # A 5 s job, a 2 s lease: renewed every 0.67 s, so a stall of the busy 2-core CI machine up to
    # 1.3 s (w2 starting up beside it) is not mistaken for a dead worker, as it could be with 1 s.
    jid = jobs.enqueue(db, "steps", _payload(env, 5, 1.0), "long-1")
    _spawn(env, "w1", lease=2.0)
    wait_for(lambda: (marks / f"{jid}-started-1").exists(), 60, "a worker to start the job")
    _spawn(env, "w2", lease=2.0)
    wait_for(lambda: _status(env, jid) == "succeeded", 60, "the job to complete\n" + _logs(env))
    assert jobs.get_job(db, jid).attempts == 1
    assert (marks / f"{jid}-finished").read_text().count("\n") == 1


def test_cancel_stops_running_job_within_a_step_or_the_progress_interval(env):
    db, marks = env["db"], env["marks"]
    delay = 0.2
    jid = jobs.enqueue(db, "steps", _payload(env, 100, delay), "cancel-1")
    _spawn(env, "w1")
    wait_for(lambda: (marks / f"{jid}-step-1").exists(), 60, "the job to run")
    assert jobs.cancel(db, jid) == "cancel_requested"
    cancelled_steps = len(list(marks.glob(f"{jid}-step-*")))
    wait_for(lambda: _status(env, jid) == "cancelled", 20, "the worker to stop\n" + _logs(env))
    steps_run = len(list(marks.glob(f"{jid}-step-*")))
    # The step in flight may finish, and the cancel is read at the next progress write (at most
    # PROGRESS_INTERVAL later); steps that run slower than planned only lower the count.
    assert steps_run <= cancelled_steps + 1 + math.ceil(PROGRESS_INTERVAL / delay)
    assert not (marks / f"{jid}-finished").exists()
    assert _refs(db, f"job:{jid}") == []


def test_sigterm_releases_job_and_another_worker_takes_it_at_once(env):
    db, marks = env["db"], env["marks"]
    jid = jobs.enqueue(db, "steps", _payload(env, 10, 0.3), "term-1")
    w1 = _spawn(env, "w1", lease=30.0)  # long lease: a retake before 30 s proves the release
    wait_for(lambda: (marks / f"{jid}-step-1").exists(), 60, "the job to run")
    w1.send_signal(signal.SIGTERM)
    assert w1.wait(timeout=20) == 0
    job = jobs.get_job(db, jid)
    assert job.status == "queued" and job.attempts == 0 and job.lease_token is None
    t0 = time.time()
    _spawn(env, "w2", lease=30.0)
    wait_for(lambda: _status(env, jid) == "succeeded", 60, "w2 to complete\n" + _logs(env))
    assert time.time() - t0 < 25
    assert jobs.get_job(db, jid).attempts == 1


def test_sigterm_in_finish_mode_completes_the_job_then_exits(env):
    db, marks = env["db"], env["marks"]
    jid = jobs.enqueue(db, "steps", _payload(env, 5, 0.3), "term-2")
    w1 = _spawn(env, "w1", shutdown="finish")
    wait_for(lambda: (marks / f"{jid}-step-0").exists(), 60, "the job to run")
    w1.send_signal(signal.SIGTERM)
    assert w1.wait(timeout=30) == 0
    job = jobs.get_job(db, jid)
    assert job.status == "succeeded" and job.result["pid"] == w1.pid


def test_interactive_overtakes_queued_batch(env):
    db, marks = env["db"], env["marks"]
    b1 = jobs.enqueue(db, "steps", _payload(env, 6, 0.3), "b1", priority="batch")
    b2 = jobs.enqueue(db, "steps", _payload(env, 1, 0.0), "b2", priority="batch")
    b3 = jobs.enqueue(db, "steps", _payload(env, 1, 0.0), "b3", priority="batch")
    _spawn(env, "w1")
    wait_for(lambda: (marks / f"{b1}-started-1").exists(), 60, "the first batch job to start")
    i1 = jobs.enqueue(db, "steps", _payload(env, 1, 0.0), "i1", priority="interactive")
    assert jobs.queue_position(db, i1) == 1 and jobs.queue_position(db, b2) == 2
    wait_for(lambda: all(_status(env, j) == "succeeded" for j in (b1, b2, b3, i1)), 60, "all jobs")
    order = [int(x) for x in (marks / "order").read_text().split()]
    assert order == [b1, i1, b2, b3]


# ---- in-process worker: outcome mapping --------------------------------------------

def _inproc_worker(env, lease=5.0):
    return Worker(env["db"], env["blobs"], jobhandlers.factory(), "inproc", lease, 0.05,
                  retry=RetryPolicy(base_seconds=0.0))


def test_user_facing_error_fails_at_once_with_its_key(env):
    jid = jobs.enqueue(env["db"], "steps", _payload(env, 1, 0.0, user_error=True), "ue-1")
    _inproc_worker(env).run(exit_when_idle=True)
    job = jobs.get_job(env["db"], jid)
    assert job.status == "failed" and job.attempts == 1
    assert job.error_key == "test_bad_input" and "no face" in job.error


def test_crash_is_retried_then_succeeds_and_exhausted_retries_fail(env):
    db = env["db"]
    ok = jobs.enqueue(db, "steps", _payload(env, 1, 0.0, fail_until_attempt=3), "retry-ok", max_attempts=3)
    bad = jobs.enqueue(db, "steps", _payload(env, 1, 0.0, fail_until_attempt=9), "retry-bad", max_attempts=2)
    _inproc_worker(env).run(exit_when_idle=True)
    job_ok, job_bad = jobs.get_job(db, ok), jobs.get_job(db, bad)
    assert job_ok.status == "succeeded" and job_ok.attempts == 3
    assert job_bad.status == "failed" and job_bad.attempts == 2
    assert "planned failure on attempt 2" in job_bad.error and job_bad.error_key is None


def test_worker_rejects_bad_construction(env):
    with pytest.raises(ValueError, match="at least one job handler"):
        Worker(env["db"], env["blobs"], {}, "w")
    with pytest.raises(TypeError, match="not callable"):
        Worker(env["db"], env["blobs"], {"x": 3}, "w")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="heartbeat_interval"):
        Worker(env["db"], env["blobs"], jobhandlers.factory(), "w", 1.0, heartbeat_interval=2.0)


def test_outputs_of_a_running_job_survive_gc(env):
    """GC with a grace period shorter than the job: the heartbeat keeps the
    job's early output young until complete references it."""
    db = env["db"]
    jid = jobs.enqueue(db, "steps", _payload(env, 6, 0.5), "gc-1")
    w = Worker(db, env["blobs"], jobhandlers.factory(), "inproc", 1.2, 0.05, heartbeat_interval=0.3)

    t = threading.Thread(target=w.run, kwargs={"max_jobs": 1})
    t.start()
    try:
        wait_for(lambda: (env["marks"] / f"{jid}-step-3").exists(), 60, "the job to run for a while")
        assert env["blobs"].gc(grace_seconds=1.0).removed_blobs == 0  # partial blob is ~2 s old but touched
    finally:
        t.join(60)
    job = jobs.get_job(db, jid)
    assert job.status == "succeeded" and len(_refs(db, f"job:{jid}")) == 2


# ---- progress: rate limit and stop signals, with an injected clock ------------------

class ManualClock:
    """A monotonic clock the test moves by hand: the rate limit is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _scripted_worker(env, handler, clock):
    return Worker(env["db"], env["blobs"], {"scripted": handler}, "inproc", 30.0, 0.05, clock=clock,
                  retry=RetryPolicy(base_seconds=0.0))


def test_progress_is_written_on_a_new_stage_and_otherwise_at_most_once_per_interval(env):
    db, clock, seen = env["db"], ManualClock(), []
    assert PROGRESS_INTERVAL == 1.0

    def handler(job, ctx):
        for after, stage, fraction in [(0.0, "a", 0.1),   # first report: written
                                       (0.4, "a", 0.2),   # 0.4 s after the write: kept in memory
                                       (0.5, "a", 0.3),   # 0.9 s: still not
                                       (0.05, "b", 0.4),  # a new stage: written at once
                                       (0.99, "b", 0.5),  # 0.99 s: not
                                       (0.01, "b", 0.6),  # 1.0 s after the last write: written
                                       (0.2, "b", 0.7)]:
            clock.now += after
            ctx.progress(stage, fraction)
            row = jobs.get_job(db, job.id)
            seen.append((row.stage, row.progress))
        return {}

    jid = jobs.enqueue(db, "scripted", {}, "throttle-1")
    _scripted_worker(env, handler, clock).run(exit_when_idle=True)
    assert seen == [("a", 0.1), ("a", 0.1), ("a", 0.1), ("b", 0.4), ("b", 0.4), ("b", 0.6), ("b", 0.6)]
    assert jobs.get_job(db, jid).status == "succeeded"


def test_a_cancel_is_read_with_the_next_progress_write_and_ends_the_job_cancelled(env):
    db, clock, reached = env["db"], ManualClock(), []

    def handler(job, ctx):
        ctx.progress("stage", 0.1)
        jobs.cancel(db, job.id)  # as a bot would, while the job runs
        for i in range(5):
            clock.now += 0.45
            ctx.progress("stage", 0.2 + 0.1 * i)  # raises JobCancelled once a write is due (0.9 s < 1 s < 1.35 s)
            reached.append(i)
        ctx.put_blob(b"never written")
        return {}

    jid = jobs.enqueue(db, "scripted", {}, "throttle-cancel")
    _scripted_worker(env, handler, clock).run(exit_when_idle=True)
    job = jobs.get_job(db, jid)
    assert reached == [0, 1]
    assert job.status == "cancelled" and job.attempts == 1 and job.error is None
    assert job.progress == pytest.approx(0.4)  # written by the call that read the cancel; none after it
    assert _refs(db, f"job:{jid}") == [] and env["blobs"].stats()["unreferenced"] == 0


def test_shutdown_and_lost_lease_are_checked_at_every_progress_call(env):
    db, clock = env["db"], ManualClock()
    worker = None
    reached = []

    def handler(job, ctx):
        ctx.progress("stage", 0.1)
        worker.request_stop()  # SIGTERM's handler; no time passes, no write is due
        reached.append("before")
        ctx.progress("stage", 0.2)
        reached.append("after")
        return {}

    jid = jobs.enqueue(db, "scripted", {}, "throttle-stop")
    worker = _scripted_worker(env, handler, clock)
    worker.run(exit_when_idle=True)
    job = jobs.get_job(db, jid)
    assert reached == ["before"]
    assert job.status == "queued" and job.attempts == 0  # released for another worker, not failed


def test_check_cancelled_is_not_rate_limited(env):
    db, clock = env["db"], ManualClock()

    def handler(job, ctx):
        ctx.progress("stage", 0.1)
        jobs.cancel(db, job.id)
        with pytest.raises(JobCancelled):
            ctx.check_cancelled()
        raise JobCancelled("handler stops")

    jid = jobs.enqueue(db, "scripted", {}, "check-now")
    _scripted_worker(env, handler, clock).run(exit_when_idle=True)
    assert jobs.get_job(db, jid).status == "cancelled"



def test_deleting_the_user_mid_job_stops_it_and_removes_what_it_wrote_at_once(env):
    """Privacy: nothing the running job stored for a deleted user waits for the blob GC's grace period."""
    from storage import users

    db = env["db"]
    user = users.get_or_create_user(db, "telegram", "42")
    jid = jobs.enqueue(db, "steps", _payload(env, 200, 0.05), "their-job", user_id=user.id)
    _spawn(env, "w1", lease=5.0)
    wait_for(lambda: (env["marks"] / f"{jid}-step-2").exists(), 30, "the job to be running")
    partial = _sha(f"partial job={jid} attempt=1")
    assert BlobStore(db, env["root"]).exists(partial)
    users.delete_user(db, BlobStore(db, env["root"], gc_grace_seconds=3600), user.id)  # grace: no GC help
    wait_for(lambda: "stopped" in _logs(env) and "removed 1 stored file" in _logs(env), 30, "the worker to stop")
    assert not BlobStore(db, env["root"]).exists(partial)
    assert not (env["marks"] / f"{jid}-finished").exists()
    steps_done = len(list(env["marks"].glob(f"{jid}-step-*")))
    time.sleep(0.5)
    assert len(list(env["marks"].glob(f"{jid}-step-*"))) == steps_done  # it wrote nothing more


def test_a_full_disk_fails_the_job_once_and_names_the_path(env, tmp_path):
    """No retries burnt on a condition that will not change by itself; the operator sees where."""
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        db = env["db"]
        jid = jobs.enqueue(db, "steps", _payload(env, 1, 0.0, big_blob_bytes=1 << 20), "too-big")
        p = start_worker(env["url"], small / "blobs", "w1", env["logs"], lease=5.0)
        env["procs"].append(p)
        wait_for(lambda: _status(env, jid) == "failed", 60, "the job to fail")
        job = jobs.get_job(db, jid)
        assert job.attempts == 1 and job.error_key == "storage_full"
        assert "disk full writing" in _logs(env) and str(small / "blobs") in _logs(env)
    finally:
        stop(p)
        subprocess.run(["umount", str(small)], check=False)


def test_an_idle_worker_claims_a_job_enqueued_elsewhere_without_waiting_for_its_poll(env):
    # The worker polls only every 60 s; a claim within the 30 s allowed below was woken by the enqueue.
    started = []
    with JobWakeups(env["db"]) as wakeups:
        w = Worker(env["db"], env["blobs"], {"quick": lambda job, ctx: started.append(job.id) or {}}, "w-wake",
                   60.0, poll_interval=60.0, wakeups=wakeups)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        time.sleep(0.3)  # claimed nothing, waiting
        producer = open_database(env["url"])
        try:
            jid = jobs.enqueue(producer, "quick", {}, "wake-1")
            wait_for(lambda: _status(env, jid) == "succeeded", 30, "the idle worker to claim and run the job")
        finally:
            producer.dispose()
        w.request_stop()
        t.join(10)
        assert not t.is_alive()  # the stop ends the 60 s wait as well
    assert started == [jid]


class _InFlight:
    """Wraps a blob backend's ``write`` (the real write still happens) to count writes in flight."""

    def __init__(self, backend, hold_s: float) -> None:
        self.backend, self.hold_s, self.now, self.most = backend, hold_s, 0, 0
        self.lock = threading.Lock()
        self.original = backend.write
        backend.write = self.write

    def write(self, digest, source):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.hold_s)  # a round trip to a remote object store
            return self.original(digest, source)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("parallel_puts", [1, 8])
def test_a_pack_s_files_are_stored_at_once_in_order_and_become_the_job_s(env, parallel_puts):
    db, files = env["db"], [f"file {i}".encode() * 100 for i in range(12)]
    env["blobs"].parallel_puts = parallel_puts  # 1 is a folder on SQLite's default, 8 a network store's
    spy = _InFlight(env["blobs"].backend, 0.05)
    stored = []

    def handler(job, ctx):
        stored.extend(ctx.put_blobs(files))
        return {}

    jid = jobs.enqueue(db, "scripted", {}, "put-many")
    _scripted_worker(env, handler, ManualClock()).run(exit_when_idle=True)
    assert jobs.get_job(db, jid).status == "succeeded"
    assert [env["blobs"].read_bytes(d) for d in stored] == files  # the digests in the order given
    assert sorted(_refs(db, f"job:{jid}")) == sorted(stored)
    assert spy.most == parallel_puts


def test_a_cancel_while_storing_a_pack_s_files_keeps_none_of_them(env):
    db = env["db"]
    env["blobs"].parallel_puts = 8
    spy = _InFlight(env["blobs"].backend, 0.05)
    reached = []

    def cancel_once_writing(job_id):
        wait_for(lambda: spy.most > 0, 10, "the first write")
        jobs.cancel(db, job_id)  # as a bot would on /delete or /cancel

    def handler(job, ctx):
        threading.Thread(target=cancel_once_writing, args=(job.id,)).start()
        ctx.put_blobs([f"file {i}".encode() for i in range(40)])
        reached.append("after")
        return {}

    jid = jobs.enqueue(db, "scripted", {}, "put-many-cancel")
    _scripted_worker(env, handler, ManualClock()).run(exit_when_idle=True)
    assert jobs.get_job(db, jid).status == "cancelled" and reached == []
    assert _refs(db, f"job:{jid}") == []
    assert env["blobs"].stats()["blobs"] == 0  # what was written before the cancel landed is gone too
