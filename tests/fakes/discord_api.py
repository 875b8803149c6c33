"""A fake Discord REST API (v10) on 127.0.0.1 for driving the real discord.py.

Point discord.py at it by setting ``discord.http.Route.BASE`` to
:attr:`FakeDiscord.api_base` (the harness does this). Interaction responses
and webhooks go through the same ``Route`` class, so they land here too.

Conventions
- The server holds one "world": a bot user + application, guilds (roles,
  channels, members, stickers, emojis, boost tier, the bot's permissions),
  users, DM channels, messages, registered interactions. Snowflakes come from a
  :class:`~tests.fakes.discord_payloads.Snowflakes` counter (deterministic).
- Every answer is JSON with ``Content-Type: application/json`` (204 has no
  body), with ``X-RateLimit-*`` headers that never exhaust a bucket unless a
  fault is injected. Errors use Discord's JSON error shape
  ``{"code": int, "message": str[, "errors": {...}]}``.
- Rules enforced as Discord does: interaction token lifetime (15 min, or
  :meth:`FakeDiscord.expire_token`) -> 404 10062 on callbacks / 10015 on
  webhooks; initial response within ``initial_response_s`` (3 s) -> 10062;
  one initial response (400 40060); sticker slots by boost tier (400 30039);
  sticker file <= 512 KiB (400 50045), PNG/APNG/GIF (Lottie only for
  verified/partnered guilds, else 400 50046), animation <= 5 s (400 170007)
  and <= 1000 frames (400 170004); name 2-30, description empty or 2-100,
  tags 1-200 (400 50035); emoji slots per kind (400 30008 / 30018); bot permissions (403 50013); DMs closed
  (403 50007); attachment total size > guild upload limit (413 40005).
- 320x320 is only a guideline for stickers on Discord; the fake records the
  image size (``StickerRecord.width/height``) and enforces it only when
  ``strict_sticker_size`` is set.
- Fault injection: :meth:`FakeDiscord.inject_rate_limit` answers 429 with a
  ``Via`` header, ``Retry-After``, ``X-RateLimit-*`` headers and a JSON
  ``retry_after`` (seconds, float), which discord.py sleeps on and retries;
  ``lands=True`` applies the request before answering 429 (a duplicate
  generator). :meth:`FakeDiscord.inject_error` answers any status/code.
- Every request is appended to :attr:`FakeDiscord.calls` as a :class:`Call`
  (route template, path params, query, JSON body, multipart fields and file
  bytes, answer status and body), for assertions.
- Time for token expiry comes from an injectable ``clock`` (seconds, monotonic).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import re
import struct
import time
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from tests.fakes import discord_payloads as payloads

API_PREFIX = "/api/v10"
TOKEN_LIFETIME_S = 15 * 60.0
STICKER_MAX_BYTES = 512 * 1024
EMOJI_MAX_BYTES = 256 * 1024
MESSAGE_MAX_FILES = 10
EPHEMERAL_FLAG = 1 << 6
LOADING_FLAG = 1 << 7
GUILD_UPLOAD_LIMITS = {0: 10 * 1024 * 1024, 1: 10 * 1024 * 1024, 2: 50 * 1024 * 1024,
                       3: 100 * 1024 * 1024}
_ALL_PERMISSIONS = (1 << 53) - 1
_COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")
_EMOJI_NAME = re.compile(r"^[A-Za-z0-9_]{2,32}$")


class ApiError(Exception):
    """Raised by handlers; becomes Discord's error JSON."""

    def __init__(self, status: int, code: int, message: str,
                 errors: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors:
            out["errors"] = dict(self.errors)
        return out


def form_error(field: str, code: str, message: str) -> ApiError:
    """400 50035 Invalid Form Body with the nested ``errors`` Discord sends."""
    return ApiError(400, 50035, "Invalid Form Body",
                    {field: {"_errors": [{"code": code, "message": message}]}})


@dataclasses.dataclass(frozen=True)
class UploadedFile:
    field: str                # multipart field name, e.g. "files[0]" or "file"
    filename: str
    content_type: str
    data: bytes


@dataclasses.dataclass
class Call:
    """One request as the fake saw it, and what it answered."""

    method: str
    path: str                 # path below /api/v10 (or the cdn path)
    route: str                # template, e.g. "/guilds/{guild_id}/stickers"
    params: dict[str, str]    # path parameters
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None          # JSON body, or multipart ``payload_json`` decoded
    form: dict[str, str] = dataclasses.field(default_factory=dict)  # other text fields
    files: list[UploadedFile] = dataclasses.field(default_factory=list)
    status: int = 0
    response: Any = None
    injected: str | None = None   # "rate_limit" / "error" when a fault answered
    at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.method} {self.route}"


@dataclasses.dataclass
class Fault:
    method: str
    route: str
    times: int
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    lands: bool
    kind: str


@dataclasses.dataclass
class InteractionRecord:
    id: str
    token: str
    application_id: str
    type: int
    channel_id: str
    guild_id: str | None
    user: dict[str, Any]
    created: float
    component_message_id: str | None = None
    response_type: int | None = None
    response_data: Any = None
    original_id: str | None = None
    followup_ids: list[str] = dataclasses.field(default_factory=list)
    expired: bool = False


@dataclasses.dataclass
class StickerRecord:
    payload: dict[str, Any]
    data: bytes
    content_type: str
    width: int | None
    height: int | None


@dataclasses.dataclass
class GuildState:
    payload: dict[str, Any]                   # the GUILD_CREATE payload (kept current)
    bot_permissions: int
    channel_bot_permissions: dict[str, int] = dataclasses.field(default_factory=dict)
    stickers: dict[str, StickerRecord] = dataclasses.field(default_factory=dict)
    emojis: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.payload["id"])

    @property
    def premium_tier(self) -> int:
        return int(self.payload.get("premium_tier", 0))

    @property
    def features(self) -> list[str]:
        return list(self.payload.get("features", []))


