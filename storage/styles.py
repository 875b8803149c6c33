"""Styles: house styles (global) and community-owned styles.

Conventions
-----------
* ``scope`` is ``'global'`` for house styles and ``'community:<id>'`` for a
  community's own; names are unique within a scope.
* ``version`` starts at 1 and increases by one each time the exemplar image
  changes. A pack stores the style version it was made with; a pack whose
  ``style_version`` is below its style's ``version`` is out of date (see
  :func:`storage.packs.packs_with_changed_style`).
* The exemplar blob is referenced by holder ``style:<id>``.
* ``status``: pending → tuning → ready | failed (``disabled`` hides a style).
  The stored status is what the engine last wrote; the status a style is
  *read* with also reflects its finetune job (key :func:`finetune_job_key`):
  a pending or tuning style whose job failed for good, whatever the cause (an
  exception after the last retry, a worker killed on its last attempt), reads
  as ``failed`` with the job's error key as the reason. So it is shown failed
  to admins and no longer offered, without any process having to notice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from emoji3d.errors import UserFacingError
from storage.blobs import add_ref, release_holder
from storage.db import Database

STYLE_STATUSES = ("pending", "tuning", "ready", "failed", "disabled")


class StyleNotFound(UserFacingError):
    key = "style_not_found"


class StyleNameTaken(UserFacingError):
    key = "style_name_taken"


@dataclass(frozen=True)
class Style:
    id: int
    name: str
    scope: str
    community_id: int | None
    exemplar_digest: str | None
    added_by: int | None
    status: str
    status_reason: str | None
    version: int
    updated_at: float

    @property
    def is_house(self) -> bool:
        return self.community_id is None


def finetune_job_key(style: Style) -> str:
    """The idempotency key of the job that tunes this version of the style (the SQL below agrees)."""
    return f"style_finetune:{style.id}:v{style.version}"


_SELECT = ("SELECT s.*, j.status AS finetune_status, j.error_key AS finetune_error FROM styles s "
           "LEFT JOIN jobs j ON j.idempotency_key = "
           "('style_finetune' || ':' || CAST(s.id AS TEXT) || ':' || 'v' || CAST(s.version AS TEXT))")  # ':v' would bind


def _row(r: sa.Row) -> Style:
    m = r._mapping
    status, reason = m["status"], m["status_reason"]
    if status in ("pending", "tuning") and m.get("finetune_status") == "failed":
        status, reason = "failed", m.get("finetune_error") or "internal"
    return Style(int(m["id"]), m["name"], m["scope"], None if m["community_id"] is None else int(m["community_id"]),
                 m["exemplar_digest"], None if m["added_by"] is None else int(m["added_by"]), status,
                 reason, int(m["version"]), float(m["updated_at"]))


def scope_of(community_id: int | None) -> str:
    return "global" if community_id is None else f"community:{int(community_id)}"


def add_style(db: Database, name: str, exemplar_digest: str, *, community_id: int | None = None,
              added_by: int | None = None, status: str = "pending") -> Style:
    """Create a style whose exemplar blob is already in the store."""
    if not name or not isinstance(name, str):
        raise ValueError(f"style name must be a non-empty string, got {name!r}")
    if status not in STYLE_STATUSES:
        raise ValueError(f"style status must be one of {STYLE_STATUSES}, got {status!r}")
    t = time.time()
    scope = scope_of(community_id)
    with db.write() as conn:
        row = conn.execute(sa.text(
            "INSERT INTO styles (name, scope, community_id, exemplar_digest, added_by, status, version, "
            "created_at, updated_at) VALUES (:n, :s, :c, :d, :a, :st, 1, :t, :t) "
            "ON CONFLICT (scope, name) DO NOTHING RETURNING id"),
            {"n": name, "s": scope, "c": community_id, "d": exemplar_digest, "a": added_by, "st": status,
             "t": t}).first()
        if row is None:
            raise StyleNameTaken(f"a style named {name!r} already exists in {scope}", name=name)
        sid = int(row[0])
        add_ref(conn, exemplar_digest, f"style:{sid}", t)
        return _row(conn.execute(sa.text(f"{_SELECT} WHERE s.id = :id"), {"id": sid}).one())


def get_style(db: Database, style_id: int) -> Style:
    with db.read() as conn:
        r = conn.execute(sa.text(f"{_SELECT} WHERE s.id = :id"), {"id": style_id}).first()
    if r is None:
        raise StyleNotFound(f"style {style_id} does not exist", style_id=style_id)
    return _row(r)


def find_style(db: Database, name: str, community_id: int | None = None) -> Style | None:
    with db.read() as conn:
        r = conn.execute(sa.text(f"{_SELECT} WHERE s.scope = :s AND s.name = :n"),
                         {"s": scope_of(community_id), "n": name}).first()
    return None if r is None else _row(r)


def list_styles(db: Database, *, community_id: int | None = None, include_house: bool = True) -> list[Style]:
    scopes = [scope_of(community_id)] + (["global"] if include_house and community_id is not None else [])
    with db.read() as conn:
        rows = conn.execute(sa.text(f"{_SELECT} WHERE s.scope IN (" +
                                    ", ".join(f":s{i}" for i in range(len(scopes))) + ") ORDER BY s.name"),
                            {f"s{i}": s for i, s in enumerate(scopes)}).all()
    return [_row(r) for r in rows]


def set_exemplar(db: Database, style_id: int, exemplar_digest: str) -> Style:
    """Replace the exemplar; bumps ``version`` and resets status to pending
    when the digest differs. The old exemplar's reference is released."""
    t = time.time()
    with db.write() as conn:
        r = conn.execute(sa.text("SELECT * FROM styles WHERE id = :id"), {"id": style_id}).first()
        if r is None:
            raise StyleNotFound(f"style {style_id} does not exist", style_id=style_id)
        if r._mapping["exemplar_digest"] != exemplar_digest:
            release_holder(conn, f"style:{style_id}")
            add_ref(conn, exemplar_digest, f"style:{style_id}", t)
            conn.execute(sa.text(
                "UPDATE styles SET exemplar_digest = :d, version = version + 1, status = 'pending', "
                "status_reason = NULL, updated_at = :t WHERE id = :id"), {"d": exemplar_digest, "t": t, "id": style_id})
        return _row(conn.execute(sa.text(f"{_SELECT} WHERE s.id = :id"), {"id": style_id}).one())


def set_status(db: Database, style_id: int, status: str, reason: str | None = None) -> None:
    if status not in STYLE_STATUSES:
        raise ValueError(f"style status must be one of {STYLE_STATUSES}, got {status!r}")
    with db.write() as conn:
        res = conn.execute(sa.text("UPDATE styles SET status = :s, status_reason = :r, updated_at = :t WHERE id = :id"),
                           {"s": status, "r": reason, "t": time.time(), "id": style_id})
        if res.rowcount != 1:
            raise StyleNotFound(f"style {style_id} does not exist", style_id=style_id)
