"""Head starts under load: what a selfie's speculative inversion costs the other users of one engine,
with head starts as ordinary interactive jobs (before) and as speculative jobs (now), side by side.

Usage::

    python bench/head_start_queue.py [--users 30] [--gap 80] [--think 10] [--order-share 0.7]
        [--runs 3] [--scale 0.02] [--model-runs 300] [--engines 1]

Traffic (drawn from a seed; every policy gets the same draws): users arrive with exponential gaps of
mean ``--gap`` seconds; each sends a selfie, takes an exponential ``--think`` seconds to pick a style
and a strength, and then orders with probability ``--order-share`` (the others leave without
ordering). Policies:

* ``no head start``: the order inverts the photo itself (``[engine] head_start = false``);
* ``head start, interactive``: the head start is an ordinary interactive job, first come first served
  (how the previous version enqueued it);
* ``head start, speculative``: as ``bots.head_starts`` enqueues it now: within the priority, engines
  take the waiting orders first; and an order placed while its head start runs waits for it in the
  queue (``jobs.waits_for``), not on an engine;
* with ``--engines`` 2 or more, also ``head start, speculative; its order waits on an engine``: the
  same without ``waits_for``, as before, where an engine takes the order and waits there for its
  head start (``engine.tasks.await_preparation``, now the fall-back).

Measured (first table): ``--engines`` real engines (``engine.worker.Worker`` threads, each with its
``storage.wakeups.JobWakeups``) on a SQLite database, the real producer calls
(``bots.head_starts.enqueue`` and ``drop_untaken``, the job queue) and the real job kinds, for
``--runs`` traffic draws (seeds 0..). The handlers are stand-ins that hold the engine for the time
the work takes, in slices with a progress report after each (so cancels land where they do in the
engine), an order first waiting for its user's running head start as
``engine.tasks.await_preparation`` does: 46.5 s for an order, 20.8 s for a head start, 25.7 s for
an order whose head start finished (the H200 projection of ``bench/head_start.py``).
Every time is multiplied by ``--scale`` so a run takes under a minute, and printed unscaled.

The measured table's last column is the model (below) on the same draws: it checks the model.

Modelled (second table, not measured): the same queue as a discrete-event model, averaged over
``--model-runs`` draws, where the measured runs are too few to tell policies apart. It also models a
policy that was built, measured on three draws, and dropped (one engine only): a running head start
yielding its engine (released, its work lost) to another user's order that waited 2 s, always or only
in its first half.

Printed per policy: order to made pack (what a user waits after pressing the strength button), mean,
p50 and p95 over the orders of all runs; selfie to made pack p50; the engines' time on head starts
that an order used and that none used, and held by orders waiting for their head start (per run).
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
ENGINE_WAIT = "head start, speculative; its order waits on an engine"
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
    held_s: float = 0.0      # engine time orders spent waiting, on an engine, for their running head start


def policies(engines: int) -> tuple[str, ...]:
    """The measured policies. An order waiting for its head start on an engine (the previous version,
    and the engines' fall-back) differs from waiting in the queue only where another engine could
    take it; yielding was modelled for one engine."""
    return (NONE, INTERACTIVE, *((ENGINE_WAIT,) if engines > 1 else ()), SPECULATIVE)


def modelled_policies(engines: int) -> tuple[str, ...]:
    return (*policies(engines), *((YIELDS, YIELDS_EARLY) if engines == 1 else ()))


# ---- measured: the real engine and queue, stand-in work -------------------------------------------

def _hold(ctx, stage: str, seconds: float, scale: float) -> None:
    """Hold the engine for ``seconds`` (scaled) in slices, reporting progress after each. Each slice
    ends at its own deadline from the start, so the reports' database writes do not add up."""
    steps, start = max(1, round(seconds / SLICE_S)), time.monotonic()
    for i in range(steps):
        time.sleep(max(0.0, start + seconds * scale * (i + 1) / steps - time.monotonic()))
        ctx.progress(stage, (i + 1) / steps)


def _handlers(prepared: set[int], head_start_of: dict[int, int], out: Outcome, scale: float) -> dict:
    """Stand-ins under the real kinds. ``prepared``: the users (database ids) whose head start finished;
    ``head_start_of``: user -> their head start's job id. An order whose head start runs on another
    engine waits for it there, polling as ``engine.tasks.await_preparation`` does."""
    from emoji3d import orders
    from storage import jobs

    lock = threading.Lock()

    def prepare(job, ctx) -> dict:
        _hold(ctx, "invert_3d", HEAD_START_S, scale)
        with lock:
            prepared.add(job.user_id)
        return {"prepared": True}

    def make(job, ctx) -> dict:
        began = time.monotonic()
        prep = head_start_of.get(job.user_id)
        while prep is not None and jobs.job_status(ctx.db, prep) == "running":
            time.sleep(0.1 * scale)
            ctx.progress("invert_3d", 0.1)
        with lock:
            out.held_s += (time.monotonic() - began) / scale
            ready = job.user_id in prepared
        _hold(ctx, "dual_branch", AFTER_HEAD_START_S if ready else ORDER_S, scale)
        return {}

    return {orders.JOB_KIND: make, orders.PREPARE_KIND: prepare}


def run_measured(policy: str, visits: list[Visit], scale: float, folder: Path, engines: int = 1) -> Outcome:
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
    head_start_of: dict[int, int] = {}
    out = Outcome()
    handlers = _handlers(prepared, head_start_of, out, scale)
    workers, threads = [], []
    for n in range(engines):
        wakeups = JobWakeups(db)
        workers.append((Worker(db, BlobStore(db, folder / "blobs"), handlers, f"bench-engine-{n}", 3600.0,
                               poll_interval=1.0, progress_interval=PROGRESS_INTERVAL * scale, wakeups=wakeups),
                        wakeups))
        threads.append(threading.Thread(target=workers[-1][0].run, name=f"engine-{n}", daemon=True))
        threads[-1].start()

    events = sorted([(v.selfie_at, "selfie", v) for v in visits]
                    + [(v.order_at, "order", v) for v in visits if v.order_at is not None], key=lambda e: e[0])
    order_jobs: dict[int, int] = {}
    t0 = time.time()
    for at, what, v in events:
        time.sleep(max(0.0, t0 + at * scale - time.time()))
        uid, digest = ids[v.user], f"{v.user:064x}"
        prep = orders.PortraitPrep(uid, digest, 0)
        if what == "selfie" and policy in (SPECULATIVE, ENGINE_WAIT):
            head_start_of[uid] = head_starts.enqueue(db, uid, digest, seed=0)
        elif what == "selfie" and policy == INTERACTIVE:  # the previous version's enqueue
            head_start_of[uid] = jobs.enqueue(db, orders.PREPARE_KIND, prep.to_payload(), prep.idempotency_key(),
                                              user_id=uid)
        elif what == "order":
            running = jobs.find_by_key(db, prep.idempotency_key())  # as bots.head_starts.running_for_order
            waits_for = running.id if policy == SPECULATIVE and running and running.status == "running" else None
            order_jobs[v.user] = jobs.enqueue(db, orders.JOB_KIND, {}, f"order-{v.user}", user_id=uid,
                                              waits_for=waits_for)
            head_starts.drop_untaken(db, uid)
    deadline = time.time() + 3 * len(visits) * ORDER_S * scale + 30
    while any(jobs.get_job(db, j).status != "succeeded" for j in order_jobs.values()):
        if time.time() > deadline:
            raise SystemExit(f"{policy}: the orders did not all finish in time")
        time.sleep(0.05)
    for worker, wakeups in workers:
        worker.request_stop()
    for thread in threads:
        thread.join(60)
    for worker, wakeups in workers:
        wakeups.close()

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


@dataclass
class _Running:
    job: _Queued
    start: float
    end: float


def run_model(policy: str, visits: list[Visit], engines: int = 1) -> Outcome:
    """``engines`` engines, one job at a time each, the queue's claim order; no database, no clock."""
    events = sorted([(v.selfie_at, 0, v.user) for v in visits]
                    + [(v.order_at, 1, v.user) for v in visits if v.order_at is not None])
    order_at = {v.user: v.order_at for v in visits}
    selfie_at = {v.user: v.selfie_at for v in visits}
    queue: list[_Queued] = []
    running: list[_Running] = []
    head_start_ends: dict[int, float] = {}  # user -> when their running head start ends
    prepared: set[int] = set()
    out, seq, i, now = Outcome(), 0, 0, 0.0

    def held(q: _Queued) -> bool:  # an order waiting in the queue for its running head start
        return policy == SPECULATIVE and q.kind == "order" and q.user in head_start_ends

    while i < len(events) or queue or running:
        next_event = events[i][0] if i < len(events) else float("inf")
        next_end = min((r.end for r in running), default=float("inf"))
        next_yield = float("inf")
        if engines == 1 and running and running[0].job.kind == "head start" and policy in (YIELDS, YIELDS_EARLY):
            waiting = [q.since for q in queue if q.kind == "order" and q.user != running[0].job.user]
            if waiting:
                at = max(min(waiting) + YIELD_AFTER_S, now)
                if policy == YIELDS or at - running[0].start < HEAD_START_S / 2:
                    next_yield = at
        now = min(next_event, next_end, next_yield)
        if now == next_end:
            done = next(r for r in running if r.end == now)
            running.remove(done)
            user = done.job.user
            if done.job.kind == "head start":
                prepared.add(user)
                del head_start_ends[user]
                if order_at[user] is None:
                    out.unused_s += HEAD_START_S
                else:
                    out.used_s += HEAD_START_S
            else:
                out.waits.append(now - order_at[user])
                out.selfie_to_pack.append(now - selfie_at[user])
        elif now == next_yield:
            seq += 1
            user = running[0].job.user
            queue.append(_Queued(True, seq, "head start", user, now))
            del head_start_ends[user]
            running.clear()
        else:
            _, is_order, user = events[i]
            i += 1
            seq += 1
            if is_order:
                queue = [q for q in queue if not (q.kind == "head start" and q.user == user)]  # drop_untaken
                queue.append(_Queued(False, seq, "order", user, now))
            elif policy != NONE:
                queue.append(_Queued(policy != INTERACTIVE, seq, "head start", user, now))
        while len(running) < engines and (claimable := [q for q in queue if not held(q)]):
            job = min(claimable, key=_Queued.claim_order)
            queue.remove(job)
            if job.kind == "head start":
                head_start_ends[job.user] = end = now + HEAD_START_S
            elif job.user in head_start_ends:  # taken while its head start runs elsewhere: waits on its engine
                out.held_s += head_start_ends[job.user] - now
                end = head_start_ends[job.user] + AFTER_HEAD_START_S
            else:
                end = now + (AFTER_HEAD_START_S if job.user in prepared else ORDER_S)
            running.append(_Running(job, now, end))
    return out


# ---- report -----------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def table(results: dict[str, list[Outcome]], check: dict[str, list[Outcome]] | None = None) -> list[str]:
    """One row per policy; ``check``: the model on the same draws, as a last column."""
    extra = (" model, same draws: mean s |", "---:|") if check else ("", "")
    lines = ["| policy | order to pack mean s | p50 s | p95 s | selfie to pack p50 s | head starts used s "
             "| never used s | engines held by waiting orders s |" + extra[0],
             "|---|---:|---:|---:|---:|---:|---:|---:|" + extra[1]]
    for policy, runs in results.items():
        w = [x for r in runs for x in r.waits]
        s2p = [x for r in runs for x in r.selfie_to_pack]
        row = (f"| {policy} | {statistics.mean(w):.1f} | {statistics.median(w):.1f} | "
               f"{percentile(w, 0.95):.1f} | {statistics.median(s2p):.1f} | "
               f"{statistics.mean(r.used_s for r in runs):.0f} | {statistics.mean(r.unused_s for r in runs):.0f} | "
               f"{statistics.mean(r.held_s for r in runs):.0f} |")
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
    ap.add_argument("--engines", type=int, default=1, help="engines sharing the queue")
    a = ap.parse_args(argv)
    draws = [traffic(a.users, a.gap, a.think, a.order_share, seed) for seed in range(max(a.runs, a.model_runs))]
    if not all(any(v.order_at is not None for v in d) for d in draws[:a.runs]):
        raise SystemExit("a measured draw has no order: raise --order-share or --users")

    if a.engines < 1:
        raise SystemExit("--engines must be 1 or more")
    measured: dict[str, list[Outcome]] = {p: [] for p in policies(a.engines)}
    for d in draws[:a.runs]:
        for policy in measured:  # alternating, so every policy sees the machine's same moments
            with tempfile.TemporaryDirectory() as tmp:
                measured[policy].append(run_measured(policy, d, a.scale, Path(tmp), a.engines))
    modelled = {p: [run_model(p, d, a.engines) for d in draws[:a.model_runs] if any(v.order_at is not None for v in d)]
                for p in modelled_policies(a.engines)}

    load = a.order_share * ORDER_S / a.gap / a.engines
    print(f"# Head starts under load: {a.engines} engine(s), {a.users} users per run, a selfie every {a.gap:g} s "
          f"and {a.think:g} s to choose on average, {a.order_share:.0%} order; each engine's load from orders "
          f"alone {load:.2f}")
    print()
    print(f"Engine times (the H200 projection): order {ORDER_S} s, head start {HEAD_START_S} s, order after its "
          f"head start {AFTER_HEAD_START_S:.1f} s.")
    print()
    if a.runs:
        print(f"## Measured: the real engine and queue, {a.runs} draws, run at {a.scale:g} real s per s, unscaled")
        print()
        print("\n".join(table(measured, {p: [run_model(p, d, a.engines) for d in draws[:a.runs]] for p in measured})))
        print()
    print(f"## Modelled (not measured): the same queue as discrete events, {a.model_runs} draws")
    print()
    print("\n".join(table(modelled)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
