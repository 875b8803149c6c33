"""``emoji3d engine``: the long-lived engine process, configured by config.toml.

It opens the database and blob store, loads the networks once (through
:func:`engine.tasks.build_handlers`), then runs one job at a time until
SIGTERM, when it finishes or releases the current job (see engine.worker).
"""
from __future__ import annotations

import argparse
import logging

from emoji3d.config import Config, load_config, prepare_data_dir

from engine.worker import EngineSettings, run_engine
from storage.jobs import RetryPolicy

log = logging.getLogger("emoji3d.engine")


def settings_from_config(cfg: Config, worker_id: str | None = None) -> EngineSettings:
    return EngineSettings(
        db_url=cfg.database_url,
        blob_root=cfg.blob_location,
        worker_id=worker_id,
        lease_seconds=float(cfg.engine.lease_seconds),
        poll_interval=float(cfg.engine.poll_seconds),
        max_blob_bytes=cfg.blobs.max_blob_mb << 20,
        shutdown="release",
        retry=RetryPolicy(),
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="emoji3d engine", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="path to config.toml")
    p.add_argument("--worker-id", help="name of this worker in the jobs table (default host:pid)")
    p.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    p.add_argument("--exit-when-idle", action="store_true", help="exit when the queue is empty")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    prepare_data_dir(cfg)
    from engine import tasks

    settings = settings_from_config(cfg, args.worker_id)
    return run_engine(settings, factory=lambda: tasks.build_handlers(cfg),
                      max_jobs=args.max_jobs, exit_when_idle=args.exit_when_idle)
