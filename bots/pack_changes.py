"""Changing a finished pack: another strength or sticker selection (a re-render), or another seed (a remake).

Both front ends offer these on a delivered pack and call the functions here; each
enqueues one job by kind name with the order's idempotency key, so a double click
is one job.

* A **re-render** (``rerender_pack``, :class:`emoji3d.orders.RerenderOrder`) renders
  the pack again from its stored avatar: no optimisation. The pack and its
  published set stay as they are until it succeeds (``storage.packs.mark_rerendered``);
  then the notifier publishes the new stickers into the same set (stickers the
  selection dropped are removed, new ones added).
* A **retry** (``make_pack`` with ``regenerate=True``) makes the pack again from the
  same selfie and style with another seed; the result replaces the pack's stickers as
  a regeneration does. Like a re-render, it leaves the pack and its published set as
  they are until it succeeds (``storage.packs.mark_made``); a failure is reported
  and the pack stays published with its previous stickers. The seed travels in the button, so the same button pressed
  twice is one job, and a retry of a retry uses the next seed.

Conventions
-----------
* A pack's sticker *selection* is the names of its current result's stickers (the
  pack's ``job_id``), in the order of ``[[pack.stickers]]`` in config.toml; a result
  that names none counts as all of them.
* Selections travel in buttons as a bit mask over the configured entries
  (bit ``i`` = ``cfg.pack.stickers[i]``), written in hexadecimal.
"""
from __future__ import annotations

import dataclasses

from emoji3d import orders
from emoji3d.config import Config
from emoji3d.errors import UserFacingError
from storage import jobs, packs, users
from storage import styles as st

from bots.core import BotResources, NoSelfie, Placed, check_limits, open_jobs, require_consent

SEED_MAX = 2**31 - 1  # as `emoji3d make --seed`: the order's seed seeds torch generators


class NoStickersChosen(UserFacingError):
    key = "stickers_none_chosen"


class PackNotChangeable(UserFacingError):
    """The pack is not the user's, or not finished, or its order is no longer known."""

    key = "pack_not_changeable"


# ----------------------------------------------------------------------------- the pack's current state

def _own_made_pack(res: BotResources, user: users.User, pack_id: int) -> packs.Pack:
    try:
        pack = packs.get_pack(res.db, pack_id)
    except packs.PackNotFound:
        raise PackNotChangeable(f"pack {pack_id} does not exist") from None
    if pack.user_id != user.id or pack.job_id is None or pack.status not in packs.MADE:
        raise PackNotChangeable(f"pack {pack_id} is not a finished pack of user {user.id} ({pack.status})")
    return pack


def _result(res: BotResources, pack: packs.Pack) -> orders.PackResult | None:
    try:
        return packs.result_of(jobs.get_job(res.db, pack.job_id)) if pack.job_id is not None else None
    except jobs.JobNotFound:
        return None


def sticker_names(cfg: Config) -> tuple[str, ...]:
    """The configured pack entries' names, in order."""
    return tuple(entry.name for entry in cfg.pack.stickers)


def current_selection(res: BotResources, pack: packs.Pack) -> tuple[str, ...]:
    """The names of the stickers the pack has now (see the module docstring)."""
    names = sticker_names(res.cfg)
    result = _result(res, pack)
    have = {s.name for s in result.stickers} if result is not None else set()
    chosen = tuple(n for n in names if n in have)
    return chosen or names


def selection_mask(cfg: Config, chosen: tuple[str, ...] | list[str] | set[str]) -> int:
    names = sticker_names(cfg)
    return sum(1 << i for i, n in enumerate(names) if n in set(chosen))


def selection_from_mask(cfg: Config, mask: int) -> tuple[str, ...]:
    return tuple(n for i, n in enumerate(sticker_names(cfg)) if mask >> i & 1)


# ----------------------------------------------------------------------------- re-render

