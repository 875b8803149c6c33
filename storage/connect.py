"""Opening the storage that config.toml describes, the same way in every process."""
from __future__ import annotations

from emoji3d.config import Config, prepare_data_dir


def open_storage(cfg: Config):
    """(Database, BlobStore) for ``cfg``: migrations applied; blob backend (local folder or S3),
    limits and GC grace from config."""
    from storage.blobs import BlobStore
    from storage.db import open_database

    prepare_data_dir(cfg)
    db = open_database(cfg.database_url)
    try:
        return db, BlobStore(db, cfg.blob_location, max_bytes=cfg.blobs.max_blob_mb << 20,
                             gc_grace_seconds=cfg.blobs.gc_grace_seconds)
    except BaseException:  # e.g. the object store is unreachable: no pool left behind
        db.dispose()
        raise
