"""Durable job queue on the database (SQLite or PostgreSQL).

Life cycle (``jobs.status``)::

    queued ──claim──► running ──complete──► succeeded
      ▲                 │  │ └──fail (attempts left)──► queued (not_before = now + backoff)
      │                 │  └────fail (final / user error)──► failed
      │                 └─cancel──► cancel_requested ──worker stops──► cancelled
      └──release (worker shutting down) / lease expired, reclaimed by claim
    queued ──cancel──► cancelled

Conventions
-----------
* Priorities: ``interactive`` (0) runs before ``batch`` (1); within a priority,
  oldest first (FIFO by id). A job is eligible when ``not_before <= now``.
* A ``speculative`` job is work done ahead of a request that may never come
  (a selfie's head start). Within its priority it is claimed after the other
  jobs, and counted after them in :func:`queue_position`. Once running it is
  not interrupted: handing its engine to a waiting order loses its work so far,
  which cost the queue more than it saved (``bench/head_start_queue.py``'s
  model over 300 traffic draws; three measured draws went either way).
* ``waits_for``: a queued job that names another job is not claimed while
  that job runs under a live lease (an order placed while its selfie's head
  start runs, which it would only wait for on an engine that could do other
  work). It is claimable as soon as that job ends, however it ends, or its
  lease lapses; its place in the claim order is kept meanwhile.
* ``attempts`` counts claims. A claim whose lease ran out (the worker died or
  hung) is reclaimed by the next ``claim`` and counts as an attempt; once
  ``attempts == max_attempts`` an expired job is failed instead
  (``error_key='worker_lost'``).
* A claim returns a fresh random ``lease_token``. Every later write
  (heartbeat, progress, complete, fail, release, mark_cancelled) must present
  it and raises :class:`LeaseLost` when the job was reclaimed, cancelled or
  deleted meanwhile, so a resurrected worker can never overwrite the result
  of the worker that took over. ``complete`` therefore records a result
  exactly once.
* Result blobs are referenced (holder ``job:<id>``) only inside the
  ``complete`` transaction. Blobs of a failed or killed attempt stay
  unreferenced and are removed by :meth:`storage.blobs.BlobStore.gc`.
* Claim is atomic: SQLite takes the write lock first (``BEGIN IMMEDIATE``);
  PostgreSQL selects the row ``FOR UPDATE SKIP LOCKED``. In both the UPDATE
  re-checks the eligibility condition.
* The writes another process waits for (enqueue, complete, fail, release,
  cancel) wake that process's :class:`storage.wakeups.JobWakeups` at commit.
* Times are UNIX epoch seconds. ``now`` parameters exist for tests; production
  callers leave them ``None``.
* ``payload`` and ``result`` are JSON objects (dicts with JSON-able values).
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.blobs import BlobStore, add_ref, check_digest, release_ref
from storage.db import Database
from storage.wakeups import announce

JobId = int
Priority = Literal["interactive", "batch"]
PRIORITIES: dict[str, int] = {"interactive": 0, "batch": 1}
_PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}
ACTIVE = ("running", "cancel_requested")
FINAL = ("succeeded", "failed", "cancelled")
OPEN = ("queued",) + ACTIVE  # not finished: waiting or running
UNSUCCESSFUL = ("failed", "cancelled")  # ended without a result: the key is free for a new attempt
_UNSUCCESSFUL_SQL = "(" + ", ".join(f"'{s}'" for s in UNSUCCESSFUL) + ")"
_FINAL_SQL = "(" + ", ".join(f"'{s}'" for s in FINAL) + ")"
# A job that gives its idempotency key up keeps it renamed ``<key>#<id>``.
_GIVE_KEY_UP = "idempotency_key = idempotency_key || '#' || CAST(id AS TEXT)"
STATUSES = ("queued",) + ACTIVE + FINAL


class LeaseLost(Exception):
    """The caller no longer holds this job's lease; its write was refused."""


