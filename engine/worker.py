"""The engine process loop: claim one job at a time from the durable queue and run it.

Conventions
-----------
* Handlers are plain callables ``handler(job, ctx) -> dict`` keyed by job kind.
  They are built once, before the loop, by a factory (models load there), and
  the worker only claims kinds it has a handler for.
* A handler reports progress with ``ctx.progress(stage, fraction)`` (fraction of
  the whole job in [0, 1]), typically after every optimisation step. That call
  is also the way a job is stopped: it raises :class:`JobCancelled`,
  :class:`JobInterrupted` or :class:`JobAborted` inside the handler (the
  pipeline stages let it propagate; see :mod:`engine.avatar.steps`).
  ``ctx.check_cancelled()`` checks the same without reporting progress.
  Output files go through ``ctx.put_blob``; they are referenced by the job
  only when it completes (see :mod:`storage.jobs`).
* Progress is rate-limited: the database row is written, and asked whether
  the job was cancelled, when the stage name changes and otherwise at most
  once per ``progress_interval`` (1 s), so a step loop running many steps a
  second does not hammer the database. The in-process signals (lease lost,
  shutdown) are checked at every call. A cancel therefore lands within
  max(one step, ~1 s).
* A background thread renews the lease every ``heartbeat_interval`` seconds
  (default a third of the lease). If the lease is lost (the job was reclaimed
  by another worker after this one stalled), the next step raises
  :class:`JobAborted` and nothing more is written for that job.
* Outcomes: return value → ``complete``; :class:`JobCancelled` → cancelled;
  :class:`emoji3d.errors.UserFacingError` → failed at once, its ``key`` kept as
  ``error_key``; any other exception → retried with backoff up to the job's
  ``max_attempts``.
* SIGTERM / SIGINT: stop claiming. The current job is released at its next
  step (``shutdown='release'``, default: the lease is handed back and another
  worker can take the job immediately, without using up an attempt) or run to
  the end (``shutdown='finish'``). Then :meth:`Worker.run` returns 0.
* Idle, the worker waits on :class:`storage.wakeups.JobWakeups` when it has
  one (``emoji3d engine`` does): a job enqueued elsewhere is claimed within
  a few milliseconds instead of up to ``poll_interval`` later, which stays
  the longest wait.
* The heartbeat also refreshes the grace period of the blobs the job wrote so
  far, so the blob GC never removes outputs of a job that is still running.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

from emoji3d.errors import UserFacingError
from storage import jobs
from storage.blobs import BlobStore
from storage.db import Database, open_database
from storage.jobs import Job, LeaseLost, RetryPolicy
from storage.wakeups import JobWakeups

log = logging.getLogger("emoji3d.worker")


class JobCancelled(Exception):
    """Raised inside a handler when someone cancelled the job."""


class JobInterrupted(Exception):
    """Raised inside a handler when the worker is shutting down and releases the job."""


class JobAborted(Exception):
    """Raised inside a handler when this worker lost the job's lease."""


Handler = Callable[[Job, "JobContext"], dict]
HandlersFactory = Callable[[], dict]

# A full disk or quota will not empty itself: such a job fails at once instead of burning retries.
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# Seconds between two progress writes (and cancel checks) within one stage.
PROGRESS_INTERVAL = 1.0


