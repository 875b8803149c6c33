"""Crash-safe, idempotent Telegram sticker-set publishing for one pack.

State lives in the database (``storage.packs``): the pack's
``platform_set_name`` is recorded *before* the set is created, and every
sticker row moves ``local`` → ``uploaded`` (``uploadStickerFile`` once, its
``file_id`` kept) → ``added`` (present in the set). :func:`publish_pack` can be
called again at any point — after a crash, a restart or a RetryAfter — and
converges to a set that holds exactly the pack's stickers, in order, once each:

1. Upload every ``local`` sticker file once; keep the file_id. The uploads go
   ``UPLOAD_CONCURRENCY`` at a time (each is one round trip to Telegram, and
   they have no effect on the set), and the answer of each gives the file's
   ``file_unique_id``; only a file_id kept from an earlier attempt is looked
   up with ``getFile``.
2. ``getStickerSet``; when the set does not exist, ``createNewStickerSet`` with
   the first ≤ 50 stickers ("name is already occupied" = it exists: verify).
3. Reconcile against the set as Telegram reports it, matching by
   ``file_unique_id`` (an uploaded file and the set entry made from it share
   it):
   duplicates (a flooded ``addStickerToSet`` can land twice) are deleted,
   keeping the first copy; then position by position, a different sticker at a
   position (a regenerated pack) is swapped with ``replaceStickerInSet``, a
   missing one is added at the end, and entries beyond the pack are deleted.
4. After any ``RetryAfter`` from a set mutation: wait ``retry_after``, re-read
   the set, go back to 3. Mutations are never retried blindly
   (:class:`StickerSafeRateLimiter` passes their 429s through).
5. Set the thumbnail (``setStickerSetThumbnail``). The caller marks the pack
   published once its user was told (``storage.packs.mark_published``), so a
   crash in between leaves the pack to be delivered again: the set is already
   right, and only the message goes out (see :mod:`bots.notify`).

The same machinery (:func:`publish_rows`) publishes any set whose entries are
rows with that state: the pack's stickers here, its custom emoji set in
:mod:`bots.telegram.custom_emoji` (``sticker_type`` ``custom_emoji``).

Set names follow the Bot API rules: 1-64 characters, ASCII letters, digits
and single underscores, starting with a letter, ending in ``_by_<bot username>``.
Telegram error texts are matched case-insensitively (python-telegram-bot
rewrites them).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from telegram import InputFile, InputSticker
from telegram.error import BadRequest, Forbidden, RetryAfter
from telegram.ext import AIORateLimiter

from emoji3d.errors import UserFacingError
from storage import packs
from storage.blobs import BlobStore
from storage.db import Database

log = logging.getLogger("emoji3d.telegram.stickers")

INITIAL_MAX = 50
#: Files uploaded (or looked up) at once: each call is a network round trip of its own, so a pack's
#: uploads take the time of a few instead of the sum of all (bench/publish.py). A handful keeps well
#: inside the Bot API's ~30 requests per second.
UPLOAD_CONCURRENCY = 6
SET_NAME_MAX = 64
#: Bot API methods that must not be retried blindly after a 429 (they can land anyway).
SET_MUTATIONS = frozenset(m.lower() for m in (
    "createNewStickerSet", "addStickerToSet", "replaceStickerInSet", "deleteStickerFromSet"))
_NOT_STARTED = re.compile(r"peer_id_invalid|user not found|user_id_invalid|bot can't initiate", re.I)
_OCCUPIED = re.compile(r"already occupied", re.I)
_SET_MISSING = re.compile(r"stickerset_invalid|sticker set not found", re.I)


class TelegramNotStarted(UserFacingError):
    """The user never opened a private chat with the bot. params: ``bot_username``."""

    key = "telegram_not_started"


class StickerSetFailed(UserFacingError):
    """params: ``detail`` (Telegram's error text)."""

    key = "telegram_set_failed"


class _PassThrough(Exception):
    def __init__(self, exc: RetryAfter) -> None:
        super().__init__(str(exc))
        self.exc = exc


class StickerSafeRateLimiter(AIORateLimiter):
    """AIORateLimiter that retries RetryAfter for every method except sticker-set
    mutations, whose 429s reach :func:`publish_pack` (which re-reads the set
    before trying again)."""

    async def process_request(self, callback, args, kwargs, endpoint, data, rate_limit_args):  # type: ignore[override]
        if str(endpoint).lower() not in SET_MUTATIONS:
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)

        async def once(*a: Any, **k: Any) -> Any:
            try:
                return await callback(*a, **k)
            except RetryAfter as exc:
                raise _PassThrough(exc) from None

        try:
            return await super().process_request(once, args, kwargs, endpoint, data, rate_limit_args)
        except _PassThrough as p:
            raise p.exc from None