class JobNotFound(KeyError):
    pass


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff after a failed attempt: ``base * factor**(attempt-1)``, capped."""

    base_seconds: float = 5.0
    factor: float = 2.0
    max_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.base_seconds < 0 or self.factor < 1 or self.max_seconds < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, attempt: int) -> float:
        return min(self.max_seconds, self.base_seconds * self.factor ** max(0, attempt - 1))


@dataclass(frozen=True)
class Job:
    id: JobId
    kind: str
    payload: dict[str, Any]
    idempotency_key: str
    priority: Priority
    status: str
    speculative: bool
    waits_for: JobId | None
    user_id: int | None
    attempts: int
    max_attempts: int
    not_before: float
    lease_owner: str | None
    lease_token: str | None
    lease_expires_at: float | None
    stage: str | None
    progress: float
    result: dict[str, Any] | None
    error_key: str | None
    error: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def done(self) -> bool:
        return self.status in FINAL


_COLUMNS = ("id, kind, payload, idempotency_key, priority, speculative, waits_for, status, user_id, attempts, "
            "max_attempts, not_before, lease_owner, lease_token, lease_expires_at, stage, progress, result, error_key, "
            "error, created_at, updated_at, started_at, finished_at")


def _row_to_job(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=int(m["id"]), kind=m["kind"], payload=json.loads(m["payload"]),
        idempotency_key=m["idempotency_key"], priority=_PRIORITY_NAMES[int(m["priority"])],  # type: ignore[arg-type]
        speculative=bool(m["speculative"]), waits_for=None if m["waits_for"] is None else int(m["waits_for"]),
        status=m["status"],
        user_id=None if m["user_id"] is None else int(m["user_id"]),
        attempts=int(m["attempts"]), max_attempts=int(m["max_attempts"]), not_before=float(m["not_before"]),
        lease_owner=m["lease_owner"], lease_token=m["lease_token"],
        lease_expires_at=None if m["lease_expires_at"] is None else float(m["lease_expires_at"]),
        stage=m["stage"], progress=float(m["progress"]),
        result=None if m["result"] is None else json.loads(m["result"]),
        error_key=m["error_key"], error=m["error"], created_at=float(m["created_at"]),
        updated_at=float(m["updated_at"]),
        started_at=None if m["started_at"] is None else float(m["started_at"]),
        finished_at=None if m["finished_at"] is None else float(m["finished_at"]),
    )


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)


def _dump(obj: dict[str, Any], what: str) -> str:
    if not isinstance(obj, dict):
        raise TypeError(f"{what} must be a dict, got {type(obj).__name__}")
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from exc


def _fetch(conn: Connection, job_id: JobId) -> Job:
    row = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM jobs WHERE id = :id"), {"id": job_id}).first()
    if row is None:
        raise JobNotFound(job_id)
    return _row_to_job(row)


# --------------------------------------------------------------------------- enqueue

def enqueue(db: Database, kind: str, payload: dict[str, Any], idempotency_key: str, *,
            priority: Priority = "interactive", speculative: bool = False, waits_for: JobId | None = None,
            user_id: int | None = None, max_attempts: int = 3, not_before: float | None = None,
            now: float | None = None) -> JobId:
    """Add a job, or return the existing job with this ``idempotency_key``.
    ``speculative`` and ``waits_for``: see the module's conventions.

    A key names one attempt that is queued, running or succeeded. A job that
    failed or was cancelled gives its key up (it is kept, renamed
    ``<key>#<id>``), so placing the same order again after a transient
    failure starts a new attempt instead of answering with the old failure.

    Race-safe: the key is UNIQUE and the insert is ``ON CONFLICT DO NOTHING``,
    so concurrent producers with one key get one job.
    """
    if not kind or not isinstance(kind, str):
        raise ValueError(f"job kind must be a non-empty string, got {kind!r}")
    if not idempotency_key or not isinstance(idempotency_key, str):
        raise ValueError(f"idempotency_key must be a non-empty string, got {idempotency_key!r}")
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be 'interactive' or 'batch', got {priority!r}")
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    body = _dump(payload, "payload")
    t = _now(now)
    with db.write() as conn:
        conn.execute(sa.text(
            f"UPDATE jobs SET {_GIVE_KEY_UP}, updated_at = :t WHERE idempotency_key = :key "
            f"AND status IN {_UNSUCCESSFUL_SQL}"),
            {"key": idempotency_key, "t": t})
        row = conn.execute(sa.text(
            "INSERT INTO jobs (kind, payload, idempotency_key, priority, speculative, waits_for, status, user_id, "
            "attempts, max_attempts, not_before, progress, created_at, updated_at) VALUES "
            "(:kind, :payload, :key, :prio, :spec, :waits, 'queued', :uid, 0, :maxa, :nb, 0, :t, :t) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"),
            {"kind": kind, "payload": body, "key": idempotency_key, "prio": PRIORITIES[priority],
             "spec": int(bool(speculative)), "waits": waits_for, "uid": user_id, "maxa": max_attempts,
             "nb": t if not_before is None else not_before, "t": t}).first()
        if row is not None:
            announce(conn)
            return int(row[0])
        return int(conn.execute(sa.text("SELECT id FROM jobs WHERE idempotency_key = :key"),
                                {"key": idempotency_key}).scalar_one())


def retire_key(db: Database, job_id: JobId, *, now: float | None = None) -> bool:
    """Give a finished job's idempotency key up (renamed ``<key>#<id>``, as a failed or cancelled
    job's is), so the key's next enqueue starts a new job: for a producer that knows what the job
    made is gone. False (nothing changed) when the job is not finished."""
    with db.write() as conn:
        res = conn.execute(sa.text(
            f"UPDATE jobs SET {_GIVE_KEY_UP}, updated_at = :t WHERE id = :id AND status IN {_FINAL_SQL}"),
            {"id": job_id, "t": _now(now)})
        return res.rowcount == 1


# --------------------------------------------------------------------------- claim

# A queued job is held while the job it waits for runs under a live lease (see ``waits_for``).
_NOT_HELD = ("(waits_for IS NULL OR NOT EXISTS (SELECT 1 FROM jobs AS awaited WHERE awaited.id = jobs.waits_for "
             "AND awaited.status IN ('running', 'cancel_requested') AND awaited.lease_expires_at >= :now))")
_ELIGIBLE = (f"((status = 'queued' AND not_before <= :now AND {_NOT_HELD}) "
             "OR (status = 'running' AND lease_expires_at < :now AND attempts < max_attempts))")


def _sweep_expired(conn: Connection, now: float) -> None:
    """Expired leases that cannot be retried: fail them, or finish a requested cancel."""
    conn.execute(sa.text(
        "UPDATE jobs SET status = 'cancelled', lease_owner = NULL, lease_token = NULL, "
        "lease_expires_at = NULL, finished_at = :now, updated_at = :now "
        "WHERE status = 'cancel_requested' AND lease_expires_at < :now"), {"now": now})
    conn.execute(sa.text(
        "UPDATE jobs SET status = 'failed', error_key = 'worker_lost', "
        "error = 'the worker running this job stopped responding ' || CAST(attempts AS TEXT) || ' time(s)', "
        "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, finished_at = :now, updated_at = :now "
        "WHERE status = 'running' AND lease_expires_at < :now AND attempts >= max_attempts"), {"now": now})


def claim(db: Database, worker_id: str, lease_seconds: float, kinds: Iterable[str] | None = None, *,
          job_ids: Iterable[JobId] | None = None, now: float | None = None) -> Job | None:
    """Atomically take the next eligible job (interactive first, speculative last within a
    priority, then FIFO).

    Also reclaims jobs whose lease expired. ``kinds`` and ``job_ids`` narrow
    what may be taken (a one-off local run takes only the jobs it placed).
    Returns the claimed :class:`Job` (with its new ``lease_token``) or
    ``None`` when nothing is eligible.
    """
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
    if not worker_id:
        raise ValueError("worker_id must be a non-empty string")
    t = _now(now)
    kind_list = None if kinds is None else sorted(set(kinds))
    if kind_list is not None and not kind_list:
        return None
    where = _ELIGIBLE
    params: dict[str, Any] = {"now": t}
    if kind_list is not None:
        names = [f":k{i}" for i in range(len(kind_list))]
        where += f" AND kind IN ({', '.join(names)})"
        params.update({f"k{i}": k for i, k in enumerate(kind_list)})
    if job_ids is not None:
        id_list = sorted({int(i) for i in job_ids})
        if not id_list:
            return None
        where += f" AND id IN ({', '.join(f':j{i}' for i in range(len(id_list)))})"
        params.update({f"j{i}": v for i, v in enumerate(id_list)})
    select = f"SELECT id FROM jobs WHERE {where} ORDER BY priority, speculative, id LIMIT 1"
    if db.dialect == "postgresql":
        select += " FOR UPDATE SKIP LOCKED"
    token = uuid.uuid4().hex
    with db.write() as conn:
        _sweep_expired(conn, t)
        row = conn.execute(sa.text(select), params).first()
        if row is None:
            return None
        job_id = int(row[0])
        upd = conn.execute(sa.text(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = :w, lease_token = :tok, "
            "lease_expires_at = :exp, started_at = :now, updated_at = :now, error = NULL, error_key = NULL "
            f"WHERE id = :id AND {_ELIGIBLE}"),
            {"w": worker_id, "tok": token, "exp": t + lease_seconds, "now": t, "id": job_id})
        if upd.rowcount != 1:  # cannot happen under the lock; be explicit rather than hand out a stale job
            return None
        return _fetch(conn, job_id)


# --------------------------------------------------------------------------- lease holder writes

def _leased_update(conn: Connection, job_id: JobId, token: str, sets: str, params: dict[str, Any],
                   statuses: tuple[str, ...] = ACTIVE) -> None:
    status_list = ", ".join(f"'{s}'" for s in statuses)
    res = conn.execute(sa.text(
        f"UPDATE jobs SET {sets} WHERE id = :id AND lease_token = :tok AND status IN ({status_list})"),
        {**params, "id": job_id, "tok": token})
    if res.rowcount != 1:
        raise LeaseLost(f"job {job_id}: lease {token[:8]}… is no longer held")


def heartbeat(db: Database, job_id: JobId, token: str, lease_seconds: float, *, now: float | None = None) -> str:
    """Extend the lease; returns the job status (``cancel_requested`` tells the worker to stop)."""
    t = _now(now)
    with db.write() as conn:
        _leased_update(conn, job_id, token, "lease_expires_at = :exp, updated_at = :now",
                       {"exp": t + lease_seconds, "now": t})
        return str(conn.execute(sa.text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one())


def set_progress(db: Database, job_id: JobId, token: str, stage: str, fraction: float, *,
                 now: float | None = None) -> None:
    """Record the current stage name and overall fraction done in [0, 1]."""
    if not isinstance(stage, str) or not stage:
        raise ValueError(f"stage must be a non-empty string, got {stage!r}")
    f = float(fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"progress fraction must be in [0, 1], got {fraction!r}")
    t = _now(now)
    with db.write() as conn:
        _leased_update(conn, job_id, token, "stage = :stage, progress = :p, updated_at = :now",
                       {"stage": stage, "p": f, "now": t})


def complete(db: Database, job_id: JobId, token: str, result: dict[str, Any],
             result_blobs: Iterable[str] = (), *, now: float | None = None) -> None:
    """Record success exactly once and reference the result blobs, in one transaction.

    Raises :class:`LeaseLost` (and references nothing) when the lease is gone.
    """
    body = _dump(result, "result")
    digests = sorted({check_digest(d) for d in result_blobs})
    t = _now(now)
    with db.write() as conn:
        _leased_update(conn, job_id, token,
                       "status = 'succeeded', result = :r, progress = 1, lease_owner = NULL, lease_token = NULL, "
                       "lease_expires_at = NULL, finished_at = :now, updated_at = :now",
                       {"r": body, "now": t})
        for d in digests:
            add_ref(conn, d, f"job:{job_id}", t)
        announce(conn)


def expire_result_blob(db: Database, blobs: BlobStore, kinds: Iterable[str], field: str, finished_before: float) -> int:
    """Forget the blob named by ``result[field]`` of succeeded jobs of ``kinds`` finished before
    ``finished_before``: the job's reference to it is released, the field becomes None (and
    ``<field>_expired_at`` records when), and the blob is deleted at once unless another holder
    keeps it. Returns how many jobs had one. For the retention of per-user outputs."""
    kinds = list(kinds)
    if not kinds:
        return 0
    held: set[str] = set()
    expired = 0
    t = time.time()
    with db.write() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, result FROM jobs WHERE status = 'succeeded' AND finished_at < :cut AND result IS NOT NULL "
            "AND kind IN (" + ", ".join(f":k{i}" for i in range(len(kinds))) + ") ORDER BY id"),
            {"cut": finished_before, **{f"k{i}": k for i, k in enumerate(kinds)}}).all()
        for job_id, body in rows:
            result = json.loads(body)
            digest = result.get(field)
            if not digest:
                continue
            result[field], result[f"{field}_expired_at"] = None, t
            # Compare-and-set on the body read: a concurrent expiry (PostgreSQL re-reads the row
            # after waiting for it) leaves nothing to update, and this call counts nothing.
            if not conn.execute(sa.text("UPDATE jobs SET result = :r, updated_at = :t WHERE id = :id AND result = :old"),
                                {"r": _dump(result, "result"), "t": t, "id": job_id, "old": body}).rowcount:
                continue
            release_ref(conn, digest, f"job:{job_id}")
            held.add(digest)
            expired += 1
    blobs.delete_unreferenced(held)
    return expired


def fail(db: Database, job_id: JobId, token: str, reason: str, *, retryable: bool = True,
         error_key: str | None = None, policy: RetryPolicy = RetryPolicy(), now: float | None = None) -> str:
    """Record a failed attempt. Retries with backoff while attempts remain and
    ``retryable``; otherwise the job ends ``failed`` with ``reason``. Returns the new status."""
    if not reason:
        raise ValueError("a failure needs a human-readable reason")
    t = _now(now)
    with db.write() as conn:
        job = _fetch(conn, job_id)
        if job.lease_token != token or job.status not in ACTIVE:
            raise LeaseLost(f"job {job_id}: lease {token[:8]}… is no longer held")
        if job.status == "cancel_requested":
            new_status, nb = "cancelled", job.not_before
        elif retryable and job.attempts < job.max_attempts:
            new_status, nb = "queued", t + policy.delay(job.attempts)
        else:
            new_status, nb = "failed", job.not_before
        finished = t if new_status != "queued" else None
        _leased_update(conn, job_id, token,
                       "status = :st, not_before = :nb, error = :err, error_key = :ek, lease_owner = NULL, "
                       "lease_token = NULL, lease_expires_at = NULL, finished_at = :fin, updated_at = :now",
                       {"st": new_status, "nb": nb, "err": reason[:2000], "ek": error_key, "fin": finished, "now": t})
        announce(conn)
        return new_status


def release(db: Database, job_id: JobId, token: str, *, now: float | None = None) -> str:
    """Give the lease back without using up an attempt (graceful shutdown).
    The job is immediately claimable again. Returns the new status."""
    t = _now(now)
    with db.write() as conn:
        job = _fetch(conn, job_id)
        if job.lease_token != token or job.status not in ACTIVE:
            raise LeaseLost(f"job {job_id}: lease {token[:8]}… is no longer held")
        new_status = "cancelled" if job.status == "cancel_requested" else "queued"
        _leased_update(conn, job_id, token,
                       "status = :st, attempts = attempts - 1, lease_owner = NULL, lease_token = NULL, "
                       "lease_expires_at = NULL, stage = NULL, progress = 0, updated_at = :now, "
                       "finished_at = :fin",
                       {"st": new_status, "now": t, "fin": t if new_status == "cancelled" else None})
        announce(conn)
        return new_status


def mark_cancelled(db: Database, job_id: JobId, token: str, *, now: float | None = None) -> None:
    """The worker stopped a job whose cancellation was requested."""
    t = _now(now)
    with db.write() as conn:
        _leased_update(conn, job_id, token,
                       "status = 'cancelled', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, "
                       "finished_at = :now, updated_at = :now", {"now": t}, statuses=("cancel_requested",))
        announce(conn)


# --------------------------------------------------------------------------- anyone

def cancel(db: Database, job_id: JobId, *, now: float | None = None) -> str:
    """Cancel: queued → cancelled at once; running → cancel_requested (the
    worker stops at its next step). Finished jobs are left as they are.
    Returns the resulting status."""
    t = _now(now)
    with db.write() as conn:
        job = _fetch(conn, job_id)
        if job.status == "queued":
            conn.execute(sa.text("UPDATE jobs SET status = 'cancelled', finished_at = :t, updated_at = :t "
                                 "WHERE id = :id AND status = 'queued'"), {"t": t, "id": job_id})
            announce(conn)
            return "cancelled"
        if job.status == "running":
            conn.execute(sa.text("UPDATE jobs SET status = 'cancel_requested', updated_at = :t "
                                 "WHERE id = :id AND status = 'running'"), {"t": t, "id": job_id})
            announce(conn)
            return "cancel_requested"
        return job.status


def get_job(db: Database, job_id: JobId) -> Job:
    with db.read() as conn:
        return _fetch(conn, job_id)


def job_status(db: Database, job_id: JobId) -> str:
    with db.read() as conn:
        st = conn.execute(sa.text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
    if st is None:
        raise JobNotFound(job_id)
    return str(st)


def lease_status(db: Database, job_id: JobId, token: str) -> str:
    """The job's status if ``token`` still holds its lease; raises :class:`LeaseLost`
    otherwise (reclaimed by another worker, released, finished or deleted)."""
    with db.read() as conn:
        row = conn.execute(sa.text("SELECT status, lease_token FROM jobs WHERE id = :id"), {"id": job_id}).first()
    if row is None or row[1] != token or row[0] not in ACTIVE:
        raise LeaseLost(f"job {job_id}: lease {token[:8]}… is no longer held")
    return str(row[0])


def find_by_key(db: Database, idempotency_key: str) -> Job | None:
    with db.read() as conn:
        row = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = :k"),
                           {"k": idempotency_key}).first()
    return None if row is None else _row_to_job(row)


def queue_position(db: Database, job_id: JobId) -> int | None:
    """1-based position among queued jobs in claim order (ignoring backoff
    delays); ``None`` when the job is not queued."""
    with db.read() as conn:
        job = _fetch(conn, job_id)
        if job.status != "queued":
            return None
        ahead = conn.execute(sa.text(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND (priority < :p OR (priority = :p AND "
            "(speculative < :spec OR (speculative = :spec AND id < :id))))"),
            {"p": PRIORITIES[job.priority], "spec": int(job.speculative), "id": job_id}).scalar_one()
    return int(ahead) + 1


def list_jobs(db: Database, *, status: str | Iterable[str] | None = None, user_id: int | None = None,
              kind: str | None = None, limit: int = 100) -> list[Job]:
    """Jobs newest first, optionally filtered."""
    clauses: list[str] = []
    params: dict[str, Any] = {"lim": int(limit)}
    if status is not None:
        sts = [status] if isinstance(status, str) else list(status)
        bad = [s for s in sts if s not in STATUSES]
        if bad:
            raise ValueError(f"unknown job status {bad[0]!r}; expected one of {', '.join(STATUSES)}")
        clauses.append("status IN (" + ", ".join(f":s{i}" for i in range(len(sts))) + ")")
        params.update({f"s{i}": s for i, s in enumerate(sts)})
    if user_id is not None:
        clauses.append("user_id = :uid")
        params["uid"] = user_id
    if kind is not None:
        clauses.append("kind = :kind")
        params["kind"] = kind
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    with db.read() as conn:
        rows = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM jobs{where} ORDER BY id DESC LIMIT :lim"), params)
        return [_row_to_job(r) for r in rows]


def counts_by_status(db: Database) -> dict[str, int]:
    with db.read() as conn:
        rows = conn.execute(sa.text("SELECT status, COUNT(*) FROM jobs GROUP BY status")).all()
    return {str(s): int(n) for s, n in rows}
