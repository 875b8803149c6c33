"""Styles, packs, stickers, selfies and the artifact cache."""
from __future__ import annotations

import time

import pytest

from storage import artifacts, jobs, packs, selfies, styles, users
from storage.communities import get_or_create_community
from tests.lifecycle import publish


def test_style_scopes_versions_and_names(db, blobs):
    g = get_or_create_community(db, "discord", "42", "Guild")
    house = styles.add_style(db, "toon", blobs.put_bytes(b"v1"))
    own = styles.add_style(db, "toon", blobs.put_bytes(b"guild"), community_id=g.id)  # same name, other scope
    assert house.scope == "global" and own.scope == f"community:{g.id}" and house.is_house and not own.is_house
    with pytest.raises(styles.StyleNameTaken) as ei:
        styles.add_style(db, "toon", blobs.put_bytes(b"dup"))
    assert ei.value.key == "style_name_taken"
    assert [s.name for s in styles.list_styles(db, community_id=g.id)] == ["toon", "toon"]
    old = house.exemplar_digest
    same = styles.set_exemplar(db, house.id, old)
    assert same.version == 1
    new = styles.set_exemplar(db, house.id, blobs.put_bytes(b"v2"))
    assert new.version == 2 and new.status == "pending"
    assert blobs.refcount(old) == 0 and blobs.refcount(new.exemplar_digest) == 1
    styles.set_status(db, house.id, "ready")
    assert styles.find_style(db, "toon").status == "ready"
    with pytest.raises(ValueError):
        styles.set_status(db, house.id, "great")


def test_stickers_and_platform_state(db, blobs):
    u = users.get_or_create_user(db, "telegram", "1")
    p = packs.create_pack(db, u.id, None, None, 0.5, "0.1.0", platform="telegram")
    a, b = blobs.put_bytes(b"a"), blobs.put_bytes(b"b")
    s0 = packs.put_sticker(db, p.id, 0, "😀", "static", a)
    packs.set_sticker_platform_state(db, s0.id, "uploaded", file_id="FILE0")
    packs.set_sticker_platform_state(db, s0.id, "added")
    st = packs.list_stickers(db, p.id)
    assert (st[0].platform_state, st[0].platform_file_id) == ("added", "FILE0")
    s0b = packs.put_sticker(db, p.id, 0, "😀", "static", b)  # re-render replaces the file
    assert blobs.refcount(a) == 0 and blobs.refcount(b) == 1
    assert packs.list_stickers(db, p.id)[0].platform_state == "local" and s0b.id != s0.id
    publish(db, p.id, "me_by_bot")
    assert packs.get_pack(db, p.id).platform_set_name == "me_by_bot"
    with pytest.raises(ValueError):
        packs.put_sticker(db, p.id, 1, "😀", "gif", b)
    with pytest.raises(ValueError):
        packs.create_pack(db, u.id, None, None, 1.5, "0.1.0")
    with pytest.raises(ValueError, match="dotted integers"):
        packs.create_pack(db, u.id, None, None, 0.5, "latest")


def test_version_key_orders_numerically():
    assert packs.version_key("0.10.0") > packs.version_key("0.9.3")
    assert packs.version_key("1.0") == packs.version_key("1.0.0+cu128")


def test_selfies_expire(db, blobs):
    u = users.get_or_create_user(db, "telegram", "1")
    d = blobs.put_bytes(b"face")
    s = selfies.add_selfie(db, u.id, d, ttl_seconds=60)
    keep = selfies.add_selfie(db, u.id, blobs.put_bytes(b"face2"))
    assert selfies.purge_expired(db, blobs, now=time.time()) == 0
    assert selfies.purge_expired(db, blobs, now=s.expires_at + 1) == 1
    assert not blobs.exists(d) and selfies.latest_selfie(db, u.id) == keep


def test_artifact_cache_keys_hits_and_eviction(db, blobs):
    k1 = artifacts.cache_key("finetune", {"style": "ab"}, {"steps": 300, "lr": 2e-3}, "0.1.0")
    assert k1 == artifacts.cache_key("finetune", {"style": "ab"}, {"lr": 2e-3, "steps": 300}, "0.1.0")
    assert k1 != artifacts.cache_key("finetune", {"style": "ab"}, {"steps": 300, "lr": 2e-3}, "0.2.0")
    assert artifacts.get_artifact(db, k1) is None
    d = blobs.put_bytes(b"weights")
    artifacts.put_artifact(db, k1, "finetune", d, None)
    hit = artifacts.get_artifact(db, k1)
    assert hit.blob_digest == d and blobs.refcount(d) == 1
    assert artifacts.evict_unused(db, blobs, 3600) == 0
    assert artifacts.evict_unused(db, blobs, 3600, now=time.time() + 7200) == 1
    assert not blobs.exists(d) and artifacts.get_artifact(db, k1) is None


def test_a_house_style_whose_finetune_fails_for_good_reads_failed_with_the_reason(db, blobs):
    """Retries used up by crashes, or a worker killed on the last attempt: the style is shown failed
    (and so no longer offered), though no process wrote that status."""
    from storage.style_catalog import enqueue_finetune

    crashing = styles.add_style(db, "crashing", blobs.put_bytes(b"a"))
    killed = styles.add_style(db, "killed", blobs.put_bytes(b"b"))
    for style in (crashing, killed):
        enqueue_finetune(db, style)
    t = time.time()
    for attempt in range(3):  # each round both jobs are claimed; one crashes, the other's worker dies
        now = t + 1000 * attempt
        for _ in range(2):
            job = jobs.claim(db, "engine", 60, kinds=["style_finetune"], now=now)
            styles.set_status(db, job.payload["style_id"], "tuning")
            if job.payload["style_id"] == crashing.id:
                jobs.fail(db, job.id, job.lease_token, "RuntimeError: CUDA error", now=now)
        if attempt < 2:
            assert styles.get_style(db, crashing.id).status in ("pending", "tuning")  # still being retried
    # the killed worker's lease runs out on its last attempt; the next claim sweeps it
    assert jobs.claim(db, "engine", 60, kinds=["style_finetune"], now=t + 10_000) is None
    got = {s.name: (s.status, s.status_reason) for s in styles.list_styles(db)}
    assert got == {"crashing": ("failed", "internal"), "killed": ("failed", "worker_lost")}
    # a new version (a new exemplar) is tuned afresh
    assert styles.set_exemplar(db, crashing.id, blobs.put_bytes(b"a2")).status == "pending"
