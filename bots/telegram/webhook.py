"""Telegram webhook mode: a small aiohttp server that feeds updates to the
``Application``, behind a reverse proxy that terminates HTTPS.

This is python-telegram-bot's documented custom-webhook pattern (the
``customwebhookbot`` example): the server puts each update on
``application.update_queue`` and the started ``Application`` handles it as it
would a polled one. It uses aiohttp, already a dependency of the project,
instead of the tornado server behind ``Application.run_webhook``, and runs in
the same event loop as the job notifier under ``bots.telegram.app.serve``.

Requests
--------
* Only ``POST <path>`` is served (405 for other methods, 404 elsewhere).
* The ``X-Telegram-Bot-Api-Secret-Token`` header must equal the configured
  secret (compared in constant time), otherwise 403 and nothing is handled:
  only Telegram, which got the secret with ``setWebhook``, can send updates.
* The body must be a JSON update (at most ``MAX_BODY_BYTES``): 400 otherwise.
* 200 once the update is queued; Telegram then drops it. Any other answer
  makes Telegram post it again later.

Several replicas may serve the same webhook URL: each update reaches one of
them, and the notifier's delivery claims (``storage.deliveries``) keep job
messages from being sent twice. A stopping replica does not delete the
webhook, since the others still serve it.
"""
from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass, field

from aiohttp import web
from telegram import Update
from telegram.ext import Application

log = logging.getLogger("emoji3d.telegram.webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY_BYTES = 4 * 1024 * 1024  # updates are small JSON; this bounds a hostile body


@dataclass(frozen=True)
class WebhookOptions:
    url: str                             # public HTTPS URL given to setWebhook (the proxy's)
    secret: str = field(repr=False)      # the secret_token; never in a repr or a log line
    listen: str = "127.0.0.1"
    port: int = 8443                     # 0 = any free port (see WebhookServer.port)
    path: str = "/telegram"

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("a webhook needs its public url")
        if not self.secret or len(self.secret) > 256 or not all(c.isascii() and (c.isalnum() or c in "_-")
                                                                for c in self.secret):
            raise ValueError("TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        if not self.path.startswith("/"):
            raise ValueError(f"webhook path must start with '/', got {self.path!r}")


class WebhookServer:
    """Serve ``opts.path`` on ``opts.listen:opts.port`` for ``application``."""

    def __init__(self, application: Application, opts: WebhookOptions) -> None:
        self.application = application
        self.opts = opts
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the webhook server is not running")
        return self._port

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(self.opts.path, self._handle)
        runner = web.AppRunner(app, access_log=None)  # request lines would carry nothing useful
        await runner.setup()
        site = web.TCPSite(runner, self.opts.listen, self.opts.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("webhook server listening on %s:%s%s", self.opts.listen, self._port, self.opts.path)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._port = None

    async def _handle(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.opts.secret.encode()):
            log.warning("webhook: refused a request from %s with a %s secret", request.remote,
                        "wrong" if given else "missing")
            return web.Response(status=403)
        body = await request.read()  # a body over MAX_BODY_BYTES is answered 413 by aiohttp
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                raise ValueError("no update_id")
            update = Update.de_json(data, self.application.bot)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("webhook: refused a body that is no update (%s)", type(exc).__name__)
            return web.Response(status=400)
        await self.application.update_queue.put(update)
        return web.Response(status=200)
