"""Persistent schedules: APScheduler 3.x with its job store in the project database.

Conventions
-----------
* Schedules are declared (config.toml ``[[schedules]]``) as
  :class:`emoji3d.schedules.Schedule` values (validated there, at start-up). :func:`start_scheduler` syncs them into the store: new ones are
  added, changed ones replaced, undeclared ones removed, and unchanged ones
  kept *as stored* — so a run that fell due while no scheduler was running is
  still executed after a restart (within ``misfire_grace_seconds``; missed
  runs are coalesced into one).
* The stored callable is the module-level :func:`run_action`, referenced by
  name, with JSON-like keyword arguments only (db URL, action, selector,
  engine version). APScheduler pickles these arguments into its own table
  ``apscheduler_jobs`` in the same database.
* Actions enqueue *batch* jobs of kind :data:`REGENERATE_KIND` with
  idempotency keys that include the pack and the style/engine version, so a
  re-run never duplicates work and interactive jobs still go first.
* Several ``serve`` processes (on several hosts) may run: the scheduler and
  maintenance run only in the one holding the ``scheduler`` lock
  (:class:`storage.leader.LeaderLock`; :func:`run_as_leader`). The others
  stand by and take over within ``check_seconds`` when it stops or dies, so
  each due run fires once.

Actions and their selector keys
-------------------------------
``regenerate_style_packs``: packs made with a house style whose version
  changed since the pack was made. Selector: ``styles`` (list of house style
  names; default all), ``limit`` (max packs per run).
``regenerate_outdated_packs``: packs made by an engine version older than
  the current one. Selector: ``limit``.
"""
from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from emoji3d.errors import ConfigError
from emoji3d.orders import REGENERATE_KIND
from emoji3d.schedules import Schedule, parse_cron, validate_schedule
from storage import jobs
from storage import packs
from storage.db import Database, open_database
from storage.leader import LeaderLock

log = logging.getLogger("shell.scheduler")

_FUNC_REF = "shell.scheduler:run_action"
JOBSTORE_TABLE = "apscheduler_jobs"


@dataclass(frozen=True)
class SyncReport:
    added: list[str]
    replaced: list[str]
    kept: list[str]
    removed: list[str]


# --------------------------------------------------------------------------- actions

def regenerate_style_packs(db: Database, selector: dict[str, Any]) -> list[int]:
    """Enqueue regeneration of packs whose house style changed; returns job ids."""
    found = packs.packs_with_changed_style(db, style_names=selector.get("styles"), house_only=True)
    ids = []
    for pack, style_version in found[: selector.get("limit")]:
        ids.append(jobs.enqueue(
            db, REGENERATE_KIND,
            {"pack_id": pack.id, "reason": "style_changed", "style_id": pack.style_id,
             "from_style_version": pack.style_version, "style_version": style_version},
            f"regen:pack:{pack.id}:style:{pack.style_id}:v{style_version}",
            priority="batch", user_id=pack.user_id))
    return ids


def regenerate_outdated_packs(db: Database, selector: dict[str, Any], engine_version: str) -> list[int]:
    """Enqueue regeneration of packs made by an older engine; returns job ids."""
    found = packs.packs_with_engine_older_than(db, engine_version)
    ids = []
    for pack in found[: selector.get("limit")]:
        ids.append(jobs.enqueue(
            db, REGENERATE_KIND,
            {"pack_id": pack.id, "reason": "engine_updated", "from_engine_version": pack.engine_version,
             "engine_version": engine_version},
            f"regen:pack:{pack.id}:engine:{engine_version}",
            priority="batch", user_id=pack.user_id))
    return ids


def run_action(db_url: str, action: str, selector: dict[str, Any], engine_version: str,
               schedule_id: str = "") -> int:
    """The callable APScheduler stores (by name). Opens its own connection pool."""
    db = open_database(db_url)
    try:
        if action == "regenerate_style_packs":
            ids = regenerate_style_packs(db, selector)
        elif action == "regenerate_outdated_packs":
            ids = regenerate_outdated_packs(db, selector, engine_version)
        else:
            raise ValueError(f"unknown scheduled action {action!r}")
    finally:
        db.dispose()
    log.info("schedule %s (%s): %d regeneration job(s) enqueued", schedule_id, action, len(ids))
    return len(ids)


# --------------------------------------------------------------------------- scheduler

