"""Factories for raw Discord API / gateway payloads (API v10), as plain dicts.

Conventions
- Every factory returns a fresh JSON-compatible ``dict`` shaped like what Discord
  sends (snowflakes as decimal strings, permissions as decimal strings,
  timestamps ISO-8601 UTC). Nothing here talks to a network or to discord.py.
- IDs come from a :class:`Snowflakes` counter passed in by the caller, so the
  same sequence of calls gives the same payloads (no hidden global state).
- Permissions are Python ``int`` bitfields built with :func:`permission_bits`;
  bit positions follow the Discord "Permissions" docs (e.g.
  ``CREATE_GUILD_EXPRESSIONS`` is ``1 << 43``, ``MANAGE_GUILD_EXPRESSIONS`` is
  ``1 << 30``).
- Interaction types: 2 application command, 3 message component,
  4 autocomplete. Option types: 1 sub-command, 2 sub-command group, 3 string,
  4 integer, 5 boolean, 6 user, 7 channel, 8 role, 10 number, 11 attachment.
- An attachment option's ``value`` is the attachment id; the attachment object
  itself lives in ``data.resolved.attachments[id]``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import struct
import zlib
from typing import Any, Iterable, Mapping, Sequence

DISCORD_EPOCH_MS = 1_420_070_400_000

# Permission bit positions (Discord docs, "Permissions" topic).
PERMISSION_BITS: dict[str, int] = {
    "CREATE_INSTANT_INVITE": 0,
    "KICK_MEMBERS": 1,
    "BAN_MEMBERS": 2,
    "ADMINISTRATOR": 3,
    "MANAGE_CHANNELS": 4,
    "MANAGE_GUILD": 5,
    "ADD_REACTIONS": 6,
    "VIEW_AUDIT_LOG": 7,
    "VIEW_CHANNEL": 10,
    "SEND_MESSAGES": 11,
    "MANAGE_MESSAGES": 13,
    "EMBED_LINKS": 14,
    "ATTACH_FILES": 15,
    "READ_MESSAGE_HISTORY": 16,
    "MENTION_EVERYONE": 17,
    "USE_EXTERNAL_EMOJIS": 18,
    "MANAGE_ROLES": 28,
    "MANAGE_WEBHOOKS": 29,
    "MANAGE_GUILD_EXPRESSIONS": 30,
    "USE_APPLICATION_COMMANDS": 31,
    "USE_EXTERNAL_STICKERS": 37,
    "SEND_MESSAGES_IN_THREADS": 38,
    "CREATE_GUILD_EXPRESSIONS": 43,
}

OPTION_TYPES: dict[str, int] = {
    "sub_command": 1,
    "sub_command_group": 2,
    "string": 3,
    "integer": 4,
    "boolean": 5,
    "user": 6,
    "channel": 7,
    "role": 8,
    "mentionable": 9,
    "number": 10,
    "attachment": 11,
}

INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_MESSAGE_COMPONENT = 3
INTERACTION_AUTOCOMPLETE = 4

CHANNEL_GUILD_TEXT = 0
CHANNEL_DM = 1

DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # bytes, non-boosted guild / DM


def permission_bits(*names: str) -> int:
    """OR of the named permission bits, e.g. ``permission_bits("SEND_MESSAGES")``."""
    value = 0
    for name in names:
        try:
            value |= 1 << PERMISSION_BITS[name]
        except KeyError:
            raise ValueError(f"unknown Discord permission name {name!r}") from None
    return value


#: What a freshly invited bot typically holds in these tests.
DEFAULT_BOT_PERMISSIONS = permission_bits(
    "VIEW_CHANNEL", "SEND_MESSAGES", "EMBED_LINKS", "ATTACH_FILES", "READ_MESSAGE_HISTORY",
    "USE_EXTERNAL_EMOJIS", "USE_APPLICATION_COMMANDS", "CREATE_GUILD_EXPRESSIONS",
    "MANAGE_GUILD_EXPRESSIONS",
)
#: An ordinary member: can talk and upload, cannot touch expressions.
DEFAULT_MEMBER_PERMISSIONS = permission_bits(
    "VIEW_CHANNEL", "SEND_MESSAGES", "EMBED_LINKS", "ATTACH_FILES", "READ_MESSAGE_HISTORY",
    "USE_APPLICATION_COMMANDS", "ADD_REACTIONS",
)


def iso(ts: _dt.datetime) -> str:
    """ISO-8601 with offset, as Discord writes timestamps."""
    if ts.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return ts.isoformat()


@dataclasses.dataclass
class Snowflakes:
    """Monotonic snowflake source: ms since ``start`` plus an increment.

    Deterministic: ``Snowflakes(start=...)`` gives the same ids each run.
    """

    start: _dt.datetime = dataclasses.field(
        default_factory=lambda: _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)
    )
    counter: int = 0

    def next(self) -> int:
        ms = int(self.start.timestamp() * 1000) - DISCORD_EPOCH_MS + self.counter
        sid = (ms << 22) | (self.counter & 0xFFF)
        self.counter += 1
        return sid

    def __call__(self) -> str:
        return str(self.next())


def snowflake_time(sid: int | str) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(
        ((int(sid) >> 22) + DISCORD_EPOCH_MS) / 1000, tz=_dt.timezone.utc
    )


# --------------------------------------------------------------------- users


def user(uid: int | str, username: str, *, bot: bool = False, global_name: str | None = None,
         avatar: str | None = None) -> dict[str, Any]:
    if not 2 <= len(username) <= 32:
        raise ValueError(f"username must be 2-32 characters, got {username!r}")
    out: dict[str, Any] = {
        "id": str(uid),
        "username": username,
        "discriminator": "0",
        "global_name": global_name,
        "avatar": avatar,
        "public_flags": 0,
        "flags": 0,
    }
    if bot:
        out["bot"] = True
    return out


def role(rid: int | str, name: str, permissions: int, *, position: int = 0,
         managed: bool = False) -> dict[str, Any]:
    return {
        "id": str(rid), "name": name, "color": 0, "colors": {"primary_color": 0},
        "hoist": False, "icon": None, "unicode_emoji": None, "position": position,
        "permissions": str(int(permissions)), "managed": managed, "mentionable": False,
        "flags": 0,
    }


def member(user_payload: Mapping[str, Any], *, roles: Sequence[int | str] = (),
           nick: str | None = None, joined_at: _dt.datetime | None = None,
           permissions: int | None = None) -> dict[str, Any]:
    """A guild member. ``permissions`` (the member's computed permissions in the
    channel) is only present on interaction payloads; pass it there."""
    joined = joined_at or _dt.datetime(2025, 6, 1, tzinfo=_dt.timezone.utc)
    out: dict[str, Any] = {
        "user": dict(user_payload),
        "nick": nick,
        "avatar": None,
        "roles": [str(r) for r in roles],
        "joined_at": iso(joined),
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "communication_disabled_until": None,
    }
    if permissions is not None:
        out["permissions"] = str(int(permissions))
    return out


# ------------------------------------------------------------------ channels


def text_channel(cid: int | str, guild_id: int | str, name: str = "general", *,
                 position: int = 0, overwrites: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    return {
        "id": str(cid), "type": CHANNEL_GUILD_TEXT, "guild_id": str(guild_id), "name": name,
        "position": position, "permission_overwrites": [dict(o) for o in overwrites],
        "topic": None, "nsfw": False, "last_message_id": None, "rate_limit_per_user": 0,
        "parent_id": None, "flags": 0,
    }


def dm_channel(cid: int | str, recipient: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": str(cid), "type": CHANNEL_DM, "last_message_id": None,
            "recipients": [dict(recipient)], "flags": 0}


def overwrite(target_id: int | str, *, kind: int, allow: int = 0, deny: int = 0) -> dict[str, Any]:
    """Channel permission overwrite; ``kind`` 0 = role, 1 = member."""
    if kind not in (0, 1):
        raise ValueError("overwrite kind must be 0 (role) or 1 (member)")
    return {"id": str(target_id), "type": kind, "allow": str(allow), "deny": str(deny)}


# -------------------------------------------------------------------- guilds


def sticker_limit(premium_tier: int, features: Iterable[str] = ()) -> int:
    """Guild sticker slots by boost tier (0: 5, 1: 15, 2: 30, 3: 60)."""
    try:
        base = {0: 5, 1: 15, 2: 30, 3: 60}[premium_tier]
    except KeyError:
        raise ValueError(f"premium_tier must be 0..3, got {premium_tier}") from None
    return max(base, 60 if "MORE_STICKERS" in set(features) else 0)


def emoji_limit(premium_tier: int, features: Iterable[str] = ()) -> int:
    """Custom emoji slots per kind (static / animated) by boost tier."""
    try:
        base = {0: 50, 1: 100, 2: 150, 3: 250}[premium_tier]
    except KeyError:
        raise ValueError(f"premium_tier must be 0..3, got {premium_tier}") from None
    return max(base, 200 if "MORE_EMOJI" in set(features) else 0)


def guild(gid: int | str, name: str, *, owner_id: int | str,
          roles: Sequence[Mapping[str, Any]], channels: Sequence[Mapping[str, Any]] = (),
          members: Sequence[Mapping[str, Any]] = (), premium_tier: int = 0,
          features: Sequence[str] = (), stickers: Sequence[Mapping[str, Any]] = (),
          emojis: Sequence[Mapping[str, Any]] = (),
          joined_at: _dt.datetime | None = None) -> dict[str, Any]:
    """A GUILD_CREATE payload. ``roles`` must include @everyone (id == guild id)."""
    sticker_limit(premium_tier, features)  # validates the tier
    if not any(str(r["id"]) == str(gid) for r in roles):
        raise ValueError("roles must contain the @everyone role whose id equals the guild id")
    joined = joined_at or _dt.datetime(2025, 6, 1, tzinfo=_dt.timezone.utc)
    return {
        "id": str(gid), "name": name, "icon": None, "splash": None, "discovery_splash": None,
        "owner_id": str(owner_id), "afk_channel_id": None, "afk_timeout": 300,
        "verification_level": 0, "default_message_notifications": 0,
        "explicit_content_filter": 0, "roles": [dict(r) for r in roles],
        "emojis": [dict(e) for e in emojis], "stickers": [dict(s) for s in stickers],
        "features": list(features), "mfa_level": 0, "application_id": None,
        "system_channel_id": None, "system_channel_flags": 0, "rules_channel_id": None,
        "vanity_url_code": None, "description": None, "banner": None,
        "premium_tier": premium_tier, "premium_subscription_count": 0,
        "preferred_locale": "en-US", "public_updates_channel_id": None,
        "nsfw_level": 0, "premium_progress_bar_enabled": False,
        "safety_alerts_channel_id": None,
        # GUILD_CREATE-only fields
        "joined_at": iso(joined), "large": False, "unavailable": False,
        "member_count": len(members), "voice_states": [],
        "members": [dict(m) for m in members], "channels": [dict(c) for c in channels],
        "threads": [], "presences": [], "stage_instances": [],
        "guild_scheduled_events": [], "soundboard_sounds": [],
    }


def guild_sticker(sid: int | str, guild_id: int | str, name: str, *, tags: str,
                  format_type: int = 2, description: str = "",
                  creator: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """format_type: 1 PNG, 2 APNG, 3 LOTTIE, 4 GIF."""
    out: dict[str, Any] = {
        "id": str(sid), "name": name, "description": description, "tags": tags,
        "type": 2, "format_type": format_type, "available": True,
        "guild_id": str(guild_id),
    }
    if creator is not None:
        out["user"] = dict(creator)
    return out


def custom_emoji(eid: int | str, name: str, *, animated: bool = False,
                 creator: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(eid), "name": name, "roles": [], "require_colons": True,
        "managed": False, "animated": animated, "available": True,
    }
    if creator is not None:
        out["user"] = dict(creator)
    return out


# -------------------------------------------------------- messages / files


def attachment(aid: int | str, filename: str, *, size: int, url: str,
               content_type: str | None = None, width: int | None = None,
               height: int | None = None, ephemeral: bool = False) -> dict[str, Any]:
    if size < 0:
        raise ValueError("attachment size must be >= 0")
    out: dict[str, Any] = {
        "id": str(aid), "filename": filename, "size": int(size), "url": url,
        "proxy_url": url, "flags": 0,
    }
    if content_type is not None:
        out["content_type"] = content_type
    if width is not None and height is not None:
        out["width"], out["height"] = int(width), int(height)
    if ephemeral:
        out["ephemeral"] = True
    return out


def button(custom_id: str, label: str, *, style: int = 1, disabled: bool = False) -> dict[str, Any]:
    """A button component (type 2); style 1 primary .. 4 danger."""
    if not 1 <= len(custom_id) <= 100:
        raise ValueError("custom_id must be 1-100 characters")
    return {"type": 2, "custom_id": custom_id, "label": label, "style": style,
            "disabled": disabled}


def action_row(*components: Mapping[str, Any]) -> dict[str, Any]:
    if not 1 <= len(components) <= 5:
        raise ValueError("an action row holds 1-5 components")
    return {"type": 1, "components": [dict(c) for c in components]}


def message(mid: int | str, channel_id: int | str, author: Mapping[str, Any], *,
            content: str = "", guild_id: int | str | None = None,
            attachments: Sequence[Mapping[str, Any]] = (),
            embeds: Sequence[Mapping[str, Any]] = (),
            components: Sequence[Mapping[str, Any]] = (), flags: int = 0,
            message_type: int = 0, webhook_id: int | str | None = None,
            application_id: int | str | None = None,
            edited: _dt.datetime | None = None,
            interaction_metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(mid), "channel_id": str(channel_id), "author": dict(author),
        "content": content, "timestamp": iso(snowflake_time(mid)),
        "edited_timestamp": iso(edited) if edited else None, "tts": False,
        "mention_everyone": False, "mentions": [], "mention_roles": [],
        "attachments": [dict(a) for a in attachments], "embeds": [dict(e) for e in embeds],
        "pinned": False, "type": message_type, "flags": flags,
        "components": [dict(c) for c in components],
    }
    if guild_id is not None:
        out["guild_id"] = str(guild_id)
    if webhook_id is not None:
        out["webhook_id"] = str(webhook_id)
    if application_id is not None:
        out["application_id"] = str(application_id)
    if interaction_metadata is not None:
        out["interaction_metadata"] = dict(interaction_metadata)
    return out


# -------------------------------------------------------------- interactions


def option(name: str, kind: str | int, value: Any = None, *, focused: bool = False,
           options: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """One interaction data option. ``kind`` is a name from OPTION_TYPES or an int."""
    t = OPTION_TYPES[kind] if isinstance(kind, str) else int(kind)
    if t not in OPTION_TYPES.values():
        raise ValueError(f"unknown option type {kind!r}")
    out: dict[str, Any] = {"name": name, "type": t}
    if t in (1, 2):
        out["options"] = [dict(o) for o in (options or [])]
    else:
        if value is None:
            raise ValueError(f"option {name!r} needs a value")
        out["value"] = str(value) if t in (6, 7, 8, 9, 11) else value
    if focused:
        out["focused"] = True
    return out


@dataclasses.dataclass(frozen=True)
class InteractionContext:
    """Where and by whom an interaction happens (guild channel or DM)."""

    application_id: str
    channel: Mapping[str, Any]
    invoker: Mapping[str, Any]              # member payload (guild) or user payload (DM)
    guild_id: str | None = None
    guild_locale: str = "en-US"
    app_permissions: int = DEFAULT_BOT_PERMISSIONS
    member_permissions: int = DEFAULT_MEMBER_PERMISSIONS
    locale: str = "en-US"
    attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT


def _base_interaction(ctx: InteractionContext, *, iid: str, token: str, kind: int,
                      data: Mapping[str, Any]) -> dict[str, Any]:
    if not token:
        raise ValueError("interaction token must be non-empty")
    channel = dict(ctx.channel)
    channel.setdefault("permissions", str(ctx.member_permissions))
    out: dict[str, Any] = {
        "id": iid, "application_id": ctx.application_id, "type": kind, "data": dict(data),
        "channel": channel, "channel_id": channel["id"], "token": token, "version": 1,
        "app_permissions": str(ctx.app_permissions), "locale": ctx.locale,
        "entitlements": [], "attachment_size_limit": ctx.attachment_size_limit,
    }
    if ctx.guild_id is not None:
        inv = dict(ctx.invoker)
        if "user" not in inv:
            raise ValueError("guild interactions need a member payload (with 'user') as invoker")
        inv["permissions"] = str(ctx.member_permissions)
        out.update(guild_id=ctx.guild_id, member=inv, guild_locale=ctx.guild_locale,
                   guild={"id": ctx.guild_id, "locale": ctx.guild_locale, "features": []},
                   authorizing_integration_owners={"0": ctx.guild_id}, context=0)
    else:
        if "user" in ctx.invoker:
            raise ValueError("DM interactions take a user payload, not a member")
        out.update(user=dict(ctx.invoker), context=1,
                   authorizing_integration_owners={"0": "0"})
    return out


def _command_data(command: str, command_id: str, options: Sequence[Mapping[str, Any]],
                  attachments: Sequence[Mapping[str, Any]], guild_id: str | None) -> dict[str, Any]:
    parts = command.split()
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"command path must be 1-3 words, got {command!r}")
    opts = [dict(o) for o in options]
    # Wrap leaf options in sub-command / group levels, innermost first.
    for depth, name in reversed(list(enumerate(parts[1:], start=1))):
        kind = 1 if depth == len(parts) - 1 else 2
        opts = [{"name": name, "type": kind, "options": opts}]
    data: dict[str, Any] = {"id": command_id, "name": parts[0], "type": 1, "options": opts}
    if guild_id is not None:
        data["guild_id"] = guild_id
    if attachments:
        data["resolved"] = {"attachments": {str(a["id"]): dict(a) for a in attachments}}
    att_ids = {str(a["id"]) for a in attachments}
    for o in options:
        if o.get("type") == 11 and str(o.get("value")) not in att_ids:
            raise ValueError(f"attachment option {o['name']!r} refers to an attachment "
                             "not listed in attachments")
    return data


def slash_interaction(ctx: InteractionContext, *, iid: str, token: str, command: str,
                      command_id: str, options: Sequence[Mapping[str, Any]] = (),
                      attachments: Sequence[Mapping[str, Any]] = (),
                      command_guild_id: str | None = None) -> dict[str, Any]:
    """INTERACTION_CREATE for a chat-input command. ``command`` is the path,
    e.g. ``"emoji create"``; ``command_guild_id`` is set for guild commands."""
    data = _command_data(command, command_id, options, attachments, command_guild_id)
    return _base_interaction(ctx, iid=iid, token=token, kind=INTERACTION_APPLICATION_COMMAND,
                             data=data)


def autocomplete_interaction(ctx: InteractionContext, *, iid: str, token: str, command: str,
                             command_id: str, options: Sequence[Mapping[str, Any]],
                             attachments: Sequence[Mapping[str, Any]] = (),
                             command_guild_id: str | None = None) -> dict[str, Any]:
    """Autocomplete (type 4): exactly one option must carry ``focused: true``;
    its value is the partial text typed so far (always a string)."""
    focused = [o for o in options if o.get("focused")]
    if len(focused) != 1:
        raise ValueError("autocomplete needs exactly one focused option")
    data = _command_data(command, command_id, options, attachments, command_guild_id)
    return _base_interaction(ctx, iid=iid, token=token, kind=INTERACTION_AUTOCOMPLETE, data=data)


def component_interaction(ctx: InteractionContext, *, iid: str, token: str, custom_id: str,
                          message_payload: Mapping[str, Any], component_type: int = 2,
                          values: Sequence[str] | None = None) -> dict[str, Any]:
    """A message-component interaction (type 3), e.g. a button click on
    ``message_payload``."""
    data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
    if values is not None:
        data["values"] = list(values)
    out = _base_interaction(ctx, iid=iid, token=token, kind=INTERACTION_MESSAGE_COMPONENT,
                            data=data)
    out["message"] = dict(message_payload)
    return out


def application(app_id: int | str, name: str, owner: Mapping[str, Any], *, flags: int = 0) -> dict[str, Any]:
    """GET /oauth2/applications/@me body."""
    return {
        "id": str(app_id), "name": name, "icon": None, "description": "", "bot_public": True,
        "bot_require_code_grant": False, "owner": dict(owner), "verify_key": "0" * 64,
        "flags": flags, "team": None, "summary": "", "tags": [], "redirect_uris": [],
        "interactions_endpoint_url": None, "approximate_guild_count": 1,
    }


def ready(bot_user: Mapping[str, Any], app: Mapping[str, Any],
          guild_ids: Sequence[int | str], *, session_id: str = "fake-session") -> dict[str, Any]:
    """READY dispatch data; guilds start unavailable and arrive by GUILD_CREATE."""
    return {
        "v": 10, "user": dict(bot_user),
        "guilds": [{"id": str(g), "unavailable": True} for g in guild_ids],
        "session_id": session_id, "resume_gateway_url": "wss://127.0.0.1/fake",
        "application": {"id": str(app["id"]), "flags": int(app.get("flags", 0))},
        "private_channels": [], "relationships": [],
    }


def compute_permissions(guild_payload: Mapping[str, Any], member_payload: Mapping[str, Any],
                        channel_payload: Mapping[str, Any] | None = None) -> int:
    """A member's permissions in a channel, per Discord's documented algorithm:
    @everyone | member roles, owner/ADMINISTRATOR -> all, then channel
    overwrites (@everyone, roles, member)."""
    all_bits = (1 << 53) - 1
    uid = str(member_payload["user"]["id"])
    if str(guild_payload.get("owner_id")) == uid:
        return all_bits
    gid = str(guild_payload["id"])
    roles = {str(r["id"]): int(r["permissions"]) for r in guild_payload["roles"]}
    member_roles = [str(r) for r in member_payload.get("roles", [])]
    unknown = [r for r in member_roles if r not in roles]
    if unknown:
        raise ValueError(f"member has roles the guild does not define: {unknown}")
    perms = roles[gid]
    for r in member_roles:
        perms |= roles[r]
    if perms & (1 << PERMISSION_BITS["ADMINISTRATOR"]):
        return all_bits
    if channel_payload is None:
        return perms
    ows = {(int(o["type"]), str(o["id"])): o for o in channel_payload.get("permission_overwrites", [])}
    if (0, gid) in ows:
        perms = (perms & ~int(ows[(0, gid)]["deny"])) | int(ows[(0, gid)]["allow"])
    allow = deny = 0
    for r in member_roles:
        if (0, r) in ows:
            allow |= int(ows[(0, r)]["allow"])
            deny |= int(ows[(0, r)]["deny"])
    perms = (perms & ~deny) | allow
    if (1, uid) in ows:
        perms = (perms & ~int(ows[(1, uid)]["deny"])) | int(ows[(1, uid)]["allow"])
    return perms


def make_png(width: int = 320, height: int = 320, *, animated: bool = False,
             rgb: tuple[int, int, int] = (128, 64, 32)) -> bytes:
    """A valid flat-colour PNG (or a one-frame APNG with ``animated``), for
    attachment and sticker uploads. Built with zlib only."""
    if not (1 <= width <= 4096 and 1 <= height <= 4096):
        raise ValueError("width and height must be 1..4096")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width                     # filter byte + RGB pixels
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if animated:
        out += chunk(b"acTL", struct.pack(">II", 1, 0))     # 1 frame, loop forever
        out += chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, width, height, 0, 0, 1, 10, 0, 0))
    return out + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")
