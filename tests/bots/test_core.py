"""Platform-neutral core and notifier: limits, consent, regeneration, resume after a restart,
and that bot modules never import torch."""
from __future__ import annotations

import asyncio
import dataclasses
import time
import subprocess
import sys

import pytest

from bots import core
from bots.notify import Notifier
from emoji3d.texts import message
from storage import deliveries, jobs, packs, users
from storage import styles as st
from storage.db import open_database
from tests.bots.conftest import finish_job, make_resources
from tests.lifecycle import make_ready, publish


def ready_user(res, selfie_png, pid: str = "1"):
    user = core.ensure_user(res, "telegram", pid)
    core.give_consent(res, user)
    user = users.get_user(res.db, user.id)
    core.accept_selfie(res, user, selfie_png)
    return user


def test_consent_is_required_and_timestamped(res, selfie_png):
    user = core.ensure_user(res, "telegram", "9")
    with pytest.raises(core.ConsentRequired):
        core.accept_selfie(res, user, selfie_png)
    at = core.give_consent(res, user)
    assert users.get_user(res.db, user.id).consent_at == at
    assert core.give_consent(res, users.get_user(res.db, user.id)) == at  # first consent kept


def test_one_active_job_per_user(res, selfie_png):
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    user = ready_user(res, selfie_png)
    core.place_order(res, user, "telegram", preset="subtle", style_id=style.id)
    with pytest.raises(core.ActiveJobExists) as err:
        core.place_order(res, user, "telegram", preset="full", style_id=style.id)
    assert message(err.value.key).startswith("You already have a pack")
    other = ready_user(res, selfie_png, "2")  # someone else is not blocked
    core.place_order(res, other, "telegram", preset="full", style_id=style.id)


def test_daily_quota(tmp_path, face_check, selfie_png, sticker_files):
    res = make_resources(tmp_path, face_check, jobs_per_user_per_day=2)
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    user = ready_user(res, selfie_png)
    for preset in ("subtle", "medium"):
        placed = core.place_order(res, user, "local", preset=preset, style_id=style.id)
        finish_job(res, placed.job_id, sticker_files)
    with pytest.raises(core.QuotaExceeded) as err:
        core.place_order(res, user, "local", preset="full", style_id=style.id)
    assert err.value.params["limit"] == 2 and "2 packs" in message(err.value.key, **err.value.params)
    # a day later the window has moved on
    day_later = time.time() + 25 * 3600
    later = core.BotResources(res.cfg, res.db, res.blobs, face_check, clock=lambda: day_later)
    with pytest.raises(core.NoSelfie):  # and yesterday's selfie has expired (24 h retention)
        core.place_order(later, user, "local", preset="full", style_id=style.id)
    # retention 0 keeps nothing for later, but a fresh selfie can be ordered with until the next maintenance pass
    no_expiry = dataclasses.replace(res.cfg, privacy=dataclasses.replace(res.cfg.privacy, selfie_retention_hours=0))
    later = core.BotResources(no_expiry, res.db, res.blobs, face_check, clock=lambda: day_later)
    core.accept_selfie(later, user, selfie_png)
    core.place_order(later, user, "local", preset="full", style_id=style.id)


def test_strength_presets_and_unknown():
    assert core.STRENGTHS == {"subtle": 0.35, "medium": 0.7, "full": 1.0}
    with pytest.raises(core.UnknownStrength):
        core.strength_value("extreme")


def test_styles_list_house_first_and_own_style_token(res, selfie_png):
    digest = res.blobs.put_bytes(selfie_png)
    st.add_style(res.db, "aaa", digest, status="ready")
    st.add_style(res.db, "off", digest, status="disabled")
    cid = core.community_id_for(res, "telegram", "-100", "grp")
    st.add_style(res.db, "zzz", digest, community_id=cid, status="pending")
    names = [(c.name, c.house) for c in core.list_style_choices(res, cid)]
    assert names == [("zzz", True), ("aaa", False)]
    tok = core.digest_token(digest)
    assert len(tok) == 43 and core.digest_from_token(tok) == digest
    with pytest.raises(core.OwnStyleMissing):
        core.digest_from_token("short")


