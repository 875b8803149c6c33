"""Head starts under load: what a selfie's speculative inversion costs the other users of one engine,
with head starts as ordinary interactive jobs (before) and as speculative jobs (now), side by side.

Usage::

    python bench/head_start_queue.py [--users 30] [--gap 80] [--think 10] [--order-share 0.7]
        [--runs 3] [--scale 0.02] [--model-runs 300]

Traffic (drawn from a seed; every policy gets the same draws): users arrive with exponential gaps of
mean ``--gap`` seconds; each sends a selfie, takes an exponential ``--think`` seconds to pick a style
and a strength, and then orders with probability ``--order-share`` (the others leave without
ordering). Policies:

* ``no head start``: the order inverts the photo itself (``[engine] head_start = false``);
* ``head start, interactive``: the head start is an ordinary interactive job, first come first served
  (how the previous version enqueued it);
* ``head start, speculative``: as ``bots.head_starts`` enqueues it now: within the priority, engines
  take the waiting orders first.

Measured (first table): one real engine (``engine.worker.Worker`` with ``storage.wakeups.JobWakeups``)
on a SQLite database, the real producer calls (``bots.head_starts.enqueue`` and ``drop_untaken``, the
job queue) and the real job kinds, for ``--runs`` traffic draws (seeds 0..). The handlers are
stand-ins that hold the engine for the time the work takes, in slices with a progress report after
each (so cancels land where they do in the engine): 46.5 s for an order, 20.8 s for a head start,
25.7 s for an order whose head start finished (the H200 projection of ``bench/head_start.py``).
Every time is multiplied by ``--scale`` so a run takes under a minute, and printed unscaled.

The measured table's last column is the model (below) on the same draws: it checks the model.

Modelled (second table, not measured): the same queue as a discrete-event model, averaged over
``--model-runs`` draws, where the measured runs are too few to tell policies apart. It also models a
policy that was built, measured on three draws, and dropped: a running head start yielding its engine
(released, its work lost) to another user's order that waited 2 s, always or only in its first half.

Printed per policy: order to made pack (what a user waits after pressing the strength button), mean,
p50 and p95 over the orders of all runs; selfie to made pack p50; the engine's time on head starts
that an order used and that none used (per run).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]  # bench/queue.py
sys.path.insert(0, str(REPO))

ORDER_S = 46.5              # an order on the H200, selfie to pack, the style cached
HEAD_START_S = 20.8         # its stages 1, 3 and 4
AFTER_HEAD_START_S = ORDER_S - HEAD_START_S
SLICE_S = 0.5               # engine seconds between two progress reports (unscaled)
NONE, INTERACTIVE, SPECULATIVE = "no head start", "head start, interactive", "head start, speculative"
MEASURED = (NONE, INTERACTIVE, SPECULATIVE)
YIELDS, YIELDS_EARLY = "speculative, yields (dropped)", "speculative, yields in its first half (dropped)"
YIELD_AFTER_S = 2.0         # the dropped policy's wait before a head start yielded


@dataclass(frozen=True)
class Visit:
    user: int                # 0-based
    selfie_at: float         # seconds from the start, unscaled
    order_at: float | None   # None: leaves without ordering


def traffic(users: int, gap: float, think: float, order_share: float, seed: int) -> list[Visit]:
    rng = random.Random(seed)
    t, visits = 0.0, []
    for u in range(users):
        t += rng.expovariate(1 / gap)
        choice = rng.expovariate(1 / think)
        visits.append(Visit(u, t, t + choice if rng.random() < order_share else None))
    return visits


@dataclass
class Outcome:
    """One run of one policy, unscaled seconds."""

    waits: list[float] = field(default_factory=list)           # order -> made pack, per order
    selfie_to_pack: list[float] = field(default_factory=list)  # selfie -> made pack, per order
    used_s: float = 0.0      # head starts an order used
    unused_s: float = 0.0    # head starts no order used


# ---- measured: the real engine and queue, stand-in work -------------------------------------------

def _hold(ctx, stage: str, seconds: float, scale: float) -> None:
    """Hold the engine for ``seconds`` (scaled) in slices, reporting progress after each. Each slice
    ends at its own deadline from the start, so the reports' database writes do not add up."""
    steps, start = max(1, round(seconds / SLICE_S)), time.monotonic()
    for i in range(steps):
        time.sleep(max(0.0, start + seconds * scale * (i + 1) / steps - time.monotonic()))
        ctx.progress(stage, (i + 1) / steps)


