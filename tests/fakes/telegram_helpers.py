"""Helpers around :class:`tests.fakes.telegram_api.FakeTelegramServer`; its pytest fixtures
(``telegram_server``, ``telegram_user``) are in tests/conftest.py.

``ptb_bot`` builds a real ``telegram.Bot`` pointed at a running fake;
``engine_sticker_verifier`` checks uploads with the engine's sticker verifier.
"""
from __future__ import annotations

from typing import Any

from tests.fakes.telegram_api import FakeTelegramServer, StickerVerifier

#: (sticker format, role) -> engine.stickers target names used by the deep verifier; a file passes
#: when it passes one of them (an upload may become a sticker or a custom emoji).
_ENGINE_TARGETS = {("video", "sticker"): ("telegram_video",),
                   ("static", "sticker"): ("telegram_static",),
                   ("video", "emoji"): ("telegram_emoji",),
                   ("video", "upload"): ("telegram_video", "telegram_emoji"),
                   ("static", "upload"): ("telegram_static",),
                   ("video", "thumbnail"): ("telegram_thumb",),
                   ("static", "thumbnail"): ("telegram_thumb",)}


def engine_sticker_verifier() -> StickerVerifier:
    """A ``sticker_verifier`` backed by ``engine.stickers.verify`` (decodes the file and
    checks codec, dimensions, fps, duration, alpha, audio). It applies emoji3d's product
    rules too (e.g. alpha required), stricter than Telegram. Animated (TGS) files have
    no engine target and pass. Failures read ``STICKER_FILE_INVALID: <codes>``."""
    from engine.stickers.verify import verify

    def check(data: bytes, fmt: str, role: str) -> str | None:
        targets = _ENGINE_TARGETS.get((fmt, role), ())
        reports = [verify(data, target) for target in targets]
        if not reports or any(r.ok for r in reports):
            return None
        return "STICKER_FILE_INVALID: " + ", ".join(v.code for v in reports[0].reasons)

    return check


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
