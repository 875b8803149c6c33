"""Shared test set-up.

- Storage fixtures (``db_url``, ``db``, ``blobs``): a fresh SQLite file per test, and
  PostgreSQL too when EMOJI3D_TEST_PG_URL is set (tables are dropped before each test).

- Tests run on the CPU with one intra-op thread per process: the CI machine
  has 2 cores, and several test processes (workers, schedulers) run at once.
- `gpu`-marked tests skip when CUDA is absent.
"""
from __future__ import annotations

import os
import pathlib

import pytest
import sqlalchemy as sa

from storage.blobs import BlobStore
from storage.db import open_database

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "reference"


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items):
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def reference_fixtures() -> pathlib.Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES


PG_URL = os.environ.get("EMOJI3D_TEST_PG_URL")
_TABLES = ["apscheduler_jobs", "blob_refs", "stickers", "pack_owner_names", "delivery_claims", "packs", "selfies", "artifacts", "styles", "delivery_refs", "jobs",
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
