"""One Telegram bot process, as ``emoji3d serve`` runs it, for the multi-process
tests: ``python -m tests.bots.telegram_replica CONFIG_PATH CLAIM_SECONDS``.

It loads CONFIG_PATH (tokens and the webhook secret from the environment), runs
``bots.telegram.app.run`` with the config's options and short notifier
intervals (so a test does not wait a minute for a rescan), and stops cleanly on
SIGTERM. SIGKILL is how a test crashes it."""
from __future__ import annotations

import dataclasses
import signal
import sys
import threading


def main(argv: list[str]) -> int:
    from bots.telegram.app import AppOptions, run
    from emoji3d.config import load_config
    from shell.cli import configure_logging

    config_path, claim_s = argv[0], float(argv[1])
    configure_logging(verbose=False)
    cfg = load_config(config_path)
    opts = dataclasses.replace(AppOptions.from_config(cfg), progress_interval_s=0.0, poll_jobs_s=0.1,
                               rescan_s=0.3, retry_s=0.3, claim_s=claim_s)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run(cfg, stop, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
