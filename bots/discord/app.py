"""Build and run the Discord bot: the ``commands.Bot`` subclass with its
resources injected (discord.py ``examples/advanced_startup.py`` style); cogs,
persistent views, the job notifier and the per-user cooldown are wired here
and nowhere else.

``run(cfg, stop_event)`` is what ``emoji3d serve`` starts in a thread (when
``DISCORD_BOT_TOKEN`` is set): it opens the database and blob store, loads the
face detector once, connects to Discord and watches jobs until ``stop_event``
(a ``threading.Event``) is set. Tests construct :class:`EmojiBot` directly and
drive it against the fake REST API (``tests/fakes/discord_harness.py``).

Intents: the default (non-privileged) intents; slash commands need no message
content, and sticker names use the display name stored at order time, so no
members intent either. Cooldown times are ``BotResources.clock`` seconds.

Sharding (``[discord] shard_count`` / ``shard_ids``, :func:`make_bot`): one
gateway connection serves at most 2,500 servers, so from there on Discord
requires shards. ``shard_count = 1`` is one connection (:class:`EmojiBot`);
``0`` runs as many shards as Discord recommends in this process
(:class:`ShardedEmojiBot`, discord.py's ``AutoShardedBot``); ``N`` with
``shard_ids`` runs those of N shards here, so several processes can split them
(one id: a plain bot with ``shard_id``). Every process runs a notifier; the
delivery claims make sure one of them sends each message. Interactions reach
the shard of their server (DMs shard 0), and everything the bot does for them
is REST, so a server another process's shard holds is fetched when needed.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
from dataclasses import dataclass

import discord
from discord import app_commands
from discord.ext import commands

from emoji3d.config import Config

from bots import redaction
from bots.core import BotResources, open_bot_resources
from bots.notify import Notifier
from bots.discord.cogs import ConsentView, Cooldown, DeleteView, EmojiCog, HouseStyleCog, answer_error
from bots.discord.delivery import DiscordSender
from bots.discord.interactions import PLATFORM
from bots.discord.rerender import RerenderButton, RetryButton, StickerSelect
from bots.discord.server_stickers import AddAsEmojiButton, AddToServerButton

log = logging.getLogger("emoji3d.discord")


@dataclass(frozen=True)
class BotOptions:
    progress_interval_s: float = 3.0   # at most one progress edit per job per interval
    poll_jobs_s: float = 1.0           # how often the notifier reads the jobs table
    rescan_s: float = 60.0             # how often the notifier looks for undelivered packs
    retry_s: float = 30.0              # wait before retrying a failed delivery
    token_margin_s: float = 30.0       # stop using an interaction token this long before it expires
    sync_commands: bool = True         # PUT the slash commands at startup


class _EmojiBotMixin:
    """The emoji3d Discord bot's behaviour, on a plain or an auto-sharded bot.
    ``res`` is shared with the other front ends; ``shards`` are discord.py's
    sharding options (``shard_id``/``shard_count`` or ``shard_ids``/``shard_count``)."""

    def __init__(self, res: BotResources, opts: BotOptions = BotOptions(), **shards: object) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default(),  # type: ignore[call-arg]
                         help_command=None, **shards)
        self.res = res
        self.opts = opts
        self.sender = DiscordSender(self, res, margin_s=opts.token_margin_s)
        self.notifier = Notifier(res, PLATFORM, self.sender, min_interval=opts.progress_interval_s,
                                 retry_seconds=opts.retry_s, rescan_seconds=opts.rescan_s)
        self._cooldowns: dict[int, float] = {}   # Discord user id -> last order (res.clock seconds)
        self._stop = asyncio.Event()
        self._notifier_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ cooldown
    def check_cooldown(self, user_id: int) -> None:
        wait = self.res.cfg.discord.cooldown_seconds
        last = self._cooldowns.get(int(user_id))
        if wait > 0 and last is not None:
            left = last + wait - self.res.clock()
            if left > 0:
                raise Cooldown(f"user {user_id} ordered {wait - left:.0f} s ago", seconds=math.ceil(left))

    def stamp_cooldown(self, user_id: int) -> None:
        self._cooldowns[int(user_id)] = float(self.res.clock())

    def forget_cooldown(self, user_id: int) -> None:
        self._cooldowns.pop(int(user_id), None)

    # ------------------------------------------------------------------ lifecycle
    async def setup_hook(self) -> None:
        await self.add_cog(EmojiCog(self))
        await self.add_cog(HouseStyleCog(self))
        self.add_view(ConsentView())
        self.add_view(DeleteView())
        self.add_dynamic_items(AddToServerButton, AddAsEmojiButton, RerenderButton, RetryButton, StickerSelect)
        self.tree.on_error = self._tree_error  # type: ignore[method-assign]
        if self.opts.sync_commands:
            await self.tree.sync()
        self._stop.clear()
        self._notifier_task = asyncio.create_task(self.notifier.run(self._stop, self.opts.poll_jobs_s),
                                                  name="discord-notifier")

    async def _tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await answer_error(interaction, error)

    async def on_error(self, event_method: str, /, *args: object, **kwargs: object) -> None:
        log.exception("unhandled error in %s", event_method)

    async def close(self) -> None:
        self._stop.set()
        task, self._notifier_task = self._notifier_task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, timeout=10)
            except Exception:  # noqa: BLE001 - shutting down regardless
                log.warning("notifier did not stop cleanly", exc_info=True)
        await super().close()  # type: ignore[misc]


class EmojiBot(_EmojiBotMixin, commands.Bot):
    """One gateway connection (or one shard of several, with ``shard_id``)."""


class ShardedEmojiBot(_EmojiBotMixin, commands.AutoShardedBot):
    """Several shards in this process (``shard_count`` None = Discord's recommendation)."""


def make_bot(res: BotResources, opts: BotOptions = BotOptions()) -> EmojiBot | ShardedEmojiBot:
    """The bot ``res.cfg.discord`` asks for (see the module docstring)."""
    count, ids = res.cfg.discord.shard_count, list(res.cfg.discord.shard_ids)
    if count == 1:
        return EmojiBot(res, opts)
    if count == 0:
        return ShardedEmojiBot(res, opts)
    if len(ids) == 1:
        return EmojiBot(res, opts, shard_id=ids[0], shard_count=count)
    return ShardedEmojiBot(res, opts, shard_count=count, shard_ids=ids or None)


def run(cfg: Config, stop_event: threading.Event, opts: BotOptions = BotOptions()) -> None:
    """Blocking entry point for ``emoji3d serve`` (runs in its own thread)."""
    token = cfg.discord_token.reveal()
    if not token:
        raise RuntimeError("DISCORD_BOT_TOKEN is not set")
    redaction.install([token])  # also when started without the CLI's logging set-up
    res, close = open_bot_resources(cfg)

    async def main() -> None:
        bot = make_bot(res, opts)
        loop = asyncio.get_running_loop()

        def stopper() -> None:
            stop_event.wait()
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(bot.close()))

        threading.Thread(target=stopper, name="discord-stop", daemon=True).start()
        async with bot:
            await bot.start(token)

    try:
        asyncio.run(main())
    finally:
        close()


__all__ = ["BotOptions", "EmojiBot", "ShardedEmojiBot", "make_bot", "run"]
