import pytest

from emoji3d import orders
from storage import jobs, packs, users
from storage.blobs import BlobStore


@pytest.fixture()
def store(db, blob_location):
    return db, BlobStore(db, blob_location, gc_grace_seconds=0)


def order_for(db, blobs, **kw):
    user = users.get_or_create_user(db, "telegram", "42")
    selfie = blobs.put_bytes(b"selfie bytes")
    style = blobs.put_bytes(b"my own style image")
    return orders.PackOrder(user_id=user.id, selfie_digest=selfie, exemplar_digest=style, platform="telegram", **kw)


def test_the_same_order_twice_is_one_pack_and_one_job(store):
    db, blobs = store
    order = order_for(db, blobs, strength=0.7)
    pack1, job1 = packs.order_pack(db, order)
    pack2, job2 = packs.order_pack(db, order)
    assert (pack1.id, job1) == (pack2.id, job2)
    assert jobs.get_job(db, job1).payload["pack_id"] == pack1.id
    other, job3 = packs.order_pack(db, orders.PackOrder(**{**order.to_payload(), "strength": 1.0}))
    assert job3 != job1 and other.id != pack1.id


def test_an_uploaded_style_image_survives_gc_while_queued_and_goes_with_the_user(store):
    db, blobs = store
    order = order_for(db, blobs)
    pack, _ = packs.order_pack(db, order)
    blobs.gc(grace_seconds=0)
    assert blobs.exists(order.exemplar_digest)
    users.delete_user(db, blobs, order.user_id)
    assert not blobs.exists(order.exemplar_digest)
    with pytest.raises(packs.PackNotFound):
        packs.get_pack(db, pack.id)


def test_a_failed_order_can_be_placed_again_on_the_same_pack(store):
    db, blobs = store
    order = order_for(db, blobs, strength=0.7)
    pack, first = packs.order_pack(db, order)
    claimed = jobs.claim(db, "engine", 60)
    packs.mark_rendering(db, pack.id)
    jobs.fail(db, first, claimed.lease_token, "OSError: No space left on device", retryable=False)
    packs.mark_failed(db, pack.id)
    again, second = packs.order_pack(db, order)
    assert second != first and again.id == pack.id
    assert again.status == "pending" and again.job_id == second
    assert packs.order_pack(db, order) == (packs.get_pack(db, pack.id), second)  # idempotent again


def test_result_round_trips():
    r = orders.PackResult(pack_id=3, preset="slim", stickers=[orders.StickerFiles(0, "turn", "🙂", {"telegram_video": "ab"})])
    back = orders.PackResult.from_dict(r.to_dict())
    assert back == r and back.blob_digests() == ["ab"]


def test_avatars_expire_under_the_retention_policy_and_stickers_stay(store):
    db, blobs = store
    order = order_for(db, blobs)
    pack, job_id = packs.order_pack(db, order)
    claimed = jobs.claim(db, "engine", 60)
    avatar, sticker = blobs.put_bytes(b"tuned weights of this user"), blobs.put_bytes(b"sticker file")
    result = orders.PackResult(pack_id=pack.id, preset="slim", avatar=avatar,
                               stickers=[orders.StickerFiles(0, "turn", "🙂", {"telegram_video": sticker})])
    jobs.complete(db, job_id, claimed.lease_token, result.to_dict(), result.blob_digests())
    finished = jobs.get_job(db, job_id).finished_at
    assert packs.expire_avatars(db, blobs, 3600, now=finished + 60) == 0  # younger than the retention
    assert packs.expire_avatars(db, blobs, 3600, now=finished + 3601) == 1
    assert not blobs.exists(avatar)  # the object is gone at once, not after a GC grace
    assert blobs.exists(sticker)
    kept = packs.result_of(jobs.get_job(db, job_id))
    assert kept.avatar is None and kept.stickers[0].files == {"telegram_video": sticker}
