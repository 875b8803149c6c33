"""Run a real ``discord.ext.commands.Bot`` against :class:`FakeDiscord`, no gateway.

What the harness does, in order (:meth:`DiscordHarness.start`):
1. sets ``discord.http.Route.BASE`` to the fake's ``/api/v10`` (restored on close);
   interaction callbacks and webhooks use the same ``Route``, so all REST goes there;
2. ``bot.login(token)`` over HTTP: ``GET /users/@me``, ``GET /oauth2/applications/@me``,
   then the bot's own ``setup_hook`` (cogs load there);
3. feeds READY and one GUILD_CREATE per fake guild through the connection
   state's gateway parsers (``state.parsers[...]``), exactly the code path the
   websocket uses, and waits for ``on_ready``; member chunking is disabled since
   GUILD_CREATE already carries the members. An ``AutoShardedClient`` gets what
   its shard launcher would do: the shard count from ``GET /gateway/bot`` when it
   has none, one READY per shard it runs (``shard: [id, count]``, with the
   guilds of that shard: ``(guild_id >> 22) % count``) and those guilds' GUILD_CREATEs;
4. optionally syncs the app-command tree (``PUT .../commands``), so the fake
   knows the command ids interactions refer to.

:meth:`DiscordHarness.deliver` registers a raw INTERACTION_CREATE payload with
the fake (so its token is valid and its 3 s / 15 min clocks start) and passes
it to ``state.parsers["INTERACTION_CREATE"]``: discord.py builds the
``Interaction`` and the app-command tree / view store parse options,
autocomplete and attachments themselves. With ``wait=True`` it waits for the
tasks that parsing spawned (command invocation, view callbacks, listeners).

Exceptions that discord.py swallows and logs (command errors, view errors) are
captured from the ``discord`` logger into :attr:`DiscordHarness.errors`.

Typical use (each test on its own ``asyncio.run`` loop)::

    async def scenario():
        async with running_bot(MyBot()) as (h, world):
            att = h.upload(P.make_png(64, 64), "me.png", "image/png")
            await h.deliver(h.slash("emoji create", world.member, attachments=[att],
                                    options=[P.option("selfie", "attachment", att["id"])]))
            h.assert_no_errors()
            assert h.server.calls_to("POST", "/webhooks/{application_id}/{token}")
    asyncio.run(scenario())

Conventions: ids are decimal strings in payloads; the default world
(:func:`build_world`) has one guild (boost tier 0, 5 sticker slots) with a
``#general`` channel, a moderator (Manage Expressions) and an ordinary member.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any, AsyncIterator, Mapping, Sequence

import discord
from discord.ext import commands

from tests.fakes import discord_payloads as payloads
from tests.fakes.discord_api import FakeDiscord, ServerConfig, sniff_image


@dataclasses.dataclass
class World:
    """Payloads of the default test world (all registered on the server)."""

    bot_user: dict[str, Any]
    application: dict[str, Any]
    owner: dict[str, Any]
    guild: dict[str, Any]
    channel: dict[str, Any]
    moderator: dict[str, Any]       # member payload with the Moderators role
    member: dict[str, Any]          # ordinary member payload
    mod_role_id: str

    @property
    def guild_id(self) -> str:
        return str(self.guild["id"])


def build_world(server: FakeDiscord, *, premium_tier: int = 0,
                existing_stickers: int = 0,
                bot_permissions: int = payloads.DEFAULT_BOT_PERMISSIONS) -> World:
    """Create and register the default world on ``server`` (uses ``server.ids``)."""
    ids = server.ids
    bot_user = payloads.user(ids(), "emoji3d", bot=True)
    owner = payloads.user(ids(), "owner")
    app = payloads.application(ids(), "emoji3d", owner)
    gid = ids()
    mod_role = ids()
    roles = [payloads.role(gid, "@everyone", payloads.DEFAULT_MEMBER_PERMISSIONS),
             payloads.role(mod_role, "Moderators",
                    payloads.permission_bits("MANAGE_GUILD_EXPRESSIONS", "CREATE_GUILD_EXPRESSIONS"),
                    position=1)]
    channel = payloads.text_channel(ids(), gid, "general")
    moderator = payloads.member(payloads.user(ids(), "alice", global_name="Alice"), roles=[mod_role])
    member = payloads.member(payloads.user(ids(), "bob", global_name="Bob"))
    stickers = [payloads.guild_sticker(ids(), gid, f"old{i}", tags="smile") for i in range(existing_stickers)]
    guild = payloads.guild(gid, "Test Server", owner_id=owner["id"], roles=roles, channels=[channel],
                    members=[payloads.member(owner), payloads.member(bot_user), moderator, member],
                    premium_tier=premium_tier, stickers=stickers)
    server.set_bot(bot_user, app)
    server.add_guild(guild, bot_permissions=bot_permissions)
    return World(bot_user, app, owner, guild, channel, moderator, member, mod_role)


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _FakeShard:
    """What ``discord.ShardInfo`` reads of a shard when no websocket runs."""

    def __init__(self, shard_id: int) -> None:
        self.id = shard_id
        self.ws = None

    def is_closed(self) -> bool:
        return False

    async def close(self) -> None:
        return None


class DiscordHarness:
    """Drive ``bot`` against ``server``. Use as ``async with DiscordHarness(...) as h``."""

    def __init__(self, bot: commands.Bot | discord.Client, server: FakeDiscord, *,
                 sync_commands: bool = True, sync_guilds: Sequence[int | str] = ()) -> None:
        self.bot = bot
        self.server = server
        self.sync_commands = sync_commands
        self.sync_guilds = [str(g) for g in sync_guilds]
        self._old_base: str | None = None
        self._log = _ErrorLog()
        self._n = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def state(self) -> Any:
        return self.bot._connection  # the client's ConnectionState

    @property
    def errors(self) -> list[logging.LogRecord]:
        """ERROR records discord.py logged (e.g. 'Ignoring exception in command')."""
        return list(self._log.records)

    def assert_no_errors(self) -> None:
        if self._log.records:
            lines = []
            for r in self._log.records:
                lines.append(r.getMessage())
                if r.exc_info and r.exc_info[1] is not None:
                    lines.append(f"  {type(r.exc_info[1]).__name__}: {r.exc_info[1]}")
            raise AssertionError("discord.py logged errors:\n" + "\n".join(lines))

    async def start(self) -> "DiscordHarness":
        server = self.server
        if server.bot_user is None or server.application is None:
            raise RuntimeError("server has no bot user; call build_world() or server.set_bot()")
        logging.getLogger("discord").addHandler(self._log)
        self._old_base = discord.http.Route.BASE
        discord.http.Route.BASE = server.api_base
        try:
            await self.bot.login(server.config.bot_token)
            state = self.state
            state._chunk_guilds = False          # GUILD_CREATE already carries members
            state.guild_ready_timeout = 0.05     # seconds to wait for more GUILD_CREATEs
            if isinstance(self.bot, discord.AutoShardedClient):
                await self._ready_shards()
            else:
                state.parsers["READY"](payloads.ready(server.bot_user, server.application,
                                               list(server.guilds)))
                for gid in server.guilds:
                    state.parsers["GUILD_CREATE"](server.guild_create_payload(gid))
            await asyncio.wait_for(self.bot.wait_until_ready(), timeout=10)
            tree = getattr(self.bot, "tree", None)
            if self.sync_commands and tree is not None:
                await tree.sync()
                for gid in self.sync_guilds:
                    await tree.sync(guild=discord.Object(int(gid)))
        except BaseException:
            await self.close()
            raise
        return self

    async def _ready_shards(self) -> None:
        """READY per shard and its guilds, as ``AutoShardedClient.launch_shards`` would bring."""
        bot, state, server = self.bot, self.state, self.server
        if bot.shard_count is None:
            bot.shard_count, _, _ = await bot.http.get_bot_gateway()
        state.shard_count = bot.shard_count
        shard_ids = bot.shard_ids or list(range(bot.shard_count))
        state.shard_ids = shard_ids
        for sid in shard_ids:
            mine = [g for g in server.guilds if (int(g) >> 22) % bot.shard_count == sid]
            ready = payloads.ready(server.bot_user, server.application, mine)
            ready["shard"] = [sid, bot.shard_count]
            bot._AutoShardedClient__shards[sid] = _FakeShard(sid)  # type: ignore[attr-defined]
            state.parsers["READY"](ready)
            for gid in mine:
                state.parsers["GUILD_CREATE"](server.guild_create_payload(gid))

    async def close(self) -> None:
        try:
            if not self.bot.is_closed():
                await self.bot.close()
        finally:
            if self._old_base is not None:
                discord.http.Route.BASE = self._old_base
                self._old_base = None
            logging.getLogger("discord").removeHandler(self._log)

    async def __aenter__(self) -> "DiscordHarness":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------- delivery

    async def deliver(self, payload: Mapping[str, Any], *, wait: bool = True,
                      timeout: float = 10.0) -> discord.Interaction:
        """Dispatch INTERACTION_CREATE through the client's state; return the
        ``discord.Interaction`` the library built. With ``wait``, also wait for
        the handling tasks spawned while parsing (command, view callback)."""
        self.server.register_interaction(payload)
        iid = int(payload["id"])
        waiter = asyncio.ensure_future(
            self.bot.wait_for("interaction", check=lambda i: i.id == iid, timeout=timeout))
        await asyncio.sleep(0)  # let wait_for register its listener
        before = asyncio.all_tasks()
        try:
            self.state.parsers["INTERACTION_CREATE"](dict(payload))
        except BaseException:
            waiter.cancel()
            raise
        spawned = asyncio.all_tasks() - before - {waiter}
        interaction = await waiter
        if wait and spawned:
            done, pending = await asyncio.wait(spawned, timeout=timeout)
            if pending:
                names = ", ".join(t.get_name() for t in pending)
                raise asyncio.TimeoutError(f"interaction {iid} still being handled after "
                                           f"{timeout}s: {names}")
        return interaction

    def emit(self, event: str, data: Mapping[str, Any]) -> None:
        """Feed any other gateway dispatch (e.g. ``GUILD_STICKERS_UPDATE``) to the state."""
        try:
            parser = self.state.parsers[event]
        except KeyError:
            raise ValueError(f"discord.py has no parser for gateway event {event!r}") from None
        parser(dict(data))

    def command_visible(self, command: str, invoker: Mapping[str, Any], *,
                        command_guild_id: int | str | None = None, **ctx: Any) -> bool:
        """Whether Discord would offer ``command`` to ``invoker``: the member's
        permissions cover the synced ``default_member_permissions`` (no per-server
        overrides are modelled). ``deliver`` does not enforce this, so tests can
        also simulate a server that granted the command to everyone."""
        required = self.server.default_member_permissions(
            command.split()[0], guild_id=command_guild_id)
        if required is None:
            return True
        have = self.context(invoker, **ctx).member_permissions
        if required == 0:  # "0" hides the command from everyone but administrators
            return bool(have & payloads.permission_bits("ADMINISTRATOR"))
        return (have & required) == required

    # -------------------------------------------------------------- builders

    def _token(self) -> str:
        self._n += 1
        return f"itoken-{self.server.ids.next()}-{self._n}"

    def context(self, invoker: Mapping[str, Any], *, guild_id: int | str | None = None,
                channel: Mapping[str, Any] | None = None,
                member_permissions: int | None = None,
                app_permissions: int | None = None) -> payloads.InteractionContext:
        """Context for ``invoker`` (member payload in a guild, user payload in DM).
        Permissions default to what the fake's guild roles/overwrites give."""
        server = self.server
        app_id = str(server.application["id"])  # type: ignore[index]
        if "user" not in invoker:  # DM
            uid = str(invoker["id"])
            if channel is None:
                cid = server.dm_channels.get(uid) or server.ids()
                server.dm_channels[uid] = cid
                channel = payloads.dm_channel(cid, invoker)
                server.channels[cid] = dict(channel)
            return payloads.InteractionContext(application_id=app_id, channel=channel, invoker=invoker,
                                        member_permissions=member_permissions or 0,
                                        app_permissions=app_permissions or 0)
        if guild_id is None:
            if len(server.guilds) != 1:
                raise ValueError("several guilds on the fake: pass guild_id")
            guild_id = next(iter(server.guilds))
        g = server.guilds[str(guild_id)]
        if channel is None:
            channel = next(c for c in g.payload["channels"] if c["type"] == payloads.CHANNEL_GUILD_TEXT)
        perms = member_permissions if member_permissions is not None else\
            payloads.compute_permissions(g.payload, invoker, channel)
        app_perms = app_permissions if app_permissions is not None else\
            server.bot_permissions_in(g.id, str(channel["id"]))
        return payloads.InteractionContext(application_id=app_id, channel=channel, invoker=invoker,
                                    guild_id=g.id, member_permissions=perms,
                                    app_permissions=app_perms,
                                    attachment_size_limit=max(
                                        payloads.DEFAULT_ATTACHMENT_SIZE_LIMIT,
                                        {2: 50, 3: 100}.get(g.premium_tier, 10) * 1024 * 1024))

    def _command_id(self, command: str, command_guild_id: str | None) -> str:
        root = command.split()[0]
        return self.server.command_id(root, guild_id=command_guild_id)

    def upload(self, data: bytes, filename: str, content_type: str, *,
               channel_id: int | str | None = None) -> dict[str, Any]:
        """Host ``data`` on the fake CDN: an attachment payload for options."""
        _, width, height = sniff_image(data)
        return self.server.host_file(data, filename, content_type=content_type,
                                     channel_id=channel_id or self.server.ids(),
                                     width=width, height=height)

    def slash(self, command: str, invoker: Mapping[str, Any], *,
              options: Sequence[Mapping[str, Any]] = (),
              attachments: Sequence[Mapping[str, Any]] = (),
              command_guild_id: int | str | None = None, **ctx: Any) -> dict[str, Any]:
        cg = None if command_guild_id is None else str(command_guild_id)
        return payloads.slash_interaction(self.context(invoker, **ctx), iid=self.server.ids(),
                                   token=self._token(), command=command,
                                   command_id=self._command_id(command, cg), options=options,
                                   attachments=attachments, command_guild_id=cg)

    def autocomplete(self, command: str, invoker: Mapping[str, Any], *,
                     options: Sequence[Mapping[str, Any]],
                     attachments: Sequence[Mapping[str, Any]] = (),
                     command_guild_id: int | str | None = None, **ctx: Any) -> dict[str, Any]:
        cg = None if command_guild_id is None else str(command_guild_id)
        return payloads.autocomplete_interaction(self.context(invoker, **ctx), iid=self.server.ids(),
                                          token=self._token(), command=command,
                                          command_id=self._command_id(command, cg),
                                          options=options, attachments=attachments,
                                          command_guild_id=cg)

    def click(self, custom_id: str, invoker: Mapping[str, Any], *,
              message: Mapping[str, Any], **ctx: Any) -> dict[str, Any]:
        """A button press on ``message`` (a message payload as the fake stored it)."""
        return payloads.component_interaction(self.context(invoker, **ctx), iid=self.server.ids(),
                                       token=self._token(), custom_id=custom_id,
                                       message_payload=message)


@contextlib.asynccontextmanager
async def running_bot(bot: commands.Bot | discord.Client, *, config: ServerConfig | None = None,
                      sync_guilds: Sequence[int | str] = (), **world_kw: Any
                      ) -> AsyncIterator[tuple[DiscordHarness, World]]:
    """Start a fake server with :func:`build_world` (``world_kw`` go there), run
    ``bot`` against it, yield ``(harness, world)``, and tear both down."""
    async with FakeDiscord(config=config) as server:
        world = build_world(server, **world_kw)
        async with DiscordHarness(bot, server, sync_guilds=sync_guilds) as h:
            yield h, world
