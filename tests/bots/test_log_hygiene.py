"""No secret reaches a log record: the project's logging set-up
(``shell.cli.configure_logging``) at DEBUG, a whole Telegram conversation against
the fake Bot API, every record captured (ours and the libraries': httpx request
URLs) and searched for the bot token. The Discord run is in
``tests/bots/discord/test_discord_log_hygiene.py``."""
from __future__ import annotations

import asyncio

import pytest

from storage import jobs
from tests.bots.conftest import TELEGRAM_TOKEN, finish_job, leaks, wait_for
from tests.fakes import telegram_updates as tgu
from tests.fakes.telegram_api import FakeTelegramServer

pytestmark = [pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning"),
              pytest.mark.timeout(180)]

def test_a_whole_telegram_run_at_debug_logs_no_token(project_logging, res, selfie_png, sticker_files):
    from tests.bots.test_telegram_flow import Chat, add_global_style, order_toon_pack, running_bot

    server = FakeTelegramServer(token=TELEGRAM_TOKEN)
    with server.serve_in_thread():
        user = server.add_user(tgu.user(424242, "Ada", username="ada"))
        add_global_style(res, "toon", selfie_png)
        chat = Chat(server, user)

        async def scenario() -> None:
            async with running_bot(res, server):
                await order_toon_pack(chat, selfie_png)
                finish_job(res, jobs.list_jobs(res.db, kind="make_pack")[0].id, sticker_files)
                await chat.reply_containing("https://t.me/addstickers/", timeout=30)
                await wait_for(lambda: server.calls_to("sendSticker"), what="sendSticker")

        asyncio.run(scenario())
    capture = project_logging
    assert any(r.name.startswith("httpx") for r in capture.records), "httpx did not log at DEBUG: nothing was checked"
    assert any("getUpdates" in line for line in capture.lines)
    secret = TELEGRAM_TOKEN.split(":", 1)[1]
    assert leaks(capture, [TELEGRAM_TOKEN, secret]) == []


def test_a_webhook_mode_run_at_debug_logs_neither_token_nor_secret(project_logging, tmp_path, monkeypatch):
    """Webhook mode: setWebhook carries the secret, forged requests are refused
    and logged; neither the token nor the webhook secret reaches a record."""
    from emoji3d.config import load_config
    from tests.bots.test_telegram_flow import Chat
    from tests.bots.test_telegram_modes import free_port, serving, write_config

    secret = "hook-secret_abcdefgh12345"
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", secret)
    server = FakeTelegramServer(token=TELEGRAM_TOKEN)
    with server.serve_in_thread():
        user = server.add_user(tgu.user(434343, "Ada"))
        port = free_port()
        cfg = load_config(write_config(tmp_path, f'''base_url = "{server.base_url}"
base_file_url = "{server.base_file_url}"
mode = "webhook"
webhook_url = "http://127.0.0.1:{port}/hook"
webhook_port = {port}
webhook_path = "/hook"
'''))
        chat = Chat(server, user)

        async def talk() -> None:
            await wait_for(lambda: server.webhook is not None, timeout=60, what="setWebhook")
            chat.command("privacy")
            await chat.reply_containing("What I store")
            forged = tgu.message_update(tgu.command_message(server.next_message_id(chat.cid), chat.chat, user,
                                                            "help", date=server.now()))
            assert await server.post_to_webhook(forged, secret=secret[:-1]) == 403

        with serving(cfg):
            asyncio.run(talk())
    capture = project_logging
    assert any("setWebhook" in line for line in capture.lines), "setWebhook was not logged: nothing was checked"
    assert any("refused" in line for line in capture.lines)
    assert leaks(capture, [TELEGRAM_TOKEN, TELEGRAM_TOKEN.split(":", 1)[1], secret]) == []