def test_same_style_again_regenerates_the_published_pack(res, selfie_png, sticker_files):
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    other = st.add_style(res.db, "ink", res.blobs.put_bytes(selfie_png + b"x"), status="ready")
    user = ready_user(res, selfie_png)
    first = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
    finish_job(res, first.job_id, sticker_files)
    publish(res.db, first.pack.id, "e3d1xab_by_b")
    again = core.place_order(res, user, "telegram", preset="medium", style_id=style.id)
    assert again.regenerate and again.pack.id == first.pack.id and again.job_id != first.job_id
    # the published pack stays as it is while its remake runs and after it is cancelled
    assert (packs.get_pack(res.db, first.pack.id).status, packs.get_pack(res.db, first.pack.id).job_id) == (
        "published", first.job_id)
    assert core.cancel_open_job(res, user, again.job_id) == "cancelled"
    assert packs.get_pack(res.db, first.pack.id).status == "published"
    new = core.place_order(res, user, "telegram", preset="full", style_id=other.id)
    assert not new.regenerate and new.pack.id != first.pack.id


def test_materialize_is_idempotent(res, selfie_png, sticker_files):
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    user = ready_user(res, selfie_png)
    placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
    result = finish_job(res, placed.job_id, sticker_files)
    rows = core.materialize_result(res, placed.pack, result, "telegram_video")
    packs.set_sticker_platform_state(res.db, rows[0].id, "added", "FILEID")
    again = core.materialize_result(res, placed.pack, result, "telegram_video")
    assert [s.id for s in again] == [s.id for s in rows]
    assert again[0].platform_state == "added" and again[0].platform_file_id == "FILEID"


