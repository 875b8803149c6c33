"""Sticker packs and their stickers: the one owner of a pack's life cycle.

Life cycle (``packs.status``); only the functions below write it::

    order_pack ──> pending ──mark_rendering──> rendering ──mark_ready──> ready
                     │  ▲                          │                      │ mark_uploading
       mark_superseded  │ reopen (a new order       │ mark_failed          ▼
                     ▼  │ for a made pack)          ▼                  uploading ──mark_published──> published
                superseded                       failed

    a made pack ──mark_rerendered──> ready   (a re-render from its stored avatar succeeded)
    a made pack ──mark_made─────────> ready   (a remake of it succeeded: a retry, a regeneration)

* ``pending``: ordered, its ``make_pack`` job waits in the queue.
* ``rendering``: an engine runs the job of a pack that is not made yet.
* ``ready``: the engine stored the files; no platform has them yet.
* ``uploading`` / ``published``: a bot is publishing / has published the set.
* ``failed``: the job failed or was cancelled before the pack was made.
* ``superseded``: an identical order won a race; this row was never used.
* A re-render (``rerender_pack``) leaves the pack alone while it runs and when it fails: the
  published set stays as it is. Only its success moves the pack, in one step
  (:func:`mark_rerendered`: new job, new strength, ``ready`` to publish again). The pack's
  sticker selection is its current job's result (the names of ``PackResult.stickers``).
* A remake of a made pack (a user's retry with another seed, a new order for a published set, the
  scheduled regeneration) does the same: :func:`order_pack` neither reopens the pack nor points it at
  the remake's job, the engine leaves its status alone while it runs, and a failure leaves the pack
  made with its previous job and stickers (the published set keeps working). Only the remake's
  success moves it, in one step (:func:`mark_made`: the pack now shows the remake's job, ``ready``),
  unless the pack shows a later order's result already: the newest order wins whatever the order
  in which they finish (a bot tells the user of the older one that it was not published).

A transition names the statuses it may start from and is one conditional
``UPDATE``, so two processes cannot move a pack along two paths at once; it
returns False when the pack was in another state (and raises
:class:`PackNotFound` when the pack is gone, e.g. its user was deleted).

Other conventions
-----------------
* A pack belongs to one user, was made with one style at ``style_version``,
  a style ``strength`` in [0, 1] and an ``engine_version`` string of dotted
  integers (``"0.1.0"``; a ``+local`` suffix is ignored when comparing).
* Sticker ``idx`` is the 0-based position in the pack; ``kind`` is the file
  kind (``static`` PNG/WebP, ``animated`` TGS/WebP, ``video`` WebM).
  The sticker file blob is referenced by holder ``sticker:<id>``.
* ``platform_state`` makes uploads crash-safe: ``local`` (rendered only) →
  ``uploaded`` (``platform_file_id`` known) → ``added`` (in the platform's set).
  An upload resumes from the first sticker that is not ``added``.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass

import sqlalchemy as sa

from emoji3d.orders import ENGINE_VERSION, JOB_KIND, REGENERATE_KIND, RERENDER_KIND, PackOrder, PackResult
from storage import jobs
from storage.blobs import BlobStore, add_ref, release_holder
from storage.db import Database

PENDING, RENDERING, READY, UPLOADING, PUBLISHED, FAILED, SUPERSEDED = (
    "pending", "rendering", "ready", "uploading", "published", "failed", "superseded")
PACK_STATUSES = (PENDING, RENDERING, READY, UPLOADING, PUBLISHED, FAILED, SUPERSEDED)
MADE = (READY, UPLOADING, PUBLISHED)                   # the engine has made the files
UNDELIVERED = (PENDING, RENDERING, READY, UPLOADING)   # a bot still has to tell the user / publish
STICKER_KINDS = ("static", "animated", "video")
PLATFORM_STATES = ("local", "uploaded", "added")
_VERSION = re.compile(r"^\d+(\.\d+)*$")


class PackNotFound(KeyError):
    pass


@dataclass(frozen=True)
class Pack:
    id: int
    user_id: int
    style_id: int | None
    style_version: int | None
    strength: float
    engine_version: str
    status: str
    platform: str | None
    platform_set_name: str | None
    job_id: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Sticker:
    id: int
    pack_id: int
    idx: int
    emoji: str
    kind: str
    blob_digest: str
    platform_state: str
    platform_file_id: str | None


def version_key(version: str) -> tuple[int, ...]:
    """Comparable key of a dotted-integer version; raises ValueError otherwise."""
    core = version.split("+", 1)[0].strip()
    if not _VERSION.match(core):
        raise ValueError(f"engine version {version!r} is not dotted integers like '0.1.0'")
    parts = [int(p) for p in core.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _sql_list(statuses: tuple[str, ...]) -> str:
    """Status constants (never user input) as an SQL list body."""
    return ", ".join(f"'{s}'" for s in statuses)


def _opt_int(v: object) -> int | None:
    return None if v is None else int(v)  # type: ignore[arg-type]


def _pack(r: sa.Row) -> Pack:
    m = r._mapping
    return Pack(int(m["id"]), int(m["user_id"]), _opt_int(m["style_id"]), _opt_int(m["style_version"]),
                float(m["strength"]), m["engine_version"], m["status"], m["platform"], m["platform_set_name"],
                _opt_int(m["job_id"]), float(m["created_at"]), float(m["updated_at"]))


def _sticker(r: sa.Row) -> Sticker:
    m = r._mapping
    return Sticker(int(m["id"]), int(m["pack_id"]), int(m["idx"]), m["emoji"], m["kind"], m["blob_digest"],
                   m["platform_state"], m["platform_file_id"])


def create_pack(db: Database, user_id: int, style_id: int | None, style_version: int | None, strength: float,
                engine_version: str, *, platform: str | None = None, job_id: int | None = None) -> Pack:
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    version_key(engine_version)
    t = time.time()
    with db.write() as conn:
        pid = int(conn.execute(sa.text(
            "INSERT INTO packs (user_id, style_id, style_version, strength, engine_version, status, platform, "
            "job_id, created_at, updated_at) VALUES (:u, :s, :sv, :st, :ev, 'pending', :pl, :j, :t, :t) RETURNING id"),
            {"u": user_id, "s": style_id, "sv": style_version, "st": float(strength), "ev": engine_version,
             "pl": platform, "j": job_id, "t": t}).scalar_one())
        return _pack(conn.execute(sa.text("SELECT * FROM packs WHERE id = :id"), {"id": pid}).one())


def get_pack(db: Database, pack_id: int) -> Pack:
    with db.read() as conn:
        r = conn.execute(sa.text("SELECT * FROM packs WHERE id = :id"), {"id": pack_id}).first()
    if r is None:
        raise PackNotFound(pack_id)
    return _pack(r)


def list_packs(db: Database, user_id: int) -> list[Pack]:
    with db.read() as conn:
        return [_pack(r) for r in conn.execute(sa.text("SELECT * FROM packs WHERE user_id = :u ORDER BY id"),
                                               {"u": user_id})]


def _transition(db: Database, pack_id: int, to: str, allowed_from: tuple[str, ...], *, newest_job: bool = False,
                showing: int | None = None, **columns) -> bool:
    """Move a pack to ``to`` if its status is in ``allowed_from`` (one conditional UPDATE);
    ``newest_job``: and the pack does not show a job newer than ``columns["job_id"]``; ``showing``: and
    the pack shows that job's result."""
    sets, params = ["status = :to", "updated_at = :t"], {"to": to, "t": time.time(), "id": pack_id}
    for col, val in columns.items():
        sets.append(f"{col} = :{col}")
        params[col] = val
    where = f"id = :id AND status IN ({_sql_list(allowed_from)})"
    if newest_job:  # job ids grow with each order: a later order's result is never replaced by an earlier one's
        where += " AND (job_id IS NULL OR job_id <= :job_id)"
    if showing is not None:
        where += " AND job_id = :showing"
        params["showing"] = int(showing)
    with db.write() as conn:
        moved = conn.execute(sa.text(f"UPDATE packs SET {', '.join(sets)} WHERE {where}"), params).rowcount == 1
        if not moved and conn.execute(sa.text("SELECT 1 FROM packs WHERE id = :id"), {"id": pack_id}).first() is None:
            raise PackNotFound(pack_id)
    return moved


