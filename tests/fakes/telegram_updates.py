"""Factories for Telegram Bot API JSON payloads (Update, Message, PhotoSize, ...).

Conventions
-----------
* Every factory returns a plain ``dict`` shaped exactly like the JSON the Bot API
  sends (snake_case keys, ``from`` not ``from_user``, Unix-second ``date``), so the
  result can be pushed into :class:`tests.fakes.telegram_api.FakeTelegramServer`
  (``server.push_update(update)``) or parsed with ``telegram.Update.de_json``.
* Optional keys are omitted rather than set to ``None``, as the real API does.
* Factories are pure: ids and dates are arguments. ``update_id`` may be left out;
  the fake server assigns increasing ids when an update is pushed.
* Users and chats are dicts built by :func:`user` / :func:`private_chat` /
  :func:`group_chat`; private chat ids equal the user id, group ids are negative
  (supergroups start with -100), as on Telegram.
* Command messages carry a ``bot_command`` entity at offset 0, which is what
  python-telegram-bot's ``CommandHandler`` looks for.
"""
from __future__ import annotations

from typing import Any

JSON = dict[str, Any]

#: status -> extra required fields for ChatMember objects (Bot API "ChatMember*").
_ADMIN_RIGHTS = (
    "can_manage_chat",
    "can_delete_messages",
    "can_manage_video_chats",
    "can_restrict_members",
    "can_promote_members",
    "can_change_info",
    "can_invite_users",
    "can_post_stories",
    "can_edit_stories",
    "can_delete_stories",
)
_RESTRICTED_FLAGS = (
    "can_change_info",
    "can_invite_users",
    "can_pin_messages",
    "can_send_messages",
    "can_send_polls",
    "can_send_other_messages",
    "can_add_web_page_previews",
    "can_manage_topics",
    "can_send_audios",
    "can_send_documents",
    "can_send_photos",
    "can_send_videos",
    "can_send_video_notes",
    "can_send_voice_notes",
    "can_edit_tag",
    "can_react_to_messages",
)
CHAT_MEMBER_STATUSES = ("creator", "administrator", "member", "restricted", "left", "kicked")


def user(user_id: int, first_name: str = "Test", *, username: str | None = None,
         is_bot: bool = False, language_code: str | None = "en",
         last_name: str | None = None) -> JSON:
    """A ``User`` object."""
    if not isinstance(user_id, int) or user_id <= 0:
        raise ValueError(f"user_id must be a positive int, got {user_id!r}")
    out: JSON = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
    if last_name is not None:
        out["last_name"] = last_name
    if username is not None:
        out["username"] = username
    if language_code is not None and not is_bot:
        out["language_code"] = language_code
    return out


def private_chat(u: JSON) -> JSON:
    """The private ``Chat`` between the bot and user ``u`` (chat id == user id)."""
    out: JSON = {"id": u["id"], "type": "private", "first_name": u["first_name"]}
    for key in ("last_name", "username"):
        if key in u:
            out[key] = u[key]
    return out


def group_chat(chat_id: int, title: str = "Test group", *, supergroup: bool = True) -> JSON:
    """A group or supergroup ``Chat``; ``chat_id`` must be negative."""
    if not isinstance(chat_id, int) or chat_id >= 0:
        raise ValueError(f"group chat ids are negative ints, got {chat_id!r}")
    return {"id": chat_id, "type": "supergroup" if supergroup else "group", "title": title}


def photo_size(file_id: str, file_unique_id: str, width: int, height: int,
               file_size: int | None = None) -> JSON:
    """A ``PhotoSize`` object."""
    if width <= 0 or height <= 0:
        raise ValueError(f"photo size must be positive, got {width}x{height}")
    out: JSON = {"file_id": file_id, "file_unique_id": file_unique_id,
                 "width": width, "height": height}
    if file_size is not None:
        out["file_size"] = file_size
    return out


def document(file_id: str, file_unique_id: str, *, file_name: str | None = None,
             mime_type: str | None = None, file_size: int | None = None) -> JSON:
    """A ``Document`` object."""
    out: JSON = {"file_id": file_id, "file_unique_id": file_unique_id}
    if file_name is not None:
        out["file_name"] = file_name
    if mime_type is not None:
        out["mime_type"] = mime_type
    if file_size is not None:
        out["file_size"] = file_size
    return out


