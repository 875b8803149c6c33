"""Storage fixtures: a fresh SQLite file per test, or PostgreSQL when
EMOJI3D_TEST_PG_URL is set (tables are dropped before each test)."""
from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from storage.blobs import BlobStore
from storage.db import open_database

PG_URL = os.environ.get("EMOJI3D_TEST_PG_URL")
_TABLES = ["apscheduler_jobs", "blob_refs", "stickers", "packs", "selfies", "artifacts", "styles", "delivery_refs", "jobs",
           "communities", "users", "blobs", "schema_version"]


def reset_pg(url: str) -> None:
    eng = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with eng.begin() as conn:
        for t in _TABLES:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {t} CASCADE")
    eng.dispose()


@pytest.fixture(params=["sqlite"] + (["postgresql"] if PG_URL else []))
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'emoji3d.db'}"
    reset_pg(PG_URL)
    return PG_URL


@pytest.fixture
def db(db_url):
    d = open_database(db_url)
    yield d
    d.dispose()


@pytest.fixture
def blobs(db, tmp_path):
    return BlobStore(db, tmp_path / "blobs", max_bytes=1 << 20, gc_grace_seconds=60)