def mark_rendering(db: Database, pack_id: int) -> bool:
    """An engine started (or retried) the job of a pack that is not made yet. False for a made pack: a
    remake leaves it as it is until it succeeds (:func:`mark_made`)."""
    return _transition(db, pack_id, RENDERING, (PENDING, RENDERING, FAILED))


def mark_ready(db: Database, pack_id: int) -> bool:
    """The engine stored every file of the pack."""
    return _transition(db, pack_id, READY, (PENDING, RENDERING))


def mark_made(db: Database, pack_id: int, job_id: int, strength: float | None = None) -> bool:
    """The engine stored every file of job ``job_id``'s result for the pack: a first make
    (pending/rendering → ready) or a remake of a made pack (→ ready, now showing ``job_id``'s result
    at ``strength``; None: the pack's own), in one step. False when the pack was in another state
    (failed or cancelled meanwhile) or shows a later order's result already (two remakes at once,
    e.g. a user's retry and a scheduled regeneration, finished in the other order)."""
    columns: dict[str, object] = {"job_id": int(job_id)}
    if strength is not None:
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        columns["strength"] = float(strength)
    return _transition(db, pack_id, READY, (PENDING, RENDERING) + MADE, newest_job=True, **columns)


def mark_failed(db: Database, pack_id: int) -> bool:
    """The pack's job failed or was cancelled before the pack was made (no-op once made)."""
    return _transition(db, pack_id, FAILED, (PENDING, RENDERING))


