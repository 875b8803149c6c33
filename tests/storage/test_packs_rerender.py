"""A re-render's or remake's effect on the pack row: nothing while it runs or when it fails, one step on
success (job, strength, ready); sticker rows trimmed."""
import pytest

from emoji3d import orders
from storage import jobs, packs, users
from storage.blobs import BlobStore
from tests.lifecycle import make_ready, publish


@pytest.fixture()
def store(db, blob_location):
    return db, BlobStore(db, blob_location, gc_grace_seconds=0)


def published_pack(db, blobs) -> tuple[packs.Pack, int]:
    user = users.get_or_create_user(db, "telegram", "42")
    order = orders.PackOrder(user_id=user.id, selfie_digest=blobs.put_bytes(b"selfie"), strength=1.0,
                             exemplar_digest=blobs.put_bytes(b"style"), platform="telegram")
    pack, job_id = packs.order_pack(db, order)
    claimed = jobs.claim(db, "engine", 60)
    make_ready(db, pack.id, job_id)
    jobs.complete(db, job_id, claimed.lease_token, orders.PackResult(pack_id=pack.id, preset="slim").to_dict(), [])
    publish(db, pack.id)
    return packs.get_pack(db, pack.id), job_id


def test_a_successful_rerender_points_the_pack_at_its_job_and_strength(store):
    db, blobs = store
    pack, job_id = published_pack(db, blobs)
    rerender = jobs.enqueue(db, orders.RERENDER_KIND, {"pack_id": pack.id}, "rr-1", user_id=pack.user_id)
    assert packs.mark_rerendered(db, pack.id, rerender, 0.35)
    after = packs.get_pack(db, pack.id)
    assert (after.status, after.job_id, after.strength) == (packs.READY, rerender, 0.35)
    assert after.platform_set_name == pack.platform_set_name  # the same set is updated


def test_a_rerender_does_not_move_a_pack_that_is_not_made(store):
    db, blobs = store
    pack, job_id = published_pack(db, blobs)
    assert not packs.reopen(db, pack.id)  # a made pack is never reopened (a remake leaves it alone)
    other = orders.PackOrder(user_id=pack.user_id, selfie_digest=blobs.put_bytes(b"selfie 2"), strength=1.0,
                             exemplar_digest=blobs.put_bytes(b"style"), platform="telegram")
    unmade, unmade_job = packs.order_pack(db, other)
    assert not packs.mark_rerendered(db, unmade.id, unmade_job, 0.35)
    after = packs.get_pack(db, unmade.id)
    assert (after.status, after.strength) == (packs.PENDING, 1.0)
    with pytest.raises(ValueError):
        packs.mark_rerendered(db, pack.id, job_id, 1.5)
    with pytest.raises(packs.PackNotFound):
        packs.mark_rerendered(db, pack.id + 100, job_id, 0.5)


def test_trimming_stickers_deletes_the_rows_past_the_count_and_frees_their_files(store):
    db, blobs = store
    pack, _ = published_pack(db, blobs)
    files = [blobs.put_bytes(f"sticker {i}".encode()) for i in range(3)]
    for i, digest in enumerate(files):
        packs.put_sticker(db, pack.id, i, "😀", "video", digest)
    assert packs.trim_stickers(db, pack.id, 1) == 2
    assert [s.idx for s in packs.list_stickers(db, pack.id)] == [0]
    blobs.gc(grace_seconds=0)
    assert blobs.exists(files[0]) and not blobs.exists(files[1]) and not blobs.exists(files[2])
    assert packs.trim_stickers(db, pack.id, 1) == 0


def remake_order(db, blobs, pack: packs.Pack, seed: int) -> orders.PackOrder:
    return orders.PackOrder(user_id=pack.user_id, selfie_digest=blobs.put_bytes(b"selfie"), strength=1.0,
                            exemplar_digest=blobs.put_bytes(b"style"), platform="telegram", seed=seed,
                            pack_id=pack.id, regenerate=True)


@pytest.mark.parametrize("how", ["failed", "cancelled"])
def test_a_failed_remake_leaves_the_published_pack_as_it_was(store, how):
    db, blobs = store
    pack, job_id = published_pack(db, blobs)
    same, remake = packs.order_pack(db, remake_order(db, blobs, pack, seed=1))
    assert same.id == pack.id and remake != job_id
    during = packs.get_pack(db, pack.id)
    assert (during.status, during.job_id) == (packs.PUBLISHED, job_id)  # still the published result
    claimed = jobs.claim(db, "engine", 60)
    assert claimed.id == remake
    assert not packs.mark_rendering(db, pack.id)  # what the engine tries first: a made pack stays made
    if how == "failed":
        jobs.fail(db, remake, claimed.lease_token, "CUDA out of memory", retryable=False)
    else:
        jobs.cancel(db, remake)
    assert not packs.mark_failed(db, pack.id)  # what a bot does on a failed or cancelled job
    after = packs.get_pack(db, pack.id)
    assert (after.status, after.job_id, after.platform_set_name) == (packs.PUBLISHED, job_id, pack.platform_set_name)


