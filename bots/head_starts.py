"""A selfie's head start, on the producer side: its inversion enqueued while the user picks a style.

A bot that accepts a selfie before the user has chosen a style and a strength
(Telegram: two button presses follow) enqueues ``emoji3d.orders.PREPARE_KIND``
for it, so an engine inverts the photo (pipeline stages 1, 3 and 4) during the
user's choice and the order starts at stage 5 (``engine.tasks``).

Conventions
-----------
* One head start per user: a newer selfie cancels the one for an older photo,
  which no order can use any more. The same photo again gets the same job, or a
  new one when the inversion that job made has been deleted since.
* A head start is not an order: it counts towards neither the daily quota nor
  the one-active-job rule. It is a speculative job at ``interactive`` priority
  (:mod:`storage.jobs`): engines take the orders waiting first, so a guess
  delays another user's order only when it was started on an idle engine just
  before the order came (``bench/head_start_queue.py``).
* An order drops its user's head start that no engine has taken yet (the order
  inverts the photo itself, the same work). An order placed while its head
  start runs waits for it in the queue (``waits_for``, :mod:`storage.jobs`),
  so no engine sits idle meanwhile; an engine that took the order anyway (it
  started running in between, or a bot of the previous version placed it)
  waits for it inside the order (``engine.tasks.await_preparation``).
* While an order waits for its running head start, the bots show the head
  start's progress as the order's (:func:`running_for`).
* ``/delete`` cancels it with the user's other jobs; its inversion is the
  user's, so retention and ``/delete`` reach it, and one that no order used
  goes with its selfie (:func:`storage.selfies.purge_expired`).
"""
from __future__ import annotations

from emoji3d import orders
from storage import artifacts, jobs
from storage.db import Database

def open_head_starts(db: Database, user_id: int) -> list[jobs.Job]:
    return jobs.list_jobs(db, status=jobs.OPEN, user_id=user_id, kind=orders.PREPARE_KIND)


def enqueue(db: Database, user_id: int, selfie_digest: str, *, seed: int) -> int:
    """The head start for the user's selfie (the same job for the same photo); cancels the user's head
    start for another photo. ``seed``: the seed the user's order will carry. Returns the job id."""
    prep = orders.PortraitPrep(user_id, selfie_digest, seed)
    key = prep.idempotency_key()
    for job in open_head_starts(db, user_id):
        if job.idempotency_key != key:
            jobs.cancel(db, job.id)
    earlier = jobs.find_by_key(db, key)
    if earlier is not None and earlier.status == "succeeded" and not _still_prepared(db, earlier):
        jobs.retire_key(db, earlier.id)  # the same photo again, its inversion deleted since: start anew
    return jobs.enqueue(db, orders.PREPARE_KIND, prep.to_payload(), key, user_id=user_id, speculative=True)


def _still_prepared(db: Database, head_start: jobs.Job) -> bool:
    """Whether the inversion a finished head start recorded is still stored (retention, the selfie's
    purge and ``/delete`` remove it; one whose photo was gone made none)."""
    made = (head_start.result or {}).get("artifact")
    return bool(made) and artifacts.has_artifact(db, made)


def running_for_order(db: Database, order: orders.PackOrder) -> jobs.Job | None:
    """The running head start of the order's selfie, if any."""
    prep = jobs.find_by_key(db, orders.PortraitPrep.for_order(order).idempotency_key())
    return prep if prep is not None and prep.status == "running" else None


def running_for(db: Database, order_job: jobs.Job) -> jobs.Job | None:
    """The running head start of a ``make_pack`` job's selfie, if any: while the order waits for it
    (queued), the user is shown its progress, which is the order's own first stages."""
    if order_job.kind != orders.JOB_KIND:
        return None
    return running_for_order(db, orders.PackOrder.from_payload(order_job.payload))


def drop_untaken(db: Database, user_id: int) -> None:
    """An order was placed: a head start no engine has taken yet saves nothing any more."""
    for job in open_head_starts(db, user_id):
        if job.status == "queued":
            jobs.cancel(db, job.id)