def set_name_for(pack_id: int, user_key: str, bot_username: str, kind: str = "x") -> str:
    """``e3d<pack id><kind><hash>_by_<bot>``, deterministic per pack (so a restart
    finds the same set) and unguessable enough not to collide with other bots'
    sets; ``kind`` (one letter: ``x`` stickers, ``e`` custom emoji) keeps a pack's
    sets apart. Raises ValueError when the bot's username leaves no room."""
    if len(kind) != 1 or not kind.isascii() or not kind.isalpha():
        raise ValueError(f"set kind must be one ASCII letter, got {kind!r}")
    suffix = f"_by_{bot_username}"
    h = hashlib.sha256(f"{user_key}:{pack_id}".encode()).hexdigest()
    head = f"e3d{pack_id}{kind}"
    room = SET_NAME_MAX - len(suffix) - len(head)
    if room < 4:
        raise ValueError(f"bot username {bot_username!r} is too long for sticker set names")
    return head + h[: min(room, 10)] + suffix


def set_link(name: str) -> str:
    return f"https://t.me/addstickers/{name}"


def _retry_seconds(exc: RetryAfter) -> float:
    ra = exc.retry_after
    return float(ra.total_seconds()) if hasattr(ra, "total_seconds") else float(ra)


def _sticker_format(data: bytes) -> str:
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "video"
    if data[:2] == b"\x1f\x8b":
        return "animated"
    return "static"


@dataclass(frozen=True)
class Published:
    name: str
    link: str
    created: bool  # this call created the set
    first_sticker_file_id: str | None
    added: int
    replaced: int
    removed_duplicates: int


async def _get_set(bot: Any, name: str) -> Any | None:
    try:
        return await bot.get_sticker_set(name)
    except BadRequest as exc:
        if _SET_MISSING.search(exc.message):
            return None
        raise


@dataclass(frozen=True)
class SetRows:
    """How :func:`publish_rows` reads and records a set's entries. ``list()`` returns the rows in set
    order, each with ``id``, ``idx``, ``emoji``, ``kind``, ``blob_digest``, ``platform_state`` and
    ``platform_file_id``; ``set_state(row id, state, file_id=None)`` records a row's progress."""

    read: Callable[[], Sequence[Any]]
    set_state: Callable[..., None]


def sticker_rows(db: Database, pack_id: int) -> SetRows:
    return SetRows(lambda: packs.list_stickers(db, pack_id),
                   lambda row_id, state, file_id=None: packs.set_sticker_platform_state(db, row_id, state, file_id))


def _input_sticker(s: Any) -> InputSticker:
    return InputSticker(s.platform_file_id, [s.emoji], "video" if s.kind == "video" else s.kind)


def _translate(exc: Exception, bot_username: str) -> Exception:
    text = getattr(exc, "message", str(exc))
    if isinstance(exc, (BadRequest, Forbidden)) and _NOT_STARTED.search(text):
        return TelegramNotStarted(text, bot_username=bot_username)
    return StickerSetFailed(text, detail=text)


async def publish_pack(bot: Any, db: Database, blobs: BlobStore, pack_id: int, tg_user_id: int, *,
                       bot_username: str, title: str, thumbnail: bytes | None = None,
                       initial_max: int = INITIAL_MAX, max_rounds: int = 8,
                       sleep: Any = asyncio.sleep) -> Published:
    """Make the pack's Telegram set match its sticker rows (the pack stays ``uploading``: see step 5
    of the module docstring). ``initial_max`` (1..50) caps the stickers sent with
    ``createNewStickerSet``."""
    if not 1 <= initial_max <= INITIAL_MAX:
        raise ValueError(f"initial_max must be within 1..{INITIAL_MAX}, got {initial_max}")
    pack = packs.get_pack(db, pack_id)
    stickers = packs.list_stickers(db, pack_id)
    if not stickers:
        raise ValueError(f"pack {pack_id} has no stickers to publish")
    if len(stickers) > 120:
        raise ValueError(f"pack {pack_id} has {len(stickers)} stickers; a set holds at most 120")
    name = pack.platform_set_name or set_name_for(pack_id, str(tg_user_id), bot_username)
    packs.mark_uploading(db, pack_id, name)
    return await publish_rows(bot, sticker_rows(db, pack_id), blobs, tg_user_id, name, title,
                              bot_username=bot_username, thumbnail=thumbnail, initial_max=initial_max,
                              max_rounds=max_rounds, sleep=sleep)


async def publish_rows(bot: Any, rows: SetRows, blobs: BlobStore, uid: int, name: str, title: str, *,
                       bot_username: str, sticker_type: str = "regular", thumbnail: bytes | None = None,
                       initial_max: int = INITIAL_MAX, max_rounds: int = 8, sleep: Any = asyncio.sleep,
                       link: Callable[[str], str] | None = None) -> Published:
    """Make the set ``name`` (of ``sticker_type``) hold exactly ``rows``, steps 1-4 of the module
    docstring, then set its thumbnail. Telegram's refusals become user-facing errors."""
    try:
        return await _publish(bot, rows, blobs, uid, name, title, thumbnail, initial_max, max_rounds, sleep,
                              sticker_type, link or set_link)
    except (BadRequest, Forbidden) as exc:
        raise _translate(exc, bot_username) from exc


_T = TypeVar("_T")


