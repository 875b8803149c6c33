"""What a pack job reads of its cached artifacts, before and now, side by side in one run.

    .venv/bin/python bench/artifact_reads.py [--jobs 3] [--delay-ms 5] [--rate-mbit 1000]

A job for a house style whose finetune is cached, at full size: the style's ``style_2d`` artifact is
114 MB (w_e and the fp32 2D delta of StyleGAN2-1024's synthesis network), the selfie's
``portrait_3d`` 9 MB.

* before: the pipeline read the style's artifact from the blob store (``Pipeline.stylize_2d``), and
  the avatar file read both artifacts again to hash them (``avatar_file._ref``): 237 MB per job;
* now: the style's artifact comes from the engine's memory after the first job of the style
  (``engine.blob_memo.BlobMemo``, through ``engine.tasks.BlobArtifactCache``), and the avatar file
  takes both digests from the artifacts table (``BlobArtifactCache.digest``, which ``avatar_file``'s
  references call): no bytes.

Where the artifacts are:

* ``local``: SQLite and the blob folder on this machine (the embedded default; the files are in the
  page cache, as on an engine that just wrote them);
* ``remote``: PostgreSQL and an S3 server started by the bench (tests/servers.py ``remote_storage``),
  behind links holding every chunk ``--delay-ms`` each way and carrying ``--rate-mbit`` per
  connection and direction (tests/fakes/slow_link.py), as engines beyond one machine reach them.

It prints the median seconds per job of ``--jobs`` jobs after a first one (which fills the memory)
each way, and the ratio. The bytes read are checked: the same digests either way.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/queue.py would shadow the stdlib's
sys.path.insert(0, os.path.dirname(_HERE))

from bench.store_pack import job_context  # noqa: E402
from engine.blob_memo import BlobMemo  # noqa: E402
from engine.tasks import BlobArtifactCache  # noqa: E402
from storage import users  # noqa: E402
from storage.blobs import BlobStore  # noqa: E402
from storage.db import open_database  # noqa: E402

MB = 1 << 20
STYLE_BYTES = 28_500_000 * 4 + 18 * 512 * 4  # the fp32 2D delta and w_e
PORTRAIT_BYTES = 9 * MB


def job_before(cache: BlobArtifactCache) -> list[str]:
    """The reads of a job as they were: the style for the pipeline, then both again for their hashes."""
    assert cache.get("style_2d", "house") is not None
    return [hashlib.sha256(cache.get(kind, key)).hexdigest() for kind, key in
            (("style_2d", "house"), ("portrait_3d", "selfie"))]


def job_now(cache: BlobArtifactCache) -> list[str]:
    assert cache.get("style_2d", "house") is not None
    return [cache.digest(kind, key) for kind, key in (("style_2d", "house"), ("portrait_3d", "selfie"))]


def time_jobs(blobs: BlobStore, jobs: int, memo_bytes: int) -> dict[str, float]:
    db = blobs.db
    user = users.get_or_create_user(db, "telegram", "bench")
    seed = job_context(db, blobs)
    BlobArtifactCache(seed, None, shared_style=True).put("style_2d", "house", os.urandom(STYLE_BYTES))
    BlobArtifactCache(seed, user.id, shared_style=True).put("portrait_3d", "selfie", os.urandom(PORTRAIT_BYTES))
    out, digests = {}, {}
    for way, job, memo in (("before", job_before, BlobMemo(0)), ("now", job_now, BlobMemo(memo_bytes))):
        times = []
        for i in range(jobs + 1):
            cache = BlobArtifactCache(job_context(db, blobs), user.id, shared_style=True, memo=memo)
            t0 = time.perf_counter()
            digests[way] = job(cache)
            if i:  # the first job of the style fills the memory; the others are what the style's users see
                times.append(time.perf_counter() - t0)
        out[way] = statistics.median(times)
    assert digests["before"] == digests["now"], digests
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=5.0, help="one-way delay to the remote host")
    ap.add_argument("--rate-mbit", type=float, default=1000.0, help="the remote links' rate per connection")
    ap.add_argument("--local-only", action="store_true")
    a = ap.parse_args()
    memo_bytes = 512 * MB  # [engine] shared_artifact_cache_mb's default
    print(f"# A house style's job: its cached artifacts read ({STYLE_BYTES / 1e6:.0f} MB style, "
          f"{PORTRAIT_BYTES / 1e6:.0f} MB portrait), median of {a.jobs} jobs\n")
    print("| where | before: s per job | now: s per job | ratio |")
    print("|---|---:|---:|---:|")

    def row(where: str, blobs: BlobStore) -> None:
        got = time_jobs(blobs, a.jobs, memo_bytes)
        print(f"| {where} | {got['before']:.3f} | {got['now']:.4f} | {got['before'] / got['now']:.0f}x |")

    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(f"sqlite:///{tmp}/reads.db")
        row("local: SQLite + blob folder", BlobStore(db, f"{tmp}/blobs", max_bytes=256 * MB))
        db.dispose()
    if a.local_only:
        return
    from tests.servers import remote_storage

    with contextlib.ExitStack() as stack:
        try:
            db_url, location = stack.enter_context(remote_storage(a.delay_ms / 1e3, a.rate_mbit * 1e6 / 8))
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            print(f"\nremote: skipped ({exc})")
            return
        db = open_database(db_url)
        row(f"remote: PostgreSQL + S3, {a.delay_ms:g} ms each way, {a.rate_mbit:g} Mbit/s",
            BlobStore(db, location, max_bytes=256 * MB))
        db.dispose()


if __name__ == "__main__":
    main()
