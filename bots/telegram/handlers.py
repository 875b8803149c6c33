"""Thin python-telegram-bot handlers and the Telegram sender for ``bots.notify``.

Each handler turns an update into one ``bots.core`` call and renders the answer
with ``emoji3d.texts``; see ``conversation.mmd`` for the flow. Resources come
from ``context.bot_data`` (``"res"``: :class:`bots.core.BotResources`,
``"notifier"``: :class:`bots.notify.Notifier`), put there by ``app.py``.

Callback data (≤ 64 bytes, stateless so buttons keep working after a restart):
``consent``, ``style:<style id>``, ``style:own``,
``go:<style id>:<preset>``, ``go:o<43-char digest token>:<preset>``,
``cancel:<job id>``, ``del:yes``, ``del:no``; on a finished pack ``rr:<pack>:<preset>``,
``rt:<pack>:<seed>``, ``pk:<pack>:<hex mask>[:t<i>|:go]`` (see :func:`rerender_markup`).

Every failure is caught by :func:`guard`: a ``UserFacingError`` is answered
with its text; anything else is logged with the update's context and answered
with the ``internal`` text. Nothing a user sends can crash the bot.
Heavy work (image decoding, face checks) runs in a worker thread.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable, Callable

from telegram import ForceReply, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, Update
from telegram.error import BadRequest, Forbidden
from telegram.ext import ContextTypes

from emoji3d import orders
from emoji3d.errors import UserFacingError
from emoji3d.texts import message, text
from storage import packs
from storage import styles as st

from bots import core, pack_changes
from bots.core import BotResources, ProgressView
from bots.notify import Notifier, Watch
from bots.telegram.custom_emoji import delete_custom_emoji_sets, deliver_custom_emoji
from bots.telegram.stickers import publish_pack, run_at_most, set_link

log = logging.getLogger("emoji3d.telegram")
PLATFORM = "telegram"
Handler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


def _res(context: Any) -> BotResources:
    return context.bot_data["res"]


def _notifier(context: Any) -> Notifier:
    return context.bot_data["notifier"]


def _explain(err: UserFacingError, bot_username: str) -> str:
    return message(err.key, **{"bot_username": bot_username, **err.params})


async def _say(update: Update, context: Any, body: str) -> None:
    chat = update.effective_chat
    if chat is not None:
        await context.bot.send_message(chat.id, body)


def guard(fn: Handler) -> Handler:
    """Answer UserFacingErrors with their text, log everything else."""

    @functools.wraps(fn)
    async def wrapper(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        try:
            await fn(update, context)
        except UserFacingError as err:
            log.info("%s: refused for user %s: %s (%s)", fn.__name__,
                     update.effective_user.id if update.effective_user else "?", err.key, err.detail)
            await _answer_query(update)
            await _say(update, context, _explain(err, context.bot.username or ""))
        except Exception:  # noqa: BLE001 - logged with context, answered politely
            log.exception("%s failed; update=%s", fn.__name__, update.to_dict() if update else None)
            try:
                await _answer_query(update)
                await _say(update, context, message("internal"))
            except Exception:  # noqa: BLE001
                log.exception("could not even apologise for update %s", update.update_id if update else None)

    return wrapper


async def _answer_query(update: Update) -> None:
    q = update.callback_query
    if q is not None:
        try:
            await q.answer()
        except BadRequest:
            pass  # already answered or too old


def _user(update: Update, context: Any) -> Any:
    return core.ensure_user(_res(context), PLATFORM, str(update.effective_user.id))


def _community(update: Update, context: Any) -> int | None:
    chat = update.effective_chat
    if chat is None or chat.type == "private":
        return None
    return core.community_id_for(_res(context), PLATFORM, str(chat.id), chat.title)


# ----------------------------------------------------------------------------- commands

@guard
async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    res = _res(context)
    user = _user(update, context)
    if user.consent_at is not None:
        await update.effective_message.reply_text(text("consent_already"))
        return
    kb = InlineKeyboardMarkup([[InlineKeyboardButton(text("consent_button"), callback_data="consent")]])
    await update.effective_message.reply_text(
        text("welcome", name=update.effective_user.first_name, **core.privacy_params(res.cfg)), reply_markup=kb)


@guard
async def on_consent(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    q = update.callback_query
    core.give_consent(_res(context), _user(update, context))
    await q.answer()
    await q.edit_message_text(text("consent_thanks"))


@guard
async def privacy(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.effective_message.reply_text(text("privacy", **core.privacy_params(_res(context).cfg)))


@guard
async def help_(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.effective_message.reply_text(text("help"))


# ----------------------------------------------------------------------------- uploads

def _upload_of(msg: Any) -> tuple[str, int | None] | None:
    if msg.photo:
        size = msg.photo[-1]
        return size.file_id, size.file_size
    if msg.document is not None:
        return msg.document.file_id, msg.document.file_size
    return None


def _replies_to_bot(msg: Any, context: Any) -> bool:
    r = msg.reply_to_message
    return bool(r is not None and r.from_user is not None and r.from_user.id == context.bot.id)


def _is_style_reply(msg: Any, context: Any) -> bool:
    return _replies_to_bot(msg, context) and msg.reply_to_message.text == text("style_own_prompt")


@guard
async def on_image(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    res = _res(context)
    msg = update.effective_message
    if update.effective_chat.type != "private" and not _replies_to_bot(msg, context):
        return  # in groups only images sent in reply to the bot are meant for it
    user = _user(update, context)
    core.require_consent(user)
    found = _upload_of(msg)
    if found is None:
        return
    file_id, size = found
    core.check_announced_size(res, size)  # before any download
    data = bytes(await (await context.bot.get_file(file_id)).download_as_bytearray())
    if _is_style_reply(msg, context) or context.user_data.get("awaiting_style", False):
        digest = await asyncio.to_thread(core.accept_style_image, res, user, data)
        # the style arrived (as a reply or not): the next image is a selfie again;
        # a refused style image leaves the flag, so the user can simply send another
        context.user_data.pop("awaiting_style", None)
        await msg.reply_text(text("style_own_ok"), reply_markup=_strength_keyboard("o" + core.digest_token(digest)))
        return
    accepted = await asyncio.to_thread(core.accept_selfie, res, user, data, head_start=True)
    notes = [text("selfie_warning", detail=message(k, **p)) for k, p in accepted.warnings]
    await msg.reply_text("\n".join([text("selfie_ok"), *notes]), reply_markup=_style_keyboard(res, _community(update, context)))


def _style_keyboard(res: BotResources, community_id: int | None) -> InlineKeyboardMarkup:
    rows = []
    for c in core.list_style_choices(res, community_id):
        label = (text("style_house_prefix") if c.house else "") + c.name
        rows.append([InlineKeyboardButton(label, callback_data=f"style:{c.style_id}")])
    rows.append([InlineKeyboardButton(text("style_own_button"), callback_data="style:own")])
    return InlineKeyboardMarkup(rows)


def _strength_keyboard(style_ref: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(text(f"strength_{p}"), callback_data=f"go:{style_ref}:{p}")
                                  for p in core.STRENGTHS]])


@guard
async def on_style(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    q = update.callback_query
    await q.answer()
    ref = q.data.split(":", 1)[1]
    if ref == "own":
        context.user_data["awaiting_style"] = True
        await context.bot.send_message(q.message.chat.id, text("style_own_prompt"),
                                       reply_markup=ForceReply(selective=True))
        return
    style = st.get_style(_res(context).db, int(ref))
    await q.edit_message_text(text("choose_strength", style=style.name), reply_markup=_strength_keyboard(ref))


@guard
async def on_go(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    q = update.callback_query
    res = _res(context)
    _, ref, preset = q.data.split(":", 2)
    user = _user(update, context)
    if ref.startswith("o"):
        placed = core.place_order(res, user, PLATFORM, preset=preset, own_exemplar=core.digest_from_token(ref[1:]),
                                  seed=res.cfg.engine.seed)
    else:
        placed = core.place_order(res, user, PLATFORM, preset=preset, style_id=int(ref), seed=res.cfg.engine.seed)
    await q.answer()
    await _notifier(context).start(placed.job_id, placed.pack.id, user, chat_id=str(q.message.chat.id),
                                   message_id=str(q.message.message_id))


def rerender_markup(res: BotResources, pack: packs.Pack, result: orders.PackResult) -> InlineKeyboardMarkup | None:
    """Buttons that change the finished pack (``bots.pack_changes``): render it again at another style
    strength or with other stickers (from its stored avatar), or make it again with another seed (first
    when the quality report flagged it)."""
    rows = []
    seed = pack_changes.retry_seed(res, pack)
    retry = [] if seed is None else [[InlineKeyboardButton(text("retry_button"), callback_data=f"rt:{pack.id}:{seed}")]]
    if result.avatar:
        others = [name for name, value in core.STRENGTHS.items() if abs(value - pack.strength) > 1e-6]
        rows.append([InlineKeyboardButton(text("rerender_button", strength=text(f"strength_{name}")),
                                          callback_data=f"rr:{pack.id}:{name}") for name in others])
        mask = pack_changes.selection_mask(res.cfg, pack_changes.current_selection(res, pack))
        rows.append([InlineKeyboardButton(text("stickers_button"), callback_data=f"pk:{pack.id}:{mask:x}")])
    rows = retry + rows if pack_changes.is_weak(result) else rows + retry
    return InlineKeyboardMarkup(rows) if rows else None


@guard
async def on_rerender(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    q = update.callback_query
    _, pack_id, preset = q.data.split(":", 2)
    user = _user(update, context)
    job_id = pack_changes.order_rerender(_res(context), user, int(pack_id), strength=core.strength_value(preset))
    await q.answer(text("rerender_started", strength=text(f"strength_{preset}")))
    await _notifier(context).start(job_id, int(pack_id), user, chat_id=str(q.message.chat.id))


@guard
async def on_retry(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """``rt:<pack>:<seed>``: make the pack again with that seed."""
    q = update.callback_query
    _, pack_id, seed = q.data.split(":", 2)
    user = _user(update, context)
    placed = pack_changes.order_retry(_res(context), user, int(pack_id), int(seed))
    await q.answer(text("retry_started"))
    await _notifier(context).start(placed.job_id, placed.pack.id, user, chat_id=str(q.message.chat.id))


def sticker_chooser(res: BotResources, pack_id: int, mask: int) -> InlineKeyboardMarkup:
    """A toggle per configured sticker (``pk:<pack>:<mask>:t<i>``) and the apply button (``...:go``)."""
    names = pack_changes.sticker_names(res.cfg)
    toggles = [InlineKeyboardButton(text("sticker_chosen" if mask >> i & 1 else "sticker_not_chosen", name=name),
                                    callback_data=f"pk:{pack_id}:{mask:x}:t{i}") for i, name in enumerate(names)]
    rows = [toggles[i:i + 2] for i in range(0, len(toggles), 2)]
    return InlineKeyboardMarkup(rows + [[InlineKeyboardButton(text("stickers_apply"),
                                                              callback_data=f"pk:{pack_id}:{mask:x}:go")]])


@guard
async def on_stickers(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """``pk:<pack>:<mask>``: show the chooser; ``...:t<i>``: toggle sticker i; ``...:go``: re-render."""
    q = update.callback_query
    res = _res(context)
    _, pack_id, mask_hex, *action = q.data.split(":")
    pack_id, mask = int(pack_id), int(mask_hex, 16)
    if not action:
        await q.answer()
        await context.bot.send_message(q.message.chat.id, text("stickers_choose", apply=text("stickers_apply")),
                                       reply_markup=sticker_chooser(res, pack_id, mask))
    elif action[0].startswith("t"):
        await q.answer()
        await q.edit_message_text(text("stickers_choose", apply=text("stickers_apply")),
                                  reply_markup=sticker_chooser(res, pack_id, mask ^ (1 << int(action[0][1:]))))
    else:
        user = _user(update, context)
        chosen = pack_changes.selection_from_mask(res.cfg, mask)
        job_id = pack_changes.order_rerender(res, user, pack_id, stickers=chosen)
        await q.answer(text("stickers_started", count=len(chosen)))
        await _notifier(context).start(job_id, pack_id, user, chat_id=str(q.message.chat.id),
                                       message_id=str(q.message.message_id))


@guard
async def on_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    q = update.callback_query
    job_id = None
    if q is not None:
        job_id = int(q.data.split(":", 1)[1])
        await q.answer()
    status = core.cancel_open_job(_res(context), _user(update, context), job_id)
    if q is None:
        await update.effective_message.reply_text(text("cancelled_ok" if status == "cancelled" else "cancel_requested"))
    # with a button, the notifier edits the progress message on its next tick


# ----------------------------------------------------------------------------- my packs, delete

@guard
async def mypacks(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    res = _res(context)
    user = _user(update, context)
    lines = core.my_packs(res, user)
    if not lines:
        await update.effective_message.reply_text(text("mypacks_none"))
        return
    out = [text("mypacks_header")]
    for pl in lines:
        p = pl.pack
        link = f" {set_link(p.platform_set_name)}" if p.platform_set_name and p.status == "published" else ""
        out.append(text("mypacks_line", style=pl.style_name or text("own_style_name"),
                        strength=f"{p.strength:g}", state=text(f"pack_state_{p.status}"), link=link))
        if pl.quality:
            out.append(f"  {pl.quality}")
        if p.job_id is not None and p.status in ("ready", "uploading"):  # finished but not delivered: try again
            _notifier(context).watch(p.job_id, p.id, user, chat_id=str(update.effective_chat.id))
    await update.effective_message.reply_text("\n".join(out))


@guard
async def delete(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    kb = InlineKeyboardMarkup([[InlineKeyboardButton(text("delete_yes"), callback_data="del:yes"),
                                InlineKeyboardButton(text("delete_no"), callback_data="del:no")]])
    await update.effective_message.reply_text(text("delete_confirm"), reply_markup=kb)


@guard
async def on_delete(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    q = update.callback_query
    await q.answer()
    if q.data != "del:yes":
        await q.edit_message_text(text("delete_kept"))
        return
    res = _res(context)
    uid = update.effective_user.id

    async def delete_set(name: str) -> None:
        try:
            await context.bot.delete_sticker_set(name)
        except BadRequest as exc:
            if "stickerset_invalid" not in exc.message.lower():  # already gone is fine
                raise

    emoji_done, emoji_failed = await delete_custom_emoji_sets(res.db, PLATFORM, str(uid), delete_set)
    result = await core.delete_my_data(res, PLATFORM, str(uid), delete_set)
    notifier = _notifier(context)
    for job_id, w in list(notifier.watches.items()):
        if w.platform_user_id == str(uid):
            notifier.watches.pop(job_id, None)
    if result.summary is None:
        await q.edit_message_text(text("delete_nothing"))
        return
    if result.sets_failed or emoji_failed:
        log.warning("user %s: could not delete sticker sets %s", uid, result.sets_failed + emoji_failed)
    done = text("delete_done", packs=result.summary.packs, selfies=result.summary.selfies, sets=len(result.sets_deleted))
    if emoji_done:
        done += " " + text("custom_emoji_deleted", sets=len(emoji_done))
    await q.edit_message_text(done)


# ----------------------------------------------------------------------------- house styles

async def _is_admin(update: Update, context: Any) -> bool:
    member = await context.bot.get_chat_member(update.effective_chat.id, update.effective_user.id)
    return member.status in ("creator", "administrator")


@guard
async def housestyle(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    res = _res(context)
    msg = update.effective_message
    chat = update.effective_chat
    if chat.type == "private":
        raise _GroupOnly("house styles belong to a group")
    args = list(context.args or [])
    community = core.community_id_for(res, PLATFORM, str(chat.id), chat.title)
    sub = args[0].lower() if args else ""
    if sub == "list":
        names = [s.name for s in core.house_style_list(res, community)]
        await msg.reply_text(text("housestyle_list", names=", ".join(names)) if names else text("housestyle_none"))
        return
    if sub not in ("add", "remove") or len(args) != 2:
        raise _Usage("bad /housestyle arguments")
    admin = await _is_admin(update, context)
    if sub == "remove":
        style = core.house_style_remove(res, community, admin, args[1])
        await msg.reply_text(text("housestyle_removed", name=style.name))
        return
    if not admin:
        raise core.NotAdmin("not an administrator")
    src = msg.reply_to_message
    found = _upload_of(src) if src is not None else None
    if found is None:
        raise _Usage("/housestyle add must reply to an image")
    core.check_announced_size(res, found[1])
    data = bytes(await (await context.bot.get_file(found[0])).download_as_bytearray())
    adder = _user(update, context)
    style = await asyncio.to_thread(core.house_style_add, res, community, admin, args[1], data, adder)
    await msg.reply_text(text("housestyle_added", name=style.name))


class _Usage(UserFacingError):
    key = "housestyle_usage"


class _GroupOnly(UserFacingError):
    key = "housestyle_group_only"


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Last resort for errors outside the guarded handlers (e.g. in PTB itself)."""
    log.error("unhandled error for update %s", update, exc_info=context.error)


