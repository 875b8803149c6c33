"""Every per-user blob a pack job leaves behind follows the retention policy ([privacy] in config.toml),
through the maintenance pass the scheduler's leader runs (``shell.commands.serve.maintenance_once``):

* the selfie goes ``selfie_retention_hours`` after upload;
* the per-selfie inversion (``portrait_3d``: latents, noise, the compact PTI delta), the first-look
  stills and the finetune of a one-off style go ``artifact_retention_days`` after their last use;
* the pack's avatar file goes ``artifact_retention_days`` after the pack was made;
* the stickers, previews and stills of the pack stay (the product; ``/delete`` removes them).
"""
from __future__ import annotations

import dataclasses
import time

import pytest

from emoji3d.config import Config, PathsConfig, PrivacyConfig
from emoji3d.orders import PackOrder, PackResult, StickerFiles, first_look_key
from engine.tasks import artifact_key
from shell.commands.serve import maintenance_once
from storage import artifacts, jobs, packs, selfies, users
from storage.blobs import BlobStore
from storage.db import open_database
from tests.lifecycle import make_ready

HOUR, DAY = 3600.0, 86400.0


def _store(tmp_path, db_url: str | None):
    """(config, database, blob store) with a day's selfie retention and 30 days' artifact retention;
    ``db_url`` None: the config's own SQLite file."""
    cfg = dataclasses.replace(Config(), root=tmp_path, paths=PathsConfig(data_dir="data"),
                              privacy=PrivacyConfig(selfie_retention_hours=24, artifact_retention_days=30))
    db = open_database(db_url or cfg.database_url)
    yield cfg, db, BlobStore(db, cfg.blob_dir, gc_grace_seconds=60.0)
    db.dispose()


@pytest.fixture
def store(tmp_path):
    yield from _store(tmp_path, None)


def test_every_per_user_blob_of_a_pack_follows_the_retention_policy(store, monkeypatch):
    cfg, db, blobs = store
    t0 = time.time()
    user = users.get_or_create_user(db, "local", "retention")
    selfie_digest = blobs.put_bytes(b"selfie jpeg")
    selfies.add_selfie(db, user.id, selfie_digest, ttl_seconds=cfg.privacy.selfie_retention_hours * HOUR)
    pack, _job_id = packs.order_pack(db, PackOrder(user_id=user.id, selfie_digest=selfie_digest,
                                                   exemplar_digest=blobs.put_bytes(b"one-off style image")))
    job = jobs.claim(db, "test", 60, kinds=["make_pack"])
    # What the job cache stores, owned by the user (engine.tasks.BlobArtifactCache / record_first_look).
    derived = {"portrait_3d": blobs.put_bytes(b"latents, noise, compact PTI delta"),
               "style_2d": blobs.put_bytes(b"finetune of the user's one-off style"),
               "first_look": blobs.put_bytes(b"first-look still")}
    artifacts.put_artifact(db, artifact_key("portrait_3d", "selfie"), "portrait_3d", derived["portrait_3d"], user.id)
    artifacts.put_artifact(db, artifact_key("style_2d", "style"), "style_2d", derived["style_2d"], user.id)
    artifacts.put_artifact(db, first_look_key(job.id, "stylized"), "first_look", derived["first_look"], user.id)
    avatar = blobs.put_bytes(b"avatar file: references + int8 residual")
    product = {"sticker": blobs.put_bytes(b"webm"), "preview": blobs.put_bytes(b"preview png"),
               "still": blobs.put_bytes(b"still png")}
    result = PackResult(pack_id=pack.id, preset="slim", avatar=avatar, preview_png=product["preview"],
                        renders=[product["still"]],
                        stickers=[StickerFiles(idx=0, name="turn", emoji="😎", files={"telegram_video": product["sticker"]})])
    make_ready(db, pack.id)
    jobs.complete(db, job.id, job.lease_token, result.to_dict(), result.blob_digests())

    def maintenance_at(offset: float) -> dict:
        monkeypatch.setattr(time, "time", lambda: t0 + offset)
        return maintenance_once(cfg, db, blobs)

    # A day and a minute later: the selfie is gone, everything derived from it is still within its retention.
    done = maintenance_at(DAY + 60)
    assert done["selfies_purged"] == 1 and done["artifacts_evicted"] == 0 and done["avatars_expired"] == 0
    assert not blobs.exists(selfie_digest)
    assert all(blobs.exists(d) for d in [*derived.values(), avatar, *product.values()])
    # A use of the inversion (another style for the same selfie) restarts its retention, not the others'.
    monkeypatch.setattr(time, "time", lambda: t0 + 10 * DAY)
    assert artifacts.get_artifact(db, artifact_key("portrait_3d", "selfie")) is not None
    done = maintenance_at(30 * DAY + 60)
    assert done["artifacts_evicted"] == 2 and done["avatars_expired"] == 1
    assert not blobs.exists(avatar) and not blobs.exists(derived["style_2d"]) and not blobs.exists(derived["first_look"])
    assert blobs.exists(derived["portrait_3d"])
    done = maintenance_at(40 * DAY + 60)
    assert done["artifacts_evicted"] == 1 and not blobs.exists(derived["portrait_3d"])
    assert artifacts.list_artifacts(db, owner_user_id=user.id) == []
    # What stays is the pack itself.
    assert all(blobs.exists(d) for d in product.values())


