"""User deletion removes the user's rows and the blobs only they used, nothing else."""
from __future__ import annotations

import sqlalchemy as sa
import pytest

from storage import artifacts, jobs, packs, selfies, styles, users
from storage.communities import get_or_create_community


def _count(db, sql, **params):
    with db.read() as c:
        return c.execute(sa.text(sql), params).scalar_one()


def _world(db, blobs):
    alice = users.get_or_create_user(db, "telegram", "111")
    bob = users.get_or_create_user(db, "discord", "222")
    users.record_consent(db, alice.id)
    guild = get_or_create_community(db, "discord", "g1", "Guild")
    w = {"alice": alice, "bob": bob}
    w["exemplar"] = blobs.put_bytes(b"house style exemplar")
    house = styles.add_style(db, "toon", w["exemplar"], status="ready")
    w["guild_exemplar"] = blobs.put_bytes(b"alice's guild style")
    guild_style = styles.add_style(db, "alice-style", w["guild_exemplar"], community_id=guild.id, added_by=alice.id)
    w["guild_style"] = guild_style
    # Alice: a selfie only she has, a selfie identical to Bob's, a pack, a job, an owned cache entry.
    w["a_selfie"] = blobs.put_bytes(b"alice face")
    selfies.add_selfie(db, alice.id, w["a_selfie"])
    w["same_selfie"] = blobs.put_bytes(b"same photo")
    selfies.add_selfie(db, alice.id, w["same_selfie"])
    selfies.add_selfie(db, bob.id, w["same_selfie"])
    pack = packs.create_pack(db, alice.id, house.id, house.version, 0.7, "0.1.0")
    w["a_sticker"] = blobs.put_bytes(b"alice sticker 0")
    packs.put_sticker(db, pack.id, 0, "😀", "static", w["a_sticker"])
    packs.put_sticker(db, pack.id, 1, "😎", "static", w["exemplar"])  # same bytes as the style: shared
    jid = jobs.enqueue(db, "make", {"pack": pack.id}, f"make:{pack.id}", user_id=alice.id)
    job = jobs.claim(db, "w", 60)
    w["a_result"] = blobs.put_bytes(b"alice job result")
    jobs.complete(db, jid, job.lease_token, {"ok": True}, [w["a_result"]])
    w["a_inversion"] = blobs.put_bytes(b"alice inversion")
    artifacts.put_artifact(db, "k-inv", "inversion", w["a_inversion"], alice.id)
    w["finetune"] = blobs.put_bytes(b"shared finetune")
    artifacts.put_artifact(db, "k-ft", "finetune", w["finetune"], None)
    # Bob's own things.
    bpack = packs.create_pack(db, bob.id, house.id, house.version, 0.5, "0.1.0")
    w["b_sticker"] = blobs.put_bytes(b"bob sticker")
    packs.put_sticker(db, bpack.id, 0, "🙂", "static", w["b_sticker"])
    jobs.enqueue(db, "make", {"pack": bpack.id}, f"make:{bpack.id}", user_id=bob.id)
    w["bob_pack"] = bpack
    return w


def test_delete_user_removes_rows_and_exclusive_blobs_only(db, blobs):
    w = _world(db, blobs)
    alice, bob = w["alice"], w["bob"]
    bob_rows_before = {t: _count(db, f"SELECT COUNT(*) FROM {t} WHERE user_id = :u", u=bob.id)
                       for t in ("selfies", "packs", "jobs")}
    summary = users.delete_user(db, blobs, alice.id)
    assert (summary.selfies, summary.packs, summary.stickers, summary.jobs, summary.artifacts) == (2, 1, 2, 1, 1)
    # Exclusive blobs: gone from disk and from the table.
    for key in ("a_selfie", "a_sticker", "a_result", "a_inversion"):
        assert not blobs.exists(w[key]), key
        assert _count(db, "SELECT COUNT(*) FROM blobs WHERE digest = :d", d=w[key]) == 0
    assert summary.blobs_removed == 4
    assert summary.bytes_freed == sum(len(b) for b in (b"alice face", b"alice sticker 0", b"alice job result",
                                                       b"alice inversion"))
    # Shared blobs survive with their other references.
    for key in ("same_selfie", "exemplar", "guild_exemplar", "finetune", "b_sticker"):
        assert blobs.exists(w[key]) and blobs.refcount(w[key]) >= 1, key
    assert summary.blobs_kept_shared == 2  # same_selfie, exemplar
    # No row anywhere still names Alice.
    assert users.find_user(db, "telegram", "111") is None
    for table, col in (("selfies", "user_id"), ("packs", "user_id"), ("jobs", "user_id"),
                       ("artifacts", "owner_user_id"), ("styles", "added_by")):
        assert _count(db, f"SELECT COUNT(*) FROM {table} WHERE {col} = :u", u=alice.id) == 0
    assert _count(db, "SELECT COUNT(*) FROM blob_refs r WHERE NOT EXISTS "
                      "(SELECT 1 FROM blobs b WHERE b.digest = r.digest)") == 0
    # Bob and the shared things are untouched.
    assert {t: _count(db, f"SELECT COUNT(*) FROM {t} WHERE user_id = :u", u=bob.id)
            for t in ("selfies", "packs", "jobs")} == bob_rows_before
    assert len(packs.list_stickers(db, w["bob_pack"].id)) == 1
    assert styles.get_style(db, w["guild_style"].id).added_by is None
    assert artifacts.get_artifact(db, "k-ft") is not None and artifacts.get_artifact(db, "k-inv") is None
    # Nothing unreferenced is left behind.
    assert blobs.stats()["unreferenced"] == 0


def test_delete_unknown_user_is_a_clear_error(db, blobs):
    with pytest.raises(users.UserNotFound) as ei:
        users.delete_user(db, blobs, 999)
    assert ei.value.key == "user_not_found"


def test_running_job_of_deleted_user_cannot_complete(db, blobs):
    u = users.get_or_create_user(db, "telegram", "5")
    jid = jobs.enqueue(db, "make", {}, "m", user_id=u.id)
    job = jobs.claim(db, "w", 60)
    users.delete_user(db, blobs, u.id)
    d = blobs.put_bytes(b"late result")
    with pytest.raises(jobs.LeaseLost):
        jobs.complete(db, jid, job.lease_token, {}, [d])
    assert blobs.refcount(d) == 0


def test_get_or_create_user_is_stable(db):
    a = users.get_or_create_user(db, "telegram", "1")
    assert users.get_or_create_user(db, "telegram", "1") == a
    assert users.get_or_create_user(db, "discord", "1").id != a.id
    with pytest.raises(ValueError):
        users.get_or_create_user(db, "", "1")
