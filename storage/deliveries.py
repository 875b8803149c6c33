"""Delivery references: where a bot talks to a user about one job.

A row (table ``delivery_refs``, migration 0002) lets a restarted bot resume
editing the same progress message instead of starting a new conversation:

* ``chat_id`` / ``message_id``: the progress message (Telegram: chat id and
  message id; Discord: the command's channel id and ``"@original"``);
* ``guild_id``: the Discord guild the command was used in ("Add to server");
* ``application_id`` / ``token`` / ``started_at``: a Discord interaction
  webhook. ``token`` is a short-lived secret: it is never part of a ``repr``
  or a log line, and :func:`forget_token` clears it once it expired;
* ``fallback_chat_id`` / ``fallback_message_id``: the message used after the
  token window (a DM or a channel message), edited in place.

Conventions: all platform ids are strings (``str(int_id)``); times are UNIX
epoch seconds. One row per job (``job_id`` is the key); ``user_id`` is taken
from the job row. Rows are deleted when the job was finished and delivered
(:func:`delete_delivery`), with their job (foreign-key cascade) and by
:func:`storage.users.delete_user`.

Claims (table ``delivery_claims``, migration 0004) let several bot processes
share one database without telling a user anything twice: a process
:func:`claim_delivery` s a job before it sends anything about it and renews the
claim while it works; the claim lapses at ``expires_at`` so another process
takes over when the holder died; :func:`finish_delivery` marks the job's
outcome delivered for good (no process sends it again) and
:func:`reopen_delivery` undoes that when a user asks for it again. Each is one
conditional statement in one write transaction, portable to SQLite and
PostgreSQL, so two processes cannot both hold a live claim.

Owner names (table ``pack_owner_names``): the display name the member had when
ordering, for naming the pack's stickers later (:func:`record_owner_name`,
:func:`owner_name`); deleted with the pack.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from storage.db import Database

FIELDS = ("chat_id", "message_id", "guild_id", "application_id", "token", "started_at",
          "fallback_chat_id", "fallback_message_id")
_STR_FIELDS = frozenset(FIELDS) - {"started_at"}


class DeliveryJobMissing(LookupError):
    """The job a delivery reference names does not exist (deleted meanwhile)."""


@dataclass(frozen=True)
class DeliveryRef:
    job_id: int
    user_id: int | None
    platform: str
    chat_id: str | None = None
    message_id: str | None = None
    guild_id: str | None = None
    application_id: str | None = None
    token: str | None = field(default=None, repr=False)  # secret: kept out of repr and logs
    started_at: float | None = None
    fallback_chat_id: str | None = None
    fallback_message_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


def _row(r: sa.Row) -> DeliveryRef:
    m = r._mapping
    return DeliveryRef(
        job_id=int(m["job_id"]), user_id=None if m["user_id"] is None else int(m["user_id"]),
        platform=m["platform"], chat_id=m["chat_id"], message_id=m["message_id"], guild_id=m["guild_id"],
        application_id=m["application_id"], token=m["token"],
        started_at=None if m["started_at"] is None else float(m["started_at"]),
        fallback_chat_id=m["fallback_chat_id"], fallback_message_id=m["fallback_message_id"],
        created_at=float(m["created_at"]), updated_at=float(m["updated_at"]))


def _check_fields(fields: dict[str, object]) -> dict[str, object]:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown delivery field(s) {sorted(unknown)}; expected some of {FIELDS}")
    out: dict[str, object] = {}
    for k, v in fields.items():
        if v is None:
            out[k] = None
        elif k in _STR_FIELDS:
            if not isinstance(v, (str, int)) or isinstance(v, bool) or str(v) == "":
                raise ValueError(f"delivery field {k} must be a non-empty string or an int id, got {type(v).__name__}")
            out[k] = str(v)
        else:  # started_at
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"delivery field started_at must be UNIX seconds, got {type(v).__name__}")
            out[k] = float(v)
    return out


def record_delivery(db: Database, job_id: int, platform: str, **fields: object) -> DeliveryRef:
    """Create the job's reference, or update it: only the ``fields`` given are
    written (``None`` clears one), the others keep their stored value.

    Raises :class:`DeliveryJobMissing` when the job does not exist, ``ValueError``
    for an unknown field or a value of the wrong kind, or when the row exists for
    another platform.
    """
    if not platform or not isinstance(platform, str):
        raise ValueError(f"platform must be a non-empty string, got {platform!r}")
    vals = _check_fields(fields)
    now = time.time()
    with db.write() as conn:
        job = conn.execute(sa.text("SELECT user_id FROM jobs WHERE id = :j"), {"j": int(job_id)}).first()
        if job is None:
            raise DeliveryJobMissing(f"job {job_id} does not exist")
        # insert-or-keep, then update: safe when two processes record the same job at once
        conn.execute(sa.text("INSERT INTO delivery_refs (job_id, user_id, platform, created_at, updated_at) "
                             "VALUES (:j, :u, :p, :t, :t) ON CONFLICT (job_id) DO NOTHING"),
                     {"j": int(job_id), "u": job[0], "p": platform, "t": now})
        stored = conn.execute(sa.text("SELECT platform FROM delivery_refs WHERE job_id = :j"),
                              {"j": int(job_id)}).scalar_one()
        if stored != platform:
            raise ValueError(f"job {job_id} has a {stored} delivery reference, not {platform}")
        sets = ", ".join([*(f"{c} = :{c}" for c in vals), "updated_at = :updated_at"])
        conn.execute(sa.text(f"UPDATE delivery_refs SET {sets} WHERE job_id = :job_id"),
                     {"job_id": int(job_id), **vals, "updated_at": now})
        return _row(conn.execute(sa.text("SELECT * FROM delivery_refs WHERE job_id = :j"), {"j": int(job_id)}).one())


def update_delivery(db: Database, job_id: int, **fields: object) -> bool:
    """Change some fields of an existing reference; False when there is none."""
    vals = _check_fields(fields)
    if not vals:
        return get_delivery(db, job_id) is not None
    sets = ", ".join([*(f"{c} = :{c}" for c in vals), "updated_at = :updated_at"])
    with db.write() as conn:
        res = conn.execute(sa.text(f"UPDATE delivery_refs SET {sets} WHERE job_id = :job_id"),
                           {"job_id": int(job_id), **vals, "updated_at": time.time()})
        return res.rowcount == 1


def forget_token(db: Database, job_id: int) -> bool:
    """Clear a stored interaction token (expired or refused); the rest stays."""
    return update_delivery(db, job_id, token=None)


def get_delivery(db: Database, job_id: int) -> DeliveryRef | None:
    with db.read() as conn:
        r = conn.execute(sa.text("SELECT * FROM delivery_refs WHERE job_id = :j"), {"j": int(job_id)}).first()
    return None if r is None else _row(r)


def list_deliveries(db: Database, platform: str) -> list[DeliveryRef]:
    with db.read() as conn:
        rows = conn.execute(sa.text("SELECT * FROM delivery_refs WHERE platform = :p ORDER BY job_id"),
                            {"p": platform}).all()
    return [_row(r) for r in rows]


def undelivered_job_ids(db: Database, platform: str) -> list[int]:
    """Jobs a ``platform`` bot followed (they have a reference row) whose outcome was not delivered
    yet (no finished claim): open ones, and ones that ended, e.g. while every bot was down. A
    restarted bot follows them again; this is the only record of a job the pack does not point at,
    such as a remake or re-render of a made pack (``storage.packs``)."""
    with db.read() as conn:
        return [int(r[0]) for r in conn.execute(sa.text(
            "SELECT d.job_id FROM delivery_refs d WHERE d.platform = :p AND NOT EXISTS "
            "(SELECT 1 FROM delivery_claims c WHERE c.job_id = d.job_id AND c.done_at IS NOT NULL) "
            "ORDER BY d.job_id"), {"p": platform})]


def delete_delivery(db: Database, job_id: int) -> bool:
    """Remove the job's reference (its job was finished and delivered)."""
    with db.write() as conn:
        return conn.execute(sa.text("DELETE FROM delivery_refs WHERE job_id = :j"), {"j": int(job_id)}).rowcount == 1


