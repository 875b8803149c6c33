"""Telegram deployment modes, configured through config.toml only and run by
``bots.telegram.app.run`` as ``emoji3d serve`` runs it, against the fake Bot API:
a custom Bot API server (``base_url`` / ``base_file_url``) and webhook mode
(the fake POSTs updates to the bot; a wrong or missing secret is refused)."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

from emoji3d.config import Config, load_config
from emoji3d.errors import ConfigError
from emoji3d.texts import text
from tests.bots.conftest import wait_for
from tests.bots.test_telegram_flow import Chat, buttons
from tests.fakes import telegram_updates as tgu
from tests.fakes.telegram_api import FakeTelegramServer

pytestmark = [pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning"),
              pytest.mark.timeout(120)]

WEBHOOK_SECRET = "wh-secret_0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, telegram_table: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[paths]\ndata_dir = "data"\n\n[discord]\nenabled = false\n\n[telegram]\n{telegram_table}\n',
                    encoding="utf-8")
    return path


@contextlib.contextmanager
def serving(cfg: Config) -> Iterator[threading.Thread]:
    """``run(cfg, stop_event)`` in a thread, as ``emoji3d serve`` starts it."""
    from bots.telegram.app import run

    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(cfg, stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    try:
        yield t
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive(), "run() did not return after stop"
    assert errors == [], errors


def test_a_custom_bot_api_server_from_config(tmp_path, telegram_server: FakeTelegramServer, telegram_user,
                                             selfie_png):
    """base_url / base_file_url point the bot at another server: every call, and
    the selfie download, go there."""
    cfg = load_config(write_config(tmp_path, f'base_url = "{telegram_server.base_url}"\n'
                                             f'base_file_url = "{telegram_server.base_file_url}"\n'),
                      env={"TELEGRAM_BOT_TOKEN": telegram_server.token})
    assert cfg.telegram.base_url == telegram_server.base_url and cfg.telegram.mode == "polling"
    chat = Chat(telegram_server, telegram_user)

    async def talk() -> None:
        chat.command("start")
        welcome = await chat.reply_containing("Do you agree", timeout=60)
        chat.press(welcome, buttons(welcome)[text("consent_button")])
        await chat.reply_containing(text("consent_thanks"))
        chat.photo(selfie_png)  # downloaded from base_file_url
        await chat.reply_containing(text("selfie_ok"), timeout=60)

    with serving(cfg):
        asyncio.run(talk())
    assert telegram_server.calls_to("getUpdates") and telegram_server.calls_to("getFile")


def test_webhook_mode_behind_a_proxy_refuses_a_wrong_or_missing_secret(tmp_path, telegram_server, telegram_user):
    port = free_port()
    cfg = load_config(write_config(tmp_path, f'''base_url = "{telegram_server.base_url}"
base_file_url = "{telegram_server.base_file_url}"
mode = "webhook"
webhook_url = "http://127.0.0.1:{port}/tg-hook"
webhook_listen = "127.0.0.1"
webhook_port = {port}
webhook_path = "/tg-hook"
'''), env={"TELEGRAM_BOT_TOKEN": telegram_server.token, "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET})
    chat = Chat(telegram_server, telegram_user)
    url = f"http://127.0.0.1:{port}/tg-hook"

    async def talk() -> None:
        await wait_for(lambda: telegram_server.webhook is not None, timeout=60, what="setWebhook")
        assert telegram_server.webhook == {"url": url, "secret_token": WEBHOOK_SECRET, "max_connections": 40,
                                           "ip_address": None}
        chat.command("privacy")  # the fake posts it with the right secret
        await chat.reply_containing("What I store")
        forged = tgu.message_update(tgu.command_message(telegram_server.next_message_id(chat.cid), chat.chat,
                                                        telegram_user, "help", date=telegram_server.now()))
        assert await telegram_server.post_to_webhook(forged, secret="not-the-secret") == 403
        assert await telegram_server.post_to_webhook(forged, secret=None) == 403
        assert await telegram_server.post_to_webhook({"not": "an update"}, secret=WEBHOOK_SECRET) == 400
        await asyncio.sleep(0.5)
        assert not any("Send a selfie to start" in t for t in chat.texts())  # the forged /help was not answered

    with serving(cfg):
        asyncio.run(talk())
    assert telegram_server.calls_to("getUpdates") == []
    assert all(p.status == 200 for p in telegram_server.webhook_posts)
    assert telegram_server.webhook is not None  # a stopping replica leaves the webhook to the others


def test_webhook_mode_needs_its_url_and_secret(tmp_path):
    with pytest.raises(ConfigError, match="telegram.webhook_url"):
        load_config(write_config(tmp_path, 'mode = "webhook"\n'), env={})
    cfg = load_config(write_config(tmp_path, 'mode = "webhook"\nwebhook_url = "https://bot.example.com/tg"\n'),
                      env={"TELEGRAM_BOT_TOKEN": "1:x"})
    from bots.telegram.app import run

    with pytest.raises(RuntimeError, match="TELEGRAM_WEBHOOK_SECRET"):
        run(cfg, threading.Event())
    assert not cfg.telegram_webhook_secret  # and it never prints
    assert "wh" not in repr(load_config(write_config(tmp_path, 'mode = "webhook"\nwebhook_url = "https://b/t"\n'),
                                        env={"TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET}))


def test_a_local_bot_api_server_hands_files_over_on_disk(tmp_path, selfie_png):
    """A telegram-bot-api started with --local (no 20 MB limit): getFile answers
    with a path on the server's disk and the bot reads the selfie there, no
    setting needed beyond base_url (the bot must see that disk)."""
    server = FakeTelegramServer(local_dir=tmp_path / "tg-server")
    with server.serve_in_thread():
        user = server.add_user(tgu.user(515151, "Lin"))
        cfg = load_config(write_config(tmp_path, f'base_url = "{server.base_url}"\n'
                                                 f'base_file_url = "{server.base_file_url}"\n'),
                          env={"TELEGRAM_BOT_TOKEN": server.token})
        chat = Chat(server, user)

        async def talk() -> None:
            chat.command("start")
            welcome = await chat.reply_containing("Do you agree", timeout=60)
            chat.press(welcome, buttons(welcome)[text("consent_button")])
            await chat.reply_containing(text("consent_thanks"))
            chat.photo(selfie_png)
            await chat.reply_containing(text("selfie_ok"), timeout=60)

        with serving(cfg):
            asyncio.run(talk())
    assert server.calls_to("getFile") and server.file_downloads == 0
    assert list((tmp_path / "tg-server").rglob("*.jpg"))
