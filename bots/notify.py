"""Watch pack jobs in the database and hand progress and results to a platform sender.

A :class:`Notifier` keeps one :class:`Watch` per ``make_pack`` job it follows.
Each :meth:`Notifier.tick` reads every watched job once and

* while it is queued or running, asks the sender to show a
  :class:`bots.core.ProgressView` — only when the view changed, and not more
  often than ``min_interval`` seconds per job (final states always go out);
* when it succeeded, calls ``sender.deliver`` (which publishes the pack) and
  stops watching; a delivery that raises a ``UserFacingError`` is reported to
  the user and not retried, any other exception is retried on later ticks
  (every ``retry_seconds``, at most ``max_delivery_attempts`` times); a
  remake or re-render whose pack moved past it (the pack shows another job's
  result) is not published: ``sender.finish`` tells the user so, and the pack's
  own job is delivered through the pack;
* when it failed or was cancelled, calls ``sender.finish`` and stops.

Restart safety: nothing needed for delivery lives only in memory. Where the
user is talked to (chat and progress message) is kept in the database
(:mod:`storage.deliveries`, one row per job): :meth:`Notifier.watch` records
it, and a sender that sends a new progress message has it recorded after
``show_progress``. The row is deleted once the job ended and its outcome was
delivered (or refused). At start (:meth:`Notifier.resume_from_db`) and every
``rescan_seconds`` the notifier finds the platform's packs whose job is still
open, whose result was never published, or whose job finished after the pack
was last published (a scheduled regeneration), and the jobs with a stored row
whose outcome was never delivered (a remake or re-render of a made pack leaves
the pack pointing at its old job until it succeeds, so only the row records
it: still running, or failed while no bot ran), and watches them with their
stored chat and message, so the same message keeps being edited. A job whose
pack shows it published while its delivery is still open was told (a sender
marks a pack published only after telling its user) by a process that stopped
before closing the delivery: it is closed without another message. Without a
stored reference the watch has no chat and no message: the sender uses the
user's private chat (DM) and sends a fresh progress message. Platform extras
(a Discord interaction token, its guild) are stored by the sender itself in
the same row.

Several processes (webhook replicas, Discord shards in separate processes)
may watch the same job; only one talks about it at a time. Before sending
anything about a job a notifier holds the job's delivery claim
(:func:`storage.deliveries.claim_delivery`, ``claim_seconds`` long, renewed
while it works, also during a long publish); a job claimed by a live other
process is left alone, and one whose holder died is taken over once the claim
lapsed, with where-to-talk reloaded from the database. Once the outcome was
delivered (or refused, or given up) the claim is finished: no process sends
it again, until a user asks for it again (:meth:`Notifier.watch` reopens it).
A clean stop releases the claims held, so another process takes over at once.

Times: ``clock`` is monotonic seconds (rate limits); ``wall_clock`` and the
database hold UNIX seconds (claims are compared across processes).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator
from typing import Callable, Protocol

from emoji3d import orders
from emoji3d.errors import UserFacingError
from storage import artifacts, deliveries, jobs, packs, users
from storage.wakeups import JobWakeups

from bots.core import BotResources, ProgressView, progress_view, should_edit

log = logging.getLogger("emoji3d.notify")

MIN_TICK_GAP_S = 0.1  # a tick reads every watched job: a stream of commits must not turn into a stream of ticks


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


@dataclass
class Watch:
    job_id: int
    pack_id: int | None
    user_id: int                 # storage user id
    platform_user_id: str
    chat_id: str | None = None   # where to talk; None = the user's private chat / DM
    message_id: str | None = None  # the progress message to edit; None = send a new one
    resumed: bool = False        # found in the database after a restart
    last_signature: str | None = None
    last_edit_at: float | None = None
    delivery_attempts: int = 0
    next_delivery_at: float = 0.0
    held_until: float = 0.0      # wall time until which this process holds the job's claim (0: not held)
    busy_until: float = 0.0      # another process holds the claim until then: do not ask before
    first_looks: tuple[str, ...] = ()  # first-look stills already shown (emoji3d.orders.FIRST_LOOK_STAGES)


class Sender(Protocol):
    async def show_progress(self, watch: Watch, view: ProgressView) -> None:
        """Send or edit the progress message (set ``watch.message_id`` when sending)."""

    async def deliver(self, watch: Watch, job: jobs.Job) -> None:
        """Publish the finished pack and tell the user, then mark the pack published
        (``storage.packs.mark_published``): never before the user was told, so a pack
        published with its delivery still open was told and only needs closing."""

    async def show_first_look(self, watch: Watch, png: bytes, stage: str) -> None:
        """Send one still of the avatar (``stage``: "photo_real" or "stylized") while the pack is made."""

    async def finish(self, watch: Watch, view: ProgressView) -> None:
        """The job ended without a result (failed / cancelled)."""

    async def report_error(self, watch: Watch, err: UserFacingError) -> None:
        """Delivery was refused for a reason the user can act on."""


def _signature(view: ProgressView) -> str:
    return f"{view.key}|{sorted(view.params.items())}|{view.stage_key}|{view.cancellable}"


class Notifier:
    def __init__(self, res: BotResources, platform: str, sender: Sender, *, min_interval: float = 3.0,
                 retry_seconds: float = 30.0, max_delivery_attempts: int = 5, rescan_seconds: float = 60.0,
                 claim_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if min_interval < 0 or retry_seconds < 0 or max_delivery_attempts < 1 or not claim_seconds > 0:
            raise ValueError("min_interval, retry_seconds >= 0, max_delivery_attempts >= 1 and "
                             "claim_seconds > 0 are required")
        self.res = res
        self.platform = platform
        self.sender = sender
        self.min_interval = float(min_interval)
        self.retry_seconds = float(retry_seconds)
        self.max_delivery_attempts = int(max_delivery_attempts)
        self.rescan_seconds = float(rescan_seconds)
        self.claim_seconds = float(claim_seconds)
        self.clock = clock
        self.wall_clock = wall_clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this notifier, in claims
        self.watches: dict[int, Watch] = {}
        self.refused: set[int] = set()  # jobs whose outcome was delivered or refused: not re-watched by rescans

    # ------------------------------------------------------------------ registration
    def watch(self, job_id: int, pack_id: int | None, user: users.User, *, chat_id: str | None = None,
              message_id: str | None = None) -> Watch:
        """Follow a job (replacing an older watch of the same job) and record
        where its messages go, so a restarted bot carries on in the same place."""
        w = Watch(job_id, pack_id, user.id, user.platform_user_id, chat_id, message_id)
        self.watches[job_id] = w
        self.refused.discard(job_id)
        self._store(w)
        try:
            deliveries.reopen_delivery(self.res.db, job_id)  # asked for again: deliver even if done once
        except Exception:  # noqa: BLE001 - the claim is retried on the next tick
            log.warning("notify: could not reopen the delivery of job %s", job_id, exc_info=True)
        self._hold(w)
        return w

    async def start(self, job_id: int, pack_id: int | None, user: users.User, *, chat_id: str | None = None,
                    message_id: str | None = None) -> Watch:
        """Watch a job just ordered and show its first progress view now; the
        ticks then show only changes, so the user reads it once."""
        w = self.watch(job_id, pack_id, user, chat_id=chat_id, message_id=message_id)
        if w.held_until:
            await self._show(w, progress_view(self.res, jobs.get_job(self.res.db, job_id)), self.clock())
        return w

    # ------------------------------------------------------------------ claims
    def _hold(self, w: Watch) -> bool:
        """Whether this process may talk about ``w``'s job now: it holds the job's
        claim, taken or renewed here when less than half of it is left. A job
        whose outcome was delivered (by any process) stops being watched."""
        now = self.wall_clock()
        if w.held_until - now > self.claim_seconds / 2:
            return True
        if not w.held_until and now < w.busy_until:
            return False  # another process holds it; its claim cannot have lapsed yet
        try:
            claim = deliveries.claim_delivery(self.res.db, w.job_id, self.platform, self.holder,
                                              self.claim_seconds, now=now)
        except deliveries.DeliveryJobMissing:
            return False  # deleted meanwhile; the next tick drops the watch
        except Exception:  # noqa: BLE001 - without a claim nothing is sent; the next tick asks again
            log.warning("notify: could not claim the delivery of job %s", w.job_id, exc_info=True)
            return False
        if claim.done:
            self.watches.pop(w.job_id, None)
            self.refused.add(w.job_id)
            return False
        if not claim.held:
            w.held_until, w.busy_until = 0.0, claim.expires_at
            return False
        if w.held_until <= now:  # newly taken: another process may have talked meanwhile
            self._reload_ref(w)
        w.held_until = claim.expires_at
        return True

    def _reload_ref(self, w: Watch) -> None:
        ref = deliveries.get_delivery(self.res.db, w.job_id)
        if ref is not None and ref.platform == self.platform and (ref.chat_id, ref.message_id) != (None, None):
            w.chat_id, w.message_id = ref.chat_id, ref.message_id

    def _renew(self, w: Watch) -> None:
        try:
            claim = deliveries.claim_delivery(self.res.db, w.job_id, self.platform, self.holder, self.claim_seconds,
                                              now=self.wall_clock())
        except Exception:  # noqa: BLE001 - the next renewal tries again
            log.warning("notify: could not renew the claim on job %s", w.job_id, exc_info=True)
            return
        if claim.held:
            w.held_until = claim.expires_at
        elif not claim.done:
            log.warning("notify: job %s: the claim lapsed while sending (held by %s now)", w.job_id, claim.holder)

    @contextlib.asynccontextmanager
    async def _kept(self, w: Watch) -> AsyncIterator[None]:
        """Renew ``w``'s claim every third of its length while the body runs (a
        publish can take longer than a claim lasts)."""
        async def renew() -> None:
            while True:
                await asyncio.sleep(self.claim_seconds / 3)
                self._renew(w)

        task = asyncio.create_task(renew(), name=f"claim-{w.job_id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _done(self, job_id: int) -> None:
        """The job's outcome went out (or was refused for good): no process sends it again."""
        self.watches.pop(job_id, None)
        self.refused.add(job_id)
        try:
            deliveries.finish_delivery(self.res.db, job_id, self.holder, now=self.wall_clock())
        except Exception:  # noqa: BLE001 - the pack's status still keeps rescans from delivering it again
            log.warning("notify: could not mark job %s delivered", job_id, exc_info=True)
        self._drop_ref(job_id)

    def release_claims(self) -> None:
        """Give up every claim held (a clean stop): other processes take over at once."""
        for w in list(self.watches.values()):
            if w.held_until:
                try:
                    deliveries.release_delivery(self.res.db, w.job_id, self.holder)
                except Exception:  # noqa: BLE001 - it lapses by itself
                    log.warning("notify: could not release the claim on job %s", w.job_id, exc_info=True)
                w.held_until = 0.0

    # ------------------------------------------------------------------ persisted reference
    def _store(self, w: Watch) -> None:
        """Record the watch's chat and message; a failure is logged, not fatal
        (delivery still works in this process)."""
        try:
            deliveries.record_delivery(self.res.db, w.job_id, self.platform, chat_id=w.chat_id,
                                       message_id=w.message_id)
        except deliveries.DeliveryJobMissing:
            pass  # deleted meanwhile; the next tick drops the watch
        except Exception:  # noqa: BLE001 - the database may be briefly unavailable
            log.warning("notify: could not record where job %s is delivered", w.job_id, exc_info=True)

    def _drop_ref(self, job_id: int) -> None:
        try:
            deliveries.delete_delivery(self.res.db, job_id)
        except Exception:  # noqa: BLE001 - a stale row is harmless: rows go with their job
            log.warning("notify: could not delete the delivery reference of job %s", job_id, exc_info=True)

    def resume_from_db(self) -> list[Watch]:
        """Watch every job of this platform that still needs a message (see the
        module docstring). Returns the new watches."""
        found = []
        for pack, job, user in self._undelivered():
            if job.id in self.watches or job.id in self.refused:
                continue
            ref = deliveries.get_delivery(self.res.db, job.id)
            stored = ref is not None and ref.platform == self.platform
            w = Watch(job.id, pack.id, user.id, user.platform_user_id,
                      chat_id=ref.chat_id if stored else None, message_id=ref.message_id if stored else None,
                      resumed=True)
            self.watches[job.id] = w
            found.append(w)
        return found

    def _undelivered(self) -> list[tuple[packs.Pack, jobs.Job, users.User]]:
        """This platform's packs still to deliver (:func:`storage.packs.undelivered_pack_ids`), then the
        jobs a notifier followed whose outcome it never delivered (:func:`storage.deliveries.undelivered_job_ids`):
        a remake or re-render of a made pack, which its pack does not point at until it succeeds, still
        open or ended while no bot ran (also one that succeeded after the pack moved past it); a first
        make that failed meanwhile."""
        out, seen = [], set()
        for pid in packs.undelivered_pack_ids(self.res.db, self.platform):
            try:
                pack = packs.get_pack(self.res.db, pid)
                job = jobs.get_job(self.res.db, pack.job_id) if pack.job_id is not None else None
                user = users.get_user(self.res.db, pack.user_id)
            except (packs.PackNotFound, jobs.JobNotFound, UserFacingError):
                continue  # deleted meanwhile
            if job is None or job.payload.get("pack_id") != pack.id:
                continue
            # Re-checked on the loaded rows: the state may have moved since the query.
            open_job = not job.done and pack.status in packs.UNDELIVERED
            unpublished = job.status == "succeeded" and pack.status in packs.UNDELIVERED
            regenerated = (job.status == "succeeded" and pack.status == "published"
                           and job.finished_at is not None and job.finished_at > pack.updated_at)
            if open_job or unpublished or regenerated:
                out.append((pack, job, user))
                seen.add(job.id)
        for job_id in deliveries.undelivered_job_ids(self.res.db, self.platform):
            if job_id in seen:
                continue
            try:
                job = jobs.get_job(self.res.db, job_id)
                pack_id = job.payload.get("pack_id")
                if pack_id is None:
                    continue
                pack = packs.get_pack(self.res.db, int(pack_id))
                user = users.get_user(self.res.db, pack.user_id)
            except (packs.PackNotFound, jobs.JobNotFound, UserFacingError):
                continue  # deleted meanwhile
            # A success is delivered through its pack once the pack shows it (the loop above). One the
            # pack moved past is followed too: its user is told it was not published (Notifier._step).
            if job.status != "succeeded" or pack.job_id != job.id:
                out.append((pack, job, user))
            elif pack.status == "published":
                self._close_told(job.id)
        return out

    def _close_told(self, job_id: int) -> None:
        """Close the delivery of a job whose pack shows it published: its user was told, and the
        process that told them stopped before :meth:`_done`. Left alone while another process
        holds the claim (it is closing it), or while this process still follows the job."""
        if job_id in self.watches:
            return
        try:
            claim = deliveries.claim_delivery(self.res.db, job_id, self.platform, self.holder, self.claim_seconds,
                                              now=self.wall_clock())
        except deliveries.DeliveryJobMissing:
            return  # deleted meanwhile
        except Exception:  # noqa: BLE001 - the next rescan tries again
            log.warning("notify: could not claim the delivery of job %s", job_id, exc_info=True)
            return
        if claim.held:
            self._done(job_id)
            log.info("notify: job %s was delivered before a stop; its delivery is closed", job_id)

    # ------------------------------------------------------------------ the loop
    async def tick(self) -> None:
        for job_id in list(self.watches):
            w = self.watches.get(job_id)
            if w is None:
                continue
            try:
                await self._step(w)
            except Exception:  # noqa: BLE001 - one user's problem must not stop the others
                log.exception("notify: job %s (user %s) failed in this tick", w.job_id, w.user_id)

    async def _step(self, w: Watch) -> None:
        try:
            job = jobs.get_job(self.res.db, w.job_id)
        except jobs.JobNotFound:
            self.watches.pop(w.job_id, None)  # the user deleted their data
            self._drop_ref(w.job_id)
            return
        now = self.clock()
        if job.status == "succeeded" and now < w.next_delivery_at:
            return
        if not self._hold(w):
            return
        if job.status == "succeeded":
            if self._outdated(job):  # publishing it would put an older result over the pack's newer one
                await self._finish(w, ProgressView("remake_outdated", cancellable=False, final=True))
            else:
                await self._deliver(w, job, now)
            return
        if job.status == "running":
            await self._first_look(w)
        view = progress_view(self.res, job)
        sig = _signature(view)
        if view.final:
            if job.payload.get("pack_id") is not None:
                self._mark_pack_failed(int(job.payload["pack_id"]))
            await self._finish(w, view)
            return
        if should_edit(w.last_signature, sig, w.last_edit_at, now, self.min_interval, False):
            await self._show(w, view, now)

    async def _finish(self, w: Watch, view: ProgressView) -> None:
        """Tell the user the job's final word (no result to publish) and stop following it."""
        self.watches.pop(w.job_id, None)
        try:
            async with self._kept(w):
                await self.sender.finish(w, view)
        finally:  # nothing will be said about this job again
            self._done(w.job_id)

    def _outdated(self, job: jobs.Job) -> bool:
        """The succeeded job's pack shows another job's result: a remake or re-render of the pack that
        the pack moved past (:func:`storage.packs.mark_made` keeps the newest order's result). Its
        result is not published; the pack's own job is delivered through the pack."""
        pack_id = job.payload.get("pack_id")
        if pack_id is None:
            return False
        try:
            return packs.get_pack(self.res.db, int(pack_id)).job_id != job.id
        except packs.PackNotFound:
            return False  # deleted meanwhile: the sender's delivery finds out and reports it

    async def _first_look(self, w: Watch) -> None:
        """Send the newest first-look still the engine recorded and not yet shown; one photo per stage at
        most, and an older stage is skipped once a newer one exists (no burst of photos after a pause)."""
        for i in reversed(range(len(orders.FIRST_LOOK_STAGES))):
            stage = orders.FIRST_LOOK_STAGES[i]
            if stage in w.first_looks:
                return
            art = artifacts.get_artifact(self.res.db, orders.first_look_key(w.job_id, stage))
            if art is None or not self.res.blobs.exists(art.blob_digest):
                continue
            w.first_looks = tuple(orders.FIRST_LOOK_STAGES[:i + 1])  # before sending: a failure is not retried
            await self.sender.show_first_look(w, self.res.blobs.read_bytes(art.blob_digest), stage)
            return

    async def _show(self, w: Watch, view: ProgressView, now: float) -> None:
        where, before = (w.chat_id, w.message_id), (w.last_signature, w.last_edit_at)
        # recorded before sending: a tick running while a handler's first show is
        # in flight must see it as shown, or the user reads it twice
        w.last_signature, w.last_edit_at = _signature(view), now
        try:
            await self.sender.show_progress(w, view)
        except BaseException:
            w.last_signature, w.last_edit_at = before
            raise
        if (w.chat_id, w.message_id) != where:  # the sender started a new progress message
            self._store(w)

    def _mark_pack_failed(self, pack_id: int) -> None:
        try:
            packs.mark_failed(self.res.db, pack_id)
        except packs.PackNotFound:
            pass

    async def _deliver(self, w: Watch, job: jobs.Job, now: float) -> None:
        w.delivery_attempts += 1
        try:
            async with self._kept(w):
                await self.sender.deliver(w, job)
        except UserFacingError as err:
            self.watches.pop(w.job_id, None)
            log.info("notify: job %s delivery refused: %s (%s)", w.job_id, err.key, err)
            try:
                await self.sender.report_error(w, err)
            finally:
                self._done(w.job_id)
            return
        except Exception as exc:  # noqa: BLE001 - network and platform hiccups: try again later
            if w.delivery_attempts >= self.max_delivery_attempts:
                self.watches.pop(w.job_id, None)
                log.exception("notify: job %s delivery failed %d times; giving up", w.job_id, w.delivery_attempts)
                try:
                    await self.sender.report_error(w, UserFacingError(str(exc)))
                finally:
                    self._done(w.job_id)
                return
            w.next_delivery_at = now + self.retry_seconds
            log.warning("notify: job %s delivery failed (%s); retrying in %.0f s", w.job_id, exc, self.retry_seconds)
            if w.message_id is not None:
                self._store(w)  # a progress message sent before the failure is edited by the retry
            return
        self._done(w.job_id)

    async def run(self, stop: asyncio.Event, poll_seconds: float = 1.0, *, wake_on_changes: bool = True) -> None:
        """Resume from the database, then tick until ``stop``: when a job ends or
        changes (``wake_on_changes``, through :class:`storage.wakeups.JobWakeups`)
        and at least every ``poll_seconds``, but not more often than every
        :data:`MIN_TICK_GAP_S` however busy the database is."""
        self.resume_from_db()
        last_scan = self.clock()
        loop = asyncio.get_running_loop()
        # A thread of its own for the waits: the default pool is where the bots check selfies.
        waits = ThreadPoolExecutor(1, thread_name_prefix="notifier-wakeups") if wake_on_changes else None
        waiter = await loop.run_in_executor(waits, JobWakeups, self.res.db) if waits is not None else None
        try:
            while not stop.is_set():
                ticked_at = self.clock()
                await self.tick()
                if self.clock() - last_scan >= self.rescan_seconds:
                    self.resume_from_db()
                    last_scan = self.clock()
                if waiter is None:
                    await _sleep(stop, poll_seconds)
                    continue
                gap = MIN_TICK_GAP_S - (self.clock() - ticked_at)
                if gap > 0:  # a change meanwhile is kept by the waiter and ends the wait below at once
                    await _sleep(stop, gap)
                if not stop.is_set():
                    await loop.run_in_executor(waits, waiter.wait, poll_seconds - max(gap, 0.0), stop.is_set)
        finally:
            self.release_claims()
            if waiter is not None:
                waiter.close()
            if waits is not None:
                waits.shutdown(wait=False)

