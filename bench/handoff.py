"""The two hand-offs between the bot and the engine around every pack, before (timed polls) and now
(job wake-ups, storage.wakeups), side by side in one run.

    .venv/bin/python bench/handoff.py [--samples 8] [--poll 1.0] [--pg-url postgresql+psycopg://...]

* order -> start: the bot commits a job; the idle engine (the real ``engine.worker.Worker``) starts
  running it. Before, the engine looked every ``--poll`` seconds (config.toml's
  ``engine.poll_seconds``); now it waits on :class:`storage.wakeups.JobWakeups` (the poll stays as
  its longest wait).
* finish -> delivery: the engine commits the job's result; the bot's notifier (the real
  ``bots.notify.Notifier.run``) hands it to its sender's ``deliver``. Before, the notifier ticked
  every ``--poll`` seconds (the bots' ``poll_jobs_s``); now a commit wakes it.

Each side runs in its own thread with its own database handle (its own connections, as the separate
processes have). Every commit falls at a random moment of the waiting side's cycle. The time runs
from just before the committing call to the moment the other side acts; it includes the commit
(SQLite ``synchronous=FULL`` syncs the file). SQLite always; PostgreSQL with ``--pg-url`` or
EMOJI3D_TEST_PG_URL (its tables are dropped first: give a throw-away database).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/queue.py would shadow the stdlib's
sys.path.insert(0, os.path.dirname(_HERE))

from bots.core import BotResources  # noqa: E402
from bots.notify import Notifier  # noqa: E402
from emoji3d.config import Config  # noqa: E402
from engine.worker import Worker  # noqa: E402
from storage import jobs, users  # noqa: E402
from storage.blobs import BlobStore  # noqa: E402
from storage.db import open_database  # noqa: E402
from storage.wakeups import JobWakeups  # noqa: E402


def _until(cond, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError("the hand-off did not happen within 30 s")
        time.sleep(0.001)


def order_to_start(url: str, blob_root: str, samples: int, poll: float, wake: bool, rng: random.Random) -> list[float]:
    """Seconds from the bot's enqueue to the engine's handler starting, per sample."""
    engine_db, bot_db = open_database(url), open_database(url)
    started: dict[int, float] = {}

    def handler(job, ctx) -> dict:
        started[job.id] = time.perf_counter()
        return {}

    waiter = JobWakeups(engine_db) if wake else None
    worker = Worker(engine_db, BlobStore(engine_db, blob_root), {"bench": handler}, "bench-engine", 60.0,
                    poll_interval=poll, wakeups=waiter)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    out = []
    try:
        for i in range(samples):
            time.sleep(rng.uniform(0.05, poll + 0.05))  # anywhere in the engine's poll cycle
            t0 = time.perf_counter()
            jid = jobs.enqueue(bot_db, "bench", {}, f"start-{wake}-{i}-{rng.random()}")
            _until(lambda: jid in started)
            out.append(started[jid] - t0)
    finally:
        worker.request_stop()
        thread.join(10)
        if waiter is not None:
            waiter.close()
        engine_db.dispose()
        bot_db.dispose()
    return out


class _TimingSender:
    """Records when ``deliver`` is called; says nothing else."""

    def __init__(self) -> None:
        self.delivered: dict[int, float] = {}

    async def show_progress(self, watch, view) -> None:
        watch.message_id = watch.message_id or "1"

    async def deliver(self, watch, job) -> None:
        self.delivered[watch.job_id] = time.perf_counter()

    async def show_first_look(self, watch, png, stage) -> None:
        pass

    async def finish(self, watch, view) -> None:
        pass

    async def report_error(self, watch, err) -> None:
        pass


def finish_to_delivery(url: str, blob_root: str, samples: int, poll: float, wake: bool,
                       rng: random.Random) -> list[float]:
    """Seconds from the engine's ``complete`` to the notifier's ``deliver``, per sample."""
    bot_db, engine_db = open_database(url), open_database(url)
    res = BotResources(Config(), bot_db, BlobStore(bot_db, blob_root), face_check=None)  # no selfie is checked here
    sender = _TimingSender()
    notifier = Notifier(res, "telegram", sender, min_interval=0.0)
    user = users.get_or_create_user(bot_db, "telegram", "4242")
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(notifier.run(stop, poll, wake_on_changes=wake)),
                              daemon=True)
    thread.start()
    out = []
    try:
        for i in range(samples):
            jid = jobs.enqueue(engine_db, "bench_pack", {}, f"deliver-{wake}-{i}-{rng.random()}", user_id=user.id)
            job = jobs.claim(engine_db, "bench-engine", 60.0, kinds=["bench_pack"])
            loop.call_soon_threadsafe(notifier.watch, jid, None, user)
            time.sleep(rng.uniform(0.05, poll + 0.05))  # anywhere in the notifier's tick cycle
            t0 = time.perf_counter()
            jobs.complete(engine_db, jid, job.lease_token, {})
            _until(lambda: jid in sender.delivered)
            out.append(sender.delivered[jid] - t0)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
        engine_db.dispose()
        bot_db.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--poll", type=float, default=1.0, help="the poll interval, before and as the longest wait now")
    ap.add_argument("--pg-url", default=os.environ.get("EMOJI3D_TEST_PG_URL"))
    a = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        urls = [("SQLite", f"sqlite:///{tmp}/handoff.db")]
        if a.pg_url:
            from tests.conftest import reset_pg

            reset_pg(a.pg_url)
            urls.append(("PostgreSQL", a.pg_url))
        print(f"# Hand-offs between bot and engine, {a.samples} samples each, poll {a.poll:g} s\n")
        print("| database | hand-off | before: poll, median ms | max ms | now: wake-ups, median ms | max ms "
              "| median ratio |")
        print("|---|---|---:|---:|---:|---:|---:|")
        totals = {False: 0.0, True: 0.0}
        handoffs = (("order -> engine starts", order_to_start), ("finish -> notifier delivers", finish_to_delivery))
        for name, url in urls:
            for label, fn in handoffs:
                got = {wake: fn(url, f"{tmp}/blobs", a.samples, a.poll, wake, rng) for wake in (False, True)}
                med = {w: statistics.median(v) * 1e3 for w, v in got.items()}
                if name == "SQLite":
                    totals[False] += med[False]
                    totals[True] += med[True]
                print(f"| {name} | {label} | {med[False]:.0f} | {max(got[False]) * 1e3:.0f} | {med[True]:.1f} | "
                      f"{max(got[True]) * 1e3:.1f} | {med[False] / med[True]:.0f}x |")
        print(f"\nPer pack (SQLite, both hand-offs, medians): {totals[False]:.0f} ms before, "
              f"{totals[True]:.0f} ms now.")


if __name__ == "__main__":
    main()