# ----------------------------------------------------------------------------- claims

@dataclass(frozen=True)
class Claim:
    """A job's claim as stored after a :func:`claim_delivery` attempt."""

    job_id: int
    holder: str
    expires_at: float
    done_at: float | None
    held: bool  # True: the asking holder holds it now (until expires_at)

    @property
    def done(self) -> bool:
        return self.done_at is not None


def _check_holder(holder: str, ttl_s: float | None = None) -> None:
    if not holder or not isinstance(holder, str):
        raise ValueError(f"holder must be a non-empty string, got {holder!r}")
    if ttl_s is not None and not ttl_s > 0:
        raise ValueError(f"a claim's ttl must be > 0 seconds, got {ttl_s}")


def claim_delivery(db: Database, job_id: int, platform: str, holder: str, ttl_s: float, *,
                   now: float | None = None) -> Claim:
    """Take the job's claim for ``holder`` until ``now + ttl_s``, or renew it.

    It is taken when nobody claimed the job yet, when ``holder`` holds it
    already, or when the claim expired (its holder died or stalled); never
    once the outcome was delivered (:func:`finish_delivery`). Returns the
    stored claim; ``held`` says whether ``holder`` got it. Raises
    :class:`DeliveryJobMissing` when the job does not exist.
    """
    _check_holder(holder, ttl_s)
    t = time.time() if now is None else float(now)
    with db.write() as conn:
        if conn.execute(sa.text("SELECT 1 FROM jobs WHERE id = :j"), {"j": int(job_id)}).first() is None:
            raise DeliveryJobMissing(f"job {job_id} does not exist")
        conn.execute(sa.text(
            "INSERT INTO delivery_claims (job_id, platform, holder, expires_at, created_at, updated_at) "
            "VALUES (:j, :p, :h, :e, :t, :t) ON CONFLICT (job_id) DO NOTHING"),
            {"j": int(job_id), "p": platform, "h": holder, "e": t + ttl_s, "t": t})
        conn.execute(sa.text(
            "UPDATE delivery_claims SET holder = :h, expires_at = :e, updated_at = :t "
            "WHERE job_id = :j AND done_at IS NULL AND (holder = :h OR expires_at <= :t)"),
            {"j": int(job_id), "h": holder, "e": t + ttl_s, "t": t})
        m = conn.execute(sa.text("SELECT holder, expires_at, done_at FROM delivery_claims WHERE job_id = :j"),
                         {"j": int(job_id)}).one()._mapping
    done_at = None if m["done_at"] is None else float(m["done_at"])
    held = m["holder"] == holder and done_at is None and float(m["expires_at"]) > t
    return Claim(int(job_id), m["holder"], float(m["expires_at"]), done_at, held)


