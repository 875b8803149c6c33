"""Keep secrets out of every log record, whoever logs it.

:func:`install` wraps the logging *record factory*, so each record any logger
creates (ours, httpx's, python-telegram-bot's, discord.py's, aiohttp's) is
scrubbed once, when it is made, before any filter, handler or formatter sees
it: a handler added later (a test's, a log shipper's) gets clean records too,
which a filter on one handler could not promise. Scrubbing replaces

* every registered secret (:func:`add_secret`: the bot tokens, the Telegram
  webhook secret), wherever it appears;
* token-shaped parts of URLs and text, registered or not: the Bot API's
  ``/bot<id>:<secret>/`` (also in ``/file/bot...``), Discord's
  ``/webhooks/<id>/<token>`` and ``/interactions/<id>/<token>/`` (interaction
  tokens are short-lived secrets the bot never registers one by one), and
  anything shaped like a Telegram or Discord bot token;

in the formatted message, the traceback text and the stack text. The public
part before the secret (the bot id, the webhook or interaction id) is kept, so
a log line still says which request it was. A scrubbed record carries its
final message in ``msg`` with ``args`` cleared.

:func:`quiet_libraries` sets the chatty HTTP client loggers (httpx logs every
request URL at INFO) to WARNING unless the operator asked for DEBUG.
"""
from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from typing import Any, Iterable

REDACTED = "[redacted]"
MIN_SECRET_LEN = 8  # shorter values are not secrets worth a search through every line

_URL_PATTERNS = (
    re.compile(r"(/bot\d+(?::|%3[Aa]))[A-Za-z0-9_-]+"),           # Bot API and file URLs (':' may be quoted)
    re.compile(r"(/webhooks/\d+/)[A-Za-z0-9_.-]+"),              # Discord webhook / interaction follow-ups
    re.compile(r"(/interactions/\d+/)[A-Za-z0-9_.-]+"),          # Discord interaction callbacks
)
_TOKEN_PATTERNS = (
    re.compile(r"\b(\d{6,}(?::|%3[Aa]))[A-Za-z0-9_-]{30,}"),                                # Telegram bot token
    re.compile(r"()\b[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}"),  # Discord bot token
)
#: Environment variables holding secrets (see emoji3d.config.load_config).
SECRET_ENV_VARS = ("TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET")
#: Library loggers that log every request (URLs included) at INFO.
CHATTY_LOGGERS = ("httpx", "httpcore", "aiohttp.access")

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def add_secret(value: str | None) -> None:
    """Redact ``value`` (and its URL-quoted form) from every record from now on;
    empty or short values are ignored."""
    global _secrets
    if value and len(value) >= MIN_SECRET_LEN:
        with _lock:
            _secrets = _secrets | {value, urllib.parse.quote(value, safe="")}


def redact(text: str) -> str:
    """``text`` with every registered secret and every token-shaped part replaced."""
    for s in sorted(_secrets, key=len, reverse=True):  # longest first: a secret may contain another
        if s in text:
            text = text.replace(s, REDACTED)
    for pattern in _URL_PATTERNS + _TOKEN_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def scrub(record: logging.LogRecord) -> None:
    """Redact one record in place (message, traceback text, stack text)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is reported by logging itself, later
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        shown = logging.Formatter().formatException(record.exc_info)
        clean = redact(shown)
        if clean != shown:
            record.exc_text = clean  # formatters print exc_text instead of formatting exc_info again
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class _ScrubbingFactory:
    """A record factory that scrubs what the wrapped factory makes."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.wrapped(*args, **kwargs)
        scrub(record)
        return record


def install(secrets: Iterable[str | None] = ()) -> None:
    """Scrub every record made from now on (idempotent) and register ``secrets``."""
    for s in secrets:
        add_secret(s)
    current = logging.getLogRecordFactory()
    if not isinstance(current, _ScrubbingFactory):
        logging.setLogRecordFactory(_ScrubbingFactory(current))


def quiet_libraries(verbose: bool) -> None:
    """Per-request library logging at WARNING, unless ``verbose`` (then DEBUG, still scrubbed)."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
