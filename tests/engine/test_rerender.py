"""Re-rendering a finished pack from its stored avatar: another strength and sticker selection, no optimisation."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from emoji3d.config import Config, EngineConfig, PackConfig, PathsConfig, StickerEntry
from emoji3d.errors import AvatarGone
from emoji3d.orders import RERENDER_KIND, PackOrder, PackResult, RerenderOrder
from engine.avatar import portrait_artifact
from engine.avatar.avatar_file import pack_tensors, result_to_bytes
from engine.avatar.pipeline import AvatarResult, MemoryCache
from engine.nets import camera
from engine.resources import EngineResources
from engine.tasks import artifact_key, handle_rerender_pack
from engine.worker import Worker
from storage import artifacts, jobs, packs, users
from storage.blobs import BlobStore
from storage.db import open_database
from tests.lifecycle import make_ready, publish


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rerender")
    stickers = (StickerEntry("turn", "😎", motion="orbit", seconds=0.4), StickerEntry("nod", "👍", motion="nod",
                                                                                      seconds=0.4))
    cfg = dataclasses.replace(Config(), root=folder, paths=PathsConfig(data_dir="data"),
                              engine=EngineConfig(device="cpu", preset="slim"),
                              pack=PackConfig(fps=5.0, size=64, stickers=stickers))
    db = open_database(cfg.database_url)
    blobs = BlobStore(db, cfg.blob_dir)
    res = EngineResources.load(cfg)
    yield cfg, db, blobs, res
    db.dispose()


def stored_avatar(res: EngineResources, db, blobs) -> bytes:
    """An avatar as the pipeline stores it: a latent, its noise, and a stylized delta that differs from PTI's;
    its style and portrait artifacts are in the job cache's table, where the avatar file refers to them."""
    g3d, g2d = res.pipeline.nets.g3d, res.pipeline.nets.g2d
    gen = torch.Generator().manual_seed(4)
    ws = g3d.mapping(torch.randn(1, g3d.config.z_dim, generator=gen), camera.conditioning_label(1))  # [1, L, 512]
    noise = {n: torch.zeros(shape) for n, shape in zip(res.pipeline.noise_names_3d(), res.pipeline.noise_shapes_3d())}
    decoder = {k: v for k, v in g3d.state_dict().items() if k.startswith("decoder.")}
    stylized = {k: (0.5 * torch.randn(v.shape, generator=gen)).half() for k, v in decoder.items()}
    avatar = AvatarResult(w_e=torch.zeros(g2d.num_ws, 512), w_2d=torch.zeros(1, g2d.num_ws, 512), w_3d=ws,
                          noise=noise, camera=camera.orbit_label(torch.tensor([0.0]), torch.tensor([0.0])),
                          delta_2d={}, delta_pti={}, delta_stylized=stylized, preset="slim")
    cache = MemoryCache()
    cache.put("style_2d", "style", pack_tensors({"w_e": avatar.w_e}))
    cache.put("portrait_3d", "selfie", portrait_artifact.to_bytes(portrait_artifact.PortraitArtifact(
        w_2d=avatar.w_2d, w_3d=avatar.w_3d, noise=noise, camera=avatar.camera,
        crop2d_to_crop3d=torch.eye(2, 3, dtype=torch.float64), delta_pti={})))
    for (kind, key), data in cache.store.items():
        artifacts.put_artifact(db, artifact_key(kind, key), kind, blobs.put_bytes(data), None)
    return result_to_bytes(avatar, cache, style_key="style", portrait_key="selfie")


