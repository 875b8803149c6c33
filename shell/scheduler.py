"""Persistent schedules: APScheduler 3.x with its job store in the project database.

Conventions
-----------
* Schedules are declared (config.toml ``[[schedules]]``) as :class:`Schedule`
  values. :func:`start_scheduler` syncs them into the store: new ones are
  added, changed ones replaced, undeclared ones removed, and unchanged ones
  kept *as stored* — so a run that fell due while no scheduler was running is
  still executed after a restart (within ``misfire_grace_seconds``; missed
  runs are coalesced into one).
* ``cron`` is a 5-field crontab (``minute hour day month day_of_week``) or
  6 fields with seconds first (``second minute hour day month day_of_week``),
  evaluated in UTC. Day-of-week must be ``*`` or names (``mon-fri``, ``sun``):
  APScheduler numbers days from Monday=0 while crontab uses Sunday=0, so
  numbers are refused rather than silently shifted by a day.
* The stored callable is the module-level :func:`run_action`, referenced by
  name, with JSON-like keyword arguments only (db URL, action, selector,
  engine version). APScheduler pickles these arguments into its own table
  ``apscheduler_jobs`` in the same database.
* Actions enqueue *batch* jobs of kind :data:`REGENERATE_KIND` with
  idempotency keys that include the pack and the style/engine version, so a
  re-run never duplicates work and interactive jobs still go first.

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
from dataclasses import dataclass, field
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from emoji3d.errors import ConfigError
from storage import jobs as q
from storage import packs
from storage.db import Database, open_database

log = logging.getLogger("shell.scheduler")

REGENERATE_KIND = "regenerate_pack"
ACTIONS = ("regenerate_style_packs", "regenerate_outdated_packs")
_SELECTOR_KEYS = {"regenerate_style_packs": {"styles", "limit"}, "regenerate_outdated_packs": {"limit"}}
_FUNC_REF = "shell.scheduler:run_action"
JOBSTORE_TABLE = "apscheduler_jobs"


@dataclass(frozen=True)
class Schedule:
    id: str
    cron: str
    action: str
    selector: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncReport:
    added: list[str]
    replaced: list[str]
    kept: list[str]
    removed: list[str]


# --------------------------------------------------------------------------- validation

def parse_cron(expr: str, where: str = "cron") -> CronTrigger:
    """A UTC :class:`CronTrigger` from 5 or 6 fields; ConfigError naming ``where`` otherwise."""
    fields = expr.split() if isinstance(expr, str) else []
    if len(fields) == 5:
        names = ("minute", "hour", "day", "month", "day_of_week")
    elif len(fields) == 6:
        names = ("second", "minute", "hour", "day", "month", "day_of_week")
    else:
        raise ConfigError(f"{where}: expected 5 cron fields (min hour day month dow) or 6 with seconds first, "
                          f"got {expr!r}")
    values = dict(zip(names, fields))
    if any(ch.isdigit() for ch in values["day_of_week"]):
        raise ConfigError(f"{where}: day of week must be '*' or names like mon-fri, got {values['day_of_week']!r}")
    try:
        return CronTrigger(timezone=_dt.timezone.utc, **values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc} (in {expr!r})") from None


def validate_schedule(s: Schedule) -> None:
    where = f"schedules[{s.id}]"
    if not s.id or not isinstance(s.id, str):
        raise ConfigError(f"schedules: every schedule needs a non-empty string id, got {s.id!r}")
    if s.action not in ACTIONS:
        raise ConfigError(f"{where}.action: expected one of {', '.join(ACTIONS)}, got {s.action!r}")
    parse_cron(s.cron, f"{where}.cron")
    if not isinstance(s.selector, dict):
        raise ConfigError(f"{where}.selector: expected a table, got {type(s.selector).__name__}")
    unknown = set(s.selector) - _SELECTOR_KEYS[s.action]
    if unknown:
        raise ConfigError(f"{where}.selector: unknown key {sorted(unknown)[0]!r} for {s.action} "
                          f"(allowed: {', '.join(sorted(_SELECTOR_KEYS[s.action]))})")
    styles = s.selector.get("styles")
    if styles is not None and (not isinstance(styles, list) or not all(isinstance(x, str) and x for x in styles)):
        raise ConfigError(f"{where}.selector.styles: expected a list of style names, got {styles!r}")
    limit = s.selector.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"{where}.selector.limit: expected an integer >= 1, got {limit!r}")


# --------------------------------------------------------------------------- actions

def regenerate_style_packs(db: Database, selector: dict[str, Any]) -> list[int]:
    """Enqueue regeneration of packs whose house style changed; returns job ids."""
    found = packs.packs_with_changed_style(db, style_names=selector.get("styles"), house_only=True)
    ids = []
    for pack, style_version in found[: selector.get("limit")]:
        ids.append(q.enqueue(
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
        ids.append(q.enqueue(
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