@dataclass
class JobContext:
    """What a handler may do with the job it runs. One per job attempt."""

    job: Job
    db: Database
    blobs: BlobStore
    token: str
    _stop: threading.Event
    _lease_lost: threading.Event
    _release_on_stop: bool
    result_blobs: list[str] = field(default_factory=list)   # outputs, referenced by the job when it completes
    written_blobs: list[str] = field(default_factory=list)  # everything this attempt stored (outputs and caches)
    progress_interval: float = PROGRESS_INTERVAL
    clock: Callable[[], float] = time.monotonic  # injectable, so tests need not sleep
    _written_stage: str | None = None
    _written_at: float | None = None

    def _check_local(self) -> None:
        """Raise if this process already knows the job must stop: lease lost, or shutdown."""
        if self._lease_lost.is_set():
            raise JobAborted(f"job {self.job.id}: lease lost")
        if self._release_on_stop and self._stop.is_set():
            raise JobInterrupted(f"job {self.job.id}: worker shutting down")

    def check_cancelled(self) -> None:
        """Raise if the job must stop now: cancelled, lease lost, or shutdown (one database read)."""
        self._check_local()
        try:
            status = jobs.lease_status(self.db, self.job.id, self.token)
        except LeaseLost:
            self._lease_lost.set()
            raise JobAborted(f"job {self.job.id}: lease lost") from None
        if status == "cancel_requested":
            raise JobCancelled(f"job {self.job.id} cancelled")

    def progress(self, stage: str, fraction: float) -> None:
        """Record the stage and overall fraction, and raise if the job must stop.

        Writes (and asks the database about a cancel) on a new stage name, or
        when ``progress_interval`` seconds passed since the last write; in
        between only the in-process stop signals are checked."""
        now = self.clock()
        if (stage == self._written_stage and self._written_at is not None
                and now - self._written_at < self.progress_interval):
            self._check_local()
            return
        self._written_stage, self._written_at = stage, now
        try:
            jobs.set_progress(self.db, self.job.id, self.token, stage, min(1.0, max(0.0, float(fraction))))
        except LeaseLost:
            self._lease_lost.set()
        self.check_cancelled()

    def store_blob(self, data: bytes) -> str:
        """Store bytes for this job (a cache entry it references itself), after making sure the job
        may still write: a job whose user was deleted, or that was cancelled, writes nothing more."""
        self.check_cancelled()
        digest = self.blobs.put_bytes(data)
        self.written_blobs.append(digest)
        return digest

    def put_blob(self, data: bytes) -> str:
        """Store an output file; it becomes the job's once the job completes."""
        digest = self.store_blob(data)
        self.result_blobs.append(digest)
        return digest

    def put_blobs(self, files: Sequence[bytes]) -> list[str]:
        """Store several output files, ``blobs.parallel_puts`` at a time (over a network every put is
        a few round trips); their digests in the order given. Each is stored as :meth:`put_blob`
        stores one. When one fails, the others still finish before the error is raised, so
        everything written is in ``written_blobs`` for the clean-up."""
        if not files:
            return []
        if self.blobs.parallel_puts == 1:
            digests = [self.store_blob(f) for f in files]
        else:
            with ThreadPoolExecutor(min(self.blobs.parallel_puts, len(files)),
                                    thread_name_prefix=f"store-{self.job.id}") as pool:
                digests = list(pool.map(self.store_blob, files))
        self.result_blobs.extend(digests)
        return digests

    def put_file(self, path: str | os.PathLike[str]) -> str:
        self.check_cancelled()
        digest = self.blobs.put_file(path)
        self.written_blobs.append(digest)
        self.result_blobs.append(digest)
        return digest


class _Heartbeat(threading.Thread):
    """Renews the lease and keeps the job's not yet referenced output blobs
    young, so a blob GC during a long job cannot take them."""

    def __init__(self, db: Database, job_id: int, token: str, lease_seconds: float, interval: float,
                 lease_lost: threading.Event, ctx: JobContext) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.db, self.job_id, self.token, self.ctx = db, job_id, token, ctx
        self.lease_seconds, self.interval, self.lease_lost = lease_seconds, interval, lease_lost
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                jobs.heartbeat(self.db, self.job_id, self.token, self.lease_seconds)
                self.ctx.blobs.touch(list(self.ctx.result_blobs))
            except LeaseLost:
                log.warning("job %s: lease lost; aborting at the next step", self.job_id)
                self.lease_lost.set()
                return
            except Exception:  # transient DB trouble: keep trying until the lease runs out
                log.exception("job %s: heartbeat failed", self.job_id)