def mark_uploading(db: Database, pack_id: int, set_name: str) -> bool:
    """A bot starts publishing the made pack as the platform set ``set_name``."""
    return _transition(db, pack_id, UPLOADING, MADE, platform_set_name=set_name)


def mark_published(db: Database, pack_id: int, job_id: int | None = None) -> bool:
    """A bot published the made pack. With ``job_id`` (the job whose result it published): only if the
    pack still shows that job's result. False otherwise: a newer result arrived while the older one was
    uploading (:func:`mark_made` moved the pack back to ``ready``), and the pack stays ready so that a
    bot publishes the newer one, instead of being marked published with the older stickers."""
    return _transition(db, pack_id, PUBLISHED, MADE, showing=job_id)


def mark_rerendered(db: Database, pack_id: int, job_id: int, strength: float) -> bool:
    """A re-render of the made pack succeeded: the pack now shows ``job_id``'s result at ``strength``
    and is ``ready`` for a bot to publish again. False (nothing changed) when the pack is not made,
    or shows a later order's result already (see :func:`mark_made`)."""
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return _transition(db, pack_id, READY, MADE, newest_job=True, job_id=int(job_id), strength=float(strength))


def reopen(db: Database, pack_id: int) -> bool:
    """A new attempt at an order whose job failed or was cancelled: the unmade pack is pending again.
    A made pack is not reopened (a remake leaves it as it is until :func:`mark_made`)."""
    return _transition(db, pack_id, PENDING, (PENDING, FAILED))


def set_job(db: Database, pack_id: int, job_id: int) -> None:
    """Point the pack at the job that makes it (not a status change)."""
    with db.write() as conn:
        if conn.execute(sa.text("UPDATE packs SET job_id = :j, updated_at = :t WHERE id = :id"),
                        {"j": job_id, "t": time.time(), "id": pack_id}).rowcount != 1:
            raise PackNotFound(pack_id)