def _handlers(prepared: set[int], scale: float) -> dict:
    """Stand-ins under the real kinds. ``prepared``: the users (database ids) whose head start finished."""
    from emoji3d import orders

    def prepare(job, ctx) -> dict:
        _hold(ctx, "invert_3d", HEAD_START_S, scale)
        prepared.add(job.user_id)
        return {"prepared": True}

    def make(job, ctx) -> dict:
        _hold(ctx, "dual_branch", AFTER_HEAD_START_S if job.user_id in prepared else ORDER_S, scale)
        return {}

    return {orders.JOB_KIND: make, orders.PREPARE_KIND: prepare}


def run_measured(policy: str, visits: list[Visit], scale: float, folder: Path) -> Outcome:
    from bots import head_starts
    from emoji3d import orders
    from engine.worker import PROGRESS_INTERVAL, Worker
    from storage import jobs, users
    from storage.blobs import BlobStore
    from storage.db import open_database
    from storage.wakeups import JobWakeups

    db = open_database(f"sqlite:///{folder / 'emoji3d.db'}")
    ids = [users.get_or_create_user(db, "telegram", str(v.user)).id for v in visits]
    prepared: set[int] = set()
    wakeups = JobWakeups(db)
    worker = Worker(db, BlobStore(db, folder / "blobs"), _handlers(prepared, scale), "bench-engine", 3600.0,
                    poll_interval=1.0, progress_interval=PROGRESS_INTERVAL * scale, wakeups=wakeups)
    engine = threading.Thread(target=worker.run, name="engine", daemon=True)
    engine.start()

    events = sorted([(v.selfie_at, "selfie", v) for v in visits]
                    + [(v.order_at, "order", v) for v in visits if v.order_at is not None], key=lambda e: e[0])
    order_jobs: dict[int, int] = {}
    t0 = time.time()
    for at, what, v in events:
        time.sleep(max(0.0, t0 + at * scale - time.time()))
        uid, digest = ids[v.user], f"{v.user:064x}"
        if what == "selfie" and policy == SPECULATIVE:
            head_starts.enqueue(db, uid, digest, seed=0)
        elif what == "selfie" and policy == INTERACTIVE:  # the previous version's enqueue
            prep = orders.PortraitPrep(uid, digest, 0)
            jobs.enqueue(db, orders.PREPARE_KIND, prep.to_payload(), prep.idempotency_key(), user_id=uid)
        elif what == "order":
            head_starts.drop_untaken(db, uid)
            order_jobs[v.user] = jobs.enqueue(db, orders.JOB_KIND, {}, f"order-{v.user}", user_id=uid)
    deadline = time.time() + 3 * len(visits) * ORDER_S * scale + 30
    while any(jobs.get_job(db, j).status != "succeeded" for j in order_jobs.values()):
        if time.time() > deadline:
            raise SystemExit(f"{policy}: the orders did not all finish in time")
        time.sleep(0.05)
    worker.request_stop()
    engine.join(60)
    wakeups.close()

    out = Outcome()
    for v in visits:
        if v.user in order_jobs:
            done = (jobs.get_job(db, order_jobs[v.user]).finished_at - t0) / scale
            out.waits.append(done - v.order_at)
            out.selfie_to_pack.append(done - v.selfie_at)
        if ids[v.user] in prepared:
            if v.user in order_jobs:
                out.used_s += HEAD_START_S
            else:
                out.unused_s += HEAD_START_S
    db.dispose()
    return out


# ---- modelled: the same queue as discrete events --------------------------------------------------

@dataclass
class _Queued:
    speculative: bool
    seq: int
    kind: str           # "order" or "head start"
    user: int
    since: float        # when it became eligible

    def claim_order(self) -> tuple[bool, int]:
        return self.speculative, self.seq


