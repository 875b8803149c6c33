"""``emoji3d serve``: the enabled chat front ends, the scheduler, and a supervised engine.

The engine runs as its own process (``emoji3d engine``), restarted by
:class:`~shell.supervisor.Supervisor` if it dies. Front ends and the
scheduler run here; they talk to the engine only through the database queue.
Several serve processes may share one database: the scheduler and the
hourly maintenance run in one of them at a time (shell.scheduler.run_as_leader).
SIGTERM/SIGINT stop everything in order: front ends and scheduler first (no
new work), then the engine, which finishes or releases its current job.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from emoji3d.config import Config, enabled_frontends, load_config, prepare_data_dir
from storage.connect import open_storage
from shell.supervisor import Supervisor

log = logging.getLogger("shell.commands.serve")

# front end name -> module exposing run(cfg, stop_event) (blocking until stop_event is set)
FRONTENDS = {"telegram": "bots.telegram.app", "discord": "bots.discord.app"}


def engine_argv(config_path: str | None) -> list[str]:
    argv = [sys.executable, "-m", "shell.cli"]
    if config_path:
        argv += ["--config", config_path]
    return argv + ["engine"]


def _start_frontends(cfg: Config, stop: threading.Event) -> list[threading.Thread]:
    enabled, notices = enabled_frontends(cfg)
    for line in notices:
        print(line, flush=True)
    threads = []
    for name in enabled:
        try:
            module = importlib.import_module(FRONTENDS[name])
        except ModuleNotFoundError as exc:
            if exc.name and FRONTENDS[name].startswith(exc.name):
                print(f"{name}: token is set, but this build has no {name} front end yet", flush=True)
                continue
            raise
        t = threading.Thread(target=module.run, args=(cfg, stop), name=f"frontend-{name}", daemon=True)
        t.start()
        threads.append(t)
    return threads


def _lead(cfg: Config, db, blobs, stop: threading.Event) -> None:
    """Scheduler and maintenance, in whichever serve process holds the scheduler lock."""
    from emoji3d.orders import ENGINE_VERSION
    from shell.scheduler import run_as_leader

    run_as_leader(db, list(cfg.schedules), ENGINE_VERSION, stop,
                  maintenance=lambda: maintenance_once(cfg, db, blobs))


def maintenance_once(cfg: Config, db, blobs) -> dict:
    """Privacy and disk hygiene: expired selfies, unused per-user artifacts, old avatars, unreferenced blobs."""
    from storage.maintenance import run_maintenance

    return run_maintenance(db, blobs, cfg.privacy.artifact_retention_days * 86400.0)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="emoji3d serve", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="path to config.toml")
    p.add_argument("--no-engine", action="store_true", help="do not start an engine (one runs elsewhere)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    prepare_data_dir(cfg)

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from emoji3d.images import DecodeLimits
    from engine.face.analyze import FaceChecker, FaceConfig
    from storage.style_catalog import sync_global_styles

    db, blobs = open_storage(cfg)
    with FaceChecker(FaceConfig.from_limits(cfg.limits)) as face_check:  # new or changed exemplars need a face
        synced = sync_global_styles(db, blobs, cfg.styles_dir, DecodeLimits.from_config(cfg.limits), face_check=face_check)
    for style, what in synced:
        if what != "unchanged":
            print(f"style {style.name}: {what} (finetune queued)", flush=True)
    engine = None
    fatal: list[str] = []

    def engine_cannot_run(reason: str) -> None:
        fatal.append(reason)
        stop.set()

    if not args.no_engine:
        engine = Supervisor(
            "engine", engine_argv(args.config),
            backoff_seconds=cfg.engine.restart_backoff_seconds,
            grace_seconds=float(cfg.engine.lease_seconds),
            on_fatal=engine_cannot_run,
        )
        engine.start()
    leader = threading.Thread(target=_lead, args=(cfg, db, blobs, stop), name="scheduler", daemon=True)
    leader.start()
    threads = _start_frontends(cfg, stop)
    print("serving; stop with Ctrl-C or SIGTERM", flush=True)
    stop.wait()

    for t in threads:
        t.join(timeout=30)
    leader.join(timeout=30)
    code = engine.stop() if engine else 0
    log.info("engine stopped with code %s", code)
    db.dispose()
    if fatal:
        print(f"stopped: the engine cannot run: {fatal[0]}", file=sys.stderr, flush=True)
        return 2
    print("stopped", flush=True)
    return 0
