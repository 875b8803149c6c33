"""One test engine process for a namespace host: ``engine.worker.run_engine`` with the
queue tests' stand-in handlers, given a blob *location* (an ``s3://`` URL here).

``python -m engine.worker --blobs`` passes its value through ``pathlib.Path``, which
folds the ``//`` of a URL, so this launcher hands the location to the engine as is.

    python -m tests.multihost.engine_host DB_URL BLOB_LOCATION WORKER_ID LEASE_SECONDS
"""
from __future__ import annotations

import logging
import os
import sys

from engine.worker import EngineSettings, run_engine


def main(argv: list[str]) -> int:
    db_url, location, worker_id, lease = argv
    logging.basicConfig(level=os.environ.get("EMOJI3D_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_engine(EngineSettings(db_url=db_url, blob_root=location, worker_id=worker_id,
                                     handlers_factory="tests.storage.jobhandlers:factory",
                                     lease_seconds=float(lease), poll_interval=0.1))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
