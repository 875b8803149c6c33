"""A re-render's effect on the pack row: one step on success (job, strength, ready), sticker rows trimmed."""
import pytest

from emoji3d import orders
from storage import jobs, packs, users
from storage.blobs import BlobStore
from tests.lifecycle import publish


@pytest.fixture()
def store(db, blob_location):
    return db, BlobStore(db, blob_location, gc_grace_seconds=0)


def published_pack(db, blobs) -> tuple[packs.Pack, int]:
    user = users.get_or_create_user(db, "telegram", "42")
    order = orders.PackOrder(user_id=user.id, selfie_digest=blobs.put_bytes(b"selfie"), strength=1.0,
                             exemplar_digest=blobs.put_bytes(b"style"), platform="telegram")
    pack, job_id = packs.order_pack(db, order)
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


def test_a_rerender_does_not_move_a_pack_that_is_being_remade(store):
    db, blobs = store
    pack, job_id = published_pack(db, blobs)
    assert packs.reopen(db, pack.id)
    assert not packs.mark_rerendered(db, pack.id, job_id, 0.35)
    after = packs.get_pack(db, pack.id)
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