class Worker:
    """One engine process: runs jobs one at a time until asked to stop."""

    def __init__(self, db: Database, blobs: BlobStore, handlers: dict[str, Handler], worker_id: str,
                 lease_seconds: float = 60.0, poll_interval: float = 1.0, *,
                 heartbeat_interval: float | None = None, retry: RetryPolicy = RetryPolicy(),
                 shutdown: Literal["release", "finish"] = "release", progress_interval: float = PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, only_jobs: Iterable[int] | None = None,
                 wakeups: JobWakeups | None = None) -> None:
        if not handlers:
            raise ValueError("a worker needs at least one job handler")
        bad = [k for k, h in handlers.items() if not callable(h)]
        if bad:
            raise TypeError(f"handler for job kind {bad[0]!r} is not callable")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError(f"lease_seconds and poll_interval must be positive, got {lease_seconds}, {poll_interval}")
        if shutdown not in ("release", "finish"):
            raise ValueError(f"shutdown must be 'release' or 'finish', got {shutdown!r}")
        hb = lease_seconds / 3 if heartbeat_interval is None else heartbeat_interval
        if not 0 < hb < lease_seconds:
            raise ValueError(f"heartbeat_interval must be in (0, lease_seconds), got {hb}")
        if progress_interval < 0:
            raise ValueError(f"progress_interval must be >= 0, got {progress_interval}")
        self.db, self.blobs, self.handlers = db, blobs, dict(handlers)
        self.worker_id, self.lease_seconds, self.poll_interval = worker_id, float(lease_seconds), float(poll_interval)
        self.heartbeat_interval, self.retry, self.shutdown = float(hb), retry, shutdown
        self.progress_interval, self.clock = float(progress_interval), clock
        self.only_jobs = None if only_jobs is None else frozenset(int(i) for i in only_jobs)  # None: any job
        self.wakeups = wakeups  # None: idle waits are plain ``poll_interval`` sleeps
        self._stop = threading.Event()

    # ---- control ----
    def request_stop(self, *_: Any) -> None:
        if not self._stop.is_set():
            log.info("worker %s: stop requested", self.worker_id)
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a graceful stop (main thread only)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # ---- loop ----
    def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
        """Claim and run jobs until stopped (or ``max_jobs`` ran, or idle with
        ``exit_when_idle``). Returns the process exit code (0)."""
        ran = 0
        while not self._stop.is_set() and (max_jobs is None or ran < max_jobs):
            try:
                did = self.run_once()
            except Exception:  # DB unreachable etc.: log, back off, keep the process alive
                log.exception("worker %s: claim failed", self.worker_id)
                did = False
            if did:
                ran += 1
                continue
            if exit_when_idle:
                break
            if self.wakeups is None:
                self._stop.wait(self.poll_interval)
            else:  # a job enqueued or released elsewhere ends the wait at once; the poll stays the floor
                self.wakeups.wait(self.poll_interval, self._stop.is_set)
        log.info("worker %s: exiting after %d job(s)", self.worker_id, ran)
        return 0

    def run_once(self) -> bool:
        """Claim one job and run it; False when none was eligible."""
        job = jobs.claim(self.db, self.worker_id, self.lease_seconds, kinds=self.handlers.keys(),
                         job_ids=self.only_jobs)
        if job is None:
            return False
        self._process(job)
        return True

    def _process(self, job: Job) -> None:
        assert job.lease_token is not None
        token = job.lease_token
        lease_lost = threading.Event()
        ctx = JobContext(job, self.db, self.blobs, token, self._stop, lease_lost, self.shutdown == "release",
                         progress_interval=self.progress_interval, clock=self.clock)
        hb = _Heartbeat(self.db, job.id, token, self.lease_seconds, self.heartbeat_interval, lease_lost, ctx)
        hb.start()
        log.info("job %s (%s) attempt %d/%d started", job.id, job.kind, job.attempts, job.max_attempts)
        try:
            try:
                result = self.handlers[job.kind](job, ctx)
                if not isinstance(result, dict):
                    raise TypeError(f"handler for {job.kind!r} returned {type(result).__name__}, expected dict")
            finally:
                hb.done.set()
                hb.join()
            if lease_lost.is_set():
                raise JobAborted(f"job {job.id}: lease lost before completion")
            jobs.complete(self.db, job.id, token, result, ctx.result_blobs)
            log.info("job %s succeeded", job.id)
        except JobCancelled:
            self._finish_write(job, lambda: jobs.mark_cancelled(self.db, job.id, token), "cancelled")
            self._forget_writes(ctx)
        except JobInterrupted:
            self._finish_write(job, lambda: jobs.release(self.db, job.id, token), "released for another worker")
        except (JobAborted, LeaseLost) as exc:
            if self._job_is_gone_or_cancelled(job.id):
                log.warning("job %s: %s: it was cancelled or deleted (its user's data erased); stopped", job.id, exc)
                self._forget_writes(ctx)
            else:  # another worker took it over; it may be storing the very same (deterministic) files
                log.warning("job %s: %s; another worker owns it now", job.id, exc)
        except UserFacingError as exc:
            reason, key = str(exc) or exc.key, exc.key
            self._finish_write(job, lambda: jobs.fail(self.db, job.id, token, reason, retryable=False,
                                                    error_key=key, policy=self.retry), f"failed ({key})")
        except OSError as exc:
            if exc.errno not in FULL_DISK_ERRNOS:
                self._failed_attempt(job, token, exc)
                return
            # Retrying cannot help until an operator frees space: fail once, tell the user the service is busy.
            where = exc.filename or self.blobs.describe_location()  # os.write() names no file
            log.error("job %s: disk full writing %s (%s); failing without retry", job.id, where,
                      os.strerror(exc.errno))
            reason = f"disk full: {where}: {os.strerror(exc.errno)}"
            self._finish_write(job, lambda: jobs.fail(self.db, job.id, token, reason, retryable=False,
                                                    error_key="storage_full", policy=self.retry), "failed (disk full)")
        except Exception as exc:
            self._failed_attempt(job, token, exc)

    def _failed_attempt(self, job: Job, token: str, exc: Exception) -> None:
        """Any other error: logged with its traceback, retried with backoff while attempts remain."""
        log.error("job %s raised", job.id, exc_info=exc)
        reason = f"{type(exc).__name__}: {exc}"
        self._finish_write(job, lambda: jobs.fail(self.db, job.id, token, reason, policy=self.retry),
                           "attempt failed")

    def _job_is_gone_or_cancelled(self, job_id: int) -> bool:
        try:
            return jobs.get_job(self.db, job_id).status in ("cancel_requested", "cancelled")
        except jobs.JobNotFound:
            return True

    def _forget_writes(self, ctx: JobContext) -> None:
        """Delete at once every blob this attempt stored that nothing references: the job was
        cancelled, or its row is gone (its user deleted their data), so its renders of a face
        must not wait for the blob GC's grace period."""
        if not ctx.written_blobs:
            return
        try:
            removed, _ = self.blobs.delete_unreferenced(set(ctx.written_blobs))
            log.info("job %s: removed %d stored file(s) nothing refers to", ctx.job.id, removed)
        except Exception:  # noqa: BLE001 - the GC removes them later; never crash the worker over it
            log.exception("job %s: could not remove its stored files now", ctx.job.id)

    def _finish_write(self, job: Job, write: Callable[[], object], what: str) -> None:
        try:
            status = write()
            log.info("job %s %s%s", job.id, what, f" -> {status}" if isinstance(status, str) else "")
        except LeaseLost:
            log.warning("job %s: lease lost; not recording '%s'", job.id, what)