def order_pack(db: Database, order: PackOrder, *, priority: str = "interactive",
               waits_for: int | None = None) -> tuple[Pack, int]:
    """Create the pack row (unless the order names one) and enqueue its ``make_pack`` job
    (``waits_for``: a job it is not claimed before, see :mod:`storage.jobs`).

    Placing the same order twice returns the first order's pack and job (the
    job key is :meth:`PackOrder.idempotency_key`), unless that job failed or
    was cancelled: then the order starts a new attempt on the same pack.
    An order naming a made pack remakes it: the pack keeps its status and job
    until the remake succeeds (see the module docstring).
    """
    key = order.idempotency_key()
    existing = jobs.find_by_key(db, key)
    if existing is not None and existing.status not in jobs.UNSUCCESSFUL:
        return get_pack(db, existing.payload["pack_id"]), existing.id
    if existing is not None and order.pack_id is None:
        # A new attempt at an order that failed or was cancelled: the same pack row, pending again.
        try:
            if reopen(db, int(existing.payload["pack_id"])):
                order = dataclasses.replace(order, pack_id=int(existing.payload["pack_id"]))
        except PackNotFound:
            pass  # deleted meanwhile: a new pack below
    if order.pack_id is None:
        pack = create_pack(db, order.user_id, order.style_id, order.style_version, order.strength,
                           ENGINE_VERSION, platform=order.platform)
        order = dataclasses.replace(order, pack_id=pack.id)
        # The pack holds its style image (a user's own upload has no other holder), so it
        # survives blob GC while the job waits and stays available for regeneration.
        with db.write() as conn:
            add_ref(conn, order.exemplar_digest, f"pack:{pack.id}")
    job_id = jobs.enqueue(db, JOB_KIND, order.to_payload(), key, priority=priority, waits_for=waits_for,
                          user_id=order.user_id)
    job = jobs.get_job(db, job_id)
    if job.payload["pack_id"] != order.pack_id:  # lost a race with an identical order
        _transition(db, order.pack_id, SUPERSEDED, (PENDING,))
    else:
        _set_job_unless_made(db, order.pack_id, job_id)
    return get_pack(db, job.payload["pack_id"]), job_id


def _set_job_unless_made(db: Database, pack_id: int, job_id: int) -> None:
    """Point an unmade pack at the job that makes it; a made pack keeps pointing at its current result."""
    with db.write() as conn:
        conn.execute(sa.text(f"UPDATE packs SET job_id = :j, updated_at = :t WHERE id = :id "
                             f"AND status NOT IN ({_sql_list(MADE)})"), {"j": job_id, "t": time.time(), "id": pack_id})


def result_of(job: jobs.Job) -> PackResult | None:
    """The finished ``make_pack`` job's result, or None while it is not done."""
    if job.status != "succeeded" or not job.result:
        return None
    return PackResult.from_dict(job.result)


def put_sticker(db: Database, pack_id: int, idx: int, emoji: str, kind: str, blob_digest: str) -> Sticker:
    """Add the sticker at ``idx`` or replace its file (platform state resets to local)."""
    if kind not in STICKER_KINDS:
        raise ValueError(f"sticker kind must be one of {STICKER_KINDS}, got {kind!r}")
    if idx < 0:
        raise ValueError(f"sticker idx must be >= 0, got {idx}")
    if not emoji:
        raise ValueError("a sticker needs at least one emoji")
    t = time.time()
    with db.write() as conn:
        old = conn.execute(sa.text("SELECT id FROM stickers WHERE pack_id = :p AND idx = :i"),
                           {"p": pack_id, "i": idx}).scalar()
        if old is not None:
            release_holder(conn, f"sticker:{int(old)}")
            conn.execute(sa.text("DELETE FROM stickers WHERE id = :id"), {"id": old})
        sid = int(conn.execute(sa.text(
            "INSERT INTO stickers (pack_id, idx, emoji, kind, blob_digest, platform_state, updated_at) "
            "VALUES (:p, :i, :e, :k, :d, 'local', :t) RETURNING id"),
            {"p": pack_id, "i": idx, "e": emoji, "k": kind, "d": blob_digest, "t": t}).scalar_one())
        add_ref(conn, blob_digest, f"sticker:{sid}", t)
    return Sticker(sid, pack_id, idx, emoji, kind, blob_digest, "local", None)