@dataclasses.dataclass
class ServerConfig:
    bot_token: str = "fake-bot-token"
    recommended_shards: int = 1   # GET /gateway/bot "shards" (what an auto-sharded bot runs)
    initial_response_s: float = 3.0
    token_lifetime_s: float = TOKEN_LIFETIME_S
    strict_sticker_size: bool = False


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def sniff_image(data: bytes) -> tuple[str, int | None, int | None]:
    """(kind, width, height) with kind one of png, apng, gif, lottie, jpeg, webp,
    unknown. APNG = PNG with an ``acTL`` chunk before the first ``IDAT``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        pos, kind = 8, "png"
        while pos + 8 <= len(data):
            length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
            if ctype == b"acTL":
                kind = "apng"
                break
            if ctype == b"IDAT":
                break
            pos += 12 + length
        return kind, w, h
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return "gif", w, h
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg", None, None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", None, None
    if data.lstrip()[:1] == b"{":
        try:
            doc = json.loads(data)
        except ValueError:
            return "unknown", None, None
        if isinstance(doc, dict) and "layers" in doc:
            return "lottie", doc.get("w"), doc.get("h")
    return "unknown", None, None


def animation_timing(data: bytes) -> tuple[int, float]:
    """(frames, duration in seconds) of an APNG or GIF; (1, 0.0) for still images.

    APNG: ``fcTL`` chunks, delay = num/den (den 0 means 1/100 s).
    GIF: image descriptors, delays from Graphic Control Extensions (1/100 s).
    Raises ValueError on a truncated file."""
    kind, _, _ = sniff_image(data)
    if kind == "apng":
        pos, frames, total = 8, 0, 0.0
        while pos + 8 <= len(data):
            length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
            if ctype == b"fcTL":
                if pos + 8 + 26 > len(data):
                    raise ValueError("truncated fcTL chunk")
                num, den = struct.unpack(">HH", data[pos + 8 + 20:pos + 8 + 24])
                frames += 1
                total += num / (den or 100)
            pos += 12 + length
        return max(frames, 1), total
    if kind == "gif":
        if len(data) < 13:
            raise ValueError("truncated GIF header")
        pos = 13
        if data[10] & 0x80:
            pos += 3 * (2 << (data[10] & 7))
        frames, total = 0, 0.0

        def skip_sub_blocks(p: int) -> int:
            while True:
                if p >= len(data):
                    raise ValueError("truncated GIF")
                n = data[p]
                p += 1 + n
                if n == 0:
                    return p

        while True:
            if pos >= len(data):
                raise ValueError("GIF ends without a trailer")
            tag = data[pos]
            if tag == 0x3B:
                break
            if tag == 0x21:
                if pos + 1 >= len(data):
                    raise ValueError("truncated GIF")
                if data[pos + 1] == 0xF9 and pos + 8 <= len(data):
                    total += struct.unpack("<H", data[pos + 4:pos + 6])[0] / 100.0
                pos = skip_sub_blocks(pos + 2)
            elif tag == 0x2C:
                if pos + 10 > len(data):
                    raise ValueError("truncated GIF")
                packed = data[pos + 9]
                pos += 10
                if packed & 0x80:
                    pos += 3 * (2 << (packed & 7))
                frames += 1
                pos = skip_sub_blocks(pos + 1)
            else:
                raise ValueError(f"bad GIF block 0x{tag:02x}")
        return max(frames, 1), total
    return 1, 0.0


STICKER_MAX_SECONDS = 5.0
STICKER_MAX_FRAMES = 1000

_STICKER_FORMAT = {"png": 1, "apng": 2, "lottie": 3, "gif": 4}
_CONTENT_TYPES = {"png": "image/png", "apng": "image/png", "gif": "image/gif",
                  "jpeg": "image/jpeg", "webp": "image/webp", "lottie": "application/json"}

Handler = Callable[[web.Request, Call], Awaitable[Any]]


class FakeDiscord:
    """The fake REST server. ``await start()``, use :attr:`api_base`, ``await close()``."""

    def __init__(self, *, config: ServerConfig | None = None,
                 snowflakes: payloads.Snowflakes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or ServerConfig()
        self.ids = snowflakes or payloads.Snowflakes()
        self.clock = clock
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.bot_user: dict[str, Any] | None = None
        self.application: dict[str, Any] | None = None
        self.guilds: dict[str, GuildState] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}      # id -> channel payload
        self.messages: dict[str, dict[str, dict[str, Any]]] = {}  # channel -> id -> msg
        self.dm_channels: dict[str, str] = {}              # user id -> channel id
        self.dms_closed: set[str] = set()
        self.interactions: dict[str, InteractionRecord] = {}   # by token
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[str, list[dict[str, Any]]] = {}
        self.files: dict[str, tuple[bytes, str]] = {}      # cdn path -> (bytes, type)
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._command_ids: dict[tuple[str | None, str, int], str] = {}
        self._call_event = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------ lifecycle

    @property
    def api_base(self) -> str:
        if not self.url:
            raise RuntimeError("FakeDiscord is not started")
        return self.url + API_PREFIX

    async def start(self) -> "FakeDiscord":
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeDiscord":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------- world setup

    def set_bot(self, bot_user: Mapping[str, Any], app: Mapping[str, Any]) -> None:
        if not bot_user.get("bot"):
            raise ValueError("the bot user payload must have bot=True")
        self.bot_user, self.application = dict(bot_user), dict(app)
        self.users[str(bot_user["id"])] = dict(bot_user)

    def add_user(self, user_payload: Mapping[str, Any]) -> None:
        self.users[str(user_payload["id"])] = dict(user_payload)

    def add_guild(self, guild_payload: Mapping[str, Any], *,
                  bot_permissions: int = payloads.DEFAULT_BOT_PERMISSIONS) -> GuildState:
        g = GuildState(payload=dict(guild_payload), bot_permissions=bot_permissions)
        for ch in g.payload.get("channels", []):
            ch = dict(ch)
            ch["guild_id"] = g.id
            self.channels[str(ch["id"])] = ch
        for m in g.payload.get("members", []):
            self.add_user(m["user"])
        for s in g.payload.get("stickers", []):
            g.stickers[str(s["id"])] = StickerRecord(dict(s), b"", "image/png", None, None)
        for e in g.payload.get("emojis", []):
            g.emojis[str(e["id"])] = dict(e)
        self.guilds[g.id] = g
        return g

    def guild_create_payload(self, guild_id: int | str) -> dict[str, Any]:
        """Current GUILD_CREATE payload, including stickers/emojis created since."""
        g = self._guild(str(guild_id))
        out = dict(g.payload)
        out["stickers"] = [dict(s.payload) for s in g.stickers.values()]
        out["emojis"] = [dict(e) for e in g.emojis.values()]
        return out

    def set_bot_permissions(self, guild_id: int | str, permissions: int, *,
                            channel_id: int | str | None = None) -> None:
        g = self._guild(str(guild_id))
        if channel_id is None:
            g.bot_permissions = permissions
        else:
            g.channel_bot_permissions[str(channel_id)] = permissions

    def close_dms(self, user_id: int | str) -> None:
        self.dms_closed.add(str(user_id))

    def host_file(self, data: bytes, filename: str, *, content_type: str,
                  channel_id: int | str, width: int | None = None,
                  height: int | None = None) -> dict[str, Any]:
        """Serve ``data`` from the fake's CDN and return an attachment payload."""
        aid = self.ids()
        path = f"/cdn/attachments/{channel_id}/{aid}/{filename}"
        self.files[path] = (bytes(data), content_type)
        return payloads.attachment(aid, filename, size=len(data), url=self.url + path,
                            content_type=content_type, width=width, height=height)

    # -------------------------------------------------------- interactions

    def register_interaction(self, payload: Mapping[str, Any]) -> InteractionRecord:
        """Make an INTERACTION_CREATE payload known (as Discord does on dispatch)."""
        user = payload["member"]["user"] if "member" in payload else payload["user"]
        rec = InteractionRecord(
            id=str(payload["id"]), token=str(payload["token"]),
            application_id=str(payload["application_id"]), type=int(payload["type"]),
            channel_id=str(payload["channel"]["id"]),
            guild_id=str(payload["guild_id"]) if payload.get("guild_id") else None,
            user=dict(user), created=self.clock())
        if rec.type == payloads.INTERACTION_MESSAGE_COMPONENT:
            msg = payload["message"]
            rec.component_message_id = str(msg["id"])
            self.messages.setdefault(str(msg["channel_id"]), {}).setdefault(str(msg["id"]),
                                                                            dict(msg))
        ch = payload["channel"]
        if str(ch["id"]) not in self.channels:
            self.channels[str(ch["id"])] = {k: v for k, v in ch.items() if k != "permissions"}
        self.interactions[rec.token] = rec
        return rec

    def expire_token(self, token: str) -> None:
        self._interaction_by_token(token).expired = True

    def interaction(self, token: str) -> InteractionRecord:
        return self._interaction_by_token(token)

    def original_response(self, token: str) -> dict[str, Any] | None:
        rec = self._interaction_by_token(token)
        return None if rec.original_id is None else self._message(rec.channel_id, rec.original_id)

    def followups(self, token: str) -> list[dict[str, Any]]:
        rec = self._interaction_by_token(token)
        return [self._message(rec.channel_id, m) for m in rec.followup_ids]

    # ---------------------------------------------------------- inspection

    def stickers(self, guild_id: int | str) -> list[StickerRecord]:
        return list(self._guild(str(guild_id)).stickers.values())

    def emojis(self, guild_id: int | str) -> list[dict[str, Any]]:
        return list(self._guild(str(guild_id)).emojis.values())

    def default_member_permissions(self, name: str, *,
                                   guild_id: int | str | None = None) -> int | None:
        """``default_member_permissions`` of a synced top-level command (None = everyone)."""
        cmds = self.global_commands if guild_id is None else\
            self.guild_commands.get(str(guild_id), [])
        for c in cmds:
            if c["name"] == name and int(c.get("type", 1)) == 1:
                v = c.get("default_member_permissions")
                return None if v is None else int(v)
        raise KeyError(f"command {name!r} (guild {guild_id}) was never synced")

    def channel_messages(self, channel_id: int | str) -> list[dict[str, Any]]:
        return list(self.messages.get(str(channel_id), {}).values())

    def dm_messages(self, user_id: int | str) -> list[dict[str, Any]]:
        cid = self.dm_channels.get(str(user_id))
        return [] if cid is None else self.channel_messages(cid)

    def file_bytes(self, url: str) -> bytes:
        path = url[len(self.url):] if url.startswith(self.url) else url
        try:
            return self.files[path][0]
        except KeyError:
            raise KeyError(f"no file hosted at {url}") from None

    def calls_to(self, method: str, route: str, *, ok_only: bool = False) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.route == route
                and (not ok_only or 200 <= c.status < 300)]

    async def wait_for_call(self, predicate: Callable[[Call], bool], *,
                            timeout: float = 5.0) -> Call:
        """First recorded call (past or future) matching ``predicate``."""
        deadline = asyncio.get_running_loop().time() + timeout
        seen = 0
        while True:
            for c in self.calls[seen:]:
                if c.status and predicate(c):
                    return c
            seen = len(self.calls)
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise asyncio.TimeoutError("no matching Discord API call; saw: "
                                           + ", ".join(f"{c.key}->{c.status}" for c in self.calls))
            self._call_event.clear()
            try:
                await asyncio.wait_for(self._call_event.wait(), left)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------ fault injection

    def inject_rate_limit(self, method: str, route: str, *, times: int = 1,
                          retry_after: float = 0.05, lands: bool = False,
                          is_global: bool = False, scope: str = "user") -> None:
        """The next ``times`` matching requests get a 429 that discord.py retries."""
        if retry_after < 0 or times < 1:
            raise ValueError("retry_after must be >= 0 and times >= 1")
        body = {"message": "You are being rate limited.", "retry_after": retry_after,
                "global": is_global}
        if is_global:
            body["code"] = 0
        headers = {
            "Via": "1.1 google", "Retry-After": str(max(1, math.ceil(retry_after))),
            "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": self._bucket(route), "X-RateLimit-Scope": scope,
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        self.faults.append(Fault(method.upper(), route, times, 429, body, headers, lands,
                                 "rate_limit"))

    def inject_error(self, method: str, route: str, *, status: int, code: int,
                     message: str, times: int = 1) -> None:
        self.faults.append(Fault(method.upper(), route, times, status,
                                 {"code": code, "message": message}, {}, False, "error"))

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def _bucket(route: str) -> str:
        return hashlib.sha1(route.encode()).hexdigest()[:16]

    def _headers(self, route: str) -> dict[str, str]:
        return {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "49",
                "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
                "X-RateLimit-Reset-After": "1.000", "X-RateLimit-Bucket": self._bucket(route)}

    @staticmethod
    def _json(status: int, body: Any, headers: Mapping[str, str]) -> web.Response:
        if status == 204:
            return web.Response(status=204, headers=dict(headers))
        # Exactly "application/json" (no charset): discord.py compares the header verbatim.
        out = dict(headers)
        out["Content-Type"] = "application/json"
        return web.Response(status=status, body=json.dumps(body).encode(), headers=out)

    async def _parse_body(self, request: web.Request, call: Call) -> None:
        ctype = request.content_type
        if ctype == "application/json":
            raw = await request.read()
            try:
                call.json = json.loads(raw) if raw else None
            except ValueError:
                raise ApiError(400, 50109, "The request body contains invalid JSON.") from None
        elif ctype.startswith("multipart/"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                name = part.name or ""
                data = await part.read(decode=False)  # type: ignore[union-attr]
                if part.filename is not None:  # type: ignore[union-attr]
                    call.files.append(UploadedFile(
                        name, part.filename,  # type: ignore[union-attr]
                        part.headers.get("Content-Type", "application/octet-stream"),
                        bytes(data)))
                elif name == "payload_json":
                    call.json = json.loads(bytes(data).decode())
                else:
                    call.form[name] = bytes(data).decode()

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else request.path
        if route.startswith(API_PREFIX):
            route = route[len(API_PREFIX):]
        path = request.path[len(API_PREFIX):] if request.path.startswith(API_PREFIX) else request.path
        call = Call(method=request.method, path=path, route=route, params=dict(info),
                    query=dict(request.query), headers=dict(request.headers), at=self.clock())
        self.calls.append(call)
        headers = self._headers(route)
        try:
            try:
                await self._parse_body(request, call)
                fault = self._take_fault(call)
                if fault is not None and not fault.lands:
                    call.injected = fault.kind
                    call.status, call.response = fault.status, fault.body
                    return self._json(fault.status, fault.body, fault.headers)
                if isinstance(info, web.UrlMappingMatchInfo) and info.http_exception is not None:
                    raise ApiError(info.http_exception.status, 0,
                                   f"{info.http_exception.status}: {info.http_exception.reason}")
                self._check_auth(request, route)
                result = await self._handlers[(request.method, route)](request, call)
                if isinstance(result, web.Response):
                    call.status = result.status
                    return result
                status = 204 if result is None else 200
                if fault is not None:  # landed, but the client is told 429
                    call.injected = fault.kind
                    call.status, call.response = fault.status, fault.body
                    return self._json(fault.status, fault.body, fault.headers)
                call.status, call.response = status, result
                return self._json(status, result, headers)
            except ApiError as e:
                call.status, call.response = e.status, e.body()
                return self._json(e.status, e.body(), headers)
        finally:
            self._call_event.set()

    def _take_fault(self, call: Call) -> Fault | None:
        for f in self.faults:
            if f.times > 0 and f.method == call.method and f.route == call.route:
                f.times -= 1
                return f
        return None

    def _check_auth(self, request: web.Request, route: str) -> None:
        if route.startswith(("/interactions/", "/webhooks/", "/cdn/")):
            return
        if request.headers.get("Authorization") != f"Bot {self.config.bot_token}":
            raise ApiError(401, 0, "401: Unauthorized")

    def _add_routes(self, app: web.Application) -> None:
        """Register routes with aiohttp for matching; the middleware records the
        call and runs ``self._handlers[(method, route template)]``."""
        async def endpoint(request: web.Request) -> web.StreamResponse:  # pragma: no cover
            raise AssertionError("endpoints are run by the middleware")

        def add(method: str, path: str, fn: Handler) -> None:
            self._handlers[(method, path)] = fn
            app.router.add_route(method, path if path.startswith("/cdn") else API_PREFIX + path,
                                 endpoint)

        add("GET", "/users/@me", self._get_me)
        add("GET", "/oauth2/applications/@me", self._get_app)
        add("GET", "/gateway/bot", self._get_gateway)
        add("GET", "/users/{user_id}", self._get_user)
        add("POST", "/users/@me/channels", self._create_dm)
        add("GET", "/applications/{application_id}/commands", self._list_commands)
        add("PUT", "/applications/{application_id}/commands", self._put_commands)
        add("GET", "/applications/{application_id}/guilds/{guild_id}/commands", self._list_commands)
        add("PUT", "/applications/{application_id}/guilds/{guild_id}/commands", self._put_commands)
        add("POST", "/interactions/{interaction_id}/{token}/callback", self._callback)
        add("POST", "/webhooks/{application_id}/{token}", self._followup)
        for m in ("GET", "PATCH", "DELETE"):
            add(m, "/webhooks/{application_id}/{token}/messages/{message_id}", self._webhook_message)
        add("GET", "/channels/{channel_id}", self._get_channel)
        add("POST", "/channels/{channel_id}/messages", self._create_message)
        for m in ("GET", "PATCH", "DELETE"):
            add(m, "/channels/{channel_id}/messages/{message_id}", self._channel_message)
        add("GET", "/guilds/{guild_id}", self._get_guild)
        add("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member)
        add("GET", "/guilds/{guild_id}/stickers", self._list_stickers)
        add("POST", "/guilds/{guild_id}/stickers", self._create_sticker)
        add("GET", "/guilds/{guild_id}/stickers/{sticker_id}", self._get_sticker)
        add("DELETE", "/guilds/{guild_id}/stickers/{sticker_id}", self._delete_sticker)
        add("GET", "/guilds/{guild_id}/emojis", self._list_emojis)
        add("POST", "/guilds/{guild_id}/emojis", self._create_emoji)
        add("DELETE", "/guilds/{guild_id}/emojis/{emoji_id}", self._delete_emoji)
        add("GET", "/cdn/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn)

    # ------------------------------------------------------------- lookups

    def _guild(self, gid: str) -> GuildState:
        try:
            return self.guilds[gid]
        except KeyError:
            raise ApiError(404, 10004, "Unknown Guild") from None

    def _channel(self, cid: str) -> dict[str, Any]:
        try:
            return self.channels[cid]
        except KeyError:
            raise ApiError(404, 10003, "Unknown Channel") from None

    def _message(self, cid: str, mid: str) -> dict[str, Any]:
        try:
            return self.messages[cid][mid]
        except KeyError:
            raise ApiError(404, 10008, "Unknown Message") from None

    def _interaction_by_token(self, token: str) -> InteractionRecord:
        try:
            return self.interactions[token]
        except KeyError:
            raise KeyError(f"no interaction registered with token {token!r}") from None

    def _bot(self) -> dict[str, Any]:
        if self.bot_user is None or self.application is None:
            raise ApiError(401, 0, "401: Unauthorized")
        return self.bot_user

    def bot_permissions_in(self, guild_id: str, channel_id: str | None = None) -> int:
        g = self._guild(guild_id)
        perms = g.channel_bot_permissions.get(str(channel_id), g.bot_permissions)\
            if channel_id is not None else g.bot_permissions
        if perms & (1 << payloads.PERMISSION_BITS["ADMINISTRATOR"]):
            return _ALL_PERMISSIONS
        return perms

    def _require(self, guild_id: str, channel_id: str | None, *names: str,
                 any_of: bool = False) -> None:
        have = self.bot_permissions_in(guild_id, channel_id)
        bits = [payloads.permission_bits(n) for n in names]
        ok = any(have & b for b in bits) if any_of else all(have & b for b in bits)
        if not ok:
            raise ApiError(403, 50013, "Missing Permissions")

    # ------------------------------------------------------------ handlers

    async def _get_me(self, request: web.Request, call: Call) -> Any:
        return self._bot()

    async def _get_app(self, request: web.Request, call: Call) -> Any:
        self._bot()
        return self.application

    async def _get_gateway(self, request: web.Request, call: Call) -> Any:
        return {"url": "wss://127.0.0.1/fake-gateway", "shards": self.config.recommended_shards,
                "session_start_limit": {"total": 1000, "remaining": 1000,
                                        "reset_after": 0, "max_concurrency": 1}}

    async def _get_user(self, request: web.Request, call: Call) -> Any:
        try:
            return self.users[call.params["user_id"]]
        except KeyError:
            raise ApiError(404, 10013, "Unknown User") from None

    async def _create_dm(self, request: web.Request, call: Call) -> Any:
        body = call.json or {}
        uid = str(body.get("recipient_id", ""))
        if uid not in self.users:
            raise ApiError(404, 10013, "Unknown User")
        cid = self.dm_channels.get(uid)
        if cid is None:
            cid = self.ids()
            self.dm_channels[uid] = cid
            self.channels[cid] = payloads.dm_channel(cid, self.users[uid])
        return self.channels[cid]

    # commands

    def _validate_commands(self, body: Any) -> None:
        if not isinstance(body, list):
            raise form_error("_", "LIST_TYPE_CONVERT", "Must be a list.")
        if len(body) > 100:
            raise form_error("_", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")

        def check(opts: list[dict[str, Any]], where: str) -> None:
            if len(opts) > 25:
                raise form_error(where, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
            for i, o in enumerate(opts):
                if not _COMMAND_NAME.match(o.get("name", "")) or o["name"] != o["name"].lower():
                    raise form_error(f"{where}.{i}.name", "APPLICATION_COMMAND_INVALID_NAME",
                                     "Command name is invalid")
                if not 1 <= len(o.get("description", "")) <= 100:
                    raise form_error(f"{where}.{i}.description", "BASE_TYPE_BAD_LENGTH",
                                     "Must be between 1 and 100 in length.")
                check(o.get("options", []), f"{where}.{i}.options")

        for i, cmd in enumerate(body):
            ctype = cmd.get("type", 1)
            if ctype == 1:
                check([cmd], "_")
            elif not 1 <= len(cmd.get("name", "")) <= 32:
                raise form_error(f"{i}.name", "BASE_TYPE_BAD_LENGTH",
                                 "Must be between 1 and 32 in length.")

    async def _list_commands(self, request: web.Request, call: Call) -> Any:
        gid = call.params.get("guild_id")
        if gid is not None:
            self._guild(gid)
            return self.guild_commands.get(gid, [])
        return self.global_commands

    async def _put_commands(self, request: web.Request, call: Call) -> Any:
        app = self._bot() and self.application
        assert app is not None
        if call.params["application_id"] != str(app["id"]):
            raise ApiError(403, 50001, "Missing Access")
        gid = call.params.get("guild_id")
        if gid is not None:
            self._guild(gid)
        self._validate_commands(call.json)
        out = []
        for cmd in call.json:
            ctype = int(cmd.get("type", 1))
            key = (gid, cmd["name"], ctype)
            cid = self._command_ids.setdefault(key, self.ids())
            stored = dict(cmd)
            stored.update(id=cid, application_id=str(app["id"]), type=ctype,
                          version=self.ids(), description=cmd.get("description", ""))
            stored.setdefault("default_member_permissions", None)
            stored.setdefault("nsfw", False)
            if gid is not None:
                stored["guild_id"] = gid
            out.append(stored)
        if gid is not None:
            self.guild_commands[gid] = out
        else:
            self.global_commands = out
        return out

    def command_id(self, name: str, *, guild_id: int | str | None = None, kind: int = 1) -> str:
        """Id the fake gave a synced command (KeyError if it was never synced)."""
        key = (None if guild_id is None else str(guild_id), name, kind)
        try:
            return self._command_ids[key]
        except KeyError:
            raise KeyError(f"command {name!r} (guild {guild_id}) was never synced") from None

    # messages

    def _build_message(self, call: Call, *, channel_id: str, author: dict[str, Any],
                       guild_id: str | None, extra: Mapping[str, Any] | None = None,
                       base: dict[str, Any] | None = None) -> dict[str, Any]:
        body = dict(call.json or {})
        limit = GUILD_UPLOAD_LIMITS[self.guilds[guild_id].premium_tier] if guild_id else\
            GUILD_UPLOAD_LIMITS[0]
        if len(call.files) > MESSAGE_MAX_FILES:
            raise ApiError(400, 30015, "Maximum number of attachments in a message reached (10)")
        if sum(len(f.data) for f in call.files) > limit:
            raise ApiError(413, 40005, "Request entity too large")
        content = body.get("content")
        if content is not None and len(content) > 2000:
            raise form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        new_atts = []
        for i, f in enumerate(call.files):
            kind, w, h = sniff_image(f.data)
            att = self.host_file(f.data, f.filename, content_type=f.content_type
                                 if f.content_type != "application/octet-stream"
                                 else _CONTENT_TYPES.get(kind, f.content_type),
                                 channel_id=channel_id, width=w, height=h)
            new_atts.append(att)
        if base is None:
            msg = payloads.message(self.ids(), channel_id, author, content=content or "",
                            guild_id=guild_id, attachments=new_atts,
                            embeds=body.get("embeds") or [],
                            components=body.get("components") or [],
                            flags=int(body.get("flags") or 0))
            if extra:
                msg.update(extra)
            if not (msg["content"] or msg["embeds"] or msg["attachments"] or msg["components"]
                    or body.get("sticker_ids") or body.get("poll")):
                raise ApiError(400, 50006, "Cannot send an empty message")
            return msg
        msg = base
        for key in ("content", "embeds", "components"):
            if key in body and body[key] is not None:
                msg[key] = body[key]
        if "flags" in body and body["flags"] is not None:
            msg["flags"] = int(body["flags"]) | (msg["flags"] & EPHEMERAL_FLAG)
        keep = msg["attachments"]
        if "attachments" in body and body["attachments"] is not None:
            ids = {str(a["id"]) for a in body["attachments"]}
            keep = [a for a in msg["attachments"] if str(a["id"]) in ids]
        msg["attachments"] = keep + new_atts
        msg["flags"] &= ~LOADING_FLAG
        msg["edited_timestamp"] = payloads.iso(_utcnow())
        return msg

    def _store(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.messages.setdefault(str(msg["channel_id"]), {})[str(msg["id"])] = msg
        return msg

    async def _get_channel(self, request: web.Request, call: Call) -> Any:
        return self._channel(call.params["channel_id"])

    async def _create_message(self, request: web.Request, call: Call) -> Any:
        cid = call.params["channel_id"]
        ch = self._channel(cid)
        gid = ch.get("guild_id")
        if gid is not None:
            self._require(str(gid), cid, "VIEW_CHANNEL", "SEND_MESSAGES")
            if call.files:
                self._require(str(gid), cid, "ATTACH_FILES")
        elif ch.get("type") == payloads.CHANNEL_DM:
            recipient = str(ch["recipients"][0]["id"])
            if recipient in self.dms_closed:
                raise ApiError(403, 50007, "Cannot send messages to this user")
        msg = self._build_message(call, channel_id=cid, author=self._bot(),
                                  guild_id=str(gid) if gid else None)
        return self._store(msg)

    async def _channel_message(self, request: web.Request, call: Call) -> Any:
        cid, mid = call.params["channel_id"], call.params["message_id"]
        self._channel(cid)
        msg = self._message(cid, mid)
        if msg["flags"] & EPHEMERAL_FLAG:  # only reachable through the interaction webhook
            raise ApiError(404, 10008, "Unknown Message")
        if request.method == "GET":
            return msg
        if str(msg["author"]["id"]) != str(self._bot()["id"]):
            if request.method == "PATCH":
                raise ApiError(403, 50005, "Cannot edit a message authored by another user")
            gid = self.channels[cid].get("guild_id")
            if gid is None:
                raise ApiError(403, 50003, "Cannot execute action on a DM channel")
            self._require(str(gid), cid, "MANAGE_MESSAGES")
        if request.method == "DELETE":
            del self.messages[cid][mid]
            return None
        gid = self.channels[cid].get("guild_id")
        return self._build_message(call, channel_id=cid, author=msg["author"],
                                   guild_id=str(gid) if gid else None, base=msg)

    # interactions

    def _live(self, token: str, *, webhook: bool) -> InteractionRecord:
        rec = self.interactions.get(token)
        if rec is None or rec.expired or self.clock() - rec.created > self.config.token_lifetime_s:
            if webhook:
                raise ApiError(404, 10015, "Unknown Webhook")
            raise ApiError(404, 10062, "Unknown interaction")
        return rec

    def _interaction_message(self, rec: InteractionRecord, call: Call, *,
                             loading: bool) -> dict[str, Any]:
        bot = self._bot()
        body = dict(call.json or {})
        data = body.get("data") or {}
        sub = dataclasses.replace(call, json=data)
        flags = int(data.get("flags") or 0) & EPHEMERAL_FLAG
        meta = {"id": rec.id, "type": rec.type, "user": rec.user,
                "authorizing_integration_owners": {"0": rec.guild_id or "0"}}
        if loading:
            msg = payloads.message(self.ids(), rec.channel_id, bot, guild_id=rec.guild_id,
                            flags=flags | LOADING_FLAG, webhook_id=rec.application_id,
                            application_id=rec.application_id,
                            message_type=20 if rec.type == 2 else 0,
                            interaction_metadata=meta)
            return msg
        msg = self._build_message(sub, channel_id=rec.channel_id, author=bot,
                                  guild_id=rec.guild_id,
                                  extra={"webhook_id": rec.application_id,
                                         "application_id": rec.application_id,
                                         "type": 20 if rec.type == 2 else 0,
                                         "interaction_metadata": meta})
        msg["flags"] = flags | (msg["flags"] & ~EPHEMERAL_FLAG)
        return msg

    async def _callback(self, request: web.Request, call: Call) -> Any:
        token = call.params["token"]
        rec = self._live(token, webhook=False)
        if rec.id != call.params["interaction_id"]:
            raise ApiError(404, 10062, "Unknown interaction")
        if rec.response_type is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if self.clock() - rec.created > self.config.initial_response_s:
            raise ApiError(404, 10062, "Unknown interaction")
        body = call.json or {}
        cb = body.get("type")
        allowed = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 4: {8}, 5: {4, 5, 6, 7}}.get(rec.type, set())
        if cb not in allowed:
            raise form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                             f"Response type {cb} is not valid for interaction type {rec.type}")
        message: dict[str, Any] | None = None
        if cb == 8:
            choices = (body.get("data") or {}).get("choices")
            if not isinstance(choices, list) or len(choices) > 25:
                raise form_error("data.choices", "BASE_TYPE_MAX_LENGTH",
                                 "Must be 25 or fewer in length.")
            for i, ch in enumerate(choices):
                if not 1 <= len(str(ch.get("name", ""))) <= 100:
                    raise form_error(f"data.choices.{i}.name", "BASE_TYPE_BAD_LENGTH",
                                     "Must be between 1 and 100 in length.")
            rec.response_data = choices
        elif cb in (4, 5):
            message = self._store(self._interaction_message(rec, call, loading=cb == 5))
            rec.original_id = str(message["id"])
        elif cb in (6, 7):
            assert rec.component_message_id is not None
            rec.original_id = rec.component_message_id
            message = self._message(rec.channel_id, rec.original_id)
            if cb == 7:
                sub = dataclasses.replace(call, json=(body.get("data") or {}))
                message = self._build_message(sub, channel_id=rec.channel_id,
                                              author=message["author"],
                                              guild_id=rec.guild_id, base=message)
        elif cb == 9:
            rec.response_data = body.get("data")
        rec.response_type = cb
        if call.query.get("with_response") not in ("1", "true", "True"):
            return None
        out: dict[str, Any] = {"interaction": {"id": rec.id, "type": rec.type}}
        if message is not None:
            out["interaction"].update(response_message_id=message["id"],
                                      response_message_loading=cb == 5,
                                      response_message_ephemeral=bool(message["flags"]
                                                                      & EPHEMERAL_FLAG))
            out["resource"] = {"type": cb, "message": message}
        else:
            out["resource"] = {"type": cb}
        return out

    async def _followup(self, request: web.Request, call: Call) -> Any:
        rec = self._live(call.params["token"], webhook=True)
        if call.params["application_id"] != rec.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        if rec.response_type is None or rec.response_type in (8, 9):
            raise ApiError(404, 10015, "Unknown Webhook")
        wrapped = dataclasses.replace(call, json={"data": call.json or {}})
        msg = self._interaction_message(rec, wrapped, loading=False)
        msg["type"] = 0
        self._store(msg)
        rec.followup_ids.append(str(msg["id"]))
        if call.query.get("wait") in ("1", "true", "True"):
            return msg
        return None

    async def _webhook_message(self, request: web.Request, call: Call) -> Any:
        rec = self._live(call.params["token"], webhook=True)
        if call.params["application_id"] != rec.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        mid = call.params["message_id"]
        if mid == "@original":
            if rec.original_id is None:
                raise ApiError(404, 10008, "Unknown Message")
            mid = rec.original_id
        elif mid not in rec.followup_ids and mid != rec.original_id:
            raise ApiError(404, 10008, "Unknown Message")
        msg = self._message(rec.channel_id, mid)
        if request.method == "GET":
            return msg
        if request.method == "DELETE":
            del self.messages[rec.channel_id][mid]
            if mid == rec.original_id:
                rec.original_id = None
            else:
                rec.followup_ids.remove(mid)
            return None
        return self._build_message(call, channel_id=rec.channel_id, author=msg["author"],
                                   guild_id=rec.guild_id, base=msg)

    # guilds, members

    async def _get_guild(self, request: web.Request, call: Call) -> Any:
        out = self.guild_create_payload(call.params["guild_id"])
        for k in ("members", "channels", "threads", "presences", "voice_states", "joined_at",
                  "large", "member_count", "stage_instances", "guild_scheduled_events",
                  "soundboard_sounds", "unavailable"):
            out.pop(k, None)
        return out

    async def _get_member(self, request: web.Request, call: Call) -> Any:
        g = self._guild(call.params["guild_id"])
        for m in g.payload.get("members", []):
            if str(m["user"]["id"]) == call.params["user_id"]:
                return m
        raise ApiError(404, 10007, "Unknown Member")

    # stickers

    async def _list_stickers(self, request: web.Request, call: Call) -> Any:
        return [s.payload for s in self._guild(call.params["guild_id"]).stickers.values()]

    async def _get_sticker(self, request: web.Request, call: Call) -> Any:
        g = self._guild(call.params["guild_id"])
        try:
            return g.stickers[call.params["sticker_id"]].payload
        except KeyError:
            raise ApiError(404, 10060, "Unknown sticker") from None

    async def _create_sticker(self, request: web.Request, call: Call) -> Any:
        g = self._guild(call.params["guild_id"])
        self._require(g.id, None, "CREATE_GUILD_EXPRESSIONS", "MANAGE_GUILD_EXPRESSIONS",
                      any_of=True)
        name = call.form.get("name", "")
        desc = call.form.get("description", "")
        tags = call.form.get("tags", "")
        if not 2 <= len(name) <= 30:
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 2 and 30 in length.")
        if desc and not 2 <= len(desc) <= 100:
            raise form_error("description", "BASE_TYPE_BAD_LENGTH",
                             "Must be between 2 and 100 in length.")
        if not 1 <= len(tags) <= 200:
            raise form_error("tags", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 200 in length.")
        files = [f for f in call.files if f.field == "file"]
        if len(files) != 1:
            raise form_error("file", "BASE_TYPE_REQUIRED", "This field is required")
        f = files[0]
        if len(f.data) > STICKER_MAX_BYTES:
            raise ApiError(400, 50045, "File uploaded exceeds the maximum size")
        kind, w, h = sniff_image(f.data)
        if kind not in _STICKER_FORMAT:
            raise ApiError(400, 50046, "Invalid file uploaded")
        if kind == "lottie" and not {"VERIFIED", "PARTNERED"} & set(g.features):
            raise ApiError(400, 50046, "Invalid file uploaded")
        try:
            frames, seconds = animation_timing(f.data)
        except ValueError:
            raise ApiError(400, 50046, "Invalid file uploaded") from None
        if frames > STICKER_MAX_FRAMES:
            raise ApiError(400, 170004, "Sticker frame count exceeds maximum of 1000 frames")
        if seconds > STICKER_MAX_SECONDS:
            raise ApiError(400, 170007, "Sticker animation duration exceeds maximum of 5 seconds")
        if self.config.strict_sticker_size and (w, h) != (320, 320):
            raise form_error("file", "STICKER_INVALID_DIMENSIONS",
                             "Sticker must be exactly 320x320")
        limit = payloads.sticker_limit(g.premium_tier, g.features)
        if len(g.stickers) >= limit:
            raise ApiError(400, 30039, f"Maximum number of stickers reached ({limit})")
        payload = payloads.guild_sticker(self.ids(), g.id, name, tags=tags,
                                  format_type=_STICKER_FORMAT[kind], description=desc,
                                  creator=self._bot())
        g.stickers[payload["id"]] = StickerRecord(payload, f.data, _CONTENT_TYPES[kind], w, h)
        return payload

    async def _delete_sticker(self, request: web.Request, call: Call) -> Any:
        g = self._guild(call.params["guild_id"])
        rec = g.stickers.get(call.params["sticker_id"])
        if rec is None:
            raise ApiError(404, 10060, "Unknown sticker")
        own = str(rec.payload.get("user", {}).get("id")) == str(self._bot()["id"])
        if own:
            self._require(g.id, None, "CREATE_GUILD_EXPRESSIONS", "MANAGE_GUILD_EXPRESSIONS",
                          any_of=True)
        else:
            self._require(g.id, None, "MANAGE_GUILD_EXPRESSIONS")
        del g.stickers[call.params["sticker_id"]]
        return None

    # emojis

    async def _list_emojis(self, request: web.Request, call: Call) -> Any:
        return list(self._guild(call.params["guild_id"]).emojis.values())

    async def _create_emoji(self, request: web.Request, call: Call) -> Any:
        g = self._guild(call.params["guild_id"])
        self._require(g.id, None, "CREATE_GUILD_EXPRESSIONS", "MANAGE_GUILD_EXPRESSIONS",
                      any_of=True)
        body = call.json or {}
        name = str(body.get("name", ""))
        if not _EMOJI_NAME.match(name):
            raise form_error("name", "BASE_TYPE_BAD_LENGTH",
                             "Must be between 2 and 32 in length (letters, digits, _).")
        image = str(body.get("image", ""))
        m = re.match(r"^data:(image/[a-z]+);base64,(.*)$", image, re.S)
        if m is None:
            raise form_error("image", "IMAGE_INVALID", "Invalid image data")
        try:
            data = base64.b64decode(m.group(2), validate=True)
        except (binascii.Error, ValueError):
            raise form_error("image", "IMAGE_INVALID", "Invalid image data") from None
        if len(data) > EMOJI_MAX_BYTES:
            raise ApiError(400, 50138,
                           f"Failed to resize asset below the maximum size: {EMOJI_MAX_BYTES}")
        kind, _, _ = sniff_image(data)
        if kind not in ("png", "apng", "gif", "jpeg", "webp"):
            raise form_error("image", "IMAGE_INVALID", "Invalid image data")
        animated = kind == "gif"
        same_kind = [e for e in g.emojis.values() if bool(e.get("animated")) == animated]
        if len(same_kind) >= payloads.emoji_limit(g.premium_tier, g.features):
            if animated:
                raise ApiError(400, 30018, "Maximum number of animated emojis reached")
            raise ApiError(400, 30008, "Maximum number of emojis reached")
        payload = payloads.custom_emoji(self.ids(), name, animated=animated, creator=self._bot())
        g.emojis[payload["id"]] = payload
        return payload

    async def _delete_emoji(self, request: web.Request, call: Call) -> Any:
        g = self._guild(call.params["guild_id"])
        if call.params["emoji_id"] not in g.emojis:
            raise ApiError(404, 10014, "Unknown Emoji")
        self._require(g.id, None, "CREATE_GUILD_EXPRESSIONS", "MANAGE_GUILD_EXPRESSIONS",
                      any_of=True)
        del g.emojis[call.params["emoji_id"]]
        return None

    # cdn

    async def _cdn(self, request: web.Request, call: Call) -> Any:
        try:
            data, ctype = self.files[request.path]
        except KeyError:
            raise ApiError(404, 0, "404: Not Found") from None
        return web.Response(body=data, content_type=ctype)