def order_rerender(res: BotResources, user: users.User, pack_id: int, *, strength: float | None = None,
                   stickers: tuple[str, ...] | None = None) -> int:
    """Queue a re-render of the user's finished pack from its stored avatar at ``strength`` (None: the
    pack's own) with the ``stickers`` named (None: the pack's current selection). Returns the job id."""
    pack = _own_made_pack(res, user, pack_id)
    if any(j.payload.get("pack_id") == pack.id for j in open_jobs(res, user)):
        # a remake of the pack is running: it would replace what a re-render of the old result shows
        raise PackNotChangeable(f"pack {pack_id} is being made again")
    names = sticker_names(res.cfg)
    chosen = current_selection(res, pack) if stickers is None else tuple(n for n in names if n in set(stickers))
    if not chosen:
        raise NoStickersChosen(f"pack {pack_id}: no sticker chosen")
    unknown = sorted(set(stickers or ()) - set(names))
    if unknown:
        raise ValueError(f"no stickers named {unknown} in the configured pack")
    order = orders.RerenderOrder(user_id=user.id, pack_id=pack.id, source_job_id=pack.job_id,
                                 strength=pack.strength if strength is None else strength,
                                 stickers=() if chosen == names else chosen, platform=pack.platform or "local")
    return jobs.enqueue(res.db, orders.RERENDER_KIND, order.to_payload(), order.idempotency_key(),
                        user_id=user.id)


# ----------------------------------------------------------------------------- retry with another seed

def _origin_order(res: BotResources, pack: packs.Pack) -> orders.PackOrder | None:
    """The make order behind the pack's current result (through its re-renders), or None when the
    result came from a scheduled regeneration or its jobs are gone."""
    job_id, seen = pack.job_id, set()
    while job_id is not None and job_id not in seen:
        seen.add(job_id)
        try:
            job = jobs.get_job(res.db, job_id)
        except jobs.JobNotFound:
            return None
        if job.kind == orders.JOB_KIND:
            return orders.PackOrder.from_payload(job.payload)
        if job.kind != orders.RERENDER_KIND:
            return None
        job_id = job.payload.get("source_job_id")
    return None


def retry_seed(res: BotResources, pack: packs.Pack) -> int | None:
    """The seed a "try again" button of this pack orders (None: no retry is possible)."""
    origin = _origin_order(res, pack)
    if origin is None or (origin.style_id is None and not res.blobs.exists(origin.exemplar_digest)):
        return None
    return (origin.seed + 1) % (SEED_MAX + 1)


def order_retry(res: BotResources, user: users.User, pack_id: int, seed: int) -> Placed:
    """Make the user's pack again from the same selfie and style with ``seed`` (a full remake, counted
    against the quota). The result replaces the pack's stickers in its set. The same button pressed
    again while (or after) its remake runs returns that remake."""
    require_consent(user)
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed must be within [0, {SEED_MAX}], got {seed}")
    try:
        pack = packs.get_pack(res.db, pack_id)
    except packs.PackNotFound:
        raise PackNotChangeable(f"pack {pack_id} does not exist") from None
    origin = _origin_order(res, pack) if pack.user_id == user.id and pack.status != packs.SUPERSEDED else None
    if origin is None:
        raise PackNotChangeable(f"pack {pack_id}: not user {user.id}'s, or the order it was made from is gone")
    exemplar, version = origin.exemplar_digest, origin.style_version
    if origin.style_id is not None:  # a house style may have a newer version by now: use it
        try:
            style = st.get_style(res.db, origin.style_id)
        except st.StyleNotFound:
            raise PackNotChangeable(f"pack {pack_id}: its style {origin.style_id} was removed") from None
        exemplar, version = style.exemplar_digest or exemplar, style.version
    # At the pack's strength now: a re-render may have changed it since the origin order.
    order = dataclasses.replace(origin, exemplar_digest=exemplar, style_version=version, seed=int(seed),
                                strength=pack.strength, pack_id=pack.id, regenerate=True)
    same = jobs.find_by_key(res.db, order.idempotency_key())
    if same is not None and same.status not in jobs.UNSUCCESSFUL:
        return Placed(pack, same.id, True)
    if not res.blobs.exists(order.selfie_digest):
        raise NoSelfie(f"pack {pack_id}: its selfie expired")
    if not res.blobs.exists(exemplar):
        raise PackNotChangeable(f"pack {pack_id}: its style image is gone")
    check_limits(res, user)
    _, job_id = packs.order_pack(res.db, order)  # the pack stays as it is until the remake succeeds
    return Placed(packs.get_pack(res.db, pack.id), job_id, True)


def is_weak(result: orders.PackResult) -> bool:
    """The quality report flagged the pack (a retry is worth offering first)."""
    return bool(result.quality.get("weak"))
