"""A finished pack made again with another seed: what the quality line suggests for a weak pack.

The retry remakes the pack in place (``regenerate``: the same pack row and
platform set) from the same selfie, style and current strength, with the next
seed. The seed reaches every stage: the per-selfie inversion is cached per
seed (``Pipeline.portrait_key``), so the photo is inverted again and the
likeness can change too. It counts as an order (daily quota, one open job)
and needs the selfie itself: once the photo was deleted under the retention
policy the user is asked to send it again. Both front ends call
:func:`order_retry`; the notifier delivers the result like any remake.
"""
from __future__ import annotations

import dataclasses

from emoji3d import orders
from emoji3d.errors import UserFacingError
from storage import jobs, packs, users

from bots.core import BotResources, Placed, check_limits, require_consent


class RetryImpossible(UserFacingError):
    """The pack has no order to make again (never made here, or its order is unreadable)."""

    key = "retry_impossible"


class SelfieGoneForRetry(UserFacingError):
    """params: ``hours`` (the selfie retention)."""

    key = "selfie_expired"


def make_order_of(db, pack: packs.Pack) -> orders.PackOrder:
    """The order that made the pack's current result, following re-renders back to their ``make_pack`` job."""
    job_id, seen = pack.job_id, set()
    while job_id is not None and job_id not in seen:
        seen.add(job_id)
        job = jobs.get_job(db, job_id)
        if job.kind == orders.JOB_KIND:
            return orders.PackOrder.from_payload(job.payload)
        if job.kind != orders.RERENDER_KIND:
            break
        job_id = orders.RerenderOrder.from_payload(job.payload).source_job_id
    raise RetryImpossible(f"pack {pack.id} has no make_pack order behind job {pack.job_id}")


def order_retry(res: BotResources, user: users.User, pack_id: int) -> Placed:
    """Queue the user's pack again with the next seed; returns the placed order (``regenerate`` True)."""
    require_consent(user)
    pack = packs.get_pack(res.db, pack_id)
    if pack.user_id != user.id or pack.status not in packs.MADE:
        raise packs.PackNotFound(pack_id)
    previous = make_order_of(res.db, pack)
    if not res.blobs.exists(previous.selfie_digest):
        raise SelfieGoneForRetry(f"pack {pack.id}: its selfie is gone", hours=res.cfg.privacy.selfie_retention_hours)
    check_limits(res, user)
    order = dataclasses.replace(previous, seed=previous.seed + 1, strength=pack.strength, pack_id=pack.id,
                                regenerate=True)
    placed_pack, job_id = packs.order_pack(res.db, order)
    packs.reopen(res.db, placed_pack.id)
    return Placed(packs.get_pack(res.db, placed_pack.id), job_id, True)
