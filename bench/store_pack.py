"""Storing a made pack's files as the engine's job outputs: one at a time (before) and
``BlobStore.parallel_puts`` at a time (now, ``JobContext.put_blobs``), side by side in one run.

    .venv/bin/python bench/store_pack.py [--repeat 3] [--delay-ms 5]

A Telegram pack's files at the sizes README's "Stored bytes" table gives: 7 video stickers
(70 KB) and 7 custom emoji (25 KB), a thumbnail, a preview PNG, 3 stills and the avatar file
(12.9 MB), 20 files, fresh random bytes for every run (a blob already stored is not written again).
Every put does what the engine's does: a cancel check (one database read), the object store's
size check, the write, the blob row, and the size check again.

Where the files go:

* ``local``: SQLite and the blob folder on this machine (the embedded default);
* ``remote``: PostgreSQL and an S3 server (SeaweedFS, both started here, tests/servers.py) behind
  links that hold every chunk ``--delay-ms`` each way (tests/fakes/slow_link.py), as the engines
  beyond one machine reach them over a network. Skipped, with the reason, where the servers'
  binaries are missing.

It prints the median seconds of ``--repeat`` runs each way and their ratio; for the local store also
with 8 puts at once, which it does not use (its default is 1).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/queue.py would shadow the stdlib's
sys.path.insert(0, os.path.dirname(_HERE))

from engine.worker import JobContext  # noqa: E402
from storage import jobs  # noqa: E402
from storage.blobs import BlobStore  # noqa: E402
from storage.db import open_database  # noqa: E402

KB = 1024
PACK = ([70 * KB] * 7 + [25 * KB] * 7 + [20 * KB, 150 * KB] + [60 * KB] * 3 + [12_900 * KB])


def pack_files() -> list[bytes]:
    return [os.urandom(n) for n in PACK]


def job_context(db, blobs) -> JobContext:
    jobs.enqueue(db, "bench", {}, uuid.uuid4().hex)
    job = jobs.claim(db, "bench-engine", 600.0, kinds=["bench"])
    return JobContext(job, db, blobs, job.lease_token, threading.Event(), threading.Event(), True)


def time_stores(db, blobs, repeat: int) -> dict[str, float]:
    """Median seconds to store a pack's files, one at a time (before) and ``put_blobs`` (now)."""
    runs: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(repeat):
        for way in runs:
            ctx, files = job_context(db, blobs), pack_files()
            t0 = time.perf_counter()
            digests = [ctx.put_blob(f) for f in files] if way == "before" else ctx.put_blobs(files)
            runs[way].append(time.perf_counter() - t0)
            assert len(set(digests)) == len(files)
    return {way: statistics.median(v) for way, v in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=5.0, help="one-way delay to the remote host")
    ap.add_argument("--local-only", action="store_true")
    a = ap.parse_args()
    print(f"# Storing a Telegram pack's {len(PACK)} files ({sum(PACK) / 1e6:.1f} MB), median of {a.repeat}\n")
    print("| where | puts at once now | before: one at a time, s | now, s | ratio |")
    print("|---|---:|---:|---:|---:|")

    def row(where: str, blobs: BlobStore) -> None:
        got = time_stores(blobs.db, blobs, a.repeat)
        print(f"| {where} | {blobs.parallel_puts} | {got['before']:.3f} | {got['now']:.3f} | "
              f"{got['before'] / got['now']:.2f}x |")

    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(f"sqlite:///{tmp}/store.db")
        row("local: SQLite + blob folder", BlobStore(db, f"{tmp}/blobs"))
        row("local, forced to 8 at once (not the default)", BlobStore(db, f"{tmp}/blobs", parallel_puts=8))
        db.dispose()
        if a.local_only:
            return
        from tests.servers import remote_storage

        with contextlib.ExitStack() as stack:
            try:
                db_url, location = stack.enter_context(remote_storage(a.delay_ms / 1e3))
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                print(f"\nremote: skipped ({exc})")
                return
            db = open_database(db_url)
            row(f"remote: PostgreSQL + S3, {a.delay_ms:g} ms each way", BlobStore(db, location))
            db.dispose()


if __name__ == "__main__":
    main()
