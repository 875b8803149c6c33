"""Scheduled batch work as config.toml declares it (``[[schedules]]``), and its validation.

A :class:`Schedule` names a cron expression (UTC; 5 fields, or 6 with seconds
first; day of week by name only, since APScheduler numbers weekdays from
Monday = 0 where cron uses Sunday = 0) and an action with its selector. The
shell's scheduler (:mod:`shell.scheduler`) runs them; this module only says
what a valid one is, so a bad schedule stops start-up with one line.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from emoji3d.errors import ConfigError

ACTIONS = ("regenerate_style_packs", "regenerate_outdated_packs")
SELECTOR_KEYS = {"regenerate_style_packs": {"styles", "limit"}, "regenerate_outdated_packs": {"limit"}}


@dataclass(frozen=True)
class Schedule:
    id: str
    cron: str
    action: str = field(metadata={"choices": ACTIONS})
    selector: dict[str, Any] = field(default_factory=dict)


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
    unknown = set(s.selector) - SELECTOR_KEYS[s.action]
    if unknown:
        raise ConfigError(f"{where}.selector: unknown key {sorted(unknown)[0]!r} for {s.action} "
                          f"(allowed: {', '.join(sorted(SELECTOR_KEYS[s.action]))})")
    styles = s.selector.get("styles")
    if styles is not None and (not isinstance(styles, list) or not all(isinstance(x, str) and x for x in styles)):
        raise ConfigError(f"{where}.selector.styles: expected a list of style names, got {styles!r}")
    limit = s.selector.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"{where}.selector.limit: expected an integer >= 1, got {limit!r}")