# ----------------------------------------------------------------------------- sender

class TelegramSender:
    """``bots.notify.Sender`` for Telegram: one progress message edited in
    place, then the sticker set (created or updated), its link and one sticker."""

    def __init__(self, bot: Any, res: BotResources) -> None:
        self.bot = bot
        self.res = res

    def _chat(self, w: Watch) -> int:
        return int(w.chat_id) if w.chat_id is not None else int(w.platform_user_id)

    async def _put(self, w: Watch, body: str, markup: InlineKeyboardMarkup | None) -> None:
        chat = self._chat(w)
        if w.message_id is not None:
            try:
                await self.bot.edit_message_text(body, chat_id=chat, message_id=int(w.message_id), reply_markup=markup)
                return
            except BadRequest as exc:
                low = exc.message.lower()
                if "not modified" in low:
                    return
                if "not found" not in low and "can't be edited" not in low:
                    raise
        if w.resumed:  # after a restart, and the stored progress message is unknown or gone
            body = text("resumed") + "\n" + body
        sent = await self.bot.send_message(chat, body, reply_markup=markup)
        w.message_id = str(sent.message_id)

    async def show_progress(self, w: Watch, view: ProgressView) -> None:
        markup = None
        if view.cancellable:
            markup = InlineKeyboardMarkup([[InlineKeyboardButton(text("cancel_button"),
                                                                 callback_data=f"cancel:{w.job_id}")]])
        await self._put(w, core.progress_text(view), markup)

    async def finish(self, w: Watch, view: ProgressView) -> None:
        await self._put(w, core.progress_text(view), None)

    async def show_first_look(self, w: Watch, png: bytes, stage: str) -> None:
        await self.bot.send_photo(self._chat(w), InputFile(png, filename=f"{stage}.png"),
                                  caption=text(f"first_look_{stage}"))

    async def report_error(self, w: Watch, err: UserFacingError) -> None:
        try:
            await self.bot.send_message(self._chat(w), _explain(err, self.bot.username or ""))
        except (BadRequest, Forbidden) as exc:
            log.warning("could not tell user %s about %s: %s", w.platform_user_id, err.key, exc)

    async def deliver(self, w: Watch, job: Any) -> None:
        result = packs.result_of(job)
        pack = packs.get_pack(self.res.db, w.pack_id if w.pack_id is not None else int(job.payload["pack_id"]))
        if result is None:
            raise RuntimeError(f"job {job.id} succeeded without a result")
        stickers = [s for s in result.stickers if "telegram_video" in s.files]
        if not stickers:
            await self._deliver_stills(w, pack, result)
            return
        await self._put(w, text("finishing"), None)
        core.materialize_result(self.res, pack, result, "telegram_video")
        title = self._title(pack)
        thumb_digest = result.thumbnail.get("telegram_thumb")
        thumb = self.res.blobs.read_bytes(thumb_digest) if thumb_digest else None
        # a regeneration order updates a set published before; a new pack's set name is
        # recorded before the set exists, so it cannot tell a new set from an old one
        regenerated = core.updates_published_set(job)
        # Both sets at once: each is a chain of round trips to Telegram. A failure of either cancels
        # the other and the delivery is retried whole (both publishers converge from any point).
        emoji_line, pub = await run_at_most(2, [
            lambda: deliver_custom_emoji(self.bot, self.res, pack.id, result, int(w.platform_user_id),
                                         title=title, regenerated=regenerated),
            lambda: publish_pack(self.bot, self.res.db, self.res.blobs, pack.id, int(w.platform_user_id),
                                 bot_username=self.bot.username, title=title, thumbnail=thumb)])
        lines = [text("done_updated" if regenerated else "done", link=pub.link), *([emoji_line] if emoji_line else []),
                 *core.result_notes(result)]
        await self._put(w, "\n".join(lines), rerender_markup(self.res, pack, result))
        # published once told: a crash before this line delivers again (set unchanged, message edited)
        packs.mark_published(self.res.db, pack.id, job_id=job.id)
        if pub.first_sticker_file_id:
            await self.bot.send_sticker(self._chat(w), pub.first_sticker_file_id)

    async def _deliver_stills(self, w: Watch, pack: packs.Pack, result: orders.PackResult) -> None:
        await self._put(w, "\n".join(core.result_notes(result, stickers_made=False)), None)
        for digest in result.renders[:3]:
            await self.bot.send_photo(self._chat(w), InputFile(self.res.blobs.read_bytes(digest), filename="render.png"))
        # no sticker set exists; "published" = delivered, so restarts do not send the stills again
        packs.mark_published(self.res.db, pack.id, job_id=w.job_id)

    def _title(self, pack: packs.Pack) -> str:
        name = text("own_style_name")
        if pack.style_id is not None:
            try:
                name = st.get_style(self.res.db, pack.style_id).name
            except st.StyleNotFound:
                pass
        return f"{self.res.cfg.telegram.set_title_prefix} · {name}"[:64]