def run_model(policy: str, visits: list[Visit]) -> Outcome:
    """One engine, one job at a time, the queue's claim order; no database, no clock."""
    events = sorted([(v.selfie_at, 0, v.user) for v in visits]
                    + [(v.order_at, 1, v.user) for v in visits if v.order_at is not None])
    order_at = {v.user: v.order_at for v in visits}
    selfie_at = {v.user: v.selfie_at for v in visits}
    queue: list[_Queued] = []
    running: tuple[_Queued, float, float] | None = None  # job, start, end
    prepared: set[int] = set()
    out, seq, i, now = Outcome(), 0, 0, 0.0
    while i < len(events) or queue or running:
        next_event = events[i][0] if i < len(events) else float("inf")
        next_end = running[2] if running else float("inf")
        next_yield = float("inf")
        if running and running[0].kind == "head start" and policy in (YIELDS, YIELDS_EARLY):
            waiting = [q.since for q in queue if q.kind == "order" and q.user != running[0].user]
            if waiting:
                at = max(min(waiting) + YIELD_AFTER_S, now)
                if policy == YIELDS or at - running[1] < HEAD_START_S / 2:
                    next_yield = at
        now = min(next_event, next_end, next_yield)
        if running and now == next_end:
            job = running[0]
            running = None
            if job.kind == "head start":
                prepared.add(job.user)
                if order_at[job.user] is None:
                    out.unused_s += HEAD_START_S
                else:
                    out.used_s += HEAD_START_S
            else:
                out.waits.append(now - order_at[job.user])
                out.selfie_to_pack.append(now - selfie_at[job.user])
        elif running and now == next_yield:
            seq += 1
            queue.append(_Queued(True, seq, "head start", running[0].user, now))
            running = None
        else:
            _, is_order, user = events[i]
            i += 1
            seq += 1
            if is_order:
                queue = [q for q in queue if not (q.kind == "head start" and q.user == user)]  # drop_untaken
                queue.append(_Queued(False, seq, "order", user, now))
            elif policy != NONE:
                queue.append(_Queued(policy != INTERACTIVE, seq, "head start", user, now))
        if running is None and queue:
            job = min(queue, key=_Queued.claim_order)
            queue.remove(job)
            took = HEAD_START_S if job.kind == "head start" else (
                AFTER_HEAD_START_S if job.user in prepared else ORDER_S)
            running = (job, now, now + took)
    return out


# ---- report -----------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def table(results: dict[str, list[Outcome]], check: dict[str, list[Outcome]] | None = None) -> list[str]:
    """One row per policy; ``check``: the model on the same draws, as a last column."""
    extra = (" model, same draws: mean s |", "---:|") if check else ("", "")
    lines = ["| policy | order to pack mean s | p50 s | p95 s | selfie to pack p50 s | head starts used s "
             "| never used s |" + extra[0], "|---|---:|---:|---:|---:|---:|---:|" + extra[1]]
    for policy, runs in results.items():
        w = [x for r in runs for x in r.waits]
        s2p = [x for r in runs for x in r.selfie_to_pack]
        row = (f"| {policy} | {statistics.mean(w):.1f} | {statistics.median(w):.1f} | "
               f"{percentile(w, 0.95):.1f} | {statistics.median(s2p):.1f} | "
               f"{statistics.mean(r.used_s for r in runs):.0f} | {statistics.mean(r.unused_s for r in runs):.0f} |")
        if check:
            row += f" {statistics.mean(x for r in check[policy] for x in r.waits):.1f} |"
        lines.append(row)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--gap", type=float, default=80.0, help="mean seconds between two users' selfies")
    ap.add_argument("--think", type=float, default=10.0, help="mean seconds a user takes to choose")
    ap.add_argument("--order-share", type=float, default=0.7, help="share of users who order")
    ap.add_argument("--runs", type=int, default=3, help="measured traffic draws (seeds 0..runs-1); 0: the model only")
    ap.add_argument("--scale", type=float, default=0.02, help="real seconds per modelled second")
    ap.add_argument("--model-runs", type=int, default=300, help="modelled traffic draws")
    a = ap.parse_args(argv)
    draws = [traffic(a.users, a.gap, a.think, a.order_share, seed) for seed in range(max(a.runs, a.model_runs))]
    if not all(any(v.order_at is not None for v in d) for d in draws[:a.runs]):
        raise SystemExit("a measured draw has no order: raise --order-share or --users")

    measured: dict[str, list[Outcome]] = {p: [] for p in MEASURED}
    for d in draws[:a.runs]:
        for policy in MEASURED:  # alternating, so every policy sees the machine's same moments
            with tempfile.TemporaryDirectory() as tmp:
                measured[policy].append(run_measured(policy, d, a.scale, Path(tmp)))
    modelled = {p: [run_model(p, d) for d in draws[:a.model_runs] if any(v.order_at is not None for v in d)]
                for p in (*MEASURED, YIELDS, YIELDS_EARLY)}

    load = a.order_share * ORDER_S / a.gap
    print(f"# Head starts under load: one engine, {a.users} users per run, a selfie every {a.gap:g} s and "
          f"{a.think:g} s to choose on average, {a.order_share:.0%} order; the engine's load from orders "
          f"alone {load:.2f}")
    print()
    print(f"Engine times (the H200 projection): order {ORDER_S} s, head start {HEAD_START_S} s, order after its "
          f"head start {AFTER_HEAD_START_S:.1f} s.")
    print()
    if a.runs:
        print(f"## Measured: the real engine and queue, {a.runs} draws, run at {a.scale:g} real s per s, unscaled")
        print()
        print("\n".join(table(measured, {p: [run_model(p, d) for d in draws[:a.runs]] for p in MEASURED})))
        print()
    print(f"## Modelled (not measured): the same queue as discrete events, {a.model_runs} draws")
    print()
    print("\n".join(table(modelled)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
