"""Shared test set-up.

- Storage fixtures (``db_url``, ``db``, ``blobs``): a fresh SQLite file per test, and
  PostgreSQL too when EMOJI3D_TEST_PG_URL is set (tables are dropped before each test).
  ``blob_location`` (and so ``blobs``) is a fresh local folder, and a fresh prefix
  in a bucket of the S3 server at EMOJI3D_TEST_S3_ENDPOINT too when that is set
  (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). `.ci/run` starts
  both servers (tests/servers.py); without them only SQLite and the folder run.

- The fake Telegram Bot API (``telegram_server``, ``telegram_user``): shared by the fake's own
  tests (tests/fakes) and the bot tests (tests/bots), so they live here. The server runs on its
  own loop in a background thread, so it serves sync tests (python-telegram-bot driven with
  ``asyncio.run(...)``) and any event loop; tests/fakes/telegram_helpers.py has the helpers
  around it (``ptb_bot``, ``engine_sticker_verifier``).

- Tests run on the CPU with one intra-op thread per process: the CI machine
  has 2 cores, and several test processes (workers, schedulers) run at once.
- `gpu`-marked tests skip when CUDA is absent.
"""
from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from storage.blobs import BlobStore
from storage.db import open_database
from tests.fakes import telegram_updates as tgu
from tests.fakes.telegram_api import FakeTelegramServer

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
_TABLES = ["apscheduler_jobs", "blob_refs", "guild_emoji", "guild_stickers", "custom_emoji", "custom_emoji_sets", "stickers", "pack_owner_names", "delivery_claims", "packs", "selfies", "artifacts", "styles", "delivery_refs", "jobs",
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


S3_ENDPOINT = os.environ.get("EMOJI3D_TEST_S3_ENDPOINT")
S3_TEST_BUCKET = "emoji3d-test"


@pytest.fixture(scope="session")
def s3_bucket() -> str:
    """The test bucket on EMOJI3D_TEST_S3_ENDPOINT, made once per session."""
    import boto3

    client = boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=S3_TEST_BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return S3_TEST_BUCKET


@pytest.fixture(params=["local"] + (["s3"] if S3_ENDPOINT else []))
def blob_location(request, tmp_path) -> str:
    """Where a test's blobs live: a folder, or a fresh prefix of the test bucket."""
    if request.param == "local":
        return str(tmp_path / "blobs")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/{uuid.uuid4().hex}?endpoint_url={S3_ENDPOINT}&region=us-east-1"


@pytest.fixture
def blobs(db, blob_location):
    return BlobStore(db, blob_location, max_bytes=1 << 20, gc_grace_seconds=60)


@pytest.fixture
def telegram_server() -> Iterator[FakeTelegramServer]:
    server = FakeTelegramServer()
    with server.serve_in_thread():
        yield server


@pytest.fixture
def telegram_user(telegram_server: FakeTelegramServer) -> dict[str, Any]:
    """A user who has started the bot."""
    return telegram_server.add_user(tgu.user(424242, "Ada", username="ada"))