def finished_pack(db, blobs, avatar: bytes | None, seed: int = 0) -> tuple[int, int, int]:
    """(user id, pack id, job id) of a finished make_pack whose result holds ``avatar``."""
    user = users.get_or_create_user(db, "local", f"u{id(avatar)}-{seed}")
    pack, job_id = packs.order_pack(db, PackOrder(user_id=user.id, selfie_digest="a" * 64,
                                                  exemplar_digest=blobs.put_bytes(b"style"), seed=id(avatar) + seed))
    job = jobs.claim(db, "test", 60, kinds=["make_pack"])
    digest = blobs.put_bytes(avatar) if avatar is not None else None
    result = PackResult(pack_id=pack.id, preset="slim", avatar=digest,
                        quality={"identity_pti": 0.4, "identity_stylized": 0.3, "multiview": 0.5,
                                 "style_lpips": 0.2, "weak": [], "notes": []})
    make_ready(db, pack.id)
    jobs.complete(db, job.id, job.lease_token, result.to_dict(), result.blob_digests())
    return user.id, pack.id, job_id


def run_rerender(cfg, db, blobs, res, order: RerenderOrder) -> jobs.Job:
    job_id = jobs.enqueue(db, RERENDER_KIND, order.to_payload(), order.idempotency_key(), user_id=order.user_id)
    handlers = {RERENDER_KIND: functools.partial(handle_rerender_pack, res)}
    worker = Worker(db, blobs, handlers, "test-rerender", 60.0, poll_interval=0.05)
    assert worker.run_once()
    return jobs.get_job(db, job_id)


def test_a_rerender_makes_the_chosen_stickers_at_the_new_strength_without_optimising(engine):
    cfg, db, blobs, res = engine
    user_id, pack_id, source = finished_pack(db, blobs, stored_avatar(res, db, blobs))
    half = run_rerender(cfg, db, blobs, res, RerenderOrder(user_id, pack_id, source, strength=0.0, stickers=("nod",)))
    assert half.status == "succeeded", half.error
    result = packs.result_of(half)
    assert [s.name for s in result.stickers] == ["nod"]
    assert b"Quality" in blobs.read_bytes(result.preview_html)  # a local order's pack has the preview page
    assert set(result.timings) == {"rerender"}  # no optimisation stage ran
    assert result.quality["identity_pti"] == 0.4 and result.quality["identity_stylized"] is None
    assert 0.0 <= result.quality["multiview"] <= 1.0  # measured again at the new strength
    assert result.quality["style_lpips"] is None and "style image is no longer stored" in " ".join(
        result.quality["notes"])  # this pack's style was a one-off image, not stored with a style row
    pack = packs.get_pack(db, pack_id)
    assert (pack.job_id, pack.strength, pack.status) == (half.id, 0.0, packs.READY)  # ready to publish again
    full = run_rerender(cfg, db, blobs, res, RerenderOrder(user_id, pack_id, source, strength=1.0, stickers=("nod",)))
    assert full.status == "succeeded", full.error
    other = packs.result_of(full)
    assert other.stickers[0].files != result.stickers[0].files  # the strength changed the renders
    assert other.avatar == result.avatar  # the same stored avatar


def test_a_rerender_without_a_stored_avatar_says_so(engine):
    cfg, db, blobs, res = engine
    user_id, pack_id, source = finished_pack(db, blobs, None)
    job = run_rerender(cfg, db, blobs, res, RerenderOrder(user_id, pack_id, source, strength=0.5))
    assert job.status == "failed" and job.error_key == AvatarGone.key


def test_a_failed_rerender_leaves_the_published_pack_as_it_was(engine):
    cfg, db, blobs, res = engine
    user_id, pack_id, source = finished_pack(db, blobs, None, seed=1)
    publish(db, pack_id)
    before = packs.get_pack(db, pack_id)
    job = run_rerender(cfg, db, blobs, res, RerenderOrder(user_id, pack_id, source, strength=0.35))
    assert job.status == "failed"
    after = packs.get_pack(db, pack_id)
    assert (after.status, after.job_id, after.strength) == (packs.PUBLISHED, source, before.strength)


def test_the_engine_says_how_its_optimisation_steps_run(engine, caplog):
    """The operator's log names the arithmetic and whether steps are captured (a CPU engine: fp32, eager)."""
    import logging

    cfg = engine[0]
    with caplog.at_level(logging.INFO, logger="emoji3d"):
        EngineResources.load(cfg)
    assert "optimisation steps: fp32, eager (no CUDA graphs)" in caplog.text
