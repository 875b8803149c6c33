"""The chat side of bench/load.py: simulated users talking to the real bots on the fake servers.

One asyncio loop runs the real python-telegram-bot Application (bots.telegram.app,
long polling against tests.fakes.telegram_api.FakeTelegramServer, which serves from its
own thread) and the real discord.py EmojiBot (bots.discord.app, driven by
tests.fakes.discord_harness on tests.fakes.discord_api.FakeDiscord), both on one
BotResources (their own database pool; the real MediaPipe face check). Every request
goes to 127.0.0.1.

A Telegram user: /start, presses "I agree", then per order sends a selfie photo,
presses the house style, presses "Medium", and waits for the message with the sticker
set link. A Discord user (consent recorded the way the consent button records it,
bots.core.give_consent) runs ``/emoji create`` with the selfie attachment, the house
style and a strength, and waits for the result follow-up with the files. Each order
uses a distinct selfie (one pixel changed), so no two orders are the same order.

Times are UNIX seconds; an order's end-to-end time runs from the selfie upload to the
moment the fake server holds the published result.
"""
from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from emoji3d.texts import text


@dataclass
class OrderRecord:
    platform: str
    user: int
    order: int
    started: float
    published: float | None = None
    ref: str = ""  # Telegram: the set link's message id; Discord: the interaction token


