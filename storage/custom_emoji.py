"""A pack's custom emoji set (Telegram ``sticker_type`` ``custom_emoji``): its name and its emoji rows.

Mirrors the pack's stickers (:mod:`storage.packs`) for the second set made from
the same renders. Conventions:

* ``idx`` is the position in the set, the same as the sticker it was made from.
* ``platform_state`` makes publishing crash-safe exactly like stickers':
  ``local`` → ``uploaded`` (``platform_file_id`` kept) → ``added``.
  :func:`put_emoji` with a different file resets the row to ``local``.
* The file blob is referenced by holder ``custom_emoji:<id>``; rows and refs
  go with the pack's user (:func:`storage.users.delete_user`).
* The set name is recorded (:func:`record_set_name`) before the set is
  created, so a restart after a crash finds the set it may have made.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from storage.blobs import add_ref, release_holder
from storage.db import Database
from storage.packs import PLATFORM_STATES


@dataclass(frozen=True)
class CustomEmoji:
    id: int
    pack_id: int
    idx: int
    emoji: str
    blob_digest: str
    platform_state: str
    platform_file_id: str | None

    @property
    def kind(self) -> str:
        return "video"  # custom emoji files are 100x100 WEBM videos (engine target telegram_emoji)


def _row(r: sa.Row) -> CustomEmoji:
    m = r._mapping
    return CustomEmoji(int(m["id"]), int(m["pack_id"]), int(m["idx"]), m["emoji"], m["blob_digest"],
                       m["platform_state"], m["platform_file_id"])


def put_emoji(db: Database, pack_id: int, idx: int, emoji: str, blob_digest: str) -> CustomEmoji:
    """Add the emoji at ``idx``, or replace it when its file or emoji changed (state back to ``local``);
    an unchanged row is kept as it is, so a restart never uploads it again."""
    if idx < 0:
        raise ValueError(f"custom emoji idx must be >= 0, got {idx}")
    if not emoji:
        raise ValueError("a custom emoji needs its emoji")
    t = time.time()
    with db.write() as conn:
        old = conn.execute(sa.text("SELECT * FROM custom_emoji WHERE pack_id = :p AND idx = :i"),
                           {"p": pack_id, "i": idx}).first()
        if old is not None:
            kept = _row(old)
            if kept.blob_digest == blob_digest and kept.emoji == emoji:
                return kept
            release_holder(conn, f"custom_emoji:{kept.id}")
            conn.execute(sa.text("DELETE FROM custom_emoji WHERE id = :id"), {"id": kept.id})
        eid = int(conn.execute(sa.text(
            "INSERT INTO custom_emoji (pack_id, idx, emoji, blob_digest, platform_state, updated_at) "
            "VALUES (:p, :i, :e, :d, 'local', :t) RETURNING id"),
            {"p": pack_id, "i": idx, "e": emoji, "d": blob_digest, "t": t}).scalar_one())
        add_ref(conn, blob_digest, f"custom_emoji:{eid}", t)
    return CustomEmoji(eid, pack_id, idx, emoji, blob_digest, "local", None)


def trim_emoji(db: Database, pack_id: int, count: int) -> int:
    """Delete the pack's emoji rows from index ``count`` on (a re-render with fewer stickers), as
    ``storage.packs.trim_stickers`` does for sticker rows; the next publish removes them from the set."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    with db.write() as conn:
        gone = [int(r[0]) for r in conn.execute(
            sa.text("SELECT id FROM custom_emoji WHERE pack_id = :p AND idx >= :n"), {"p": pack_id, "n": count})]
        for eid in gone:
            release_holder(conn, f"custom_emoji:{eid}")
            conn.execute(sa.text("DELETE FROM custom_emoji WHERE id = :id"), {"id": eid})
    return len(gone)


def list_emoji(db: Database, pack_id: int) -> list[CustomEmoji]:
    with db.read() as conn:
        return [_row(r) for r in conn.execute(
            sa.text("SELECT * FROM custom_emoji WHERE pack_id = :p ORDER BY idx"), {"p": pack_id})]


def set_emoji_platform_state(db: Database, emoji_id: int, state: str, file_id: str | None = None) -> None:
    if state not in PLATFORM_STATES:
        raise ValueError(f"platform_state must be one of {PLATFORM_STATES}, got {state!r}")
    with db.write() as conn:
        res = conn.execute(sa.text(
            "UPDATE custom_emoji SET platform_state = :s, platform_file_id = COALESCE(:f, platform_file_id), "
            "updated_at = :t WHERE id = :id"), {"s": state, "f": file_id, "t": time.time(), "id": emoji_id})
        if res.rowcount != 1:
            raise KeyError(f"custom emoji {emoji_id} does not exist")


def set_name(db: Database, pack_id: int) -> str | None:
    with db.read() as conn:
        return conn.execute(sa.text("SELECT set_name FROM custom_emoji_sets WHERE pack_id = :p"),
                            {"p": pack_id}).scalar()


def record_set_name(db: Database, pack_id: int, name: str) -> str:
    """Record the pack's set name unless one is recorded already; returns the recorded name."""
    t = time.time()
    with db.write() as conn:
        conn.execute(sa.text(
            "INSERT INTO custom_emoji_sets (pack_id, set_name, updated_at) VALUES (:p, :n, :t) "
            "ON CONFLICT (pack_id) DO NOTHING"), {"p": pack_id, "n": name, "t": t})
        return conn.execute(sa.text("SELECT set_name FROM custom_emoji_sets WHERE pack_id = :p"),
                            {"p": pack_id}).scalar_one()


def mark_set_published(db: Database, pack_id: int) -> None:
    t = time.time()
    with db.write() as conn:
        conn.execute(sa.text("UPDATE custom_emoji_sets SET published_at = :t, updated_at = :t WHERE pack_id = :p"),
                     {"t": t, "p": pack_id})


def set_names_of_user(db: Database, user_id: int) -> list[str]:
    """Every custom emoji set name recorded for the user's packs (whether or not the set was made)."""
    with db.read() as conn:
        return list(conn.execute(sa.text(
            "SELECT s.set_name FROM custom_emoji_sets s JOIN packs p ON p.id = s.pack_id "
            "WHERE p.user_id = :u ORDER BY s.pack_id"), {"u": user_id}).scalars())