def message(message_id: int, chat: JSON, from_user: JSON | None, *, date: int,
            text: str | None = None, caption: str | None = None,
            photo: list[JSON] | None = None, doc: JSON | None = None,
            reply_to: JSON | None = None, entities: list[JSON] | None = None,
            reply_markup: JSON | None = None) -> JSON:
    """A ``Message``. ``photo`` is the list of sizes, smallest first (as Telegram sends)."""
    out: JSON = {"message_id": message_id, "date": date, "chat": chat}
    if from_user is not None:
        out["from"] = from_user
    if text is not None:
        out["text"] = text
    if entities:
        out["entities"] = entities
    if caption is not None:
        out["caption"] = caption
    if photo is not None:
        if not photo:
            raise ValueError("photo must hold at least one PhotoSize")
        out["photo"] = photo
    if doc is not None:
        out["document"] = doc
    if reply_to is not None:
        out["reply_to_message"] = reply_to
    if reply_markup is not None:
        out["reply_markup"] = reply_markup
    return out


def command_message(message_id: int, chat: JSON, from_user: JSON, command: str, *,
                    date: int, args: str = "", bot_username: str | None = None,
                    reply_to: JSON | None = None) -> JSON:
    """A ``/command [args]`` message with its ``bot_command`` entity.

    ``bot_username`` appends ``@name`` to the command (how commands look in groups).
    """
    if not command or command.startswith("/"):
        raise ValueError(f"pass the command without '/', got {command!r}")
    head = f"/{command}" + (f"@{bot_username}" if bot_username else "")
    text = head + (f" {args}" if args else "")
    entity = {"type": "bot_command", "offset": 0, "length": len(head.encode("utf-16-le")) // 2}
    return message(message_id, chat, from_user, date=date, text=text, entities=[entity],
                   reply_to=reply_to)


def update(payload_type: str, payload: JSON, *, update_id: int | None = None) -> JSON:
    """Wrap ``payload`` in an ``Update`` under key ``payload_type`` (e.g. "message")."""
    out: JSON = {payload_type: payload}
    if update_id is not None:
        out["update_id"] = update_id
    return out


def message_update(msg: JSON, *, update_id: int | None = None) -> JSON:
    return update("message", msg, update_id=update_id)


def callback_query(query_id: str, from_user: JSON, data: str, *, msg: JSON | None = None,
                   chat_instance: str = "1") -> JSON:
    """A ``CallbackQuery`` pressed on ``msg`` (an inline keyboard message)."""
    if len(data.encode()) > 64:
        raise ValueError("callback_data is limited to 64 bytes by Telegram")
    out: JSON = {"id": query_id, "from": from_user, "chat_instance": chat_instance,
                 "data": data}
    if msg is not None:
        out["message"] = msg
    return out


def callback_update(query: JSON, *, update_id: int | None = None) -> JSON:
    return update("callback_query", query, update_id=update_id)


def chat_member(u: JSON, status: str, *, until_date: int = 0) -> JSON:
    """A ``ChatMember`` of the given status with all fields the Bot API marks required.

    Administrators get every right set to True except ``can_be_edited`` and
    ``is_anonymous``; restricted members get every permission False.
    """
    if status not in CHAT_MEMBER_STATUSES:
        raise ValueError(f"status must be one of {CHAT_MEMBER_STATUSES}, got {status!r}")
    out: JSON = {"status": status, "user": u}
    if status == "creator":
        out["is_anonymous"] = False
    elif status == "administrator":
        out.update({"can_be_edited": False, "is_anonymous": False})
        out.update({k: True for k in _ADMIN_RIGHTS})
    elif status == "restricted":
        out.update({k: False for k in _RESTRICTED_FLAGS})
        out.update({"is_member": True, "until_date": until_date})
    elif status == "kicked":
        out["until_date"] = until_date
    return out


def chat_member_updated(chat: JSON, from_user: JSON, old: JSON, new: JSON, *,
                        date: int) -> JSON:
    """A ``ChatMemberUpdated`` (payload of ``chat_member`` / ``my_chat_member`` updates)."""
    return {"chat": chat, "from": from_user, "date": date,
            "old_chat_member": old, "new_chat_member": new}
