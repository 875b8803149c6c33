"""Delivery references: record/update/get/delete, token hygiene, cascades and
removal by user deletion."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from storage import deliveries
from storage import jobs
from storage import users


def _job(db, user, key="k1"):
    return jobs.enqueue(db, "make_pack", {"pack_id": 1}, f"make:{key}", user_id=user.id)


def test_record_then_partial_updates_keep_other_fields(db):
    u = users.get_or_create_user(db, "discord", "42")
    jid = _job(db, u)
    ref = deliveries.record_delivery(db, jid, "discord", chat_id=1001, message_id="@original", guild_id="77",
                            application_id=555, token="secret-token", started_at=1_700_000_000.5)
    assert ref.user_id == u.id and ref.chat_id == "1001" and ref.application_id == "555"
    assert ref.started_at == pytest.approx(1_700_000_000.5)
    deliveries.record_delivery(db, jid, "discord", fallback_chat_id="9", fallback_message_id="10")
    got = deliveries.get_delivery(db, jid)
    assert got.token == "secret-token" and got.guild_id == "77" and got.fallback_message_id == "10"
    assert got.updated_at >= got.created_at
    assert deliveries.update_delivery(db, jid, message_id=None)
    assert deliveries.get_delivery(db, jid).message_id is None and deliveries.get_delivery(db, jid).chat_id == "1001"
    assert [r.job_id for r in deliveries.list_deliveries(db, "discord")] == [jid]
    assert deliveries.list_deliveries(db, "telegram") == []


def test_token_never_in_repr_and_forget_token_clears_only_it(db):
    u = users.get_or_create_user(db, "discord", "42")
    jid = _job(db, u)
    ref = deliveries.record_delivery(db, jid, "discord", token="very-secret", guild_id="5")
    assert "very-secret" not in repr(ref) and "very-secret" not in str(ref)
    assert deliveries.forget_token(db, jid)
    got = deliveries.get_delivery(db, jid)
    assert got.token is None and got.guild_id == "5"


def test_bad_input_is_refused(db):
    u = users.get_or_create_user(db, "telegram", "1")
    jid = _job(db, u)
    with pytest.raises(deliveries.DeliveryJobMissing):
        deliveries.record_delivery(db, jid + 100, "telegram", chat_id="1")
    with pytest.raises(ValueError, match="unknown delivery field"):
        deliveries.record_delivery(db, jid, "telegram", chat="1")
    with pytest.raises(ValueError, match="platform"):
        deliveries.record_delivery(db, jid, "", chat_id="1")
    with pytest.raises(ValueError, match="started_at"):
        deliveries.record_delivery(db, jid, "telegram", started_at="yesterday")
    with pytest.raises(ValueError, match="chat_id"):
        deliveries.record_delivery(db, jid, "telegram", chat_id="")
    deliveries.record_delivery(db, jid, "telegram", chat_id="-100")
    with pytest.raises(ValueError, match="telegram delivery reference"):
        deliveries.record_delivery(db, jid, "discord", chat_id="1")
    assert not deliveries.update_delivery(db, jid + 100, message_id="3")


def test_delete_and_cascade_with_the_job(db):
    u = users.get_or_create_user(db, "telegram", "1")
    j1, j2 = _job(db, u, "a"), _job(db, u, "b")
    deliveries.record_delivery(db, j1, "telegram", chat_id="-100", message_id="7")
    deliveries.record_delivery(db, j2, "telegram", chat_id="-100", message_id="8")
    assert deliveries.delete_delivery(db, j1) and not deliveries.delete_delivery(db, j1)
    assert deliveries.get_delivery(db, j1) is None
    with db.write() as c:
        c.execute(sa.text("DELETE FROM jobs WHERE id = :j"), {"j": j2})
    assert deliveries.get_delivery(db, j2) is None


def test_delete_user_removes_their_delivery_rows_only(db, blobs):
    alice = users.get_or_create_user(db, "discord", "1")
    bob = users.get_or_create_user(db, "discord", "2")
    ja, jb = _job(db, alice, "a"), _job(db, bob, "b")
    deliveries.record_delivery(db, ja, "discord", token="a-token", guild_id="g")
    deliveries.record_delivery(db, jb, "discord", token="b-token", guild_id="g")
    users.delete_user(db, blobs, alice.id)
    assert deliveries.get_delivery(db, ja) is None
    assert deliveries.get_delivery(db, jb) is not None and deliveries.get_delivery(db, jb).token == "b-token"
    with db.read() as c:
        assert c.execute(sa.text("SELECT COUNT(*) FROM delivery_refs")).scalar_one() == 1


# ----------------------------------------------------------------------------- claims

def test_a_claim_is_held_by_one_holder_until_it_lapses(db):
    u = users.get_or_create_user(db, "telegram", "1")
    j = _job(db, u)
    a = deliveries.claim_delivery(db, j, "telegram", "proc-a", 10.0, now=1000.0)
    assert a.held and a.holder == "proc-a" and a.expires_at == 1010.0 and not a.done
    b = deliveries.claim_delivery(db, j, "telegram", "proc-b", 10.0, now=1005.0)
    assert not b.held and b.holder == "proc-a" and b.expires_at == 1010.0  # a is alive
    renewed = deliveries.claim_delivery(db, j, "telegram", "proc-a", 10.0, now=1008.0)
    assert renewed.held and renewed.expires_at == 1018.0
    assert not deliveries.claim_delivery(db, j, "telegram", "proc-b", 10.0, now=1017.9).held
    taken = deliveries.claim_delivery(db, j, "telegram", "proc-b", 10.0, now=1018.0)  # a died: its claim lapsed
    assert taken.held and taken.holder == "proc-b"
    assert not deliveries.claim_delivery(db, j, "telegram", "proc-a", 10.0, now=1019.0).held
    assert not deliveries.finish_delivery(db, j, "proc-a", now=1019.0)  # a no longer holds it
    assert deliveries.finish_delivery(db, j, "proc-b", now=1020.0)
    for holder in ("proc-a", "proc-b"):  # delivered: nobody takes it again, however late
        c = deliveries.claim_delivery(db, j, "telegram", holder, 10.0, now=5000.0)
        assert c.done and not c.held and c.done_at == 1020.0


def test_release_hands_over_at_once_and_reopen_frees_a_finished_claim(db):
    u = users.get_or_create_user(db, "telegram", "1")
    j = _job(db, u)
    assert deliveries.claim_delivery(db, j, "telegram", "a", 60.0).held
    assert not deliveries.reopen_delivery(db, j)  # a live claim is left alone
    assert not deliveries.claim_delivery(db, j, "telegram", "b", 60.0).held
    assert deliveries.release_delivery(db, j, "a") and not deliveries.release_delivery(db, j, "b")
    assert deliveries.claim_delivery(db, j, "telegram", "b", 60.0).held
    assert deliveries.finish_delivery(db, j, "b")
    assert deliveries.reopen_delivery(db, j)
    again = deliveries.claim_delivery(db, j, "telegram", "a", 60.0)
    assert again.held and not again.done
    assert deliveries.get_claim(db, j).holder == "a"


def test_claims_refuse_bad_input_and_missing_jobs_and_go_with_the_job(db, blobs):
    u = users.get_or_create_user(db, "telegram", "1")
    j = _job(db, u)
    with pytest.raises(deliveries.DeliveryJobMissing):
        deliveries.claim_delivery(db, j + 100, "telegram", "a", 10.0)
    with pytest.raises(ValueError, match="holder"):
        deliveries.claim_delivery(db, j, "telegram", "", 10.0)
    with pytest.raises(ValueError, match="ttl"):
        deliveries.claim_delivery(db, j, "telegram", "a", 0)
    deliveries.claim_delivery(db, j, "telegram", "a", 10.0)
    users.delete_user(db, blobs, u.id)
    assert deliveries.get_claim(db, j) is None


def test_owner_names_are_kept_per_pack_and_go_with_it(db, blobs):
    from storage import packs

    u = users.get_or_create_user(db, "discord", "1")
    p = packs.create_pack(db, u.id, None, None, 1.0, "0.1.0", platform="discord")
    assert deliveries.owner_name(db, p.id) is None
    deliveries.record_owner_name(db, p.id, "discord", "  Bobby ")
    deliveries.record_owner_name(db, p.id, "discord", "Bob the Builder")  # the latest order wins
    assert deliveries.owner_name(db, p.id) == "Bob the Builder"
    with pytest.raises(ValueError):
        deliveries.record_owner_name(db, p.id, "discord", "   ")
    users.delete_user(db, blobs, u.id)
    assert deliveries.owner_name(db, p.id) is None


def test_undelivered_jobs_are_those_with_a_row_of_the_platform_and_no_finished_claim(db):
    u = users.get_or_create_user(db, "telegram", "7")
    followed, delivered, discord_job, unfollowed = (_job(db, u, k) for k in ("a", "b", "c", "d"))
    for j in (followed, delivered):
        deliveries.record_delivery(db, j, "telegram", chat_id="5")
    deliveries.record_delivery(db, discord_job, "discord", chat_id="6")
    assert deliveries.undelivered_job_ids(db, "telegram") == [followed, delivered]
    deliveries.claim_delivery(db, followed, "telegram", "a", 60.0)  # held, not finished: still undelivered
    assert deliveries.claim_delivery(db, delivered, "telegram", "a", 60.0).held
    assert deliveries.finish_delivery(db, delivered, "a")
    assert deliveries.undelivered_job_ids(db, "telegram") == [followed]
    assert deliveries.undelivered_job_ids(db, "discord") == [discord_job]
    assert unfollowed not in deliveries.undelivered_job_ids(db, "telegram")
