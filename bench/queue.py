"""Queue throughput on SQLite with real processes, and a double-claim check.

Usage::

    OMP_NUM_THREADS=1 python bench/queue.py [--jobs-per-producer 300] [--lease 60]

For each scenario (1 producer + 1 worker, 4 producers + 4 workers) a fresh
SQLite file is used and three phases run, each with processes started
together:

* enqueue: producers enqueue their jobs (distinct idempotency keys);
* claim:   workers claim + complete until the queue is empty;
* mixed:   producers and workers at once (workers stop when producers are
           done and the queue is empty).

Throughput is jobs / wall seconds of the phase (from the common start to the
last process finishing). Every worker records each claim; a job id claimed
twice while leases cannot have expired (lease >> run time) is a double claim.
The database is checked too: every job must end ``succeeded`` with exactly one
attempt. Exit status 1 if any double claim or inconsistency is found.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _wait_go(go: str) -> None:
    while not os.path.exists(go):
        time.sleep(0.002)


def producer(url: str, prefix: str, n: int, go: str, out: str) -> None:
    from storage import jobs
    from storage.db import open_database

    db = open_database(url)
    _wait_go(go)
    t0 = time.time()
    for i in range(n):
        jobs.enqueue(db, "bench", {"i": i}, f"{prefix}-{i}", priority="batch" if i % 2 else "interactive")
    Path(out).write_text(json.dumps({"start": t0, "end": time.time(), "n": n}))
    db.dispose()


def worker(url: str, wid: str, lease: float, go: str, producers_done: str | None, out: str) -> None:
    from storage import jobs
    from storage.db import open_database

    db = open_database(url)
    _wait_go(go)
    t0 = time.time()
    claimed: list[int] = []
    while True:
        job = jobs.claim(db, wid, lease)
        if job is None:
            if producers_done is None or os.path.exists(producers_done):
                # Producers finished: one more look, then stop.
                job = jobs.claim(db, wid, lease)
                if job is None:
                    break
            else:
                time.sleep(0.001)
                continue
        claimed.append(job.id)
        jobs.complete(db, job.id, job.lease_token, {"by": wid})
    Path(out).write_text(json.dumps({"start": t0, "end": time.time(), "claimed": claimed}))
    db.dispose()


def _run(targets: list[tuple], go: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=t[0], args=t[1:]) for t in targets]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every process import and connect
    go.write_text("go")
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a benchmark process failed with exit code {p.exitcode}")


def _phase_time(outs: list[Path]) -> float:
    data = [json.loads(o.read_text()) for o in outs]
    return max(d["end"] for d in data) - min(d["start"] for d in data)


def _double_claims(outs: list[Path]) -> tuple[int, int]:
    ids = [i for o in outs for i in json.loads(o.read_text())["claimed"]]
    return len(ids), len(ids) - len(set(ids))


def _db_check(url: str, expected: int) -> int:
    from storage import jobs
    from storage.db import open_database

    db = open_database(url)
    listed = jobs.list_jobs(db, limit=expected * 2 + 10)
    db.dispose()
    bad = [j for j in listed if j.status != "succeeded" or j.attempts != 1]
    return len(bad) + abs(len(listed) - expected)


def scenario(tmp: Path, n_prod: int, n_work: int, per: int, lease: float) -> list[dict]:
    rows = []
    total = n_prod * per
    # Phase 1 + 2 share one database: enqueue everything, then claim everything.
    url = f"sqlite:///{tmp / f'p{n_prod}w{n_work}.db'}"
    from storage.db import open_database

    open_database(url).dispose()
    go = tmp / f"go-e-{n_prod}"
    outs = [tmp / f"e-{n_prod}-{i}.json" for i in range(n_prod)]
    _run([(producer, url, f"p{i}", per, str(go), str(outs[i])) for i in range(n_prod)], go)
    rows.append({"scenario": f"{n_prod}P", "phase": "enqueue", "jobs": total, "secs": _phase_time(outs)})
    go = tmp / f"go-c-{n_prod}"
    wouts = [tmp / f"c-{n_prod}-{i}.json" for i in range(n_work)]
    _run([(worker, url, f"w{i}", lease, str(go), None, str(wouts[i])) for i in range(n_work)], go)
    n_claims, dup = _double_claims(wouts)
    rows.append({"scenario": f"{n_work}W", "phase": "claim+complete", "jobs": n_claims, "secs": _phase_time(wouts),
                 "double": dup, "bad": _db_check(url, total)})
    # Phase 3: mixed, on a fresh database.
    url = f"sqlite:///{tmp / f'mixed-p{n_prod}w{n_work}.db'}"
    open_database(url).dispose()
    go = tmp / f"go-m-{n_prod}"
    done = tmp / f"done-{n_prod}"
    pouts = [tmp / f"mp-{n_prod}-{i}.json" for i in range(n_prod)]
    wouts = [tmp / f"mw-{n_prod}-{i}.json" for i in range(n_work)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=producer, args=(url, f"p{i}", per, str(go), str(pouts[i]))) for i in range(n_prod)]
    wprocs = [ctx.Process(target=worker, args=(url, f"w{i}", lease, str(go), str(done), str(wouts[i])))
              for i in range(n_work)]
    for p in procs + wprocs:
        p.start()
    time.sleep(1.0)
    go.write_text("go")
    for p in procs:
        p.join()
    done.write_text("done")
    for p in wprocs:
        p.join()
    if any(p.exitcode != 0 for p in procs + wprocs):
        raise SystemExit("a benchmark process failed")
    n_claims, dup = _double_claims(wouts)
    rows.append({"scenario": f"{n_prod}P+{n_work}W", "phase": "mixed (end to end)", "jobs": n_claims,
                 "secs": _phase_time(pouts + wouts), "double": dup, "bad": _db_check(url, total)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs-per-producer", type=int, default=300)
    ap.add_argument("--lease", type=float, default=600.0, help="long, so no lease can expire during the run")
    ap.add_argument("--dir", default=None, help="where to put the SQLite files (default: a temp dir)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        rows = []
        for n_prod, n_work in ((1, 1), (4, 4)):
            rows += scenario(Path(d), n_prod, n_work, a.jobs_per_producer, a.lease)
    print(f"SQLite queue benchmark, {a.jobs_per_producer} jobs per producer, {os.cpu_count()} CPUs, "
          f"one process per producer/worker")
    print(f"{'procs':<8} {'phase':<20} {'jobs':>6} {'seconds':>8} {'jobs/s':>8} {'double claims':>14} {'bad rows':>9}")
    failed = False
    for r in rows:
        dup, bad = r.get("double", "-"), r.get("bad", "-")
        failed |= bool(r.get("double")) or bool(r.get("bad"))
        print(f"{r['scenario']:<8} {r['phase']:<20} {r['jobs']:>6} {r['secs']:>8.2f} {r['jobs'] / r['secs']:>8.0f} "
              f"{dup!s:>14} {bad!s:>9}")
    print("double claims: " + ("FOUND" if failed else "0 (every job claimed once, succeeded with 1 attempt)"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