def _kwargs(s: Schedule, db_url: str, engine_version: str) -> dict[str, Any]:
    return {"db_url": db_url, "action": s.action, "selector": dict(s.selector), "engine_version": engine_version,
            "schedule_id": s.id}


def sync_schedules(scheduler: BackgroundScheduler, schedules: list[Schedule], db_url: str,
                   engine_version: str) -> SyncReport:
    """Make the store hold exactly ``schedules``; unchanged entries keep their next run time."""
    ids = [s.id for s in schedules]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ConfigError(f"schedules: duplicate id {sorted(dup)[0]!r}")
    for s in schedules:
        validate_schedule(s)
    packs.version_key(engine_version)
    added, replaced, kept, removed = [], [], [], []
    declared = {s.id for s in schedules}
    for job in scheduler.get_jobs():
        if job.id not in declared:
            job.remove()
            removed.append(job.id)
    for s in schedules:
        trigger = parse_cron(s.cron)
        kwargs = _kwargs(s, db_url, engine_version)
        existing = scheduler.get_job(s.id)
        if (existing is not None and existing.func_ref == _FUNC_REF and existing.kwargs == kwargs
                and repr(existing.trigger) == repr(trigger)):
            kept.append(s.id)
            continue
        scheduler.add_job(_FUNC_REF, trigger=trigger, id=s.id, name=f"{s.action} ({s.id})", kwargs=kwargs,
                          replace_existing=True)
        (replaced if existing is not None else added).append(s.id)
    return SyncReport(added, replaced, kept, removed)


def start_scheduler(db: Database, schedules: list[Schedule], engine_version: str, *,
                    misfire_grace_seconds: int = 3600) -> tuple[BackgroundScheduler, SyncReport]:
    """Start a background scheduler on ``db``'s engine with ``schedules`` synced in.

    The caller owns ``db`` and calls ``scheduler.shutdown()`` before disposing it.
    """
    if misfire_grace_seconds < 1:
        raise ValueError(f"misfire_grace_seconds must be >= 1, got {misfire_grace_seconds}")
    store = SQLAlchemyJobStore(engine=db.engine, tablename=JOBSTORE_TABLE)
    scheduler = BackgroundScheduler(
        jobstores={"default": store}, timezone=_dt.timezone.utc,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace_seconds})
    scheduler.start(paused=True)  # sync before anything due can run
    try:
        report = sync_schedules(scheduler, schedules, db.url, engine_version)
    except BaseException:
        scheduler.shutdown(wait=False)
        raise
    scheduler.resume()
    log.info("scheduler: %d schedule(s) (added %s, replaced %s, kept %s, removed %s)", len(schedules),
             report.added, report.replaced, report.kept, report.removed)
    return scheduler, report


def run_as_leader(db: Database, schedules: list[Schedule], engine_version: str, stop: threading.Event, *,
                  maintenance: Callable[[], object] | None = None, maintenance_every: float = 600.0,
                  check_seconds: float = 5.0,
                  on_scheduler: Callable[[BackgroundScheduler], None] | None = None) -> None:
    """Until ``stop``: wait for the ``scheduler`` lock; while holding it, run the
    scheduler and ``maintenance`` every ``maintenance_every`` seconds."""
    lock = LeaderLock(db, "scheduler")
    while not stop.is_set():
        try:
            leading = lock.try_acquire()
        except Exception:  # database unreachable: stand by and retry
            log.exception("scheduler: cannot ask for the lock")
            leading = False
        if not leading:
            stop.wait(check_seconds)
            continue
        log.info("scheduler: this process leads (scheduler and maintenance run here)")
        scheduler = None
        try:
            scheduler, _report = start_scheduler(db, schedules, engine_version)
            if on_scheduler is not None:
                on_scheduler(scheduler)
            next_maintenance = time.monotonic()
            while not stop.is_set() and lock.held():
                if maintenance is not None and time.monotonic() >= next_maintenance:
                    try:
                        log.info("maintenance: %s", maintenance())
                    except Exception:  # keep leading; the next round retries
                        log.exception("maintenance failed")
                    next_maintenance = time.monotonic() + maintenance_every
                stop.wait(check_seconds)
        except Exception:
            log.exception("scheduler: leading failed; standing by")
            stop.wait(check_seconds)
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            lock.release()
        if not stop.is_set():
            log.warning("scheduler: no longer leading; standing by")
