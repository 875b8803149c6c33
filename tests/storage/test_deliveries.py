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
