"""bots.pack_changes on a real database: what a re-render or a retry orders, and what it refuses."""
from __future__ import annotations

import pytest

from bots import core, pack_changes
from emoji3d.orders import JOB_KIND, RERENDER_KIND, PackResult, StickerFiles
from storage import jobs, packs
from storage import styles as st
from tests.lifecycle import make_ready, publish


def finished(res, selfie_png, names, *, platform_user="7"):
    core.give_consent(res, core.ensure_user(res, "telegram", platform_user))
    user = core.ensure_user(res, "telegram", platform_user)
    core.accept_selfie(res, user, selfie_png)
    style = st.find_style(res.db, "toon") or st.add_style(res.db, "toon", res.blobs.put_bytes(selfie_png),
                                                          status="ready")
    placed = core.place_order(res, user, "telegram", preset="medium", style_id=style.id, seed=5)
    job = jobs.claim(res.db, "eng", 60, kinds=[JOB_KIND])
    result = PackResult(pack_id=placed.pack.id, preset="slim", avatar=res.blobs.put_bytes(b"avatar"),
                        stickers=[StickerFiles(i, n, "😀", {"telegram_video": res.blobs.put_bytes(n.encode())})
                                  for i, n in enumerate(names)])
    make_ready(res.db, placed.pack.id)
    jobs.complete(res.db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
    publish(res.db, placed.pack.id)
    return user, packs.get_pack(res.db, placed.pack.id), job


def test_a_rerender_keeps_what_it_does_not_change(res, selfie_png):
    names = pack_changes.sticker_names(res.cfg)
    user, pack, job = finished(res, selfie_png, names[:2])
    assert pack_changes.current_selection(res, pack) == names[:2]
    by_strength = jobs.get_job(res.db, pack_changes.order_rerender(res, user, pack.id, strength=1.0))
    assert by_strength.payload["stickers"] == list(names[:2]) and by_strength.payload["strength"] == 1.0
    by_choice = jobs.get_job(res.db, pack_changes.order_rerender(res, user, pack.id, stickers=names))
    assert by_choice.payload["stickers"] == [] and by_choice.payload["strength"] == 0.7  # all = the default
    assert pack_changes.order_rerender(res, user, pack.id, stickers=names) == by_choice.id  # one job
    assert by_choice.kind == RERENDER_KIND
    with pytest.raises(pack_changes.NoStickersChosen):
        pack_changes.order_rerender(res, user, pack.id, stickers=())
    mask = pack_changes.selection_mask(res.cfg, names[:2])
    assert mask == 0b11 and pack_changes.selection_from_mask(res.cfg, mask) == names[:2]


def test_a_retry_uses_the_next_seed_and_only_the_owner_may_order_it(res, selfie_png):
    user, pack, job = finished(res, selfie_png, ["turn"])
    seed = pack_changes.retry_seed(res, pack)
    assert seed == 6
    core.give_consent(res, core.ensure_user(res, "telegram", "8"))
    other = core.ensure_user(res, "telegram", "8")
    with pytest.raises(pack_changes.PackNotChangeable):
        pack_changes.order_retry(res, other, pack.id, seed)
    placed = pack_changes.order_retry(res, user, pack.id, seed)
    # the published pack stays as it is until the remake succeeds
    assert placed.pack.id == pack.id and (placed.pack.status, placed.pack.job_id) == (packs.PUBLISHED, job.id)
    order = jobs.get_job(res.db, placed.job_id).payload
    assert (order["seed"], order["regenerate"], order["selfie_digest"]) == (6, True, job.payload["selfie_digest"])
    assert pack_changes.order_retry(res, user, pack.id, seed).job_id == placed.job_id  # pressed twice
    with pytest.raises(pack_changes.PackNotChangeable):  # no re-render of the old result while it is remade
        pack_changes.order_rerender(res, user, pack.id, strength=0.35)


def test_a_retry_after_a_rerender_keeps_the_strength_the_pack_has_now(res, selfie_png):
    user, pack, _job = finished(res, selfie_png, ["turn"], platform_user="9")
    again = jobs.get_job(res.db, pack_changes.order_rerender(res, user, pack.id, strength=1.0))
    claimed = jobs.claim(res.db, "eng", 60, kinds=[RERENDER_KIND])
    assert claimed.id == again.id
    result = PackResult(pack_id=pack.id, preset="slim", avatar=res.blobs.put_bytes(b"avatar"), stickers=[
        StickerFiles(0, "turn", "😀", {"telegram_video": res.blobs.put_bytes(b"turn at full")})])
    jobs.complete(res.db, claimed.id, claimed.lease_token, result.to_dict(), result.blob_digests())
    assert packs.mark_rerendered(res.db, pack.id, claimed.id, 1.0)
    pack = packs.get_pack(res.db, pack.id)
    placed = pack_changes.order_retry(res, user, pack.id, pack_changes.retry_seed(res, pack))
    assert jobs.get_job(res.db, placed.job_id).payload["strength"] == 1.0  # not the origin order's 0.7
