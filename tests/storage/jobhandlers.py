"""Small job handlers for queue tests (the queue is the thing under test).

``factory()`` is what a test worker process loads with
``python -m engine.worker --handlers tests.storage.jobhandlers:factory``.

Payload of kind ``steps``::

    {"n": int, "delay": float, "marks": "<dir>", "fail_until_attempt": int (optional),
     "user_error": bool (optional: raise a UserFacingError before the steps),
     "big_blob_bytes": int (optional: also store that many random bytes at step 0)}

Each step reports progress with ``ctx.progress``, which is also how the worker
stops a job (it raises there; its database write and cancel check are
rate-limited to one per ``engine.worker.PROGRESS_INTERVAL``). At step 0 the handler
writes a per-attempt "partial" blob and drops ``<marks>/<job>-started-<attempt>``;
after each step it drops ``<marks>/<job>-step-<i>``; at the end it writes a final
blob and appends one line to ``<marks>/<job>-finished`` (how many times a
handler ran to the end, not what the queue recorded).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from emoji3d.errors import UserFacingError


class BadSelfie(UserFacingError):
    key = "test_bad_input"


def _touch(marks: str, name: str) -> None:
    Path(marks, name).write_text(str(os.getpid()))


def steps(job, ctx) -> dict:
    p = job.payload
    marks = p["marks"]
    n, delay = int(p["n"]), float(p["delay"])
    _touch(marks, f"{job.id}-started-{job.attempts}")
    with open(Path(marks, "order"), "a") as f:
        f.write(f"{job.id}\n")
    ctx.put_blob(f"partial job={job.id} attempt={job.attempts}".encode())
    if p.get("big_blob_bytes"):
        ctx.put_blob(os.urandom(int(p["big_blob_bytes"])))
    if job.attempts < int(p.get("fail_until_attempt", 0)):
        raise RuntimeError(f"planned failure on attempt {job.attempts}")
    if p.get("user_error"):
        raise BadSelfie("no face found")
    for i in range(n):
        ctx.progress("step", i / n)
        time.sleep(delay)
        _touch(marks, f"{job.id}-step-{i}")
    digest = ctx.put_blob(f"final job={job.id}".encode())
    with open(Path(marks, f"{job.id}-finished"), "a") as f:
        f.write(f"{os.getpid()} attempt={job.attempts}\n")
    return {"attempt": job.attempts, "pid": os.getpid(), "digest": digest}


def factory() -> dict:
    return {"steps": steps}
