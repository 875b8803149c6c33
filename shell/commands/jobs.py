"""``emoji3d jobs list|show|cancel``: look at and steer the durable queue.

Times are printed in UTC (ISO 8601, seconds). Exit codes: 0 ok, 1 the job
does not exist, 2 bad arguments (argparse).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import TextIO

from storage import jobs
from storage.db import open_database


def _ts(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {fraction * 100:5.1f}%"


def _priority(job: jobs.Job) -> str:
    return job.priority + ("*" if job.speculative else "")


def _list(db, a, out: TextIO) -> int:
    rows = jobs.list_jobs(db, status=a.status or None, user_id=a.user, kind=a.kind, limit=a.limit)
    head = f"{'id':>6}  {'status':<16} {'prio':<11} {'kind':<20} {'att':>5}  {'stage':<14} {'progress':>8}  created"
    print(head, file=out)
    for j in rows:
        print(f"{j.id:>6}  {j.status:<16} {_priority(j):<11} {j.kind[:20]:<20} {j.attempts:>2}/{j.max_attempts:<2}  "
              f"{(j.stage or '-')[:14]:<14} {j.progress * 100:7.1f}%  {_ts(j.created_at)}", file=out)
    if any(j.speculative for j in rows):
        print("*: speculative, taken after the other jobs of its priority (a selfie's head start)", file=out)
    counts = jobs.counts_by_status(db)
    print("total: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no jobs"), file=out)
    return 0


def _show(db, a, out: TextIO) -> int:
    try:
        j = jobs.get_job(db, a.job_id)
    except jobs.JobNotFound:
        print(f"emoji3d jobs: no job with id {a.job_id}", file=sys.stderr)
        return 1
    pos = jobs.queue_position(db, j.id)
    lines = [
        ("id", j.id), ("kind", j.kind), ("status", j.status),
        ("priority", j.priority + (", speculative" if j.speculative else "")),
        ("queue position", pos if pos is not None else "-"),
        ("waits for", f"job {j.waits_for} to end" if j.waits_for is not None else "-"),
        ("user", j.user_id if j.user_id is not None else "-"),
        ("attempts", f"{j.attempts}/{j.max_attempts}"), ("progress", f"{j.stage or '-'} {_bar(j.progress)}"),
        ("worker", j.lease_owner or "-"), ("lease until", _ts(j.lease_expires_at)),
        ("not before", _ts(j.not_before)), ("created", _ts(j.created_at)), ("started", _ts(j.started_at)),
        ("finished", _ts(j.finished_at)), ("idempotency key", j.idempotency_key),
    ]
    if j.error:
        lines.append(("error", f"{j.error}" + (f" [{j.error_key}]" if j.error_key else "")))
    for k, v in lines:
        print(f"{k:>16}: {v}", file=out)
    print(f"{'payload':>16}: {json.dumps(j.payload, sort_keys=True)}", file=out)
    if j.result is not None:
        print(f"{'result':>16}: {json.dumps(j.result, sort_keys=True)}", file=out)
    return 0


def _cancel(db, a, out: TextIO) -> int:
    code = 0
    for jid in a.job_ids:
        try:
            status = jobs.cancel(db, jid)
        except jobs.JobNotFound:
            print(f"emoji3d jobs: no job with id {jid}", file=sys.stderr)
            code = 1
            continue
        note = {"cancelled": "cancelled", "cancel_requested": "cancel requested; the worker stops at its next step"}
        print(f"job {jid}: {note.get(status, f'already {status}, left as it is')}", file=out)
    return code


def main(argv: list[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    ap = argparse.ArgumentParser(prog="emoji3d jobs", description="Show and steer the job queue.")
    ap.add_argument("--db", required=True, help="database URL, e.g. sqlite:///data/emoji3d.db")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="newest jobs first")
    ls.add_argument("--status", action="append", choices=jobs.STATUSES, help="repeatable")
    ls.add_argument("--user", type=int, default=None, help="user id")
    ls.add_argument("--kind", default=None)
    ls.add_argument("--limit", type=int, default=50)
    sh = sub.add_parser("show", help="one job in detail")
    sh.add_argument("job_id", type=int)
    ca = sub.add_parser("cancel", help="cancel queued or running jobs")
    ca.add_argument("job_ids", type=int, nargs="+")
    a = ap.parse_args(argv)
    db = open_database(a.db)
    try:
        return {"list": _list, "show": _show, "cancel": _cancel}[a.cmd](db, a, out)
    finally:
        db.dispose()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
