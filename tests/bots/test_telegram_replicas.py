"""Several Telegram bot processes against one database (webhook replicas behind
one proxy): real processes (``tests/bots/telegram_replica.py``), one SQLite file,
one fake Bot API. Each pack is delivered exactly once, and a delivery whose
process was killed half way is finished by another once its claim lapsed."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from bots import core
from bots.core import BotResources
from emoji3d.config import load_config
from storage import jobs, packs, users
from storage import styles as st
from storage.connect import open_storage
from tests.bots.conftest import finish_job
from tests.fakes import telegram_updates as tgu
from tests.fakes.telegram_api import FakeTelegramServer

pytestmark = [pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
SECRET = "replica-secret_42"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Replicas:
    """Bot processes sharing ``tmp_path``'s database, each with its own webhook port."""

    def __init__(self, tmp_path: Path, server: FakeTelegramServer) -> None:
        self.tmp, self.server = tmp_path, server
        self.procs: dict[str, subprocess.Popen] = {}

    def config(self, name: str) -> Path:
        port = _free_port()
        path = self.tmp / f"{name}.toml"
        path.write_text(f'''[paths]
data_dir = "{self.tmp / 'data'}"

[discord]
enabled = false

[telegram]
base_url = "{self.server.base_url}"
base_file_url = "{self.server.base_file_url}"
mode = "webhook"
webhook_url = "http://127.0.0.1:{port}/tg"
webhook_port = {port}
webhook_path = "/tg"
''', encoding="utf-8")
        return path

    def start(self, name: str, claim_s: float) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO), TELEGRAM_BOT_TOKEN=self.server.token,
                   TELEGRAM_WEBHOOK_SECRET=SECRET, OMP_NUM_THREADS="1")
        log = open(self.tmp / f"{name}.log", "ab")
        before = len(self.server.calls_to("setWebhook"))
        proc = subprocess.Popen([sys.executable, "-m", "tests.bots.telegram_replica", str(self.config(name)),
                                 str(claim_s)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        _wait(lambda: len(self.server.calls_to("setWebhook")) > before or proc.poll() is not None, 90,
              f"replica {name} to start")
        assert proc.poll() is None, self.log(name)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextlib.contextmanager
def replicas(tmp_path: Path, server: FakeTelegramServer) -> Iterator[Replicas]:
    r = Replicas(tmp_path, server)
    try:
        yield r
    finally:
        r.stop_all()


def _resources(tmp_path: Path, face_check: Any) -> BotResources:
    cfg = load_config(_parent_config(tmp_path))
    db, blobs = open_storage(cfg)
    return BotResources(cfg, db, blobs, face_check)


def _parent_config(tmp_path: Path) -> Path:
    path = tmp_path / "parent.toml"
    path.write_text(f'[paths]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    return path


def _order(res: BotResources, server: FakeTelegramServer, uid: int, style: st.Style, selfie: bytes) -> int:
    server.add_user(tgu.user(uid, f"U{uid}"))
    user = core.ensure_user(res, "telegram", str(uid))
    core.give_consent(res, user)
    user = users.get_user(res.db, user.id)
    core.accept_selfie(res, user, selfie)
    return core.place_order(res, user, "telegram", preset="full", style_id=style.id).job_id


def _link_messages(server: FakeTelegramServer, uid: int) -> list[dict]:
    return [m for m in server.messages_in(uid) if "https://t.me/addstickers/" in m.get("text", "")]


def test_two_replicas_deliver_each_pack_exactly_once(tmp_path, face_check, selfie_png, sticker_files):
    res = _resources(tmp_path, face_check)
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    server = FakeTelegramServer()
    uids = [81001, 81002, 81003, 81004]
    with server.serve_in_thread(), replicas(tmp_path, server) as r:
        r.start("a", claim_s=10.0)
        r.start("b", claim_s=10.0)
        job_ids = [_order(res, server, uid, style, selfie_png) for uid in uids]
        time.sleep(1.0)  # both replicas rescan and watch every job meanwhile
        for job_id in job_ids:
            finish_job(res, job_id, sticker_files)
        _wait(lambda: all(packs.get_pack(res.db, jobs.get_job(res.db, j).payload["pack_id"]).status == "published"
                          for j in job_ids), 90, "every pack published")
        time.sleep(1.5)  # room for a second delivery, if one were coming
        for uid in uids:
            assert r.procs["a"].poll() is None and r.procs["b"].poll() is None, r.log("a") + r.log("b")
    for uid, job_id in zip(uids, job_ids):
        pack = packs.get_pack(res.db, jobs.get_job(res.db, job_id).payload["pack_id"])
        creates = [c for c in server.calls_to("createNewStickerSet") if c.params["name"] == pack.platform_set_name]
        assert len(creates) == 1, f"user {uid}: {len(creates)} createNewStickerSet calls"
        assert len(_link_messages(server, uid)) == 1, [m.get("text") for m in server.messages_in(uid)]
        assert len([m for m in server.messages_in(uid) if "text" in m]) == 1  # one progress message, edited
        assert len([c for c in server.calls_to("sendSticker") if int(c.params["chat_id"]) == uid]) == 1
        assert len(server.sticker_set_json(pack.platform_set_name)["stickers"]) == 3
    assert len(server.calls_to("uploadStickerFile")) == 3 * len(uids)


def test_a_delivery_whose_process_died_is_finished_by_another(tmp_path, face_check, selfie_png, sticker_files):
    res = _resources(tmp_path, face_check)
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    server = FakeTelegramServer()
    uid = 82001
    with server.serve_in_thread(), replicas(tmp_path, server) as r:
        a = r.start("a", claim_s=2.0)
        job_id = _order(res, server, uid, style, selfie_png)
        server.inject("uploadStickerFile", "delay", delay_s=60.0)  # replica a hangs mid-publish ...
        finish_job(res, job_id, sticker_files)
        _wait(lambda: server.calls_to("uploadStickerFile"), 60, "replica a publishing")
        a.kill()  # ... and dies there (SIGKILL: no clean release of its claim)
        a.wait(10)
        r.start("b", claim_s=2.0)
        pack_id = jobs.get_job(res.db, job_id).payload["pack_id"]
        _wait(lambda: packs.get_pack(res.db, pack_id).status == "published", 90, "replica b to deliver")
        time.sleep(1.0)
    pack = packs.get_pack(res.db, pack_id)
    assert len(server.sticker_set_json(pack.platform_set_name)["stickers"]) == 3
    assert len([c for c in server.calls_to("createNewStickerSet") if c.status == 200]) == 1
    assert len(_link_messages(server, uid)) == 1
