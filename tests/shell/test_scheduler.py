"""Scheduler: schedule sync, actions, and survival of a restart with real processes."""
from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import sqlalchemy as sa

from emoji3d.errors import ConfigError
from emoji3d.schedules import Schedule, parse_cron
from shell.scheduler import REGENERATE_KIND, regenerate_outdated_packs, regenerate_style_packs, start_scheduler
from storage import jobs
from storage import packs, styles, users
from storage.blobs import BlobStore
from storage.db import open_database
from tests.storage.procs import proc_scheduler, run_spawned
from tests.lifecycle import make_ready


@pytest.fixture
def world(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    db = open_database(url)
    blobs = BlobStore(db, tmp_path / "blobs")
    u = users.get_or_create_user(db, "telegram", "1")
    toon = styles.add_style(db, "toon", blobs.put_bytes(b"toon v1"), status="ready")
    other = styles.add_style(db, "ink", blobs.put_bytes(b"ink v1"), status="ready")
    p_changed = packs.create_pack(db, u.id, toon.id, toon.version, 0.8, "0.1.0")
    p_ink = packs.create_pack(db, u.id, other.id, other.version, 0.8, "0.1.0")
    p_old = packs.create_pack(db, u.id, other.id, other.version, 0.8, "0.0.9")
    p_pending = packs.create_pack(db, u.id, toon.id, toon.version, 0.8, "0.0.1")  # not live: never touched
    for p in (p_changed, p_ink, p_old):
        make_ready(db, p.id)
    styles.set_exemplar(db, toon.id, blobs.put_bytes(b"toon v2"))
    styles.set_status(db, toon.id, "ready")
    yield {"db": db, "url": url, "changed": p_changed.id, "old": p_old.id, "pending": p_pending.id,
           "ink": p_ink.id, "tmp": tmp_path}
    db.dispose()


def _regen_jobs(db):
    return sorted((j.payload["pack_id"], j.payload["reason"]) for j in jobs.list_jobs(db, kind=REGENERATE_KIND))


def test_style_change_bumps_version_and_selects_packs(world):
    db = world["db"]
    assert styles.find_style(db, "toon").version == 2
    ids = regenerate_style_packs(db, {})
    assert _regen_jobs(db) == [(world["changed"], "style_changed")]
    assert regenerate_style_packs(db, {}) == ids  # idempotent
    job = jobs.get_job(db, ids[0])
    assert job.priority == "batch" and job.payload["style_version"] == 2 and job.payload["from_style_version"] == 1
    assert regenerate_style_packs(db, {"styles": ["ink"]}) == []


def test_outdated_engine_packs_selected_by_version_order(world):
    db = world["db"]
    ids = regenerate_outdated_packs(db, {}, "0.1.0")
    assert _regen_jobs(db) == [(world["old"], "engine_updated")]
    assert regenerate_outdated_packs(db, {}, "0.1.0") == ids
    assert len(regenerate_outdated_packs(db, {}, "0.10.0")) == 3  # numeric, not string, order
    assert len(regenerate_outdated_packs(db, {"limit": 1}, "0.11")) == 1


def test_interactive_jobs_go_before_scheduled_batch_jobs(world):
    db = world["db"]
    regenerate_outdated_packs(db, {}, "0.2.0")
    inter = jobs.enqueue(db, "make", {}, "user-make")
    assert jobs.claim(db, "w", 30).id == inter
    assert jobs.claim(db, "w", 30).kind == REGENERATE_KIND


@pytest.mark.parametrize("sched,msg", [
    (Schedule("a", "* * *", "regenerate_style_packs"), "expected 5 cron fields"),
    (Schedule("a", "0 3 * * 1", "regenerate_style_packs"), "names like mon-fri"),
    (Schedule("a", "0 99 * * *", "regenerate_style_packs"), "schedules\\[a\\].cron"),
    (Schedule("a", "0 3 * * *", "regenerate_everything"), "schedules\\[a\\].action"),
    (Schedule("a", "0 3 * * *", "regenerate_outdated_packs", {"styles": ["x"]}), "unknown key 'styles'"),
    (Schedule("a", "0 3 * * *", "regenerate_style_packs", {"limit": 0}), "limit"),
])
def test_bad_schedules_name_the_key(world, sched, msg):
    with pytest.raises(ConfigError, match=msg):
        start_scheduler(world["db"], [sched], "0.1.0")


def test_sync_adds_keeps_replaces_and_removes(world):
    db = world["db"]
    a = Schedule("nightly-style", "0 3 * * *", "regenerate_style_packs", {"styles": ["toon"]})
    b = Schedule("weekly-engine", "0 4 * * sun", "regenerate_outdated_packs")
    s1, r1 = start_scheduler(db, [a, b], "0.1.0")
    next_a = s1.get_job(a.id).next_run_time
    s1.shutdown()
    assert (sorted(r1.added), r1.kept) == (["nightly-style", "weekly-engine"], [])
    s2, r2 = start_scheduler(db, [a, b], "0.1.0")
    assert sorted(r2.kept) == ["nightly-style", "weekly-engine"] and s2.get_job(a.id).next_run_time == next_a
    s2.shutdown()
    a2 = Schedule("nightly-style", "0 5 * * *", "regenerate_style_packs", {"styles": ["toon"]})
    s3, r3 = start_scheduler(db, [a2], "0.1.0")
    assert (r3.replaced, r3.removed) == (["nightly-style"], ["weekly-engine"])
    assert s3.get_job(a.id).next_run_time.hour == 5 and s3.get_job(b.id) is None
    s3.shutdown()
    s4, r4 = start_scheduler(db, [a2], "0.2.0")  # a new engine version changes the stored arguments
    assert r4.replaced == ["nightly-style"]
    s4.shutdown()
    with pytest.raises(ConfigError, match="duplicate id"):
        start_scheduler(db, [a, a], "0.1.0")


def _cron_at(t: float) -> str:
    d = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return f"{d.second} {d.minute} {d.hour} * * *"


def test_scheduled_regeneration_survives_restart_and_fires(world):
    """Process A stores two schedules and exits before either is due. One falls
    due while no scheduler runs; process B, started later with the same
    declarations, runs it on start (missed run) and runs the other on time."""
    db, url, tmp = world["db"], world["url"], world["tmp"]
    t0 = time.time()
    t_missed, t_live = int(t0) + 8, int(t0) + 16
    declared = [
        {"id": "style-refresh", "cron": _cron_at(t_missed), "action": "regenerate_style_packs",
         "selector": {"styles": ["toon"]}},
        {"id": "engine-refresh", "cron": _cron_at(t_live), "action": "regenerate_outdated_packs", "selector": {}},
    ]
    run_spawned([(proc_scheduler, url, declared, "0.1.0", 0.0, str(tmp / "a.json"))], tmp / "go-a")
    assert time.time() < t_missed - 0.5, "scheduler process A was too slow to start; machine overloaded"
    assert sorted(json.loads((tmp / "a.json").read_text())["added"]) == ["engine-refresh", "style-refresh"]
    with db.read() as c:
        stored = dict(c.execute(sa.text("SELECT id, next_run_time FROM apscheduler_jobs")).all())
    assert stored == {"style-refresh": pytest.approx(t_missed), "engine-refresh": pytest.approx(t_live)}
    assert _regen_jobs(db) == []
    # B is spawned now and starts its scheduler at t_missed + 1: its imports (seconds on a loaded
    # machine; under CI they once took B past t_live + 3) happen while it waits
    run_spawned([(proc_scheduler, url, declared, "0.1.0", t_live + 3, str(tmp / "b.json"), t_missed + 1)],
                tmp / "go-b")
    b = json.loads((tmp / "b.json").read_text())
    assert sorted(b["kept"]) == ["engine-refresh", "style-refresh"]
    assert b["started_at"] < t_live - 1, "scheduler process B was too slow to start; machine overloaded"
    by_reason = {j.payload["reason"]: j for j in jobs.list_jobs(db, kind=REGENERATE_KIND)}
    assert set(by_reason) == {"style_changed", "engine_updated"}
    assert by_reason["style_changed"].payload["pack_id"] == world["changed"]
    # the missed run, executed on start: nothing ran while no scheduler was up
    assert b["started_at"] <= by_reason["style_changed"].created_at < t_live
    assert by_reason["engine_updated"].payload["pack_id"] == world["old"]
    assert by_reason["engine_updated"].created_at >= t_live  # on time, not before
    assert all(j.priority == "batch" for j in by_reason.values())


def test_parse_cron_accepts_seconds_field():
    trig = parse_cron("*/2 * * * * *")
    now = dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc)
    assert trig.get_next_fire_time(None, now).second == 2
