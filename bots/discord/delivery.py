"""Discord delivery: progress edits and the finished pack.

:class:`DiscordSender` is the ``bots.notify.Sender`` for Discord.

* Within an interaction's token window (15 minutes, less ``margin_s``) it edits
  the deferred ("thinking") original response with progress and delivers the
  result as a follow-up on the same interaction webhook
  (``discord.Webhook.partial(application_id, token)``), which needs no channel
  permission of the bot.
* The interaction (application id, token, channel, guild, arrival time) is
  stored with the job (:mod:`storage.deliveries`), so a restarted bot keeps
  editing ``@original`` while the token is still valid. The token is a
  short-lived secret: it never appears in a repr or a log line, and it is
  cleared from the database as soon as it is known to be expired.
* After the window, or when Discord answers 10015/10062, it falls back to a
  direct message (also stored, and edited in place, across restarts); when
  the member's DMs are closed, to a message in the channel the command was
  used in (mentioning the member). The stored guild id keeps "Add to server"
  pointing at the command's server in that fallback message.
* Every sticker file is checked with ``engine.stickers.verify`` against the
  ``discord_sticker`` target before it is uploaded anywhere (no torch there).

Times: ``clock`` and ``InteractionRef.started`` are UNIX seconds (they must
survive a restart, so not monotonic); the window is measured from the moment
the bot received the interaction, so ``margin_s`` also covers clock steps.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import replace
from typing import Any, Callable

import discord

from emoji3d.errors import UserFacingError
from emoji3d.texts import explain, text
from storage import deliveries, jobs, packs

from bots import core
from bots.core import BotResources, ProgressView
from bots.notify import Watch
from bots.discord.interactions import (
    FilesInvalid, InteractionRef, MAX_FILES_PER_MESSAGE, PLATFORM, STICKER_TARGET, TOKEN_LIFETIME_S,
    UNKNOWN_INTERACTION, UNKNOWN_WEBHOOK, Unreachable, discord_files, pack_of, ref_from_row, verified_files,
)
from bots.discord.rerender import add_rerender_buttons
from bots.discord.server_stickers import result_view, sync_server_emoji, sync_server_stickers

log = logging.getLogger("emoji3d.discord")


# ----------------------------------------------------------------------------- sender

class DiscordSender:
    """``bots.notify.Sender`` for Discord (see the module docstring)."""

    def __init__(self, client: discord.Client, res: BotResources, *, margin_s: float = 30.0,
                 token_lifetime_s: float = TOKEN_LIFETIME_S, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.res = res
        self.margin_s = float(margin_s)
        self.token_lifetime_s = float(token_lifetime_s)
        self.clock = clock
        # in-memory views of the job's delivery_refs row (loaded from it after a restart)
        self.refs: dict[int, InteractionRef] = {}                 # job id -> interaction
        self.fallback_msgs: dict[int, tuple[int, int]] = {}       # job id -> (channel id, message id)
        self._loaded: set[int] = set()                            # jobs whose row was read

    # ------------------------------------------------------------------ bookkeeping
    def attach(self, job_id: int, ref: InteractionRef) -> None:
        """Use ``ref`` for the job and store it, so a restart can use it too."""
        self.refs[job_id] = ref
        self._loaded.add(job_id)
        self._persist(job_id, application_id=ref.application_id, token=ref.token, started_at=ref.started,
                      guild_id=ref.guild_id, **({} if ref.channel_id is None else {"chat_id": ref.channel_id}))

    def forget(self, job_id: int) -> None:
        """Drop the in-memory state (the notifier deletes the stored row)."""
        self.refs.pop(job_id, None)
        self.fallback_msgs.pop(job_id, None)
        self._loaded.discard(job_id)

    def _persist(self, job_id: int, **fields: Any) -> None:
        try:
            deliveries.record_delivery(self.res.db, job_id, PLATFORM, **fields)
        except deliveries.DeliveryJobMissing:
            pass  # the user deleted their data meanwhile
        except Exception:  # noqa: BLE001 - delivery in this process still works
            log.warning("job %s: could not store its delivery reference", job_id, exc_info=True)

    def _load(self, job_id: int) -> None:
        """After a restart: the interaction and fallback message stored for the job."""
        if job_id in self._loaded:
            return
        self._loaded.add(job_id)
        row = deliveries.get_delivery(self.res.db, job_id)
        if row is None or row.platform != PLATFORM:
            return
        ref = ref_from_row(row)
        if ref is not None:
            self.refs.setdefault(job_id, ref)
        if row.fallback_chat_id is not None and row.fallback_message_id is not None:
            self.fallback_msgs.setdefault(job_id, (int(row.fallback_chat_id), int(row.fallback_message_id)))

    def ref(self, job_id: int) -> InteractionRef | None:
        """The job's interaction, live or not (its guild id still names where
        "Add to server" applies)."""
        self._load(job_id)
        return self.refs.get(job_id)

    def _live_ref(self, job_id: int) -> InteractionRef | None:
        ref = self.ref(job_id)
        if ref is None or ref.token is None:
            return None
        if self.clock() - ref.started >= self.token_lifetime_s - self.margin_s:
            self._expire(job_id)  # the secret is useless now: do not keep it stored
            return None
        return ref

    def _expire(self, job_id: int) -> None:
        """The token expired or Discord refused it: clear it, keep the rest."""
        ref = self.refs.get(job_id)
        if ref is not None and ref.token is not None:
            self.refs[job_id] = replace(ref, token=None)
            try:
                deliveries.forget_token(self.res.db, job_id)
            except Exception:  # noqa: BLE001 - an unusable token left behind is deleted with its row
                log.warning("job %s: could not clear its expired token", job_id, exc_info=True)

    def _hook(self, ref: InteractionRef) -> discord.Webhook:
        if ref.token is None:
            raise ValueError("interaction token is no longer usable")
        return discord.Webhook.partial(ref.application_id, ref.token, client=self.client)

    @staticmethod
    def _expired(exc: discord.HTTPException) -> bool:
        return isinstance(exc, discord.NotFound) and exc.code in (UNKNOWN_WEBHOOK, UNKNOWN_INTERACTION)

    async def _edit_original(self, w: Watch, body: str) -> bool:
        ref = self._live_ref(w.job_id)
        if ref is None:
            return False
        try:
            await self._hook(ref).edit_message("@original", content=body)  # type: ignore[arg-type]
            return True
        except discord.HTTPException as exc:
            if not self._expired(exc):
                raise
            self._expire(w.job_id)
            return False

    async def _dm_channel(self, w: Watch) -> discord.abc.Messageable:
        uid = int(w.platform_user_id)
        user = self.client.get_user(uid) or await self.client.fetch_user(uid)
        return user.dm_channel or await user.create_dm()

    async def _fallback_text(self, w: Watch, body: str) -> None:
        """Progress/final text outside the token window: edit our DM (or channel)
        message, or send one."""
        self._load(w.job_id)
        known = self.fallback_msgs.get(w.job_id)
        if known is not None:
            ch = self.client.get_partial_messageable(known[0])
            try:
                await ch.get_partial_message(known[1]).edit(content=body)
                return
            except discord.NotFound:
                self.fallback_msgs.pop(w.job_id, None)
        if w.resumed:
            body = text("resumed") + "\n" + body
        sent = await self._send_somewhere(w, content=body)
        self.fallback_msgs[w.job_id] = (sent.channel.id, sent.id)
        self._persist(w.job_id, fallback_chat_id=sent.channel.id, fallback_message_id=sent.id)

    async def _send_somewhere(self, w: Watch, **kw: Any) -> discord.Message:
        """DM the member; if their DMs are closed, the command's channel with a mention."""
        files_factory = kw.pop("files_factory", None)
        try:
            dm = await self._dm_channel(w)
            return await dm.send(**kw, **({"files": files_factory()} if files_factory else {}))
        except discord.Forbidden as exc:
            if w.chat_id is None:
                raise Unreachable(f"DM to {w.platform_user_id} refused ({exc.code}) and no channel known") from None
            log.info("DM to user %s refused (%s); using channel %s", w.platform_user_id, exc.code, w.chat_id)
        ch = self.client.get_partial_messageable(int(w.chat_id))
        content = text("discord_done_channel", mention=f"<@{int(w.platform_user_id)}>") + "\n" + kw.pop("content", "")
        try:
            return await ch.send(content=content, allowed_mentions=discord.AllowedMentions(users=True),
                                 **kw, **({"files": files_factory()} if files_factory else {}))
        except discord.Forbidden as exc:
            raise Unreachable(f"channel {w.chat_id} refused ({exc.code})") from None

    # ------------------------------------------------------------------ Sender protocol
    async def show_progress(self, w: Watch, view: ProgressView) -> None:
        body = core.progress_text(view)
        if not await self._edit_original(w, body):
            await self._fallback_text(w, body)

    async def finish(self, w: Watch, view: ProgressView) -> None:
        await self.show_progress(w, view)
        self.forget(w.job_id)

    async def show_first_look(self, w: Watch, png: bytes, stage: str) -> None:
        """One follow-up with the still while the interaction token lives, else one DM (or channel) message."""
        body, name = text(f"first_look_{stage}"), f"{stage}.png"
        ref = self._live_ref(w.job_id)
        if ref is not None:
            try:
                await self._hook(ref).send(body, files=discord_files([(name, png)]), wait=True)
                return
            except discord.HTTPException as exc:
                if not self._expired(exc):
                    raise
                self._expire(w.job_id)
        await self._send_somewhere(w, content=body, files_factory=lambda: discord_files([(name, png)]))

    async def report_error(self, w: Watch, err: UserFacingError) -> None:
        body = explain(err)
        try:
            if not await self._edit_original(w, body):
                await self._fallback_text(w, body)
        except (discord.HTTPException, UserFacingError) as exc:
            log.warning("could not tell user %s about %s: %s", w.platform_user_id, err.key, exc)
        self.forget(w.job_id)

    async def deliver(self, w: Watch, job: jobs.Job) -> None:
        result = packs.result_of(job)
        if result is None:
            raise RuntimeError(f"job {job.id} succeeded without a result")
        pack = pack_of(self.res, w.pack_id if w.pack_id is not None else int(job.payload["pack_id"]))
        stickers = sorted((s for s in result.stickers if STICKER_TARGET in s.files), key=lambda s: s.idx)
        lines: list[str] = []
        if stickers:
            core.materialize_result(self.res, pack, result, STICKER_TARGET, kind="animated")
            # stickers already added to servers follow the pack's new selection and files
            await sync_server_stickers(self.client, self.res, pack)
            await sync_server_emoji(self.client, self.res, pack)  # and the custom emoji added instead
            items, bad = await asyncio.to_thread(
                verified_files, self.res, [(f"{s.idx:02d}_{re.sub(r'[^A-Za-z0-9_-]', '_', s.name)}", s.files[STICKER_TARGET])
                                           for s in stickers], STICKER_TARGET)
            if bad:
                log.error("job %s: sticker files failed verification: %s", job.id, bad)
            if not items:
                raise FilesInvalid("; ".join(bad), detail="; ".join(bad)[:200])
        else:  # this build made an avatar but no sticker files: still renders instead
            items = []
            for i, digest in enumerate(result.renders[:3]):
                try:
                    items.append((f"render{i}.png", self.res.blobs.read_bytes(digest)))
                except Exception:  # noqa: BLE001 - skip an unreadable render
                    log.warning("job %s: render blob %s unreadable", job.id, digest)
        lines += core.result_notes(result, stickers_made=bool(stickers))
        preview = result.preview_png or (result.renders[0] if result.renders and stickers else None)
        if preview is not None:
            try:
                items.append(("preview.png", self.res.blobs.read_bytes(preview)))
            except Exception:  # noqa: BLE001 - the preview is a courtesy
                log.warning("job %s: preview blob %s unreadable", job.id, preview)
        # a remake of a pack the user has (a retry, a re-render, a scheduled regeneration) says "updated"
        updated = core.updates_published_set(job)
        ref = self._live_ref(w.job_id)
        known = self.ref(w.job_id)
        guild_id = known.guild_id if known is not None else None
        view = add_rerender_buttons(result_view(pack.id, guild_id) if stickers and guild_id else None, self.res,
                                    pack, result)
        chunks = [items[i:i + MAX_FILES_PER_MESSAGE] for i in range(0, len(items), MAX_FILES_PER_MESSAGE)] or [[]]
        delivered = False
        if ref is not None:
            try:
                hook = self._hook(ref)
                for k, chunk in enumerate(chunks):
                    last = k == len(chunks) - 1
                    heading = text("discord_updated" if updated else "discord_done")
                    body = "\n".join([*([heading] if stickers else []), *lines]) if k == 0 else "\u200b"
                    kw: dict[str, Any] = {"view": view} if (last and view is not None) else {}
                    await hook.send(body, files=discord_files(chunk), wait=True, **kw)
                delivered = True
                try:
                    await hook.edit_message("@original", content=text("discord_delivered_below"))  # type: ignore[arg-type]
                except discord.HTTPException as exc:
                    log.info("job %s: could not edit the original response: %s", job.id, exc)
            except discord.HTTPException as exc:
                if not self._expired(exc):
                    raise
                self._expire(w.job_id)
                log.info("job %s: interaction token expired; delivering by DM", job.id)
        if not delivered:
            for k, chunk in enumerate(chunks):
                last = k == len(chunks) - 1
                heading = text("discord_updated" if updated else "discord_done_later")
                body = "\n".join([*([heading] if stickers else []), *lines]) if k == 0 else "\u200b"
                kw = {"view": view} if (last and view is not None) else {}
                await self._send_somewhere(w, content=body, files_factory=lambda c=chunk: discord_files(c), **kw)
            if ref is not None:
                try:
                    await self._hook(ref).edit_message("@original", content=text("discord_delivered_elsewhere"))  # type: ignore[arg-type]
                except discord.HTTPException:
                    pass
        packs.mark_published(self.res.db, pack.id, job_id=job.id)
        self.forget(w.job_id)