class RecordingSender:
    """A platform sender that records what the notifier hands it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, str]] = []

    async def show_progress(self, w, view):
        self.events.append(("progress", w.job_id, view.key))
        w.message_id = "1"

    async def deliver(self, w, job):
        self.events.append(("deliver", w.job_id, job.status))
        publish(self.res.db, w.pack_id)

    async def finish(self, w, view):
        self.events.append(("finish", w.job_id, view.key))

    async def report_error(self, w, err):
        self.events.append(("error", w.job_id, err.key))


def test_notifier_resumes_from_the_database_and_rate_limits(res, selfie_png, sticker_files):
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    u1, u2 = ready_user(res, selfie_png, "1"), ready_user(res, selfie_png, "2")
    a = core.place_order(res, u1, "telegram", preset="full", style_id=style.id)
    b = core.place_order(res, u2, "telegram", preset="full", style_id=style.id)
    now = [0.0]
    sender = RecordingSender()
    sender.res = res
    # a "restarted" notifier knows nothing in memory
    n = Notifier(res, "telegram", sender, min_interval=3.0, clock=lambda: now[0])
    found = n.resume_from_db()
    assert sorted(w.job_id for w in found) == [a.job_id, b.job_id] and all(w.resumed for w in found)

    async def go():
        await n.tick()
        claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
        jobs.set_progress(res.db, claimed.id, claimed.lease_token, "render", 0.5)
        now[0] = 1.0
        await n.tick()  # changed, but within 3 s of the last edit: no edit
        now[0] = 4.0
        await n.tick()
        make_ready(res.db, claimed.payload["pack_id"], claimed.id)  # as the engine does before completing
        jobs.complete(res.db, claimed.id, claimed.lease_token, {"pack_id": a.pack.id, "preset": "slim"})
        jobs.cancel(res.db, b.job_id)
        await n.tick()

    asyncio.run(go())
    assert ("progress", a.job_id, "progress") in sender.events
    assert sum(1 for e in sender.events if e[:2] == ("progress", a.job_id)) == 2
    assert ("deliver", a.job_id, "succeeded") in sender.events
    assert ("finish", b.job_id, "cancelled_ok") in sender.events
    assert n.watches == {}
    assert n.resume_from_db() == []  # delivered and cancelled jobs are not picked up again


def test_notifier_delivers_when_the_job_ends_not_at_its_next_poll(res, selfie_png):
    # The engine is another process (its own database handle); the notifier polls only every
    # 60 s, so a delivery within the 30 s allowed below was woken by the job's completion.
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    order = core.place_order(res, ready_user(res, selfie_png), "telegram", preset="full", style_id=style.id)
    sender = RecordingSender()
    sender.res = res
    n = Notifier(res, "telegram", sender, min_interval=0.0)
    engine_db = open_database(res.db.url)

    def engine_finishes() -> None:
        job = jobs.claim(engine_db, "eng", 60, kinds=["make_pack"])
        make_ready(engine_db, job.payload["pack_id"], job.id)
        jobs.complete(engine_db, job.id, job.lease_token, {"pack_id": order.pack.id, "preset": "slim"})

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(n.run(stop, poll_seconds=60.0))
        await asyncio.sleep(0.5)  # resumed the order, showed its progress, now waiting
        await asyncio.to_thread(engine_finishes)
        finished = time.monotonic()
        while not any(e[0] == "deliver" for e in sender.events) and time.monotonic() - finished < 30:
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 10)  # the stop ends the 60 s wait too

    try:
        asyncio.run(go())
    finally:
        engine_db.dispose()
    assert ("deliver", order.job_id, "succeeded") in sender.events


def test_notifier_stores_where_it_talks_and_forgets_it_when_done(res, selfie_png):
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    u1, u2, u3 = (ready_user(res, selfie_png, str(i)) for i in (1, 2, 3))
    a = core.place_order(res, u1, "telegram", preset="full", style_id=style.id)
    b = core.place_order(res, u2, "telegram", preset="full", style_id=style.id)
    c = core.place_order(res, u3, "telegram", preset="full", style_id=style.id)
    class EditsOrSends(RecordingSender):
        async def show_progress(self, w, view):
            self.events.append(("progress", w.job_id, view.key))
            if w.message_id is None:
                w.message_id = "1"

    sender = EditsOrSends()
    sender.res = res
    first = Notifier(res, "telegram", sender, min_interval=0.0)
    first.watch(a.job_id, a.pack.id, u1, chat_id="-100", message_id="7")
    first.watch(b.job_id, b.pack.id, u2)  # no message yet: the sender sends one (id "1")
    asyncio.run(first.tick())
    assert deliveries.get_delivery(res.db, b.job_id).message_id == "1"
    # a restarted notifier resumes with the stored chat and message; c has no row
    first.release_claims()  # the first one stopped cleanly (a killed one's claims lapse after claim_seconds)
    n = Notifier(res, "telegram", sender, min_interval=0.0)
    found = {w.job_id: w for w in n.resume_from_db()}
    assert (found[a.job_id].chat_id, found[a.job_id].message_id) == ("-100", "7")
    assert (found[b.job_id].chat_id, found[b.job_id].message_id) == (None, "1")
    assert (found[c.job_id].chat_id, found[c.job_id].message_id) == (None, None)
    assert all(w.resumed for w in found.values())
    # another platform's notifier does not pick the rows up
    assert Notifier(res, "discord", sender).resume_from_db() == []

    class Refusing(RecordingSender):
        async def deliver(self, w, job):
            raise core.NothingToCancel("refused")

    claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
    assert claimed.id == a.job_id
    make_ready(res.db, claimed.payload["pack_id"], claimed.id)  # as the engine does before completing
    jobs.complete(res.db, claimed.id, claimed.lease_token, {"pack_id": a.pack.id, "preset": "slim"})
    jobs.cancel(res.db, b.job_id)
    asyncio.run(n.tick())
    assert deliveries.get_delivery(res.db, a.job_id) is None  # delivered
    assert deliveries.get_delivery(res.db, b.job_id) is None  # cancelled and told
    claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
    make_ready(res.db, claimed.payload["pack_id"], claimed.id)  # as the engine does before completing
    jobs.complete(res.db, claimed.id, claimed.lease_token, {"pack_id": c.pack.id, "preset": "slim"})
    refusing = Refusing()
    refusing.res = res
    n.release_claims()  # n (which showed c's progress) stops; r takes over
    r = Notifier(res, "telegram", refusing)
    r.watch(c.job_id, c.pack.id, u3, chat_id="5", message_id="6")
    asyncio.run(r.tick())
    assert ("error", c.job_id, "nothing_to_cancel") in refusing.events
    assert deliveries.get_delivery(res.db, c.job_id) is None


async def _no_op(name: str) -> None:
    raise RuntimeError("platform down")


def test_delete_my_data_continues_when_a_set_cannot_be_deleted(res, selfie_png):
    user = ready_user(res, selfie_png)
    pack = packs.create_pack(res.db, user.id, None, None, 1.0, "0.1.0", platform="telegram")
    publish(res.db, pack.id, "e3d1x_by_b")
    out = asyncio.run(core.delete_my_data(res, "telegram", user.platform_user_id, _no_op))
    assert out.sets_failed == ["e3d1x_by_b"] and out.summary.packs == 1 and out.summary.selfies == 1
    assert users.find_user(res.db, "telegram", user.platform_user_id) is None
    nothing = asyncio.run(core.delete_my_data(res, "telegram", user.platform_user_id, _no_op))
    assert nothing.summary is None


def test_upload_size_is_checked_before_download(res):
    core.check_announced_size(res, None)
    core.check_announced_size(res, 20 * 1024 * 1024)
    with pytest.raises(Exception) as err:
        core.check_announced_size(res, 20 * 1024 * 1024 + 1)
    assert err.value.key == "file_too_large"


def test_bot_modules_do_not_import_torch():
    code = ("import sys; import bots.core, bots.notify, bots.telegram.app, bots.telegram.handlers, "
            "bots.telegram.stickers; bad = [m for m in ('torch', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_notifier_rescan_loads_only_candidate_packs(res, selfie_png, monkeypatch):
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    orders = [core.place_order(res, ready_user(res, selfie_png, str(i)), "telegram", preset="full", style_id=style.id)
              for i in range(6)]
    done, open_, regen = orders[:4], orders[4], orders[5]
    for o in done:  # finished and published long ago: not candidates
        c = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
        make_ready(res.db, c.payload["pack_id"], c.id)  # as the engine does before completing
        jobs.complete(res.db, c.id, c.lease_token, {"pack_id": c.payload["pack_id"], "preset": "slim"})
        publish(res.db, c.payload["pack_id"])
    assert jobs.claim(res.db, "eng", 60, kinds=["make_pack"]).id == open_.job_id  # stays running: a candidate
    # published, then its job finished again (a scheduled regeneration): a candidate
    c = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
    assert c.id == regen.job_id
    publish(res.db, regen.pack.id)
    make_ready(res.db, c.payload["pack_id"], c.id)  # as the engine does before completing
    jobs.complete(res.db, c.id, c.lease_token, {"pack_id": regen.pack.id, "preset": "slim"})

    loaded = []
    real_get_pack = packs.get_pack
    monkeypatch.setattr(packs, "get_pack", lambda db, pid: loaded.append(pid) or real_get_pack(db, pid))
    sender = RecordingSender()
    sender.res = res
    found = Notifier(res, "telegram", sender).resume_from_db()
    assert sorted(w.job_id for w in found) == sorted([open_.job_id, regen.job_id])
    assert sorted(loaded) == sorted([open_.pack.id, regen.pack.id])  # the delivered packs were never read


def test_two_notifiers_talk_about_a_job_one_at_a_time(res, selfie_png):
    """Only the claim's holder sends; when it stops renewing (it died), the other
    takes over; once delivered, nobody sends again."""
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    user = ready_user(res, selfie_png)
    placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
    wall = [1000.0]
    senders = {name: RecordingSender() for name in "ab"}
    notifiers = {}
    for name, sender in senders.items():
        sender.res = res
        notifiers[name] = Notifier(res, "telegram", sender, min_interval=0.0, claim_seconds=10.0,
                                   wall_clock=lambda: wall[0])
    a, b = notifiers["a"], notifiers["b"]
    assert {w.job_id for w in a.resume_from_db()} == {w.job_id for w in b.resume_from_db()} == {placed.job_id}
    for _ in range(3):
        asyncio.run(a.tick())
        asyncio.run(b.tick())
    assert senders["a"].events == [("progress", placed.job_id, "queued_soon")] and senders["b"].events == []
    wall[0] += 10.0  # a stopped renewing: its claim lapsed
    asyncio.run(b.tick())
    assert senders["b"].events == [("progress", placed.job_id, "queued_soon")]
    job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
    make_ready(res.db, job.payload["pack_id"], job.id)
    jobs.complete(res.db, job.id, job.lease_token, {"pack_id": placed.pack.id, "preset": "slim"})
    asyncio.run(a.tick())  # a is back, but b holds the job
    asyncio.run(b.tick())
    assert senders["a"].events == [("progress", placed.job_id, "queued_soon")]
    assert senders["b"].events[-1] == ("deliver", placed.job_id, "succeeded")
    assert deliveries.get_claim(res.db, placed.job_id).done
    wall[0] += 100.0
    asyncio.run(a.tick())  # long after: delivered once, never again
    assert [e for e in senders["a"].events if e[0] == "deliver"] == [] and a.watches == {}
    assert a.resume_from_db() == [] and b.watches == {}


def test_a_delivery_told_before_a_stop_is_closed_without_another_message(res, selfie_png):
    """A sender marks a pack published only once its user was told. A process that stopped between
    that and closing the delivery left the job's row and an open claim: a restarted notifier closes
    both and says nothing more, but not while the claim's holder may still be closing it."""
    style = st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png), status="ready")
    user = ready_user(res, selfie_png)
    placed = core.place_order(res, user, "telegram", preset="full", style_id=style.id)
    wall = [1000.0]
    senders = {name: RecordingSender() for name in ("stopped", "restarted")}
    notifiers = {}
    for name, sender in senders.items():
        sender.res = res
        notifiers[name] = Notifier(res, "telegram", sender, min_interval=0.0, claim_seconds=10.0,
                                   wall_clock=lambda: wall[0])
    notifiers["stopped"].watch(placed.job_id, placed.pack.id, user, chat_id="5", message_id="6")
    job = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
    make_ready(res.db, job.payload["pack_id"], job.id)
    jobs.complete(res.db, job.id, job.lease_token, {"pack_id": placed.pack.id, "preset": "slim"})
    publish(res.db, placed.pack.id)  # the stopped process told the user and marked the pack published
    restarted = notifiers["restarted"]
    assert restarted.resume_from_db() == []
    assert deliveries.get_delivery(res.db, placed.job_id) is not None  # its holder's claim is still live
    wall[0] += 10.0  # the claim lapsed: its holder is gone
    assert restarted.resume_from_db() == []
    assert deliveries.get_delivery(res.db, placed.job_id) is None
    assert deliveries.get_claim(res.db, placed.job_id).done
    asyncio.run(restarted.tick())
    assert restarted.resume_from_db() == [] and restarted.watches == {}
    assert senders["restarted"].events == []


@pytest.mark.parametrize("hours", [0, 24])
def test_a_job_failed_on_an_expired_selfie_says_when_in_words(res, face_check, hours):
    cfg = dataclasses.replace(res.cfg, privacy=dataclasses.replace(res.cfg.privacy, selfie_retention_hours=hours))
    here = core.BotResources(cfg, res.db, res.blobs, face_check)
    user = users.get_or_create_user(res.db, "local", "u1")
    job_id = jobs.enqueue(res.db, "make_pack", {"pack_id": None}, "make:expired", user_id=user.id)
    claimed = jobs.claim(res.db, "eng", 60, kinds=["make_pack"])
    jobs.fail(res.db, job_id, claimed.lease_token, "selfie gone", retryable=False, error_key="selfie_expired")
    shown = core.progress_text(core.progress_view(here, jobs.get_job(res.db, job_id)))
    assert message("selfie_expired", hours=hours) in shown
    assert ("24 hours after upload" in shown) == (hours == 24) and "0 hours" not in shown
