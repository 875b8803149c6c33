"""Build and run the Telegram ``Application``: every handler, the rate limiter,
the shared resources and the job notifier are wired here and nowhere else.

``run(cfg, stop_event)`` is what ``emoji3d serve`` starts in a thread: it opens
the database and blob store, loads the face detector once, polls Telegram and
watches jobs until ``stop_event`` (a ``threading.Event``) is set.
Tests call :func:`build_application` / :func:`serve` with a fake server's
``base_url`` and ``base_file_url``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from telegram import BotCommand, Update
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, MessageHandler, filters

from emoji3d.config import Config

from bots import redaction
from bots.core import BotResources, open_bot_resources
from bots.notify import Notifier
from bots.telegram import handlers
from bots.telegram.stickers import StickerSafeRateLimiter

log = logging.getLogger("emoji3d.telegram")

COMMANDS = (("start", "Start and give consent"), ("privacy", "What is stored and for how long"),
            ("mypacks", "Your sticker packs"), ("cancel", "Cancel the pack being made"),
            ("delete", "Delete all your data"), ("help", "How it works"))


@dataclass(frozen=True)
class AppOptions:
    base_url: str | None = None        # None = https://api.telegram.org/bot
    base_file_url: str | None = None
    progress_interval_s: float = 3.0   # at most one progress edit per job per interval
    poll_jobs_s: float = 1.0           # how often the notifier reads the jobs table
    poll_updates_s: float = 0.0        # getUpdates poll interval (long polling timeout below)
    long_poll_timeout_s: int = 10
    max_retries: int = 3               # RetryAfter retries for non-mutating calls
    retry_s: float = 30.0              # wait before retrying a failed delivery


def build_application(res: BotResources, token: str, opts: AppOptions = AppOptions()) -> Application:
    b = Application.builder().token(token).rate_limiter(StickerSafeRateLimiter(max_retries=opts.max_retries))
    if opts.base_url:
        b = b.base_url(opts.base_url)
    if opts.base_file_url:
        b = b.base_file_url(opts.base_file_url)
    app = b.build()
    sender = handlers.TelegramSender(app.bot, res)
    app.bot_data["res"] = res
    app.bot_data["sender"] = sender
    app.bot_data["notifier"] = Notifier(res, handlers.PLATFORM, sender, min_interval=opts.progress_interval_s,
                                        retry_seconds=opts.retry_s)

    app.add_handler(CommandHandler("start", handlers.start))
    app.add_handler(CommandHandler("privacy", handlers.privacy))
    app.add_handler(CommandHandler("help", handlers.help_))
    app.add_handler(CommandHandler("mypacks", handlers.mypacks))
    app.add_handler(CommandHandler("delete", handlers.delete))
    app.add_handler(CommandHandler("cancel", handlers.on_cancel))
    app.add_handler(CommandHandler("housestyle", handlers.housestyle))
    app.add_handler(CallbackQueryHandler(handlers.on_consent, pattern=r"^consent$"))
    app.add_handler(CallbackQueryHandler(handlers.on_style, pattern=r"^style:(own|\d+)$"))
    app.add_handler(CallbackQueryHandler(handlers.on_go, pattern=r"^go:(o[A-Za-z0-9_-]{43}|\d+):[a-z]+$"))
    app.add_handler(CallbackQueryHandler(handlers.on_cancel, pattern=r"^cancel:\d+$"))
    app.add_handler(CallbackQueryHandler(handlers.on_delete, pattern=r"^del:(yes|no)$"))
    app.add_handler(MessageHandler(filters.PHOTO | filters.Document.ALL, handlers.on_image))
    app.add_error_handler(handlers.on_error)
    return app


async def serve(app: Application, stop: asyncio.Event, opts: AppOptions = AppOptions()) -> None:
    """Poll updates and watch jobs until ``stop`` is set; then shut down cleanly."""
    await app.initialize()
    try:
        await app.bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS])
    except Exception:  # noqa: BLE001 - cosmetic
        log.warning("setMyCommands failed", exc_info=True)
    await app.start()
    await app.updater.start_polling(poll_interval=opts.poll_updates_s, timeout=opts.long_poll_timeout_s,
                                    allowed_updates=Update.ALL_TYPES)
    notifier: Notifier = app.bot_data["notifier"]
    task = asyncio.create_task(notifier.run(stop, opts.poll_jobs_s), name="telegram-notifier")
    try:
        await stop.wait()
    finally:
        await task
        await app.updater.stop()
        await app.stop()
        await app.shutdown()


def run(cfg: Config, stop_event: threading.Event, opts: AppOptions = AppOptions()) -> None:
    """Blocking entry point for ``emoji3d serve`` (runs in its own thread)."""
    token = cfg.telegram_token.reveal()
    if not token:
        raise RuntimeError("TELEGRAM_BOT_TOKEN is not set")
    redaction.install([token])  # also when started without the CLI's logging set-up
    res, close = open_bot_resources(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(target=lambda: (stop_event.wait(), loop.call_soon_threadsafe(stop.set)),
                         name="telegram-stop", daemon=True).start()
        await serve(build_application(res, token, opts), stop, opts)

    try:
        asyncio.run(main())
    finally:
        close()
