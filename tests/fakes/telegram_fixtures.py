"""pytest fixtures around :class:`tests.fakes.telegram_api.FakeTelegramServer`.

Import them into a conftest with
``from tests.fakes.telegram_fixtures import telegram_server, telegram_user  # noqa: F401``.

``telegram_server`` runs the fake on its own loop in a background thread, so it works
from sync tests (drive python-telegram-bot with ``asyncio.run(...)``) and from any
event loop. ``ptb_bot`` builds a real ``telegram.Bot`` pointed at a running fake.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes import telegram_updates as tgu
from tests.fakes.telegram_api import FakeTelegramServer


def ptb_bot(server: FakeTelegramServer, **kwargs: Any) -> Any:
    """A real ``telegram.Bot`` (or ``ExtBot`` when ``rate_limiter`` is given) using the
    fake's URLs. Use it as ``async with ptb_bot(server) as bot:``."""
    if "rate_limiter" in kwargs:
        from telegram.ext import ExtBot

        return ExtBot(server.token, base_url=server.base_url,
                      base_file_url=server.base_file_url, **kwargs)
    from telegram import Bot

    return Bot(server.token, base_url=server.base_url, base_file_url=server.base_file_url,
               **kwargs)


@pytest.fixture
def telegram_server() -> Iterator[FakeTelegramServer]:
    server = FakeTelegramServer()
    with server.serve_in_thread():
        yield server


@pytest.fixture
def telegram_user(telegram_server: FakeTelegramServer) -> dict[str, Any]:
    """A user who has started the bot."""
    return telegram_server.add_user(tgu.user(424242, "Ada", username="ada"))
