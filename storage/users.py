"""Users (one row per platform account) and complete deletion of a user's data.

Conventions: a user is identified by ``(platform, platform_user_id)``, both
strings (e.g. ``("telegram", "123456")``). ``consent_at`` is the UNIX time the
person agreed to processing of their selfie; ``None`` means no consent yet.

``delete_user`` removes every row that belongs to the user (selfies, packs and
their stickers, jobs, owned cache artifacts) and every blob that only those
rows referenced. Blobs also referenced by someone else (another user's
identical upload, a style exemplar, a shared cache artifact) survive. Styles
the user added to a community survive with ``added_by`` cleared.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from emoji3d.errors import UserFacingError
from storage.blobs import BlobStore, release_holder
from storage.db import Database


class UserNotFound(UserFacingError):
    """No stored data for this account."""

    key = "user_not_found"


@dataclass(frozen=True)
class User:
    id: int
    platform: str
    platform_user_id: str
    consent_at: float | None
    created_at: float


@dataclass(frozen=True)
class DeletionSummary:
    user_id: int
    selfies: int
    packs: int
    stickers: int
    jobs: int
    artifacts: int
    blobs_removed: int
    bytes_freed: int
    blobs_kept_shared: int  # blobs the user referenced that someone else still uses


def _row(r: sa.Row) -> User:
    m = r._mapping
    return User(int(m["id"]), m["platform"], m["platform_user_id"],
                None if m["consent_at"] is None else float(m["consent_at"]), float(m["created_at"]))


def _check_platform(platform: str, platform_user_id: str) -> None:
    if not platform or not isinstance(platform, str):
        raise ValueError(f"platform must be a non-empty string, got {platform!r}")
    if not platform_user_id or not isinstance(platform_user_id, str):
        raise ValueError(f"platform_user_id must be a non-empty string, got {platform_user_id!r}")


def get_or_create_user(db: Database, platform: str, platform_user_id: str) -> User:
    _check_platform(platform, platform_user_id)
    with db.write() as conn:
        conn.execute(sa.text(
            "INSERT INTO users (platform, platform_user_id, created_at) VALUES (:p, :u, :t) "
            "ON CONFLICT (platform, platform_user_id) DO NOTHING"),
            {"p": platform, "u": platform_user_id, "t": time.time()})
        return _row(conn.execute(sa.text("SELECT * FROM users WHERE platform = :p AND platform_user_id = :u"),
                                 {"p": platform, "u": platform_user_id}).one())


def find_user(db: Database, platform: str, platform_user_id: str) -> User | None:
    with db.read() as conn:
        r = conn.execute(sa.text("SELECT * FROM users WHERE platform = :p AND platform_user_id = :u"),
                         {"p": platform, "u": platform_user_id}).first()
    return None if r is None else _row(r)


def get_user(db: Database, user_id: int) -> User:
    with db.read() as conn:
        r = conn.execute(sa.text("SELECT * FROM users WHERE id = :id"), {"id": user_id}).first()
    if r is None:
        raise UserNotFound(f"user {user_id} does not exist", user_id=user_id)
    return _row(r)


def record_consent(db: Database, user_id: int, *, at: float | None = None) -> None:
    with db.write() as conn:
        res = conn.execute(sa.text("UPDATE users SET consent_at = :t WHERE id = :id"),
                           {"t": time.time() if at is None else at, "id": user_id})
        if res.rowcount != 1:
            raise UserNotFound(f"user {user_id} does not exist", user_id=user_id)


def delete_user(db: Database, blobs: BlobStore, user_id: int) -> DeletionSummary:
    """Delete the user, all their rows, and every blob only they used."""
    held: set[str] = set()
    with db.write() as conn:
        if conn.execute(sa.text("SELECT 1 FROM users WHERE id = :id"), {"id": user_id}).first() is None:
            raise UserNotFound(f"user {user_id} does not exist", user_id=user_id)

        def ids(sql: str) -> list[int]:
            return [int(x) for x in conn.execute(sa.text(sql), {"u": user_id}).scalars()]

        selfie_ids = ids("SELECT id FROM selfies WHERE user_id = :u")
        pack_ids = ids("SELECT id FROM packs WHERE user_id = :u")
        sticker_ids = ids("SELECT s.id FROM stickers s JOIN packs p ON p.id = s.pack_id WHERE p.user_id = :u")
        emoji_ids = ids("SELECT e.id FROM custom_emoji e JOIN packs p ON p.id = e.pack_id WHERE p.user_id = :u")
        job_ids = ids("SELECT id FROM jobs WHERE user_id = :u")
        artifact_ids = ids("SELECT id FROM artifacts WHERE owner_user_id = :u")
        for table, id_list in (("selfie", selfie_ids), ("pack", pack_ids), ("sticker", sticker_ids),
                               ("custom_emoji", emoji_ids), ("job", job_ids), ("artifact", artifact_ids)):
            for i in id_list:
                held.update(release_holder(conn, f"{table}:{i}"))
        # Children first, so the same statements work with or without FK cascades.
        conn.execute(sa.text("DELETE FROM stickers WHERE pack_id IN (SELECT id FROM packs WHERE user_id = :u)"),
                     {"u": user_id})
        for table in ("custom_emoji", "custom_emoji_sets"):
            conn.execute(sa.text(f"DELETE FROM {table} WHERE pack_id IN (SELECT id FROM packs WHERE user_id = :u)"),
                         {"u": user_id})
        conn.execute(sa.text("DELETE FROM packs WHERE user_id = :u"), {"u": user_id})
        conn.execute(sa.text("DELETE FROM selfies WHERE user_id = :u"), {"u": user_id})
        conn.execute(sa.text("UPDATE packs SET job_id = NULL WHERE job_id IN (SELECT id FROM jobs WHERE user_id = :u)"),
                     {"u": user_id})
        conn.execute(sa.text("DELETE FROM delivery_refs WHERE user_id = :u "
                             "OR job_id IN (SELECT id FROM jobs WHERE user_id = :u)"), {"u": user_id})
        conn.execute(sa.text("DELETE FROM jobs WHERE user_id = :u"), {"u": user_id})
        conn.execute(sa.text("DELETE FROM artifacts WHERE owner_user_id = :u"), {"u": user_id})
        conn.execute(sa.text("UPDATE styles SET added_by = NULL WHERE added_by = :u"), {"u": user_id})
        conn.execute(sa.text("DELETE FROM users WHERE id = :u"), {"u": user_id})
    removed, freed = blobs.delete_unreferenced(held)
    return DeletionSummary(user_id=user_id, selfies=len(selfie_ids), packs=len(pack_ids),
                           stickers=len(sticker_ids), jobs=len(job_ids), artifacts=len(artifact_ids),
                           blobs_removed=removed, bytes_freed=freed, blobs_kept_shared=len(held) - removed)