def test_a_retention_of_0_keeps_nothing_for_later_on_every_key(tmp_path, monkeypatch):
    """0 means the same for both keys: deleted by the first maintenance pass once no job needs it."""
    cfg = dataclasses.replace(Config(), root=tmp_path, paths=PathsConfig(data_dir="data"),
                              privacy=PrivacyConfig(selfie_retention_hours=0, artifact_retention_days=0))
    db = open_database(cfg.database_url)
    blobs = BlobStore(db, cfg.blob_dir, gc_grace_seconds=60.0)
    try:
        t0 = time.time()
        user = users.get_or_create_user(db, "local", "retention-0")
        selfie_digest = blobs.put_bytes(b"selfie kept for no time")
        selfie = selfies.add_selfie(db, user.id, selfie_digest, ttl_seconds=cfg.privacy.selfie_retention_hours * HOUR)
        assert selfies.usable(selfie, t0 + 30)  # can be ordered with until the next pass
        pack, _ = packs.order_pack(db, PackOrder(user_id=user.id, selfie_digest=selfie_digest,
                                                 exemplar_digest=blobs.put_bytes(b"style")))

        def maintenance_at(offset: float) -> dict:
            monkeypatch.setattr(time, "time", lambda: t0 + offset)
            return maintenance_once(cfg, db, blobs)

        # queued: the job still needs the selfie, so it stays
        assert maintenance_at(60)["selfies_purged"] == 0 and blobs.exists(selfie_digest)
        monkeypatch.setattr(time, "time", lambda: t0 + 61)
        job = jobs.claim(db, "test", 600, kinds=["make_pack"])
        inversion = blobs.put_bytes(b"latents")
        artifacts.put_artifact(db, artifact_key("portrait_3d", "s0"), "portrait_3d", inversion, user.id)
        avatar = blobs.put_bytes(b"avatar file")
        result = PackResult(pack_id=pack.id, preset="slim", avatar=avatar, stickers=[
            StickerFiles(idx=0, name="turn", emoji="😎", files={"telegram_video": blobs.put_bytes(b"webm")})])
        running = maintenance_at(62)  # running: the selfie and the user's cached inversion are still needed
        assert running["selfies_purged"] == 0 and running["artifacts_evicted"] == 0 and blobs.exists(inversion)
        make_ready(db, pack.id, job.id)
        jobs.complete(db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
        # the first pass after the job ended deletes the selfie, the inversion and the avatar
        done = maintenance_at(63 + 120)
        assert (done["selfies_purged"], done["artifacts_evicted"], done["avatars_expired"]) == (1, 1, 1)
        assert not blobs.exists(selfie_digest) and not blobs.exists(inversion) and not blobs.exists(avatar)
        assert selfies.latest_selfie(db, user.id) is None
    finally:
        db.dispose()


def test_a_positive_selfie_retention_spares_a_selfie_a_queued_job_needs(store, monkeypatch):
    cfg, db, blobs = store
    t0 = time.time()
    user = users.get_or_create_user(db, "local", "waiting")
    selfie_digest = blobs.put_bytes(b"selfie, order queued behind a long batch")
    selfie = selfies.add_selfie(db, user.id, selfie_digest, ttl_seconds=cfg.privacy.selfie_retention_hours * HOUR)
    assert not selfies.usable(selfie, t0 + DAY + 1)  # expired: no new order with it
    packs.order_pack(db, PackOrder(user_id=user.id, selfie_digest=selfie_digest, exemplar_digest=blobs.put_bytes(b"s")))
    monkeypatch.setattr(time, "time", lambda: t0 + DAY + 60)
    assert maintenance_once(cfg, db, blobs)["selfies_purged"] == 0 and blobs.exists(selfie_digest)
    (job,) = jobs.list_jobs(db, kind="make_pack")
    jobs.cancel(db, job.id)
    assert maintenance_once(cfg, db, blobs)["selfies_purged"] == 1


@pytest.fixture
def store_on_each_db(tmp_path, db_url):  # SQLite, and PostgreSQL when the CI run provides it
    yield from _store(tmp_path, db_url)


def test_a_head_start_no_order_used_goes_with_its_selfie(store_on_each_db, monkeypatch):
    """The inversion a head start made (engine.tasks.handle_prepare_portrait) while the user picked a style:
    if no order named that photo, it is deleted with the selfie, not kept for the artifact retention; an
    inversion an order used stays for the artifact retention, as any other."""
    from emoji3d.orders import PREPARE_KIND, PortraitPrep

    cfg, db, blobs = store_on_each_db
    t0 = time.time()
    kept = {}
    for name, ordered in (("never ordered", False), ("ordered", True)):
        user = users.get_or_create_user(db, "telegram", name)
        selfie_digest = blobs.put_bytes(f"selfie of {name}".encode())
        selfies.add_selfie(db, user.id, selfie_digest, ttl_seconds=cfg.privacy.selfie_retention_hours * HOUR)
        prep = PortraitPrep(user.id, selfie_digest)
        jobs.enqueue(db, PREPARE_KIND, prep.to_payload(), prep.idempotency_key(), user_id=user.id)
        job = jobs.claim(db, "engine", 60, kinds=[PREPARE_KIND])
        key = artifact_key("portrait_3d", f"{selfie_digest}:settings")
        inversion = blobs.put_bytes(f"inversion of {name}".encode())
        artifacts.put_artifact(db, key, "portrait_3d", inversion, user.id)
        jobs.complete(db, job.id, job.lease_token, {"artifact": key, "prepared": True})
        if ordered:
            _pack, order_job = packs.order_pack(db, PackOrder(user_id=user.id, selfie_digest=selfie_digest,
                                                              exemplar_digest=blobs.put_bytes(b"style")))
            jobs.cancel(db, order_job)  # what became of the order does not matter: it named the photo
        kept[name] = (selfie_digest, inversion, key)
    monkeypatch.setattr(time, "time", lambda: t0 + HOUR)
    assert maintenance_once(cfg, db, blobs)["selfies_purged"] == 0  # within the selfie retention: both stay
    assert all(blobs.exists(inv) for _s, inv, _k in kept.values())
    monkeypatch.setattr(time, "time", lambda: t0 + DAY + 60)
    assert maintenance_once(cfg, db, blobs)["selfies_purged"] == 2
    selfie, inversion, key = kept["never ordered"]
    assert not blobs.exists(selfie) and not blobs.exists(inversion) and artifacts.get_artifact(db, key) is None
    selfie, inversion, key = kept["ordered"]
    assert not blobs.exists(selfie) and blobs.exists(inversion) and artifacts.get_artifact(db, key) is not None
