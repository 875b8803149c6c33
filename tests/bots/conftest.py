"""Fixtures for the bot tests: a fresh database + blob store, real sticker files
from the engine's encoders (session-wide), the real face checker (the fake Bot API's
fixtures are in tests/conftest.py), and a helper that finishes a ``make_pack`` job the way the engine does (claim,
then complete with a real ``PackResult``)."""
from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import time
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from bots.core import BotResources
from emoji3d.config import Config, LimitsConfig
from emoji3d.orders import PackResult, StickerFiles
from storage import jobs
from storage.blobs import BlobStore
from storage.db import open_database
from tests.lifecycle import make_ready

EMOJIS = ("😀", "😮", "😉")


@pytest.fixture(scope="session")
def sticker_files() -> dict[str, Any]:
    """Three distinct Telegram video stickers and a video thumbnail (bytes),
    encoded by engine.stickers from synthetic RGBA frames."""
    from engine.stickers.encode import encode
    from tests.engine.stickers.content import cartoon

    videos = [encode(cartoon(6, 64, 64, period=7 + 5 * k), 10.0, "telegram_video").data for k in range(3)]
    thumb = encode(cartoon(4, 32, 32), 10.0, "telegram_thumb").data
    assert len(set(videos)) == 3
    return {"videos": videos, "thumb": thumb}


@pytest.fixture(scope="session")
def face_check() -> Any:
    from engine.face.analyze import FaceConfig, analyze_face
    from engine.face.landmarks import LandmarkDetector

    det = LandmarkDetector(max_faces=4)
    yield lambda rgb: analyze_face(rgb, FaceConfig(), det)
    det.close()


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def selfie_png() -> bytes:
    skdata = pytest.importorskip("skimage.data")
    return png_bytes(np.ascontiguousarray(skdata.astronaut()))


@pytest.fixture(scope="session")
def faceless_png() -> bytes:
    rng = np.random.default_rng(0)
    return png_bytes(rng.integers(90, 110, (256, 256, 3), dtype=np.uint8))


def make_resources(tmp_path: Any, face_check: Any, **limits: Any) -> BotResources:
    cfg = dataclasses.replace(Config(), limits=dataclasses.replace(LimitsConfig(), **limits))
    db = open_database(f"sqlite:///{tmp_path / 'bots.sqlite3'}")
    return BotResources(cfg, db, BlobStore(db, tmp_path / "blobs"), face_check)


@pytest.fixture
def res(tmp_path: Any, face_check: Any) -> BotResources:
    return make_resources(tmp_path, face_check)


# A quality report as the engine writes it (engine.render.quality): one measure weak, one not taken.
QUALITY = {"identity_pti": 0.62, "identity_stylized": 0.21, "multiview": None, "style_lpips": 0.35,
           "weak": ["identity_stylized"], "notes": ["multiview: the frontal render has no opaque pixels"]}


def finish_job(res: BotResources, job_id: int, files: dict[str, Any], *, preset: str = "slim",
               stage: tuple[str, float] | None = None) -> PackResult:
    """Play the engine: claim the job, optionally report a stage, then complete it
    with a PackResult whose sticker blobs are the given real files."""
    job = jobs.claim(res.db, "test-engine", 60, kinds=["make_pack"])
    assert job is not None and job.id == job_id, f"expected to claim job {job_id}, got {job}"
    if stage is not None:
        jobs.set_progress(res.db, job.id, job.lease_token, stage[0], stage[1])
    digests = [res.blobs.put_bytes(v) for v in files["videos"]]
    thumb = res.blobs.put_bytes(files["thumb"])
    result = PackResult(pack_id=job.payload["pack_id"], preset=preset,
                        stickers=[StickerFiles(i, f"s{i}", EMOJIS[i], {"telegram_video": d})
                                  for i, d in enumerate(digests)],
                        thumbnail={"telegram_thumb": thumb}, quality=dict(QUALITY))
    make_ready(res.db, job.payload["pack_id"], job.id)  # as the engine does before completing
    jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
    return result


async def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.03)


# ----------------------------------------------------------------------------- log hygiene

# Tokens shaped like real ones (long secrets), so the pattern-based redaction is
# exercised as well as redaction by value.
TELEGRAM_TOKEN = "7012345678:AAHk3l9Zq-Xw8_rT5uVbN2mLp0sQdEfGhIj"
DISCORD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.Zq8xW3vT1uR5yN7mK9pL2oJ4hG6fD0sA_bC-eQ"


class LogCapture(logging.Handler):
    """Keeps every record and its fully formatted text (message, traceback, stack)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def project_logging(monkeypatch) -> Iterator[LogCapture]:
    """``emoji3d -v``'s logging set-up with both tokens in the environment;
    restores the global logging state afterwards."""
    from shell.cli import configure_logging

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TELEGRAM_TOKEN)
    monkeypatch.setenv("DISCORD_BOT_TOKEN", DISCORD_TOKEN)
    root = logging.getLogger()
    saved_factory = logging.getLogRecordFactory()
    saved_root = (root.level, list(root.handlers))
    saved_levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
                    if isinstance(lg, logging.Logger)}
    configure_logging(verbose=True)
    root.setLevel(logging.DEBUG)  # under pytest root has handlers already, so basicConfig sets no level
    capture = LogCapture()
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        logging.setLogRecordFactory(saved_factory)
        root.setLevel(saved_root[0])
        for h in list(root.handlers):
            if h not in saved_root[1]:
                root.removeHandler(h)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def _leaks(capture: LogCapture, secrets: list[str]) -> list[str]:
    found = []
    for record, line in zip(capture.records, capture.lines):  # a formatted line holds the traceback too
        for s in secrets:
            if s in line:
                found.append(f"{record.name} {record.levelname}: {line[:300]}")
    return found


def leaks(capture: LogCapture, secrets: list[str]) -> list[str]:
    """Formatted log lines (tracebacks included) that contain one of ``secrets``."""
    found = []
    for record, line in zip(capture.records, capture.lines):
        for s in secrets:
            if s in line:
                found.append(f"{record.name} {record.levelname}: {line[:300]}")
    return found