# --------------------------------------------------------------------------- process entry

@dataclass(frozen=True)
class EngineSettings:
    """What ``emoji3d engine`` needs; the CLI fills it from config.toml."""

    db_url: str
    blob_root: str
    handlers_factory: str = ""  # "package.module:function" returning {kind: handler}, unless run_engine gets one
    worker_id: str | None = None
    lease_seconds: float = 60.0
    poll_interval: float = 1.0
    max_blob_bytes: int = 64 << 20
    shutdown: Literal["release", "finish"] = "release"
    retry: RetryPolicy = RetryPolicy()


def resolve_factory(spec: str) -> HandlersFactory:
    """Import ``"module:function"``."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"handlers factory must be 'module:function', got {spec!r}")
    fn = getattr(importlib.import_module(mod_name), attr, None)
    if not callable(fn):
        raise ValueError(f"{spec!r}: {attr} is not a callable in {mod_name}")
    return fn  # type: ignore[no-any-return]


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_engine(settings: EngineSettings, *, factory: HandlersFactory | None = None,
               max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
    """Open storage, build handlers once (models load here), run until SIGTERM."""
    db = open_database(settings.db_url)
    blobs = BlobStore(db, settings.blob_root, max_bytes=settings.max_blob_bytes)
    if factory is None and not settings.handlers_factory:
        raise ValueError("run_engine needs a handlers factory (settings.handlers_factory or factory=)")
    handlers = (factory or resolve_factory(settings.handlers_factory))()
    wakeups = JobWakeups(db)
    worker = Worker(db, blobs, handlers, settings.worker_id or default_worker_id(), settings.lease_seconds,
                    settings.poll_interval, retry=settings.retry, shutdown=settings.shutdown, wakeups=wakeups)
    if threading.current_thread() is threading.main_thread():
        worker.install_signal_handlers()
    try:
        return worker.run(max_jobs=max_jobs, exit_when_idle=exit_when_idle)
    finally:
        wakeups.close()
        db.dispose()


def main(argv: list[str]) -> int:
    """``emoji3d engine`` without config.toml: all settings as flags."""
    ap = argparse.ArgumentParser(prog="emoji3d engine", description="Run the engine worker loop.")
    ap.add_argument("--db", required=True, help="database URL, e.g. sqlite:///data/emoji3d.db")
    ap.add_argument("--blobs", required=True, help="blob folder")
    ap.add_argument("--handlers", required=True, help="module:function returning {job kind: handler}")
    ap.add_argument("--worker-id", default=None)
    ap.add_argument("--lease", type=float, default=60.0, help="lease seconds")
    ap.add_argument("--poll", type=float, default=1.0, help="poll interval seconds when idle")
    ap.add_argument("--shutdown", choices=("release", "finish"), default="release")
    ap.add_argument("--max-jobs", type=int, default=None)
    ap.add_argument("--exit-when-idle", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("EMOJI3D_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = EngineSettings(db_url=a.db, blob_root=a.blobs, handlers_factory=a.handlers,
                       worker_id=a.worker_id, lease_seconds=a.lease, poll_interval=a.poll, shutdown=a.shutdown)
    return run_engine(s, max_jobs=a.max_jobs, exit_when_idle=a.exit_when_idle)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
