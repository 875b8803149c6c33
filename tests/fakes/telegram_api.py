"""A fake Telegram Bot API server (aiohttp, 127.0.0.1) for driving the real
python-telegram-bot client in tests.

What it serves
--------------
* ``/bot<token>/<method>``: JSON bodies, ``application/x-www-form-urlencoded``,
  ``multipart/form-data`` (file parts) and GET query strings. Method names are
  matched case-insensitively, as on Telegram. Point a client at it with
  ``Bot(token, base_url=server.base_url, base_file_url=server.base_file_url)``.
* ``/file/bot<token>/<file_path>``: downloads of files returned by ``getFile``.
* Webhooks: after ``setWebhook`` the fake POSTs each pushed update, in order, to
  the webhook URL with the ``X-Telegram-Bot-Api-Secret-Token`` header when a
  secret was set, and drops it once answered 2xx; any other answer (or no
  answer) keeps it pending and it is posted again after ``webhook_retry_s``, as
  Telegram does. ``getUpdates`` is refused with 409 while a webhook is set;
  ``deleteWebhook`` goes back to polling; ``getWebhookInfo`` reports the
  pending count and the last error. :meth:`FakeTelegramServer.post_to_webhook`
  posts one update with any header (a wrong or missing secret) and returns the
  status; :attr:`FakeTelegramServer.webhook_posts` lists what was posted.

Conventions
-----------
* Responses use the real envelope: ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "error_code": N, "description": "Bad Request: ...",
  "parameters": {...}}``. The error texts used are collected in :data:`ERRORS`;
  where Telegram's exact wording is known (name occupied, PEER_ID_INVALID, file is
  too big, message is not modified, ...) it is reproduced.
* Form values arrive as strings (python-telegram-bot JSON-encodes every non-string
  value); each method declares its parameter types and values are coerced per
  declaration, so a malformed value fails like it would on Telegram.
* Sizes are bytes; ``KB`` = 1024. ``date`` is Unix seconds from the injectable
  ``clock`` (default ``time.time``).
* The server keeps state (users, chats, chat members, messages, files, sticker sets,
  pending updates) behind one ``threading.RLock``, so tests may call the test API
  (``add_user``, ``push_update``, ``inject``, ...) from any thread while the server
  runs in another (see :meth:`FakeTelegramServer.serve_in_thread`).
* Text with ``parse_mode=HTML`` is parsed like Telegram does (supported tags only,
  proper nesting, only &lt; &gt; &amp; &quot; named entities) and stored as plain
  text + entities; "message is not modified" compares text, entities and markup.
* ``local_dir``: the fake behaves like a self-hosted Bot API server started with
  ``--local``: ``getFile`` has no 20 MB limit and answers with an absolute
  ``file_path`` on the server's disk (the file is written under ``local_dir``),
  which a client in local mode reads directly instead of downloading.
  :attr:`FakeTelegramServer.file_downloads` counts ``/file/`` downloads.
* Known simplifications: like a self-hosted Bot API server (``--local``), the
  fake accepts ``http://`` webhook URLs on any port; other hosts need the real
  API's HTTPS on port 443, 80, 88 or 8443. Markdown/MarkdownV2 text is stored unparsed;
  HTTP-URL file inputs are refused (the fake has no network); video stickers are only
  checked for the WEBM/EBML header, the frame size the header states (a sticker: one
  side 512; a custom emoji: exactly 100x100) and the byte size unless a
  ``sticker_verifier`` is plugged in.
* Custom emoji sets (``sticker_type`` ``custom_emoji``) hold up to 200 entries, each
  100x100 (video: <= 64 KB); ``getStickerSet`` reports ``sticker_type`` and each
  entry's ``custom_emoji_id``.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import html.parser
import io
import json
import mimetypes
import os
import pathlib
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import telegram_updates as tgu

JSON = dict[str, Any]
KB = 1024
MB = 1024 * 1024

#: Bot API limits used by the validators.
GETFILE_MAX_BYTES = 20 * MB
SEND_PHOTO_MAX_BYTES = 10 * MB
SEND_DOCUMENT_MAX_BYTES = 50 * MB
STATIC_STICKER_MAX_BYTES = 512 * KB
VIDEO_STICKER_MAX_BYTES = 256 * KB
ANIMATED_STICKER_MAX_BYTES = 64 * KB
STATIC_THUMB_MAX_BYTES = 128 * KB
ANIMATED_THUMB_MAX_BYTES = 32 * KB
VIDEO_THUMB_MAX_BYTES = 32 * KB
INITIAL_STICKERS_MAX = 50
SET_MAX_STICKERS = {"regular": 120, "mask": 120, "custom_emoji": 200}
#: Custom emoji (sets of sticker_type "custom_emoji"): exactly 100x100; video ones held to 64 KB (issue 19).
CUSTOM_EMOJI_SIDE = 100
VIDEO_EMOJI_MAX_BYTES = 64 * 1000
EMOJI_LIST_MAX = 20
KEYWORDS_MAX = 20
KEYWORDS_TOTAL_CHARS = 64
MESSAGE_TEXT_MAX = 4096
CAPTION_MAX = 1024
CALLBACK_ANSWER_TEXT_MAX = 200
CALLBACK_DATA_MAX_BYTES = 64
COMMANDS_MAX = 100

STICKER_FORMATS = ("static", "animated", "video")
STICKER_TYPES = ("regular", "mask", "custom_emoji")
CHAT_ACTIONS = ("typing", "upload_photo", "record_video", "upload_video", "record_voice",
                "upload_voice", "upload_document", "choose_sticker", "find_location",
                "record_video_note", "upload_video_note")
PARSE_MODES = ("html", "markdown", "markdownv2")
#: update types delivered when ``allowed_updates`` was never set or set to [].
_OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

#: Error descriptions (without the "Bad Request: " style prefix) used by the fake.
ERRORS = {
    "name_invalid": "sticker set name invalid",
    "name_occupied": "sticker set name is already occupied",
    "set_invalid": "STICKERSET_INVALID",
    "sticker_invalid": "STICKER_INVALID",
    "too_many_stickers": "STICKERS_TOO_MUCH",
    "no_stickers": "stickers must be non-empty",
    "title_invalid": "STICKERSET_TITLE_INVALID",
    "emojis_invalid": "invalid sticker emojis",
    "keywords_invalid": "invalid sticker keywords",
    "format_invalid": "can't parse InputSticker: Invalid sticker format specified",
    "type_invalid": "invalid sticker set type specified",
    "peer_invalid": "PEER_ID_INVALID",
    "user_not_found": "user not found",
    "user_is_bot": "USER_IS_BOT",
    "file_too_big": "file is too big",
    "file_id_invalid": "wrong file identifier/HTTP URL specified",
    "url_unavailable": "failed to get HTTP URL content",
    "attach_missing": "can't find attached file",
    "not_webm": "STICKER_VIDEO_NOWEBM",
    "not_png": "STICKER_PNG_NOPNG",
    "png_dimensions": "STICKER_PNG_DIMENSIONS",
    "not_tgs": "STICKER_TGS_NOTGS",
    "thumb_dimensions": "STICKER_THUMB_PNG_DIMENSIONS",
    "image_failed": "IMAGE_PROCESS_FAILED",
    "chat_not_found": "chat not found",
    "text_empty": "message text is empty",
    "text_too_long": "message is too long",
    "caption_too_long": "message caption is too long",
    "thumb_format": "thumbnail format must match the format of the stickers in the set",
    "emoji_dimensions": "STICKER_VIDEO_DIMENSIONS: custom emoji must be exactly 100x100",
    "sticker_dimensions": "STICKER_VIDEO_DIMENSIONS: one side of a video sticker must be 512",
    "parse_mode": "unsupported parse_mode",
    "not_modified": ("message is not modified: specified new message content and reply "
                     "markup are exactly the same as a current content and reply markup "
                     "of the message"),
    "edit_not_found": "message to edit not found",
    "cant_edit": "message can't be edited",
    "delete_not_found": "message to delete not found",
    "reply_not_found": "message to be replied not found",
    "query_invalid": ("query is too old and response timeout expired or query ID is "
                      "invalid"),
    "answer_too_long": "MESSAGE_TOO_LONG",
    "button_data": "BUTTON_DATA_INVALID",
    "markup": "can't parse reply keyboard markup JSON object",
    "action": "wrong parameter action in request",
    "command_invalid": "BOT_COMMAND_INVALID",
    "command_description": "BOT_COMMAND_DESCRIPTION_INVALID",
    "too_many_commands": "too many commands specified",
    "blocked": "bot was blocked by the user",
    "cant_initiate": "bot can't initiate conversation with a user",
    "conflict": ("terminated by other getUpdates request; make sure that only one bot "
                 "instance is running"),
    "webhook_active": ("can't use getUpdates method while webhook is active; use deleteWebhook "
                       "to delete the webhook first"),
    "webhook_https": "bad webhook: An HTTPS URL must be provided for webhook",
    "webhook_port": "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443",
    "webhook_url": "bad webhook: Failed to resolve host: Name or service not known",
    "webhook_secret": "secret token contains unallowed characters",
    "webhook_connections": "bad webhook: max_connections must be between 1 and 100",
}
#: Header carrying the secret_token given to setWebhook.
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

_NAME_RE = re.compile(r"^[A-Za-z](?:[A-Za-z0-9]|_(?!_))*$")
_COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")


class ApiError(Exception):
    """A Bot API error response. ``description`` excludes the status prefix."""

    _PREFIX = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
               409: "Conflict", 413: "Request Entity Too Large", 429: "Too Many Requests",
               500: "Internal Server Error"}

    def __init__(self, code: int, description: str, parameters: JSON | None = None) -> None:
        self.code = code
        self.description = description
        self.parameters = parameters
        super().__init__(self.full_description)

    @property
    def full_description(self) -> str:
        prefix = self._PREFIX.get(self.code, "Error")
        return f"{prefix}: {self.description}" if self.description else prefix

    def payload(self) -> JSON:
        out: JSON = {"ok": False, "error_code": self.code,
                     "description": self.full_description}
        if self.parameters:
            out["parameters"] = self.parameters
        return out


def bad(key: str, *args: object) -> ApiError:
    """A 400 with the text ``ERRORS[key]`` (``%``-formatted with ``args``)."""
    text = ERRORS[key]
    return ApiError(400, text % args if args else text)


def retry_after_error(seconds: int) -> ApiError:
    return ApiError(429, f"retry after {seconds}", {"retry_after": seconds})


# ----------------------------------------------------------------------------- records

@dataclass
class BotIdentity:
    """The bot the fake impersonates (what ``getMe`` returns)."""

    id: int = 7000001
    username: str = "emoji3d_test_bot"
    first_name: str = "Emoji3D Test"

    def to_json(self) -> JSON:
        return {"id": self.id, "is_bot": True, "first_name": self.first_name,
                "username": self.username, "can_join_groups": True,
                "can_read_all_group_messages": False, "supports_inline_queries": False}


@dataclass
class FileRecord:
    """A file known to the server. ``file_size`` may exceed ``len(data)`` when a test
    declares a large file without allocating it (only ``getFile`` limits read it)."""

    file_id: str
    file_unique_id: str
    data: bytes
    file_size: int
    file_path: str
    kind: str  # "photo" | "document" | "sticker" | "thumbnail" | "upload"
    file_name: str | None = None
    mime_type: str | None = None

    def to_file_json(self, with_path: bool = True) -> JSON:
        out: JSON = {"file_id": self.file_id, "file_unique_id": self.file_unique_id,
                     "file_size": self.file_size}
        if with_path:
            out["file_path"] = self.file_path
        return out


@dataclass
class StickerEntry:
    """One sticker in a set. ``file.file_unique_id`` is the unique id of the uploaded
    source file (same content => same unique id); ``file.file_id`` is new per entry."""

    file: FileRecord
    format: str
    emoji_list: list[str]
    keywords: list[str]
    width: int
    height: int


@dataclass
class StickerSetRecord:
    name: str
    title: str
    sticker_type: str
    owner_id: int
    stickers: list[StickerEntry] = field(default_factory=list)
    thumbnail: FileRecord | None = None
    thumbnail_format: str | None = None


@dataclass
class Call:
    """One request as seen by the server: canonical method name, coerced params (raw
    strings if coercion failed), uploaded parts by field name, and the HTTP status."""

    method: str
    params: JSON
    files: dict[str, bytes]
    status: int = 200


@dataclass
class Injection:
    method: str  # lower-case method name
    kind: str  # "retry_after" | "retry_after_landed" | "bad_request" | "error" | "delay"
    retry_after: int = 1
    delay_s: float = 0.0
    description: str = ""
    error_code: int = 400
    times: int = 1
    after: int = 0


#: ``verifier(data, format, role) -> None | error description``; role is "sticker",
#: "emoji" (an entry of a custom emoji set), "thumbnail" or "upload" (uploadStickerFile). Plugged into :class:`FakeTelegramServer` for deeper media checks.
StickerVerifier = Callable[[bytes, str, str], "str | None"]


# ----------------------------------------------------------------------------- params

def _coerce(name: str, kind: str, value: Any) -> Any:
    """Coerce one request value to the declared Bot API type."""
    if kind == "str":
        if isinstance(value, (dict, list)):
            raise ApiError(400, f"can't parse {name}: expected a string")
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ApiError(400, f"invalid {name} specified")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise ApiError(400, f"invalid {name} specified")
    if kind == "chat":  # Integer or String (@username)
        if isinstance(value, str) and value.startswith("@"):
            return value
        return _coerce(name, "int", value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ApiError(400, f"invalid {name} specified")
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ApiError(400, f"can't parse {name} JSON object") from exc
        if not isinstance(value, (dict, list)):
            raise ApiError(400, f"can't parse {name} JSON object")
        return value
    if kind == "file":  # the string form: file_id, URL or attach://name
        if not isinstance(value, str):
            raise ApiError(400, f"can't parse {name}")
        return value
    raise AssertionError(f"unknown parameter kind {kind!r}")


_EMPTY_TEXT = {"chat_id": "chat_id is empty", "text": ERRORS["text_empty"],
               "user_id": "user_id is empty", "name": "sticker set name is empty"}


def _coerce_params(spec: dict[str, tuple[str, bool]], raw: JSON,
                   uploads: dict[str, "Upload"]) -> JSON:
    out: JSON = {}
    for name, (kind, required) in spec.items():
        if name in raw and raw[name] not in (None, ""):
            out[name] = _coerce(name, kind, raw[name])
        elif kind == "file" and name in uploads:
            out[name] = f"attach://{name}"  # uploaded directly under the field name
        elif required:
            raise ApiError(400, _EMPTY_TEXT.get(name, f"parameter \"{name}\" is required"))
    return out


@dataclass
class Upload:
    """A multipart file part."""

    data: bytes
    filename: str | None
    content_type: str | None


# ----------------------------------------------------------------------------- media checks

def _image_info(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the image header via Pillow, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format), int(img.width), int(img.height)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


_EBML_MASTERS = {0x18538067, 0x1654AE6B, 0xAE, 0xE0}  # Segment, Tracks, TrackEntry, Video
_EBML_CLUSTER = 0x1F43B675


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at ``pos``: (value, next position); -1 = unknown size."""
    first = data[pos]
    length = next((i + 1 for i in range(8) if first & (0x80 >> i)), 0)
    if length == 0 or pos + length > len(data):
        raise ValueError("bad EBML integer")
    value = first if keep_marker else first & (0xFF >> length)
    for b in data[pos + 1:pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        value = -1
    return value, pos + length


def webm_dimensions(data: bytes) -> tuple[int, int] | None:
    """PixelWidth x PixelHeight of the first video track, read from the EBML tree (our own reader,
    independent of the engine's decoder); None when the file does not say."""
    def walk(pos: int, end: int) -> tuple[int, int] | None:
        width = height = None
        while pos < end:
            eid, pos = _vint(data, pos, True)
            size, pos = _vint(data, pos, False)
            stop = end if size < 0 else min(pos + size, end)
            if eid == _EBML_CLUSTER:
                return None
            if eid in _EBML_MASTERS:
                found = walk(pos, stop)
                if found is not None:
                    return found
            elif eid in (0xB0, 0xBA):
                value = int.from_bytes(data[pos:stop], "big")
                width, height = (value, height) if eid == 0xB0 else (width, value)
                if width is not None and height is not None:
                    return width, height
            pos = stop
        return None

    try:
        return walk(0, len(data))
    except (ValueError, IndexError):
        return None


def is_webm(data: bytes) -> bool:
    """EBML magic and a ``webm`` DocType in the header (Matroska files fail)."""
    return data[:4] == b"\x1a\x45\xdf\xa3" and b"webm" in data[:64]


def check_sticker_file(data: bytes, size: int, fmt: str, role: str,
                       verifier: StickerVerifier | None) -> tuple[int, int]:
    """Cheap Bot API checks of a sticker (or set thumbnail) file; returns (w, h).

    static: PNG/WEBP, sticker one side exactly 512 and both <= 512, <= 512 KB;
    thumbnail exactly 100x100, <= 128 KB. video: WEBM header, <= 256 KB (thumbnail
    <= 32 KB), a sticker's size (when the header states it) one side 512; role
    ``emoji`` (an entry of a custom emoji set): exactly 100x100 (the size must be
    stated) and <= 64 KB; role ``upload`` (``uploadStickerFile``, which does not know
    the set yet): a sticker's size or a custom emoji's 100x100; the set checks which. animated: gzip (TGS) header, <= 64 KB (thumbnail <= 32 KB).
    """
    if fmt not in STICKER_FORMATS:
        raise bad("format_invalid")
    thumb = role == "thumbnail"
    width = height = 100 if thumb else 512
    if fmt == "static":
        limit = STATIC_THUMB_MAX_BYTES if thumb else STATIC_STICKER_MAX_BYTES
        info = _image_info(data)
        if info is None or info[0] not in ("PNG", "WEBP"):
            raise bad("not_png")
        _, width, height = info
        if thumb and (width, height) != (100, 100):
            raise bad("thumb_dimensions")
        emoji_sized = role == "upload" and (width, height) == (CUSTOM_EMOJI_SIDE, CUSTOM_EMOJI_SIDE)
        if role in ("sticker", "upload") and not emoji_sized and (max(width, height) != 512 or min(width, height) < 1):
            raise bad("png_dimensions")
    elif fmt == "video":
        limit = VIDEO_THUMB_MAX_BYTES if thumb else VIDEO_STICKER_MAX_BYTES
        if not is_webm(data):
            raise bad("not_webm")
        dims = webm_dimensions(data)
        if dims is not None:
            width, height = dims
            emoji_sized = role == "upload" and dims == (CUSTOM_EMOJI_SIDE, CUSTOM_EMOJI_SIDE)
            if role in ("sticker", "upload") and not emoji_sized and max(width, height) != 512:
                raise bad("sticker_dimensions")
    else:
        limit = ANIMATED_THUMB_MAX_BYTES if thumb else ANIMATED_STICKER_MAX_BYTES
        if data[:2] != b"\x1f\x8b":
            raise bad("not_tgs")
    if role == "emoji":
        if fmt == "video" and (webm_dimensions(data) != (CUSTOM_EMOJI_SIDE, CUSTOM_EMOJI_SIDE)):
            raise bad("emoji_dimensions")
        if fmt == "static" and (width, height) != (CUSTOM_EMOJI_SIDE, CUSTOM_EMOJI_SIDE):
            raise bad("emoji_dimensions")
        limit = VIDEO_EMOJI_MAX_BYTES if fmt == "video" else limit
    if size > limit:
        raise bad("file_too_big")
    if verifier is not None:
        problem = verifier(data, fmt, role)
        if problem:
            raise ApiError(400, problem)
    return width, height


def check_sticker_set_name(name: str, bot_username: str) -> None:
    """Bot API rules: 1-64 chars, English letters/digits/underscores, starts with a
    letter, no consecutive underscores, ends in ``_by_<bot_username>`` (the bot
    username is matched case-insensitively)."""
    if not 1 <= len(name) <= 64 or not name.isascii() or not _NAME_RE.match(name):
        raise bad("name_invalid")
    if not name.lower().endswith(f"_by_{bot_username.lower()}"):
        raise bad("name_invalid")


def _is_emoji(s: str) -> bool:
    """Loose emoji test: non-empty, no ASCII letters/digits/space (``#️⃣`` passes)."""
    return bool(s) and len(s) <= 16 and not any(c.isascii() and (c.isalpha() or c.isspace())
                                                for c in s) and any(ord(c) > 0x2000 for c in s)


def _check_reply_markup(markup: Any) -> None:
    if not isinstance(markup, dict):
        raise bad("markup")
    if "inline_keyboard" in markup:
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise bad("markup")
        for row in rows:
            for button in row:
                if not isinstance(button, dict) or not button.get("text"):
                    raise bad("markup")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= \
                        CALLBACK_DATA_MAX_BYTES:
                    raise bad("button_data")
    elif not any(k in markup for k in ("keyboard", "remove_keyboard", "force_reply")):
        raise bad("markup")


_HTML_TAGS = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic",
              "u": "underline", "ins": "underline", "s": "strikethrough",
              "strike": "strikethrough", "del": "strikethrough", "tg-spoiler": "spoiler",
              "span": "spoiler", "a": "text_link", "code": "code", "pre": "pre",
              "blockquote": "blockquote", "tg-emoji": "custom_emoji"}