async def run_at_most(limit: int, calls: Sequence[Callable[[], Awaitable[_T]]]) -> list[_T]:
    """Every call's result, in order, with at most ``limit`` running at once. The first failure is
    raised as it is, once the calls still running are cancelled (what finished stays done)."""
    gate = asyncio.Semaphore(limit)

    async def gated(call: Callable[[], Awaitable[_T]]) -> _T:
        async with gate:
            return await call()

    tasks = [asyncio.ensure_future(gated(c)) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def upload_files(bot: Any, rows: SetRows, blobs: BlobStore, uid: int,
                       concurrency: int = UPLOAD_CONCURRENCY) -> tuple[list[Any], dict[int, str]]:
    """Step 1: upload each row's file once (uploadStickerFile has no side effect in the set: plain
    retries are safe) and record its file_id. Returns the rows as recorded and {row id:
    file_unique_id of its uploaded file}, from the upload's answer or, for a file_id kept from an
    earlier attempt, from ``getFile``."""
    unique: dict[int, str] = {}  # sticker row id -> file_unique_id of its uploaded file

    def upload(s: Any) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            up = await bot.upload_sticker_file(uid, InputFile(blobs.read_bytes(s.blob_digest),
                                                              filename=f"sticker{s.idx}.webm"), s.kind)
            rows.set_state(s.id, "uploaded", up.file_id)
            unique[s.id] = up.file_unique_id
        return call

    def look_up(s: Any) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            unique[s.id] = (await bot.get_file(s.platform_file_id)).file_unique_id
        return call

    await run_at_most(concurrency, [upload(s) if s.platform_state == "local" or not s.platform_file_id else look_up(s)
                                 for s in rows.read()])
    return list(rows.read()), unique


async def _publish(bot: Any, rows: SetRows, blobs: BlobStore, uid: int, name: str, title: str,
                   thumbnail: bytes | None, initial_max: int, max_rounds: int, sleep: Any, sticker_type: str,
                   link: Callable[[str], str]) -> Published:
    stickers, unique = await upload_files(bot, rows, blobs, uid)

    created = False
    added = replaced = removed = 0
    for _ in range(max_rounds):
        try:
            current = await _get_set(bot, name)
            if current is None:
                try:
                    await bot.create_new_sticker_set(uid, name, title,
                                                     [_input_sticker(s) for s in stickers[:initial_max]],
                                                     sticker_type=sticker_type)
                    created = True
                except BadRequest as exc:
                    if not _OCCUPIED.search(exc.message):
                        raise
                    log.info("set %s already exists; verifying", name)
                current = await _get_set(bot, name)
                if current is None:
                    raise StickerSetFailed(f"set {name} missing right after creation", detail="set not found")
            a, r, d = await _reconcile(bot, rows, uid, name, stickers, unique, list(current.stickers))
            added, replaced, removed = added + a, replaced + r, removed + d
            break
        except RetryAfter as exc:
            wait = _retry_seconds(exc)
            log.info("set %s: RetryAfter %.1fs; re-reading the set before going on", name, wait)
            await sleep(wait + 0.05)
    else:
        raise StickerSetFailed(f"set {name}: still rate limited after {max_rounds} rounds", detail="rate limited")

    final = await bot.get_sticker_set(name)
    if thumbnail:
        try:
            await bot.set_sticker_set_thumbnail(name, uid, _sticker_format(thumbnail),
                                                InputFile(thumbnail, filename="thumb"))
        except (BadRequest, RetryAfter) as exc:  # cosmetic: the set works without it
            log.warning("set %s: thumbnail refused: %s", name, exc)
    first = final.stickers[0].file_id if final.stickers else None
    return Published(name, link(name), created, first, added, replaced, removed)


async def _reconcile(bot: Any, rows: SetRows, uid: int, name: str, stickers: list[Any],
                     unique: dict[int, str], entries: list[Any]) -> tuple[int, int, int]:
    """Make ``entries`` (the set as read) equal the pack, position by position."""
    added = replaced = removed = 0
    seen: set[str] = set()
    kept = []
    for e in entries:  # duplicates first: keep the first copy of each file
        if e.file_unique_id in seen:
            await bot.delete_sticker_from_set(e.file_id)
            removed += 1
        else:
            seen.add(e.file_unique_id)
            kept.append(e)
    entries = kept
    wanted = [unique[s.id] for s in stickers]
    for i, s in enumerate(stickers):
        if i < len(entries) and entries[i].file_unique_id == wanted[i]:
            pass
        elif i < len(entries):
            # another file at this position (a regenerated sticker, or stray order): swap it in place
            await bot.replace_sticker_in_set(uid, name, entries[i].file_id, _input_sticker(s))
            replaced += 1
        else:
            await bot.add_sticker_to_set(uid, name, _input_sticker(s))
            added += 1
        if s.platform_state != "added":
            rows.set_state(s.id, "added")
    for e in entries[len(stickers):]:  # the pack shrank: drop what it no longer has
        await bot.delete_sticker_from_set(e.file_id)
        removed += 1
    return added, replaced, removed
