"""Build and run the Telegram ``Application``: every handler, the rate limiter,
the shared resources and the job notifier are wired here and nowhere else.

``run(cfg, stop_event)`` is what ``emoji3d serve`` starts in a thread: it opens
the database and blob store, loads the face detector once, receives updates
and watches jobs until ``stop_event`` (a ``threading.Event``) is set.

Modes (``[telegram]`` in config.toml, see :meth:`AppOptions.from_config`):

* the Bot API server is Telegram's, or another one (``base_url`` /
  ``base_file_url``: a self-hosted telegram-bot-api server);
* updates arrive by long polling (``getUpdates``: one process per token), or
  by webhook (:mod:`bots.telegram.webhook`, behind a reverse proxy; several
  replicas may serve it, and the notifier's delivery claims keep each job's
  messages from being sent twice).

Tests call :func:`build_application` / :func:`serve` with a fake server's
``base_url`` and ``base_file_url``, or :func:`run` with a config naming them.
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
from bots.telegram.webhook import WebhookOptions, WebhookServer

log = logging.getLogger("emoji3d.telegram")

COMMANDS = (("start", "Start and give consent"), ("privacy", "What is stored and for how long"),
            ("mypacks", "Your sticker packs"), ("cancel", "Cancel the pack being made"),
            ("delete", "Delete all your data"), ("help", "How it works"))


@dataclass(frozen=True)
class AppOptions:
    base_url: str | None = None        # None = https://api.telegram.org/bot
    base_file_url: str | None = None
    webhook: WebhookOptions | None = None  # None = long polling
    progress_interval_s: float = 3.0   # at most one progress edit per job per interval
    poll_jobs_s: float = 1.0           # how often the notifier reads the jobs table
    rescan_s: float = 60.0             # how often the notifier looks for undelivered packs
    claim_s: float = 60.0              # a delivery claim lapses this long after its holder's last sign of life
    poll_updates_s: float = 0.0        # getUpdates poll interval (long polling timeout below)
    long_poll_timeout_s: int = 10
    max_retries: int = 3               # RetryAfter retries for non-mutating calls
    retry_s: float = 30.0              # wait before retrying a failed delivery

    @classmethod
    def from_config(cls, cfg: Config) -> "AppOptions":
        """The server and the update mode from ``[telegram]``; the webhook's secret from
        ``TELEGRAM_WEBHOOK_SECRET`` (RuntimeError when webhook mode lacks it)."""
        tg = cfg.telegram
        webhook = None
        if tg.mode == "webhook":
            secret = cfg.telegram_webhook_secret.reveal()
            if not secret:
                raise RuntimeError("telegram.mode is 'webhook' but TELEGRAM_WEBHOOK_SECRET is not set")
            webhook = WebhookOptions(url=tg.webhook_url, secret=secret, listen=tg.webhook_listen,
                                     port=tg.webhook_port, path=tg.webhook_path)
        return cls(base_url=tg.base_url or None, base_file_url=tg.base_file_url or None, webhook=webhook)


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
                                        retry_seconds=opts.retry_s, rescan_seconds=opts.rescan_s,
                                        claim_seconds=opts.claim_s)

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
    app.add_handler(CallbackQueryHandler(handlers.on_rerender, pattern=r"^rr:\d+:[a-z]+$"))
    app.add_handler(CallbackQueryHandler(handlers.on_retry, pattern=r"^rt:\d+:\d+$"))
    app.add_handler(CallbackQueryHandler(handlers.on_stickers, pattern=r"^pk:\d+:[0-9a-f]+(:t\d+|:go)?$"))
    app.add_handler(CallbackQueryHandler(handlers.on_delete, pattern=r"^del:(yes|no)$"))
    app.add_handler(MessageHandler(filters.PHOTO | filters.Document.ALL, handlers.on_image))
    app.add_error_handler(handlers.on_error)
    return app


async def serve(app: Application, stop: asyncio.Event, opts: AppOptions = AppOptions()) -> None:
    """Receive updates (polling or webhook) and watch jobs until ``stop`` is set;
    then shut down cleanly."""
    await app.initialize()
    try:
        await app.bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS])
    except Exception:  # noqa: BLE001 - cosmetic
        log.warning("setMyCommands failed", exc_info=True)
    await app.start()
    server = None
    if opts.webhook is None:
        await app.updater.start_polling(poll_interval=opts.poll_updates_s, timeout=opts.long_poll_timeout_s,
                                        allowed_updates=Update.ALL_TYPES)
    else:
        server = WebhookServer(app, opts.webhook)
        await server.start()  # listening before Telegram is told where to post
        await app.bot.set_webhook(opts.webhook.url, secret_token=opts.webhook.secret,
                                  allowed_updates=Update.ALL_TYPES)
    notifier: Notifier = app.bot_data["notifier"]
    task = asyncio.create_task(notifier.run(stop, opts.poll_jobs_s), name="telegram-notifier")
    try:
        await stop.wait()
    finally:
        await task
        if server is not None:
            await server.stop()  # the webhook stays set: other replicas may still serve it
        else:
            await app.updater.stop()
        await app.stop()
        await app.shutdown()


def run(cfg: Config, stop_event: threading.Event, opts: AppOptions | None = None) -> None:
    """Blocking entry point for ``emoji3d serve`` (runs in its own thread).
    ``opts`` default to :meth:`AppOptions.from_config`."""
    token = cfg.telegram_token.reveal()
    if not token:
        raise RuntimeError("TELEGRAM_BOT_TOKEN is not set")
    redaction.install([token, cfg.telegram_webhook_secret.reveal()])  # also without the CLI's logging set-up
    opts = AppOptions.from_config(cfg) if opts is None else opts
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