def test_a_successful_remake_points_the_pack_at_its_job_in_one_step(store):
    db, blobs = store
    pack, job_id = published_pack(db, blobs)
    _, remake = packs.order_pack(db, remake_order(db, blobs, pack, seed=2))
    with pytest.raises(ValueError):
        packs.mark_made(db, pack.id, remake, 1.5)
    assert packs.mark_made(db, pack.id, remake, 0.35)
    after = packs.get_pack(db, pack.id)
    assert (after.status, after.job_id, after.strength) == (packs.READY, remake, 0.35)
    assert after.platform_set_name == pack.platform_set_name  # the same set is updated
    assert packs.undelivered_pack_ids(db, "telegram") == [pack.id]  # a bot publishes the remake


def test_a_result_that_arrives_while_the_older_one_uploads_is_not_marked_published(store):
    """A bot uploads the pack's result; meanwhile a remake succeeds and moves the pack back to ready. The
    upload's end must not mark the pack published (its set holds the older stickers): it stays ready,
    so that a bot publishes the newer result."""
    db, blobs = store
    pack, job_id = published_pack(db, blobs)
    _, remake = packs.order_pack(db, remake_order(db, blobs, pack, seed=4))
    assert packs.mark_uploading(db, pack.id, pack.platform_set_name)  # publishing job_id's result again
    assert packs.mark_made(db, pack.id, remake, 0.5)  # the remake lands during the upload
    assert not packs.mark_published(db, pack.id, job_id=job_id)
    after = packs.get_pack(db, pack.id)
    assert (after.status, after.job_id) == (packs.READY, remake)
    assert packs.undelivered_pack_ids(db, "telegram") == [pack.id]  # a bot publishes the remake next
    assert packs.mark_published(db, pack.id, job_id=remake)
    assert packs.get_pack(db, pack.id).status == packs.PUBLISHED

@pytest.mark.parametrize("earlier_kind", ["remake", "rerender"])
def test_an_earlier_order_that_succeeds_last_does_not_replace_the_later_orders_result(store, earlier_kind):
    """Two changes of one made pack (a user's remake or re-render, a scheduled regeneration) may finish in
    either order; the pack keeps the result of the one ordered last."""
    db, blobs = store
    pack, job_id = published_pack(db, blobs)
    if earlier_kind == "remake":
        _, earlier = packs.order_pack(db, remake_order(db, blobs, pack, seed=3))
    else:
        earlier = jobs.enqueue(db, orders.RERENDER_KIND, {"pack_id": pack.id}, "rr-early", user_id=pack.user_id)
    later = jobs.enqueue(db, orders.REGENERATE_KIND, {"pack_id": pack.id}, f"regen:{pack.id}", priority="batch",
                         user_id=pack.user_id)
    assert packs.mark_made(db, pack.id, later, 0.5)
    publish(db, pack.id)
    moved = (packs.mark_made(db, pack.id, earlier, 0.2) if earlier_kind == "remake"
             else packs.mark_rerendered(db, pack.id, earlier, 0.2))
    assert not moved
    after = packs.get_pack(db, pack.id)
    assert (after.status, after.job_id, after.strength) == (packs.PUBLISHED, later, 0.5)
    assert packs.undelivered_pack_ids(db, "telegram") == []  # nothing to publish again
    assert packs.mark_made(db, pack.id, later)  # its own job still may (the engine retried it)


def test_a_scheduled_regeneration_that_fails_leaves_the_pack_published(store):
    db, blobs = store
    pack, job_id = published_pack(db, blobs)
    regen = jobs.enqueue(db, orders.REGENERATE_KIND, {"pack_id": pack.id}, f"regen:{pack.id}", priority="batch",
                         user_id=pack.user_id)
    assert not packs.mark_rendering(db, pack.id)
    claimed = jobs.claim(db, "engine", 60, kinds=[orders.REGENERATE_KIND])
    jobs.fail(db, regen, claimed.lease_token, "selfie gone", retryable=False, error_key="selfie_gone")
    assert not packs.mark_failed(db, pack.id)
    assert packs.get_pack(db, pack.id).status == packs.PUBLISHED
    assert packs.undelivered_pack_ids(db, "telegram") == []  # nothing to publish again