def finish_delivery(db: Database, job_id: int, holder: str, *, now: float | None = None) -> bool:
    """The job's outcome was delivered (or refused for good) by ``holder``:
    nobody claims it again. False when ``holder`` did not hold the claim."""
    _check_holder(holder)
    t = time.time() if now is None else float(now)
    with db.write() as conn:
        return conn.execute(sa.text(
            "UPDATE delivery_claims SET done_at = :t, updated_at = :t "
            "WHERE job_id = :j AND holder = :h AND done_at IS NULL"),
            {"j": int(job_id), "h": holder, "t": t}).rowcount == 1


def release_delivery(db: Database, job_id: int, holder: str, *, now: float | None = None) -> bool:
    """Give a held claim up now (a clean shutdown), so another process takes it at once."""
    _check_holder(holder)
    t = time.time() if now is None else float(now)
    with db.write() as conn:
        return conn.execute(sa.text(
            "UPDATE delivery_claims SET expires_at = :t, updated_at = :t "
            "WHERE job_id = :j AND holder = :h AND done_at IS NULL"),
            {"j": int(job_id), "h": holder, "t": t}).rowcount == 1


def reopen_delivery(db: Database, job_id: int) -> bool:
    """Deliver the job again (the user asked, e.g. after fixing what refused it):
    a finished claim becomes free to take. A live claim is left alone (its holder
    is delivering right now). False when there was no finished claim."""
    t = time.time()
    with db.write() as conn:
        return conn.execute(sa.text(
            "UPDATE delivery_claims SET done_at = NULL, expires_at = :t, updated_at = :t "
            "WHERE job_id = :j AND done_at IS NOT NULL"),
            {"j": int(job_id), "t": t}).rowcount == 1


def get_claim(db: Database, job_id: int) -> Claim | None:
    with db.read() as conn:
        r = conn.execute(sa.text("SELECT holder, expires_at, done_at FROM delivery_claims WHERE job_id = :j"),
                         {"j": int(job_id)}).first()
    if r is None:
        return None
    m = r._mapping
    return Claim(int(job_id), m["holder"], float(m["expires_at"]),
                 None if m["done_at"] is None else float(m["done_at"]), False)


# ----------------------------------------------------------------------------- owner names

OWNER_NAME_MAX = 100


def record_owner_name(db: Database, pack_id: int, platform: str, display_name: str) -> None:
    """Keep the name the member had when ordering ``pack_id`` (the latest order wins).
    Raises ValueError for an empty name; longer names are cut to OWNER_NAME_MAX."""
    name = (display_name or "").strip()[:OWNER_NAME_MAX]
    if not name:
        raise ValueError("display name must be non-empty")
    t = time.time()
    with db.write() as conn:
        conn.execute(sa.text(
            "INSERT INTO pack_owner_names (pack_id, platform, display_name, updated_at) VALUES (:p, :pl, :n, :t) "
            "ON CONFLICT (pack_id) DO UPDATE SET display_name = excluded.display_name, "
            "platform = excluded.platform, updated_at = excluded.updated_at"),
            {"p": int(pack_id), "pl": platform, "n": name, "t": t})


def owner_name(db: Database, pack_id: int) -> str | None:
    with db.read() as conn:
        return conn.execute(sa.text("SELECT display_name FROM pack_owner_names WHERE pack_id = :p"),
                            {"p": int(pack_id)}).scalar()
