"""Communities: a Discord guild or a Telegram group that can own styles.

Identified by ``(platform, platform_id)`` (strings).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from storage.db import Database


@dataclass(frozen=True)
class Community:
    id: int
    platform: str
    platform_id: str
    name: str | None


def get_or_create_community(db: Database, platform: str, platform_id: str, name: str | None = None) -> Community:
    if not platform or not platform_id:
        raise ValueError(f"platform and platform_id must be non-empty, got {platform!r}, {platform_id!r}")
    with db.write() as conn:
        conn.execute(sa.text(
            "INSERT INTO communities (platform, platform_id, name, created_at) VALUES (:p, :i, :n, :t) "
            "ON CONFLICT (platform, platform_id) DO NOTHING"),
            {"p": platform, "i": platform_id, "n": name, "t": time.time()})
        if name is not None:
            conn.execute(sa.text("UPDATE communities SET name = :n WHERE platform = :p AND platform_id = :i"),
                         {"p": platform, "i": platform_id, "n": name})
        r = conn.execute(sa.text("SELECT id, platform, platform_id, name FROM communities "
                                 "WHERE platform = :p AND platform_id = :i"), {"p": platform, "i": platform_id}).one()
    return Community(int(r[0]), r[1], r[2], r[3])