_HTML_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


class _TelegramHTML(html.parser.HTMLParser):
    """Bot API HTML parse mode: the supported tags only, proper nesting, and only the
    named entities &lt; &gt; &amp; &quot; (numeric ones are all allowed)."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=False)
        self._source = source
        self._lines = source.splitlines(keepends=True)
        self.text: list[str] = []
        self.entities: list[JSON] = []
        self._open: list[tuple[str, int, JSON]] = []  # tag, utf-16 offset, entity

    def _byte_offset(self) -> int:
        line, col = self.getpos()
        before = "".join(self._lines[:line - 1]) + self._lines[line - 1][:col] \
            if self._lines else ""
        return len(before.encode())

    def _fail(self, what: str) -> ApiError:
        return ApiError(400, f"can't parse entities: {what}")

    def _utf16_len(self) -> int:
        return len("".join(self.text).encode("utf-16-le")) // 2

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        kind = _HTML_TAGS.get(tag)
        a = dict(attrs)
        if kind is None or (tag == "span" and a.get("class") != "tg-spoiler"):
            raise self._fail(f'Unsupported start tag "{tag}" at byte offset '
                             f"{self._byte_offset()}")
        entity: JSON = {"type": kind}
        if tag == "a":
            if not a.get("href"):
                raise self._fail(f'Can\'t find href for tag "a" at byte offset '
                                 f"{self._byte_offset()}")
            entity["url"] = a["href"]
        self._open.append((tag, self._utf16_len(), entity))

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1][0] != tag:
            expected = f'"</{self._open[-1][0]}>"' if self._open else "nothing"
            raise self._fail(f"Unmatched end tag at byte offset {self._byte_offset()}, "
                             f'expected {expected}, found "</{tag}>"')
        _, start, entity = self._open.pop()
        length = self._utf16_len() - start
        if length > 0:
            self.entities.append({**entity, "offset": start, "length": length})

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        if name not in _HTML_NAMED_ENTITIES:
            raise self._fail(f'Unsupported HTML entity "&{name};"')
        self.text.append(_HTML_NAMED_ENTITIES[name])

    def handle_charref(self, name: str) -> None:
        try:
            code = int(name[1:], 16) if name[:1] in "xX" else int(name)
            self.text.append(chr(code))
        except (ValueError, OverflowError) as exc:
            raise self._fail(f'Unsupported HTML entity "&#{name};"') from exc

    def render(self) -> tuple[str, list[JSON]]:
        self.feed(self._source)
        self.close()
        if self._open:
            raise self._fail("Can't find end tag corresponding to start tag "
                             f'"{self._open[-1][0]}"')
        return "".join(self.text), sorted(self.entities, key=lambda e: e["offset"])


def render_text(text: str, parse_mode: str | None) -> tuple[str, list[JSON]]:
    """(plain text, entities) as Telegram stores a message. HTML is parsed and checked;
    Markdown modes are passed through unparsed (a documented simplification)."""
    if parse_mode is None:
        return text, []
    if parse_mode.lower() not in PARSE_MODES:
        raise bad("parse_mode")
    if parse_mode.lower() == "html":
        return _TelegramHTML(text).render()
    return text, []


def _update_type(upd: JSON) -> str:
    keys = [k for k in upd if k != "update_id"]
    if len(keys) != 1:
        raise ValueError(f"an Update holds exactly one payload besides update_id, got {keys}")
    return keys[0]


# ----------------------------------------------------------------------------- server

Handler = Callable[[JSON, dict[str, Upload]], Awaitable[Any]]

#: HTTP status recorded in :class:`Call` for a long poll whose client went away.
CLIENT_GONE = 499
_current_request: contextvars.ContextVar[web.Request] = contextvars.ContextVar("request")


@dataclass(frozen=True)
class WebhookPost:
    """One POST of an update to the webhook: its update id and the HTTP status (0: no answer)."""

    update_id: int
    status: int
    url: str


async def _post_update(url: str, upd: JSON, secret: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url, data=json.dumps(upd), headers=headers) as resp:
            await resp.read()
            return resp.status


class _ClientGone(Exception):
    """The client closed the connection while a long poll was pending."""


class FakeTelegramServer:
    """Stateful fake of the Telegram Bot API. See the module docstring.

    Test-facing API (thread-safe): :meth:`add_user`, :meth:`block`, :meth:`add_chat`,
    :meth:`set_chat_member`, :meth:`add_file`, :meth:`add_photo`, :meth:`add_document`,
    :meth:`next_message_id`, :meth:`now`, :meth:`push_update`, :meth:`inject`,
    :attr:`calls`, :meth:`calls_to`, :meth:`clear_calls`, :meth:`messages_in`,
    :meth:`sticker_set_json`, :attr:`pending_updates`, :meth:`commands`;
    ``sticker_verifier`` may be (re)assigned at any time.
    """

    def __init__(self, token: str = "123456:TEST-fake-token", bot: BotIdentity | None = None,
                 *, sticker_verifier: StickerVerifier | None = None,
                 clock: Callable[[], float] = time.time, host: str = "127.0.0.1",
                 poll_interval_s: float = 0.01, webhook_retry_s: float = 0.2,
                 local_dir: "os.PathLike[str] | str | None" = None) -> None:
        if not re.fullmatch(r"\d+:[A-Za-z0-9_-]+", token):
            raise ValueError(f"token must look like '<digits>:<secret>', got {token!r}")
        self.token = token
        self.bot = bot or BotIdentity(id=int(token.split(":")[0]))
        self.sticker_verifier = sticker_verifier
        self._clock = clock
        self._host = host
        self._poll_interval_s = poll_interval_s
        self._webhook_retry_s = webhook_retry_s
        self._local_dir = None if local_dir is None else pathlib.Path(local_dir).resolve()
        self.file_downloads = 0
        self._lock = threading.RLock()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing = False
        # state
        self._users: dict[int, JSON] = {}
        self._started: set[int] = set()
        self._blocked: set[int] = set()
        self._chats: dict[int, JSON] = {}
        self._members: dict[tuple[int, int], JSON] = {}
        self._messages: dict[tuple[int, int], JSON] = {}
        self._bot_messages: set[tuple[int, int]] = set()
        self._next_message_id: dict[int, int] = {}
        self._files: dict[str, FileRecord] = {}
        self._unique_by_content: dict[bytes, str] = {}
        self._sets: dict[str, StickerSetRecord] = {}  # key: lower-case name
        self._updates: list[JSON] = []
        self._next_update_id = 1
        self._allowed_updates: frozenset[str] | None = None  # None: default set
        self._poll_generation = 0
        self._open_queries: set[str] = set()
        self._commands: dict[str, list[JSON]] = {}
        self._injections: list[Injection] = []
        self._calls: list[Call] = []
        # A network's round trip: every method's answer is held this long (benches, concurrency
        # tests). ``max_in_flight`` records the most calls of each method answered at once.
        self.latency_s = 0.0
        self._in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self._counter = 0
        # webhook (None: updates are fetched with getUpdates)
        self._webhook: JSON | None = None  # url, secret_token, max_connections, allowed_updates
        self._webhook_error: tuple[int, str] | None = None  # (unix date, message) of the last failed post
        self._webhook_posts: list[WebhookPost] = []
        self._pump: asyncio.Task[None] | None = None
        self._methods: dict[str, tuple[str, dict[str, tuple[str, bool]], Handler]] = {}
        self._register_methods()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind a free port on 127.0.0.1 and serve."""
        if self._runner is not None:
            raise RuntimeError("FakeTelegramServer is already running")
        self._closing = False
        app = web.Application(client_max_size=64 * MB)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self._host, 0))  # the OS picks a free port
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = int(sock.getsockname()[1])
        self._runner = runner
        self._pump = asyncio.get_running_loop().create_task(self._webhook_pump(), name="fake-telegram-webhook")

    async def stop(self) -> None:
        self._closing = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._port = None

    async def __aenter__(self) -> "FakeTelegramServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def serve_in_thread(self) -> Iterator["FakeTelegramServer"]:
        """Run the server on its own event loop in a daemon thread (for sync tests)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-telegram", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=30)
            yield self
        finally:
            try:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=30)
                loop.close()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeTelegramServer is not running; call start() first")
        return f"http://{self._host}:{self._port}"

    @property
    def base_url(self) -> str:
        """For ``Bot(base_url=...)``; python-telegram-bot appends the token."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.url}/file/bot"

    # ------------------------------------------------------------------ test API
    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def add_user(self, u: JSON, *, started: bool = True) -> JSON:
        """Make a user known; ``started`` means they pressed Start (bot may message them)."""
        with self._lock:
            self._users[u["id"]] = u
            if started:
                self._started.add(u["id"])
                self._chats.setdefault(u["id"], tgu.private_chat(u))
            return u

    def block(self, user_id: int) -> None:
        """The user blocked the bot: sends to them fail with 403."""
        with self._lock:
            self._blocked.add(user_id)

    def add_chat(self, chat: JSON) -> JSON:
        with self._lock:
            self._chats[chat["id"]] = chat
            return chat

    def set_chat_member(self, chat_id: int, u: JSON, status: str) -> None:
        """Set ``u``'s status in the chat (creator/administrator/member/...)."""
        with self._lock:
            self._users.setdefault(u["id"], u)
            self._members[(chat_id, u["id"])] = tgu.chat_member(u, status)

    def add_file(self, data: bytes, *, kind: str = "document", file_size: int | None = None,
                 file_name: str | None = None, mime_type: str | None = None) -> FileRecord:
        """Register a file a user 'sent'; ``file_size`` may be declared larger than data."""
        with self._lock:
            return self._new_file(data, kind, file_size=file_size, file_name=file_name,
                                  mime_type=mime_type)

    def add_photo(self, data: bytes, *, file_size: int | None = None,
                  size: tuple[int, int] | None = None) -> list[JSON]:
        """Register a photo a user sent; returns the message's ``photo`` list (one
        PhotoSize). ``size`` (w, h) defaults to the image header's; ``file_size`` may
        be declared larger than ``data`` to exercise the 20 MB getFile limit."""
        if size is None:
            info = _image_info(data)
            if info is None:
                raise ValueError("data is no decodable image; pass size=(w, h)")
            size = (info[1], info[2])
        rec = self.add_file(data, kind="photo", file_size=file_size)
        return [tgu.photo_size(rec.file_id, rec.file_unique_id, size[0], size[1],
                               rec.file_size)]

    def add_document(self, data: bytes, file_name: str, *, mime_type: str | None = None,
                     file_size: int | None = None) -> JSON:
        """Register a file a user sent as a document; returns the ``Document`` dict."""
        mime = mime_type or mimetypes.guess_type(file_name)[0]
        rec = self.add_file(data, kind="document", file_size=file_size, file_name=file_name,
                            mime_type=mime)
        return tgu.document(rec.file_id, rec.file_unique_id, file_name=file_name,
                            mime_type=mime, file_size=rec.file_size)

    def now(self) -> int:
        """The server clock in Unix seconds (use it for ``date`` in factories)."""
        return int(self._clock())

    def next_message_id(self, chat_id: int) -> int:
        """Reserve the next message id of a chat (ids are per chat and shared by the
        user's and the bot's messages, as in private chats on Telegram)."""
        with self._lock:
            mid = self._next_message_id.get(chat_id, 1)
            self._next_message_id[chat_id] = mid + 1
            return mid

    def push_update(self, upd: JSON) -> int:
        """Queue an update for getUpdates; assigns ``update_id`` when absent. Users and
        chats seen in it become known (a private message means the user started the bot)."""
        kind = _update_type(upd)
        with self._lock:
            upd = json.loads(json.dumps(upd))  # own copy, JSON-clean
            if "update_id" not in upd:
                upd["update_id"] = self._next_update_id
            self._next_update_id = max(self._next_update_id, upd["update_id"] + 1)
            payload = upd[kind]
            sender = payload.get("from")
            if isinstance(sender, dict):
                self._users.setdefault(sender["id"], sender)
            msg = payload.get("message") if kind == "callback_query" else payload
            if isinstance(msg, dict) and isinstance(msg.get("chat"), dict):
                chat = msg["chat"]
                self._chats.setdefault(chat["id"], chat)
                if chat.get("type") == "private" and kind == "message" and sender:
                    self._started.add(sender["id"])
                    self._blocked.discard(sender["id"])
                if "message_id" in msg:
                    self._messages.setdefault((chat["id"], msg["message_id"]), msg)
                    self._next_message_id[chat["id"]] = max(
                        self._next_message_id.get(chat["id"], 1), msg["message_id"] + 1)
            if kind == "callback_query":
                self._open_queries.add(payload["id"])
            self._updates.append(upd)
            return int(upd["update_id"])

    def inject(self, method: str, kind: str = "retry_after", *, retry_after: int = 1,
               description: str = "", error_code: int = 400, times: int = 1,
               after: int = 0, delay_s: float = 0.0) -> None:
        """Make the next ``times`` calls of ``method`` (after skipping ``after`` calls) fail.

        kinds: ``retry_after`` (429, nothing happens), ``retry_after_landed`` (the call
        takes effect, then the client gets 429 — how flooded addStickerToSet duplicates
        arise), ``bad_request`` (400 with ``description``), ``error`` (``error_code``
        with ``description``, e.g. 500 or 403), ``delay`` (the call takes effect and
        the answer is held ``delay_s`` seconds: a client read timeout then reports
        ``TimedOut`` for a request that landed).
        """
        if kind not in ("retry_after", "retry_after_landed", "bad_request", "error", "delay"):
            raise ValueError(f"unknown injection kind {kind!r}")
        if method.lower() not in self._methods:
            raise ValueError(f"unknown method {method!r}")
        if times < 1 or after < 0 or retry_after < 1:
            raise ValueError("times >= 1, after >= 0 and retry_after >= 1 are required")
        if kind == "delay" and not delay_s > 0:
            raise ValueError("kind='delay' needs delay_s > 0")
        with self._lock:
            self._injections.append(Injection(method.lower(), kind, retry_after, delay_s,
                                              description,
                                              400 if kind == "bad_request" else error_code,
                                              times, after))

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower()]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def messages_in(self, chat_id: int, *, from_bot: bool = True) -> list[JSON]:
        """Current (edited, not deleted) messages of a chat in id order."""
        with self._lock:
            keys = sorted(k for k in self._messages if k[0] == chat_id
                          and ((k in self._bot_messages) == from_bot))
            return [json.loads(json.dumps(self._messages[k])) for k in keys]

    def sticker_set_json(self, name: str) -> JSON | None:
        with self._lock:
            rec = self._sets.get(name.lower())
            return None if rec is None else self._set_json(rec)

    @property
    def pending_updates(self) -> list[JSON]:
        with self._lock:
            return list(self._updates)

    @property
    def webhook(self) -> JSON | None:
        """The webhook set with ``setWebhook`` (url, secret_token, ...), or None."""
        with self._lock:
            return None if self._webhook is None else dict(self._webhook)

    @property
    def webhook_posts(self) -> list["WebhookPost"]:
        with self._lock:
            return list(self._webhook_posts)

    async def post_to_webhook(self, upd: JSON, *, secret: str | None, url: str | None = None) -> int:
        """POST one update to the webhook (or ``url``) with ``secret`` in the secret
        header (None: no header) and return the HTTP status; the update is not queued.
        Call it from any event loop."""
        target = url or (self._webhook or {}).get("url")
        if not target:
            raise RuntimeError("no webhook set and no url given")
        return await _post_update(target, upd, secret)

    # ------------------------------------------------------------------ webhook delivery
    async def _webhook_pump(self) -> None:
        """Post pending updates to the webhook one at a time, in order."""
        while not self._closing:
            with self._lock:
                hook = None if self._webhook is None else dict(self._webhook)
                allowed = self._allowed_updates
                if hook is not None:  # updates of types not asked for are dropped, as with getUpdates
                    self._updates = [u for u in self._updates
                                     if (_update_type(u) in allowed if allowed is not None
                                         else _update_type(u) not in _OPT_IN_UPDATES)]
                upd = self._updates[0] if hook is not None and self._updates else None
            if upd is None:
                await asyncio.sleep(self._poll_interval_s)
                continue
            try:
                status = await _post_update(hook["url"], upd, hook.get("secret_token"))
                error = None if 200 <= status < 300 else f"Wrong response from the webhook: {status}"
            except Exception as exc:  # noqa: BLE001 - any failure is reported like Telegram does
                status, error = 0, f"Connection failed: {type(exc).__name__}"
            with self._lock:
                self._webhook_posts.append(WebhookPost(int(upd["update_id"]), status, hook["url"]))
                if error is None:
                    self._updates = [u for u in self._updates if u["update_id"] != upd["update_id"]]
                else:
                    self._webhook_error = (self.now(), error)
            if error is not None:
                await asyncio.sleep(self._webhook_retry_s)

    # ------------------------------------------------------------------ HTTP layer
    async def _handle_method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(ApiError(401, "").payload(), status=401)
        entry = self._methods.get(request.match_info["method"].lower())
        if entry is None:
            return web.json_response(ApiError(404, "").payload(), status=404)
        name, spec, handler = entry
        try:
            raw, uploads = await self._read_params(request)
        except ApiError as exc:
            self._log(Call(name, {}, {}, exc.code))
            return web.json_response(exc.payload(), status=exc.code)
        try:
            params = _coerce_params(spec, raw, uploads)
        except ApiError as exc:
            self._log(Call(name, raw, {k: u.data for k, u in uploads.items()}, exc.code))
            return web.json_response(exc.payload(), status=exc.code)
        call = Call(name, params, {k: u.data for k, u in uploads.items()})
        self._log(call)
        with self._lock:
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
            self.max_in_flight[name] = max(self.max_in_flight.get(name, 0), self._in_flight[name])
        try:
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            return await self._answer(name, handler, params, uploads, call, request)
        finally:
            with self._lock:
                self._in_flight[name] -= 1

    async def _answer(self, name: str, handler: Handler, params: JSON, uploads: dict[str, Upload], call: Call,
                      request: web.Request) -> web.Response:
        injection = self._take_injection(name.lower())
        _current_request.set(request)
        try:
            if injection is not None and injection.kind not in ("retry_after_landed", "delay"):
                raise self._injected_error(injection)
            result = await handler(params, uploads)
            if injection is not None and injection.kind == "delay":
                deadline = time.monotonic() + injection.delay_s
                while time.monotonic() < deadline and not self._closing:
                    await asyncio.sleep(self._poll_interval_s)
            elif injection is not None:
                raise self._injected_error(injection)
        except ApiError as exc:
            call.status = exc.code
            return web.json_response(exc.payload(), status=exc.code)
        except _ClientGone:
            call.status = CLIENT_GONE
            return web.Response(status=CLIENT_GONE)
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _injected_error(inj: Injection) -> ApiError:
        if inj.kind in ("retry_after", "retry_after_landed"):
            return retry_after_error(inj.retry_after)
        return ApiError(inj.error_code, inj.description or "injected error")

    async def _read_params(self, request: web.Request) -> tuple[JSON, dict[str, Upload]]:
        raw: JSON = dict(request.query)
        uploads: dict[str, Upload] = {}
        if request.method == "GET" or not request.can_read_body:
            return raw, uploads
        ctype = request.content_type
        if ctype == "application/json":
            try:
                body = await request.json()
            except json.JSONDecodeError as exc:
                raise ApiError(400, "can't parse JSON encoded request") from exc
            if not isinstance(body, dict):
                raise ApiError(400, "can't parse JSON encoded request")
            raw.update(body)
        elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    uploads[key] = Upload(value.file.read(), value.filename, value.content_type)
                else:
                    raw[key] = value
        elif ctype:
            raise ApiError(400, f"unsupported Content-Type {ctype}")
        return raw, uploads

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response(ApiError(401, "").payload(), status=401)
        path = request.match_info["path"]
        with self._lock:
            rec = next((f for f in self._files.values() if f.file_path == path), None)
        if rec is None:
            return web.json_response(ApiError(404, "").payload(), status=404)
        with self._lock:
            self.file_downloads += 1
        return web.Response(body=rec.data, content_type="application/octet-stream")

    def _log(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def _take_injection(self, method: str) -> Injection | None:
        with self._lock:
            for inj in self._injections:
                if inj.method != method:
                    continue
                if inj.after > 0:
                    inj.after -= 1
                    return None
                inj.times -= 1
                if inj.times == 0:
                    self._injections.remove(inj)
                return inj
            return None

    # ------------------------------------------------------------------ state helpers
    _FOLDERS = {"photo": ("photos", ".jpg"), "document": ("documents", ""),
                "sticker": ("stickers", ""), "thumbnail": ("thumbnails", ""),
                "upload": ("stickers", "")}

    def _new_file(self, data: bytes, kind: str, *, file_size: int | None = None,
                  file_name: str | None = None, mime_type: str | None = None,
                  ext: str | None = None) -> FileRecord:
        if kind not in self._FOLDERS:
            raise ValueError(f"file kind must be one of {sorted(self._FOLDERS)}, got {kind!r}")
        n = self._next()
        folder, default_ext = self._FOLDERS[kind]
        if ext is None:
            ext = default_ext
            if file_name and "." in file_name:
                ext = "." + file_name.rsplit(".", 1)[1].lower()
        unique = self._unique_by_content.setdefault(data, f"AQADU{n:07d}")
        rec = FileRecord(file_id=f"BQACAgF{n:07d}{kind[:2]}", file_unique_id=unique,
                         data=bytes(data), file_size=len(data) if file_size is None
                         else file_size, file_path=f"{folder}/file_{n}{ext}", kind=kind,
                         file_name=file_name, mime_type=mime_type)
        self._files[rec.file_id] = rec
        return rec

    def _resolve_file(self, value: str, uploads: dict[str, Upload], kind: str,
                      field_name: str) -> tuple[FileRecord, bool]:
        """File input -> (record, freshly uploaded?)."""
        if value.startswith("attach://"):
            part = uploads.get(value[len("attach://"):])
            if part is None:
                raise bad("attach_missing")
            name = part.filename if part.filename and part.filename != field_name else None
            return self._new_file(part.data, kind, file_name=name,
                                  mime_type=part.content_type), True
        if value.startswith(("http://", "https://")):
            raise bad("url_unavailable")
        rec = self._files.get(value)
        if rec is None:
            raise bad("file_id_invalid")
        return rec, False

    def _user_for_stickers(self, user_id: int) -> JSON:
        if user_id == self.bot.id:
            raise bad("user_is_bot")
        u = self._users.get(user_id)
        if u is None:
            raise bad("user_not_found")
        if user_id not in self._started:
            raise bad("peer_invalid")
        return u

    def _chat_for_send(self, chat_id: int | str) -> JSON:
        if isinstance(chat_id, str):
            chat = next((c for c in self._chats.values()
                         if c.get("username", "").lower() == chat_id[1:].lower()), None)
        else:
            chat = self._chats.get(chat_id)
        if chat is None:
            if isinstance(chat_id, int) and chat_id in self._users:
                raise ApiError(403, ERRORS["cant_initiate"])
            raise bad("chat_not_found")
        if chat["type"] == "private":
            if chat["id"] in self._blocked:
                raise ApiError(403, ERRORS["blocked"])
            if chat["id"] not in self._started:
                raise ApiError(403, ERRORS["cant_initiate"])
        return chat

    def _store_bot_message(self, chat: JSON, body: JSON, p: JSON) -> JSON:
        cid = chat["id"]
        reply = p.get("reply_parameters")
        reply_to = None
        if reply is not None:
            if not isinstance(reply, dict) or "message_id" not in reply:
                raise ApiError(400, "can't parse reply parameters JSON object")
            reply_to = self._messages.get((cid, reply["message_id"]))
            if reply_to is None and not reply.get("allow_sending_without_reply"):
                raise bad("reply_not_found")
        if "reply_markup" in p:
            _check_reply_markup(p["reply_markup"])
        mid = self._next_message_id.get(cid, 1)
        self._next_message_id[cid] = mid + 1
        msg: JSON = {"message_id": mid, "from": self.bot.to_json(), "chat": chat,
                     "date": int(self._clock()), **body}
        if reply_to is not None:
            msg["reply_to_message"] = reply_to
        markup = p.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            msg["reply_markup"] = markup
        self._messages[(cid, mid)] = msg
        self._bot_messages.add((cid, mid))
        return msg

    def _set_json(self, rec: StickerSetRecord) -> JSON:
        out: JSON = {"name": rec.name, "title": rec.title, "sticker_type": rec.sticker_type,
                     "stickers": [self._sticker_json(e, rec) for e in rec.stickers]}
        if rec.thumbnail is not None:
            out["thumbnail"] = tgu.photo_size(rec.thumbnail.file_id,
                                              rec.thumbnail.file_unique_id, 100, 100,
                                              rec.thumbnail.file_size)
        return out

    @staticmethod
    def _sticker_json(e: StickerEntry, rec: StickerSetRecord | None) -> JSON:
        out: JSON = {"file_id": e.file.file_id, "file_unique_id": e.file.file_unique_id,
                     "type": rec.sticker_type if rec else "regular", "width": e.width,
                     "height": e.height, "is_animated": e.format == "animated",
                     "is_video": e.format == "video", "file_size": e.file.file_size}
        if e.emoji_list:
            out["emoji"] = e.emoji_list[0]
        if rec is not None and rec.sticker_type == "custom_emoji":
            # the entry's own id (its file_id is new per entry), as Telegram gives each custom emoji
            out["custom_emoji_id"] = "5" + "".join(c for c in e.file.file_id if c.isdigit())
        if rec is not None:
            out["set_name"] = rec.name
        return out

    def _find_set(self, name: str) -> StickerSetRecord:
        rec = self._sets.get(name.lower())
        if rec is None:
            raise bad("set_invalid")
        return rec

    def _owned_set(self, name: str, user_id: int) -> StickerSetRecord:
        rec = self._find_set(name)
        self._user_for_stickers(user_id)
        if rec.owner_id != user_id:
            raise bad("set_invalid")
        return rec

    def _input_sticker(self, obj: Any, uploads: dict[str, Upload],
                       sticker_type: str = "regular") -> StickerEntry:
        """Validate one InputSticker for a set of ``sticker_type`` and materialise it as an entry."""
        if not isinstance(obj, dict) or "sticker" not in obj:
            raise ApiError(400, "can't parse InputSticker JSON object")
        fmt = obj.get("format")
        if fmt not in STICKER_FORMATS:
            raise bad("format_invalid")
        emojis = obj.get("emoji_list")
        if (not isinstance(emojis, list) or not 1 <= len(emojis) <= EMOJI_LIST_MAX
                or not all(isinstance(e, str) and _is_emoji(e) for e in emojis)):
            raise bad("emojis_invalid")
        keywords = obj.get("keywords", [])
        if (not isinstance(keywords, list) or len(keywords) > KEYWORDS_MAX
                or not all(isinstance(k, str) for k in keywords)
                or sum(len(k) for k in keywords) > KEYWORDS_TOTAL_CHARS):
            raise bad("keywords_invalid")
        if not isinstance(obj["sticker"], str):
            raise ApiError(400, "can't parse InputSticker JSON object")
        src, _ = self._resolve_file(obj["sticker"], uploads, "upload", "sticker")
        role = "emoji" if sticker_type == "custom_emoji" else "sticker"
        width, height = check_sticker_file(src.data, src.file_size, fmt, role,
                                           self.sticker_verifier)
        n = self._next()
        entry_file = FileRecord(file_id=f"CAACAgI{n:07d}st", file_unique_id=src.file_unique_id,
                                data=src.data, file_size=src.file_size,
                                file_path=f"stickers/file_{n}.{self._ext(fmt)}",
                                kind="sticker")
        self._files[entry_file.file_id] = entry_file
        return StickerEntry(entry_file, fmt, list(emojis), list(keywords), width, height)

    @staticmethod
    def _ext(fmt: str) -> str:
        return {"static": "webp", "video": "webm", "animated": "tgs"}[fmt]

    def _find_entry(self, file_id: str) -> tuple[StickerSetRecord, int]:
        for rec in self._sets.values():
            for i, e in enumerate(rec.stickers):
                if e.file.file_id == file_id:
                    return rec, i
        raise bad("sticker_invalid")

    # ------------------------------------------------------------------ methods
    def _register_methods(self) -> None:
        S, I, B, J, F, C = "str", "int", "bool", "json", "file", "chat"
        m = self._methods

        def reg(method: str, handler: Handler, /, **spec: tuple[str, bool]) -> None:
            m[method.lower()] = (method, spec, handler)

        req = True
        opt = False
        reg("getMe", self._get_me)
        reg("deleteWebhook", self._delete_webhook, drop_pending_updates=(B, opt))
        reg("setWebhook", self._set_webhook, url=(S, req), certificate=(F, opt), ip_address=(S, opt),
            max_connections=(I, opt), allowed_updates=(J, opt), drop_pending_updates=(B, opt),
            secret_token=(S, opt))
        reg("getWebhookInfo", self._get_webhook_info)
        reg("getUpdates", self._get_updates, offset=(I, opt), limit=(I, opt),
            timeout=(I, opt), allowed_updates=(J, opt))
        common = dict(chat_id=(C, req), reply_markup=(J, opt), reply_parameters=(J, opt),
                      message_thread_id=(I, opt), disable_notification=(B, opt))
        reg("sendMessage", self._send_message, text=(S, req), parse_mode=(S, opt),
            **common)
        reg("editMessageText", self._edit_message_text, chat_id=(C, opt),
            message_id=(I, opt), inline_message_id=(S, opt), text=(S, req),
            parse_mode=(S, opt), reply_markup=(J, opt))
        reg("answerCallbackQuery", self._answer_callback_query,
            callback_query_id=(S, req), text=(S, opt), show_alert=(B, opt), url=(S, opt),
            cache_time=(I, opt))
        reg("getFile", self._get_file, file_id=(S, req))
        reg("sendSticker", self._send_sticker, sticker=(F, req), emoji=(S, opt), **common)
        reg("sendPhoto", self._send_photo, photo=(F, req), caption=(S, opt),
            parse_mode=(S, opt), **common)
        reg("sendDocument", self._send_document, document=(F, req), caption=(S, opt),
            parse_mode=(S, opt), **common)
        reg("uploadStickerFile", self._upload_sticker_file, user_id=(I, req),
            sticker=(F, req), sticker_format=(S, req))
        reg("createNewStickerSet", self._create_new_sticker_set, user_id=(I, req),
            name=(S, req), title=(S, req), stickers=(J, req), sticker_type=(S, opt),
            needs_repainting=(B, opt))
        reg("addStickerToSet", self._add_sticker_to_set, user_id=(I, req), name=(S, req),
            sticker=(J, req))
        reg("getStickerSet", self._get_sticker_set, name=(S, req))
        reg("replaceStickerInSet", self._replace_sticker_in_set, user_id=(I, req),
            name=(S, req), old_sticker=(S, req), sticker=(J, req))
        reg("deleteStickerSet", self._delete_sticker_set, name=(S, req))
        reg("setStickerSetThumbnail", self._set_sticker_set_thumbnail, name=(S, req),
            user_id=(I, req), thumbnail=(F, opt), format=(S, req))
        reg("deleteStickerFromSet", self._delete_sticker_from_set, sticker=(S, req))
        reg("getChatMember", self._get_chat_member, chat_id=(C, req), user_id=(I, req))
        reg("setMyCommands", self._set_my_commands, commands=(J, req), scope=(J, opt),
            language_code=(S, opt))
        reg("deleteMessage", self._delete_message, chat_id=(C, req), message_id=(I, req))
        reg("sendChatAction", self._send_chat_action, chat_id=(C, req), action=(S, req),
            message_thread_id=(I, opt))

    async def _get_me(self, p: JSON, up: dict[str, Upload]) -> JSON:
        return self.bot.to_json()

    async def _delete_webhook(self, p: JSON, up: dict[str, Upload]) -> bool:
        with self._lock:
            self._webhook = None
            self._webhook_error = None
            if p.get("drop_pending_updates"):
                self._updates.clear()
        return True

    async def _set_webhook(self, p: JSON, up: dict[str, Upload]) -> bool:
        url = p["url"]
        if url == "":  # an empty url removes the webhook, as on Telegram
            return await self._delete_webhook(p, up)
        parsed = urllib.parse.urlsplit(url)
        local = parsed.hostname in _LOCAL_HOSTS
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise bad("webhook_url")
        if not local:
            if parsed.scheme != "https":
                raise bad("webhook_https")
            if (parsed.port or 443) not in (80, 88, 443, 8443):
                raise bad("webhook_port")
        secret = p.get("secret_token")
        if secret is not None and not _SECRET_RE.match(secret):
            raise bad("webhook_secret")
        conns = p.get("max_connections", 40)
        if not 1 <= conns <= 100:
            raise bad("webhook_connections")
        allowed = p.get("allowed_updates")
        if allowed is not None and not isinstance(allowed, list):
            raise ApiError(400, "can't parse allowed_updates JSON object")
        with self._lock:
            self._webhook = {"url": url, "secret_token": secret, "max_connections": conns,
                             "ip_address": p.get("ip_address")}
            self._webhook_error = None
            if allowed is not None:
                self._allowed_updates = frozenset(allowed) if allowed else None
            if p.get("drop_pending_updates"):
                self._updates.clear()
        return True

    async def _get_webhook_info(self, p: JSON, up: dict[str, Upload]) -> JSON:
        with self._lock:
            hook = self._webhook
            out: JSON = {"url": "" if hook is None else hook["url"], "has_custom_certificate": False,
                         "pending_update_count": len(self._updates)}
            if hook is not None:
                out["max_connections"] = hook["max_connections"]
                if hook.get("ip_address"):
                    out["ip_address"] = hook["ip_address"]
                if self._allowed_updates is not None:
                    out["allowed_updates"] = sorted(self._allowed_updates)
            if self._webhook_error is not None:
                out["last_error_date"], out["last_error_message"] = self._webhook_error
            return out

    async def _get_updates(self, p: JSON, up: dict[str, Upload]) -> list[JSON]:
        limit = min(max(p.get("limit", 100), 1), 100)
        timeout = max(p.get("timeout", 0), 0)
        with self._lock:
            if self._webhook is not None:
                raise ApiError(409, ERRORS["webhook_active"])
            if "allowed_updates" in p:
                allowed = p["allowed_updates"]
                if not isinstance(allowed, list):
                    raise ApiError(400, "can't parse allowed_updates JSON object")
                self._allowed_updates = frozenset(allowed) if allowed else None
            offset = p.get("offset")
            if offset is not None and offset < 0:
                self._updates = self._updates[offset:]
            elif offset:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self._poll_generation += 1
            generation = self._poll_generation
        deadline = time.monotonic() + timeout
        request = _current_request.get()
        while True:
            if request.transport is None or request.transport.is_closing():
                raise _ClientGone()
            with self._lock:
                if generation != self._poll_generation:
                    raise ApiError(409, ERRORS["conflict"])
                allowed = self._allowed_updates
                kept = [u for u in self._updates
                        if (_update_type(u) in allowed if allowed is not None
                            else _update_type(u) not in _OPT_IN_UPDATES)]
                self._updates = kept  # updates of types not asked for are dropped
                batch = kept[:limit]
            if batch or time.monotonic() >= deadline or self._closing:
                return batch
            await asyncio.sleep(self._poll_interval_s)

    @staticmethod
    def _render_checked(text: str, parse_mode: str | None) -> tuple[str, list[JSON]]:
        plain, entities = render_text(text, parse_mode)
        if not plain.strip():
            raise bad("text_empty")
        if len(plain) > MESSAGE_TEXT_MAX:
            raise bad("text_too_long")
        return plain, entities

    @staticmethod
    def _caption(p: JSON) -> JSON:
        if not p.get("caption"):
            return {}
        plain, entities = render_text(p["caption"], p.get("parse_mode"))
        if len(plain) > CAPTION_MAX:
            raise bad("caption_too_long")
        return {"caption": plain, **({"caption_entities": entities} if entities else {})}

    async def _send_message(self, p: JSON, up: dict[str, Upload]) -> JSON:
        plain, entities = self._render_checked(p["text"], p.get("parse_mode"))
        body: JSON = {"text": plain}
        if entities:
            body["entities"] = entities
        with self._lock:
            chat = self._chat_for_send(p["chat_id"])
            return self._store_bot_message(chat, body, p)

    async def _edit_message_text(self, p: JSON, up: dict[str, Upload]) -> JSON | bool:
        plain, entities = self._render_checked(p["text"], p.get("parse_mode"))
        if "inline_message_id" in p:
            raise ApiError(400, ERRORS["edit_not_found"])  # no inline mode in the fake
        if "chat_id" not in p or "message_id" not in p:
            raise ApiError(400, "message identifier is not specified")
        if "reply_markup" in p:
            _check_reply_markup(p["reply_markup"])
        with self._lock:
            chat = self._chat_for_send(p["chat_id"])
            key = (chat["id"], p["message_id"])
            msg = self._messages.get(key)
            if msg is None:
                raise bad("edit_not_found")
            if key not in self._bot_messages or "text" not in msg:
                raise bad("cant_edit")
            new_markup = p.get("reply_markup")
            if isinstance(new_markup, dict) and not new_markup.get("inline_keyboard"):
                new_markup = None
            if (msg["text"], msg.get("entities", []), msg.get("reply_markup")) == \
                    (plain, entities, new_markup):
                raise bad("not_modified")
            msg["text"] = plain
            if entities:
                msg["entities"] = entities
            else:
                msg.pop("entities", None)
            msg["edit_date"] = int(self._clock())
            if new_markup is None:
                msg.pop("reply_markup", None)
            else:
                msg["reply_markup"] = new_markup
            return json.loads(json.dumps(msg))

    async def _answer_callback_query(self, p: JSON, up: dict[str, Upload]) -> bool:
        if len(p.get("text", "")) > CALLBACK_ANSWER_TEXT_MAX:
            raise bad("answer_too_long")
        with self._lock:
            if p["callback_query_id"] not in self._open_queries:
                raise bad("query_invalid")
            self._open_queries.discard(p["callback_query_id"])
        return True

    async def _get_file(self, p: JSON, up: dict[str, Upload]) -> JSON:
        with self._lock:
            rec = self._files.get(p["file_id"])
            if rec is None:
                raise ApiError(400, "invalid file_id")
            if self._local_dir is not None:  # --local: any size, a path on the server's disk
                path = self._local_dir / rec.file_path
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(rec.data)
                return {**rec.to_file_json(with_path=False), "file_path": str(path)}
            if rec.file_size > GETFILE_MAX_BYTES:
                raise bad("file_too_big")
            return rec.to_file_json()

    async def _send_sticker(self, p: JSON, up: dict[str, Upload]) -> JSON:
        with self._lock:
            chat = self._chat_for_send(p["chat_id"])
            value = p["sticker"]
            if not value.startswith("attach://") and value in self._files:
                try:
                    rec, i = self._find_entry(value)
                    sticker = self._sticker_json(rec.stickers[i], rec)
                except ApiError:
                    sticker = None
                if sticker is not None:
                    return self._store_bot_message(chat, {"sticker": sticker}, p)
            src, _ = self._resolve_file(value, up, "sticker", "sticker")
            fmt = "video" if is_webm(src.data) else "static"
            w, h = check_sticker_file(src.data, src.file_size, fmt, "sticker",
                                      self.sticker_verifier)
            entry = StickerEntry(src, fmt, [p["emoji"]] if p.get("emoji") else [], [], w, h)
            return self._store_bot_message(chat, {"sticker": self._sticker_json(entry, None)},
                                           p)

    async def _send_photo(self, p: JSON, up: dict[str, Upload]) -> JSON:
        with self._lock:
            chat = self._chat_for_send(p["chat_id"])
            src, fresh = self._resolve_file(p["photo"], up, "photo", "photo")
            if fresh and src.file_size > SEND_PHOTO_MAX_BYTES:
                raise bad("file_too_big")
            info = _image_info(src.data)
            if info is None:
                raise bad("image_failed")
            body: JSON = {"photo": [tgu.photo_size(src.file_id, src.file_unique_id, info[1],
                                                   info[2], src.file_size)]}
            body.update(self._caption(p))
            return self._store_bot_message(chat, body, p)

    async def _send_document(self, p: JSON, up: dict[str, Upload]) -> JSON:
        with self._lock:
            chat = self._chat_for_send(p["chat_id"])
            src, fresh = self._resolve_file(p["document"], up, "document", "document")
            if fresh and src.file_size > SEND_DOCUMENT_MAX_BYTES:
                raise ApiError(413, "")
            mime = src.mime_type
            if src.file_name and (not mime or mime == "application/octet-stream"):
                mime = mimetypes.guess_type(src.file_name)[0] or mime
            body: JSON = {"document": tgu.document(src.file_id, src.file_unique_id,
                                                   file_name=src.file_name, mime_type=mime,
                                                   file_size=src.file_size)}
            body.update(self._caption(p))
            return self._store_bot_message(chat, body, p)

    async def _upload_sticker_file(self, p: JSON, up: dict[str, Upload]) -> JSON:
        fmt = p["sticker_format"]
        if fmt not in STICKER_FORMATS:
            raise bad("format_invalid")
        with self._lock:
            self._user_for_stickers(p["user_id"])
            if not p["sticker"].startswith("attach://"):
                raise ApiError(400, "sticker file must be uploaded using multipart/form-data")
            part = up.get(p["sticker"][len("attach://"):])
            if part is None:
                raise bad("attach_missing")
            check_sticker_file(part.data, len(part.data), fmt, "upload",
                               self.sticker_verifier)
            rec = self._new_file(part.data, "upload", ext="." + self._ext(fmt))
            return rec.to_file_json(with_path=False)

    async def _create_new_sticker_set(self, p: JSON, up: dict[str, Upload]) -> bool:
        name, title = p["name"], p["title"]
        sticker_type = p.get("sticker_type", "regular")
        if sticker_type not in STICKER_TYPES:
            raise bad("type_invalid")
        if not 1 <= len(title) <= 64:
            raise bad("title_invalid")
        check_sticker_set_name(name, self.bot.username)
        stickers = p["stickers"]
        if not isinstance(stickers, list):
            raise ApiError(400, "can't parse stickers JSON object")
        if not stickers:
            raise bad("no_stickers")
        if len(stickers) > INITIAL_STICKERS_MAX:
            raise bad("too_many_stickers")
        with self._lock:
            self._user_for_stickers(p["user_id"])
            if name.lower() in self._sets:
                raise bad("name_occupied")
            entries = [self._input_sticker(s, up, sticker_type) for s in stickers]
            self._sets[name.lower()] = StickerSetRecord(name, title, sticker_type,
                                                        p["user_id"], entries)
        return True

    async def _add_sticker_to_set(self, p: JSON, up: dict[str, Upload]) -> bool:
        with self._lock:
            rec = self._owned_set(p["name"], p["user_id"])
            if len(rec.stickers) >= SET_MAX_STICKERS[rec.sticker_type]:
                raise bad("too_many_stickers")
            rec.stickers.append(self._input_sticker(p["sticker"], up, rec.sticker_type))
        return True

    async def _get_sticker_set(self, p: JSON, up: dict[str, Upload]) -> JSON:
        with self._lock:
            return self._set_json(self._find_set(p["name"]))

    async def _replace_sticker_in_set(self, p: JSON, up: dict[str, Upload]) -> bool:
        with self._lock:
            rec = self._owned_set(p["name"], p["user_id"])
            owner, index = self._find_entry(p["old_sticker"])
            if owner is not rec:
                raise bad("sticker_invalid")
            entry = self._input_sticker(p["sticker"], up, rec.sticker_type)
            del self._files[rec.stickers[index].file.file_id]
            rec.stickers[index] = entry
        return True

    async def _delete_sticker_set(self, p: JSON, up: dict[str, Upload]) -> bool:
        with self._lock:
            rec = self._find_set(p["name"])
            for e in rec.stickers:
                self._files.pop(e.file.file_id, None)
            del self._sets[rec.name.lower()]
        return True

    async def _set_sticker_set_thumbnail(self, p: JSON, up: dict[str, Upload]) -> bool:
        fmt = p["format"]
        if fmt not in STICKER_FORMATS:
            raise bad("format_invalid")
        with self._lock:
            rec = self._owned_set(p["name"], p["user_id"])
            if "thumbnail" not in p:
                rec.thumbnail, rec.thumbnail_format = None, None
                return True
            value = p["thumbnail"]
            if fmt != "static" and value.startswith(("http://", "https://")):
                raise ApiError(400, "animated and video thumbnails can't be uploaded via URL")
            if fmt not in {e.format for e in rec.stickers}:
                raise bad("thumb_format")
            src, _ = self._resolve_file(value, up, "thumbnail", "thumbnail")
            check_sticker_file(src.data, src.file_size, fmt, "thumbnail",
                               self.sticker_verifier)
            rec.thumbnail, rec.thumbnail_format = src, fmt
        return True

    async def _delete_sticker_from_set(self, p: JSON, up: dict[str, Upload]) -> bool:
        with self._lock:
            rec, index = self._find_entry(p["sticker"])
            entry = rec.stickers.pop(index)
            self._files.pop(entry.file.file_id, None)
        return True

    async def _get_chat_member(self, p: JSON, up: dict[str, Upload]) -> JSON:
        with self._lock:
            chat_id = p["chat_id"]
            if isinstance(chat_id, str) or chat_id not in self._chats:
                raise bad("chat_not_found")
            member = self._members.get((chat_id, p["user_id"]))
            if member is not None:
                return member
            u = self._users.get(p["user_id"])
            if u is None:
                raise bad("user_not_found")
            return tgu.chat_member(u, "left")

    async def _set_my_commands(self, p: JSON, up: dict[str, Upload]) -> bool:
        commands = p["commands"]
        if not isinstance(commands, list):
            raise ApiError(400, "can't parse commands JSON object")
        if len(commands) > COMMANDS_MAX:
            raise bad("too_many_commands")
        for c in commands:
            if not isinstance(c, dict) or not _COMMAND_RE.match(str(c.get("command", ""))):
                raise bad("command_invalid")
            if not 1 <= len(str(c.get("description", ""))) <= 256:
                raise bad("command_description")
        scope = json.dumps(p.get("scope", {"type": "default"}), sort_keys=True)
        with self._lock:
            self._commands[f"{scope}|{p.get('language_code', '')}"] = commands
        return True

    async def _delete_message(self, p: JSON, up: dict[str, Upload]) -> bool:
        with self._lock:
            chat_id = p["chat_id"]
            if isinstance(chat_id, str) or chat_id not in self._chats:
                raise bad("chat_not_found")
            key = (chat_id, p["message_id"])
            if self._messages.pop(key, None) is None:
                raise bad("delete_not_found")
            self._bot_messages.discard(key)
        return True

    async def _send_chat_action(self, p: JSON, up: dict[str, Upload]) -> bool:
        if p["action"] not in CHAT_ACTIONS:
            raise bad("action")
        with self._lock:
            self._chat_for_send(p["chat_id"])
        return True

    def commands(self, scope: JSON | None = None, language_code: str = "") -> list[JSON]:
        """Commands last set with setMyCommands for this scope/language ([] if none)."""
        key = json.dumps(scope or {"type": "default"}, sort_keys=True)
        with self._lock:
            return list(self._commands.get(f"{key}|{language_code}", []))