def trim_stickers(db: Database, pack_id: int, count: int) -> int:
    """Delete the pack's sticker rows from index ``count`` on (the pack now has fewer stickers); the
    next publish removes them from the platform's set. Returns how many rows were deleted."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    with db.write() as conn:
        gone = [int(r[0]) for r in conn.execute(sa.text("SELECT id FROM stickers WHERE pack_id = :p AND idx >= :n"),
                                                {"p": pack_id, "n": count})]
        for sid in gone:
            release_holder(conn, f"sticker:{sid}")
            conn.execute(sa.text("DELETE FROM stickers WHERE id = :id"), {"id": sid})
    return len(gone)


def set_sticker_platform_state(db: Database, sticker_id: int, state: str, file_id: str | None = None) -> None:
    if state not in PLATFORM_STATES:
        raise ValueError(f"platform_state must be one of {PLATFORM_STATES}, got {state!r}")
    with db.write() as conn:
        res = conn.execute(sa.text(
            "UPDATE stickers SET platform_state = :s, platform_file_id = COALESCE(:f, platform_file_id), "
            "updated_at = :t WHERE id = :id"), {"s": state, "f": file_id, "t": time.time(), "id": sticker_id})
        if res.rowcount != 1:
            raise KeyError(f"sticker {sticker_id} does not exist")


def list_stickers(db: Database, pack_id: int) -> list[Sticker]:
    with db.read() as conn:
        return [_sticker(r) for r in conn.execute(
            sa.text("SELECT * FROM stickers WHERE pack_id = :p ORDER BY idx"), {"p": pack_id})]


def packs_with_changed_style(db: Database, *, style_names: list[str] | None = None,
                             house_only: bool = True) -> list[tuple[Pack, int]]:
    """Live packs whose style has a newer version than the pack was made with,
    and whose style is ready. Returns (pack, current style version) pairs."""
    sql = ("SELECT p.*, s.version AS cur_version FROM packs p JOIN styles s ON s.id = p.style_id "
           f"WHERE p.status IN ({_sql_list(MADE)}) AND s.status = 'ready' AND p.style_version < s.version")
    params: dict[str, object] = {}
    if house_only:
        sql += " AND s.community_id IS NULL"
    if style_names is not None:
        if not style_names:
            return []
        sql += " AND s.name IN (" + ", ".join(f":n{i}" for i in range(len(style_names))) + ")"
        params.update({f"n{i}": n for i, n in enumerate(style_names)})
    with db.read() as conn:
        rows = conn.execute(sa.text(sql + " ORDER BY p.id"), params).all()
    return [(_pack(r), int(r._mapping["cur_version"])) for r in rows]


def packs_with_engine_older_than(db: Database, current_version: str) -> list[Pack]:
    """Live packs made by an engine version older than ``current_version``."""
    cur = version_key(current_version)
    with db.read() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM packs WHERE status IN ({_sql_list(MADE)}) ORDER BY id")).all()
    out = []
    for r in rows:
        p = _pack(r)
        try:
            if version_key(p.engine_version) < cur:
                out.append(p)
        except ValueError:
            continue  # unparseable historic version string: left alone rather than guessed
    return out


def undelivered_pack_ids(db: Database, platform: str) -> list[int]:
    """Ids of ``platform``'s packs a bot still has to deliver: job open or succeeded while the pack
    is undelivered, or published but remade since (its job finished after the last publish).

    One query over the index on (platform, status), so a rescan costs the same however many
    packs were delivered long ago. Callers re-check each pack on its loaded rows.
    """
    sql = ("SELECT p.id FROM packs p JOIN jobs j ON j.id = p.job_id WHERE p.platform = :p AND ("
           f" (p.status IN ({_sql_list(UNDELIVERED)}) AND (j.status NOT IN ({_sql_list(jobs.FINAL)})"
           "  OR j.status = 'succeeded')) OR (p.status = 'published' AND j.status = 'succeeded'"
           "  AND j.finished_at > p.updated_at)) ORDER BY p.id")
    with db.read() as conn:
        return [int(r[0]) for r in conn.execute(sa.text(sql), {"p": platform})]


def expire_avatars(db: Database, blobs: BlobStore, older_than_seconds: float, *, now: float | None = None) -> int:
    """Delete the avatar (latents and tuned weights, a pack job's largest per-user output) of packs
    made more than ``older_than_seconds`` ago; the stickers stay. Returns how many were deleted.
    A re-render's result names the avatar it was rendered from, so it counts from the re-render."""
    cutoff = (time.time() if now is None else now) - older_than_seconds
    return jobs.expire_result_blob(db, blobs, (JOB_KIND, REGENERATE_KIND, RERENDER_KIND), "avatar", cutoff)


def mark_regenerated(db: Database, pack_id: int, *, style_version: int | None, engine_version: str) -> None:
    """Record that a pack was remade with this style version and engine version."""
    version_key(engine_version)
    with db.write() as conn:
        res = conn.execute(sa.text(
            "UPDATE packs SET style_version = :sv, engine_version = :ev, updated_at = :t WHERE id = :id"),
            {"sv": style_version, "ev": engine_version, "t": time.time(), "id": pack_id})
        if res.rowcount != 1:
            raise PackNotFound(pack_id)