@dataclass
class ChatOutcome:
    orders: list[OrderRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duplicated: int = 0  # results the fake server received more than once
    incomplete_sets: int = 0  # published Telegram packs whose set lacks stickers


def selfie_variant(base_rgb: np.ndarray, n: int) -> bytes:
    """The base photo with pixel (0, 0) set from ``n``: a different file, the same face."""
    rgb = base_rgb.copy()
    rgb[0, 0] = [n % 256, (n // 256) % 256, (n // 65536) % 256]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


async def _until(pred, deadline: float, what: str):
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _buttons(msg: dict) -> dict[str, str]:
    return {b["text"]: b["callback_data"] for row in msg.get("reply_markup", {}).get("inline_keyboard", [])
            for b in row if "callback_data" in b}


async def telegram_user(server, n: int, orders: int, style_name: str, base_rgb: np.ndarray, deadline: float,
                        out: ChatOutcome) -> None:
    from tests.fakes import telegram_updates as tgu

    user = server.add_user(tgu.user(500_000 + n, f"User{n}", username=f"user{n}"))
    chat = tgu.private_chat(user)
    cid = chat["id"]
    q = 0

    def newer(after: int) -> list[dict]:
        return [m for m in server.messages_in(cid) if m["message_id"] > after]

    def press(msg: dict, data: str) -> None:
        nonlocal q
        q += 1
        server.push_update(tgu.callback_update(tgu.callback_query(f"q{user['id']}_{q}", user, data, msg=msg)))

    server.push_update(tgu.message_update(tgu.command_message(server.next_message_id(cid), chat, user, "start",
                                                              date=server.now())))
    welcome = await _until(lambda: next((m for m in newer(0) if text("consent_button") in _buttons(m)), None),
                           deadline, f"telegram user {n}: the consent question")
    press(welcome, _buttons(welcome)[text("consent_button")])
    await _until(lambda: any(text("consent_thanks") in m.get("text", "") for m in newer(0)), deadline,
                 f"telegram user {n}: consent thanks")
    for k in range(orders):
        before = max((m["message_id"] for m in server.messages_in(cid)), default=0)
        rec = OrderRecord("telegram", n, k, time.time())
        out.orders.append(rec)
        photo = server.add_photo(selfie_variant(base_rgb, n * 1000 + k))
        server.push_update(tgu.message_update(tgu.message(server.next_message_id(cid), chat, user,
                                                          date=server.now(), photo=photo)))
        styles = await _until(lambda: next((m for m in newer(before) if text("selfie_ok") in m.get("text", "")),
                                           None), deadline, f"telegram user {n} order {k}: the style choice")
        press(styles, _buttons(styles)[style_name])
        strength = await _until(lambda: next((m for m in newer(before)
                                              if text("strength_medium") in _buttons(m)), None),
                                deadline, f"telegram user {n} order {k}: the strength choice")
        press(strength, _buttons(strength)[text("strength_medium")])
        done = await _until(lambda: next((m for m in newer(before)
                                          if "https://t.me/addstickers/" in m.get("text", "")), None),
                            deadline, f"telegram user {n} order {k}: the published set")
        rec.published, rec.ref = time.time(), str(done["message_id"])


async def discord_user(harness, res, n: int, orders: int, style_id: int, base_rgb: np.ndarray, deadline: float,
                       out: ChatOutcome) -> None:
    from bots.core import ensure_user, give_consent
    from tests.fakes import discord_payloads as payloads

    who = payloads.user(harness.server.ids(), f"user{n}")
    harness.server.add_user(who)
    member = payloads.member(who)
    give_consent(res, ensure_user(res, "discord", who["id"]))
    for k in range(orders):
        rec = OrderRecord("discord", n, k, time.time())
        out.orders.append(rec)
        att = harness.upload(selfie_variant(base_rgb, n * 1000 + k), "me.png", "image/png")
        payload = harness.slash("emoji create", member, attachments=[att],
                                options=[payloads.option("selfie", "attachment", att["id"]),
                                         payloads.option("style", "string", str(style_id)),
                                         payloads.option("strength", "string", "medium")])
        rec.ref = payload["token"]
        await harness.deliver(payload)
        try:
            await _until(lambda: any(f.get("content", "").startswith(text("discord_done"))
                                     for f in harness.server.followups(payload["token"])),
                         deadline, f"discord user {n} order {k}: the result follow-up")
        except TimeoutError as exc:
            said = [(harness.server.original_response(payload["token"]) or {}).get("content")]
            said += [f.get("content") for f in harness.server.followups(payload["token"])]
            raise TimeoutError(f"{exc}; the bot said {said}") from None
        rec.published = time.time()


async def run_users(res, style, base_rgb: np.ndarray, telegram_users: int, discord_users: int, orders: int,
                    deadline: float, out: ChatOutcome) -> None:
    """Start both bots on their fakes, run every user to the end (or ``deadline``), stop the bots."""
    from bots.discord.app import BotOptions, EmojiBot
    from bots.telegram.app import AppOptions, build_application, serve
    from storage import packs
    from tests.fakes.discord_harness import running_bot
    from tests.fakes.telegram_api import FakeTelegramServer

    tg_opts = AppOptions(progress_interval_s=1.0, poll_jobs_s=0.2, rescan_s=5.0, long_poll_timeout_s=1,
                         retry_s=0.5)
    dc_opts = BotOptions(progress_interval_s=1.0, poll_jobs_s=0.2, rescan_s=5.0, retry_s=0.5, sync_commands=False)
    tg_server = FakeTelegramServer()
    with tg_server.serve_in_thread():
        tg_opts = AppOptions(**{**tg_opts.__dict__, "base_url": tg_server.base_url,
                                "base_file_url": tg_server.base_file_url})
        app = build_application(res, tg_server.token, tg_opts)
        stop = asyncio.Event()
        tg_task = asyncio.create_task(serve(app, stop, tg_opts))
        try:
            async with running_bot(EmojiBot(res, dc_opts)) as (harness, _world):
                async def guarded(coro, who: str) -> None:
                    try:
                        await coro
                    except Exception as exc:  # counted as lost by the caller; the reason is printed
                        out.errors.append(f"{who}: {type(exc).__name__}: {exc}")

                await asyncio.gather(
                    *[guarded(telegram_user(tg_server, n, orders, style.name, base_rgb, deadline, out),
                              f"telegram user {n}") for n in range(telegram_users)],
                    *[guarded(discord_user(harness, res, n, orders, style.id, base_rgb, deadline, out),
                              f"discord user {n}") for n in range(discord_users)])
                for token in {r.ref for r in out.orders if r.platform == "discord" and r.ref}:
                    done = [f for f in harness.server.followups(token)
                            if f.get("content", "").startswith(text("discord_done"))]
                    out.duplicated += max(0, len(done) - 1)
        finally:
            stop.set()
            await asyncio.wait_for(tg_task, 30)
        # Telegram: each published pack's set holds its three stickers, once; one link per order.
        from storage import users as user_store
        from tests.fakes import telegram_updates as tgu

        links = 0
        for n in range(telegram_users):
            u = user_store.find_user(res.db, "telegram", str(500_000 + n))
            for p in packs.list_packs(res.db, u.id) if u is not None else []:
                if p.status == packs.PUBLISHED and p.platform_set_name:
                    stickers = (tg_server.sticker_set_json(p.platform_set_name) or {}).get("stickers", [])
                    out.duplicated += max(0, len(stickers) - 3)
                    out.incomplete_sets += int(len(stickers) < 3)
            chat_id = tgu.private_chat({"id": 500_000 + n, "first_name": "x"})["id"]
            links += sum(1 for m in tg_server.messages_in(chat_id) if "https://t.me/addstickers/" in m.get("text", ""))
        out.duplicated += max(0, links - sum(1 for r in out.orders if r.platform == "telegram"))
