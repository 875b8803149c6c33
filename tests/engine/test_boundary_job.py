"""The engine fits its expression boundaries itself: one batch job per generator digest, with progress,
cancellable, installing the file where the engine reads it; packs made afterwards have the expressions.

The "pretrained" weights are small random networks written as the folders `emoji3d weights convert`
writes; they draw no faces, so the job scores with image statistics (``score_by_proxy``), the only
thing replaced here."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from emoji3d.config import Config, EngineConfig, PackConfig, PathsConfig, StickerEntry
from emoji3d.orders import BOUNDARY_FIT_KIND, RERENDER_KIND, RerenderOrder, boundary_fit_key
from engine import boundary_job
from engine.avatar import networks
from engine.nets import arcface, e4e, eg3d, perceptual, stylegan2
from engine.render import edits
from engine.resources import EngineResources
from engine.tasks import build_handlers, handle_rerender_pack
from engine.weights.convert import DISCRIMINATOR, GENERATOR, write_converted
from engine.worker import Worker
from storage import jobs, packs
from storage.blobs import BlobStore
from storage.db import open_database
from tests.engine.test_rerender import finished_pack, stored_avatar


def install_pretrained(weights_dir) -> None:
    """Small random networks in the pretrained folders the pipeline loads."""
    nets = {
        "stylegan2_ffhq": {
            GENERATOR: stylegan2.StyleGAN2Generator.from_config(stylegan2.slim_generator_config(8), seed=1),
            DISCRIMINATOR: stylegan2.StyleGAN2Discriminator.from_config(stylegan2.slim_discriminator_config(8), seed=2)},
        "e4e_ffhq": e4e.E4EModel.from_config(e4e.E4EConfig(stylegan_size=8), seed=3),
        "eg3d_ffhq": eg3d.TriPlaneGenerator.from_config(
            dataclasses.replace(eg3d.PRESETS["slim128"], neural_rendering_resolution=16), seed=4),
        "arcface_ir_se50": arcface.ArcFaceBackbone.from_config(arcface.ArcFaceConfig(), seed=5),
        "vgg16": perceptual.LPIPSNetwork.from_config(perceptual.LPIPSConfig(net="alex"), seed=6),
        "alexnet": perceptual.LPIPSNetwork.from_config(perceptual.LPIPSConfig(net="alex"), seed=7),
    }
    for name, net in nets.items():
        write_converted(weights_dir / name, net, source=f"{name} (test)")
    assert networks.pretrained_available(weights_dir)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("boundary_job")
    stickers = (StickerEntry("turn", "😎", motion="orbit", seconds=0.4),
                StickerEntry("smile", "😄", expression="smile", seconds=0.4))
    cfg = dataclasses.replace(Config(), root=folder, paths=PathsConfig(data_dir="data"),
                              engine=EngineConfig(device="cpu", preset="auto"),
                              pack=PackConfig(fps=5.0, size=64, stickers=stickers, boundary_fit_samples=24))
    install_pretrained(cfg.weights_dir)
    db = open_database(cfg.database_url)
    blobs = BlobStore(db, cfg.blob_dir)
    yield cfg, db, blobs
    db.dispose()


def fit_jobs(db) -> list[jobs.Job]:
    return [j for j in jobs.list_jobs(db) if j.kind == BOUNDARY_FIT_KIND]


def run_rerender(db, blobs, res, user_id, pack_id, source, attempt: str) -> packs.PackResult:
    order = RerenderOrder(user_id, pack_id, source, strength=1.0)
    job_id = jobs.enqueue(db, RERENDER_KIND, order.to_payload(), f"{order.idempotency_key()}:{attempt}",
                          user_id=user_id)
    worker = Worker(db, blobs, {RERENDER_KIND: functools.partial(handle_rerender_pack, res)}, "test-rerender", 60.0)
    assert worker.run_once()
    job = jobs.get_job(db, job_id)
    assert job.status == "succeeded", job.error
    return packs.result_of(job)


def test_the_engine_fits_its_boundaries_once_per_generator_and_later_packs_have_the_expressions(engine):
    cfg, db, blobs = engine
    handlers = build_handlers(cfg)  # the engine's start: loads the pretrained folders, enqueues the fit
    res = handlers[RERENDER_KIND].args[0]
    assert res.pipeline.nets.preset == "pretrained" and res.boundaries is None
    [fit] = fit_jobs(db)
    assert fit.priority == "batch" and fit.status == "queued"
    assert fit.idempotency_key == boundary_fit_key(res.generator_digest) and res.generator_digest in fit.idempotency_key
    assert fit.payload == {"generator_digest": res.generator_digest, "samples": 24}
    build_handlers(cfg)  # a second engine on the same generator: still one job
    assert [j.id for j in fit_jobs(db)] == [fit.id]

    # a pack made before the fit: the expression sticker is reported as not made
    user_id, pack_id, source = finished_pack(db, blobs, stored_avatar(res, db, blobs))
    before = run_rerender(db, blobs, res, user_id, pack_id, source, "before")
    assert [s.name for s in before.stickers] == ["turn"]
    assert any("smile" in note and "no expression boundary file" in note for note in before.missing)

    stages: list[tuple[str, float]] = []
    original = jobs.set_progress

    def recording(db_, job_id, token, stage, fraction, **kw):
        stages.append((stage, fraction))
        return original(db_, job_id, token, stage, fraction, **kw)

    jobs.set_progress = recording
    try:
        worker = Worker(db, blobs, {BOUNDARY_FIT_KIND: functools.partial(
            boundary_job.handle_fit_boundaries, res, score_by_proxy=True)}, "test-fit", 60.0, progress_interval=0.0)
        assert worker.run_once()
    finally:
        jobs.set_progress = original
    done = jobs.get_job(db, fit.id)
    assert done.status == "succeeded", done.error
    assert [s for s, _ in stages] == ["boundaries"] * len(stages) and len(stages) >= 4  # per batch of 8 of 24
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and 0.9 < fractions[-1] < 1.0
    bset = edits.load_boundaries(cfg.boundaries_path)
    assert bset.generator_digest == res.generator_digest == edits.generator_digest(res.pipeline.nets.g3d)
    assert set(bset.names()) == {"smile", "surprise", "anger", "blink"}
    assert done.result["generator_digest"] == res.generator_digest and done.result["samples"] == 24

    # the engine reads the new file without a restart; a later pack has the expression
    after = run_rerender(db, blobs, res, user_id, pack_id, source, "after")
    assert [s.name for s in after.stickers] == ["turn", "smile"] and not after.missing
    # and a restarted engine finds the file: nothing more to fit
    assert [j.id for j in fit_jobs(db)] == [fit.id]
    assert boundary_job.enqueue_fit(db, EngineResources.load(cfg)) is None
    # an engine on another host (same database and blob store, no local file) installs the stored copy
    assert blobs.read_bytes(done.result["file"]) == cfg.boundaries_path.read_bytes()
    cfg.boundaries_path.unlink()
    other = build_handlers(cfg)[RERENDER_KIND].args[0]
    assert other.boundaries is not None and other.boundaries.generator_digest == res.generator_digest
    assert [j.id for j in fit_jobs(db)] == [fit.id]


def test_a_cancelled_fit_stops_and_writes_nothing(tmp_path, engine):
    cfg, _, _ = engine
    cfg = dataclasses.replace(cfg, paths=PathsConfig(data_dir=str(tmp_path / "data")),
                              weights=dataclasses.replace(cfg.weights, dir=str(cfg.weights_dir)))
    db = open_database(cfg.database_url)
    blobs = BlobStore(db, cfg.blob_dir)
    try:
        res = EngineResources.load(cfg)
        job_id = boundary_job.enqueue_fit(db, res)
        assert job_id is not None and jobs.get_job(db, job_id).priority == "batch"

        def cancel_then_fit(job, jc):
            jobs.cancel(db, job.id)
            return boundary_job.handle_fit_boundaries(res, job, jc, score_by_proxy=True)

        assert Worker(db, blobs, {BOUNDARY_FIT_KIND: cancel_then_fit}, "test-cancel", 60.0).run_once()
        assert jobs.get_job(db, job_id).status == "cancelled"
        assert not cfg.boundaries_path.exists() and res.boundaries is None
    finally:
        db.dispose()


def test_an_unusable_file_is_kept_aside_not_lost(tmp_path):
    g = eg3d.slim_generator("slim128", seed=20)
    normal = torch.nn.functional.normalize(torch.randn(512), dim=0)
    other = edits.BoundarySet("f" * 64, "pretrained", {"smile": edits.Boundary("smile", normal, d=1.0)})
    path = tmp_path / "eg3d.safetensors"
    edits.save_boundaries(other, path)
    mine = edits.BoundarySet(edits.generator_digest(g), "pretrained", {"smile": edits.Boundary("smile", normal, d=2.0)})
    aside = boundary_job.install_boundaries(mine, path)
    assert aside == tmp_path / "eg3d.safetensors.replaced-ffffffffffff"
    assert edits.load_boundaries(aside).generator_digest == "f" * 64
    assert edits.load_boundaries(path).get("smile").d == 2.0
    path.write_bytes(b"damaged")
    assert boundary_job.install_boundaries(mine, path).name == "eg3d.safetensors.replaced-unreadable"


def separate_data(cfg, folder, **pack):
    """The module's engine config with its own database and blob store under ``folder``."""
    return dataclasses.replace(cfg, paths=PathsConfig(data_dir=str(folder / "data")),
                               weights=dataclasses.replace(cfg.weights, dir=str(cfg.weights_dir)),
                               pack=dataclasses.replace(cfg.pack, **pack))


def fail_claimed(db) -> jobs.Job:
    claimed = jobs.claim(db, "test-fail", 60, kinds=[BOUNDARY_FIT_KIND])
    jobs.fail(db, claimed.id, claimed.lease_token, "CUDA error: out of memory", retryable=False)
    return jobs.get_job(db, claimed.id)


def test_a_failed_fit_waits_for_its_back_off_or_the_operator_not_for_the_next_start(tmp_path, engine, capsys):
    cfg = separate_data(engine[0], tmp_path)
    db = open_database(cfg.database_url)
    try:
        res = EngineResources.load(cfg)
        first = boundary_job.enqueue_fit(db, res)
        failed = fail_claimed(db)
        assert failed.id == first and boundary_job.failed_fit(db, res.generator_digest).id == first  # the record
        boundary_job.handlers(res)  # the engine starts again within the back-off: no new attempt
        assert boundary_job.enqueue_fit(db, res) is None
        assert [j.id for j in fit_jobs(db)] == [first]
        waited = failed.finished_at + cfg.pack.boundary_fit_retry_hours * 3600
        assert boundary_job.retry_at(db, res) == waited
        assert boundary_job.enqueue_fit(db, res, now=waited - 60) is None
        second = boundary_job.enqueue_fit(db, res, now=waited + 1)  # after the back-off: tried again
        assert second not in (None, first) and boundary_job.failed_fit(db, res.generator_digest) is None
        assert fail_claimed(db).id == second and boundary_job.enqueue_fit(db, res) is None
        # the operator asks at once
        config = tmp_path / "config.toml"
        config.write_text(f'[paths]\ndata_dir = "{tmp_path / "data"}"\n')
        from shell.commands.boundaries import main as boundaries_main
        assert boundaries_main(["refit", "--config", str(config)]) == 0
        (third,) = [j for j in fit_jobs(db) if j.status == "queued"]
        assert third.id not in (first, second) and third.payload["generator_digest"] == res.generator_digest
        assert f"job {third.id}" in capsys.readouterr().out
        assert boundary_job.refit(db) == []  # nothing failed any more
        assert boundary_job.enqueue_fit(db, res) == third.id
    finally:
        db.dispose()


def test_an_engine_running_on_another_host_installs_a_fit_stored_meanwhile(tmp_path, engine, monkeypatch):
    base = separate_data(engine[0], tmp_path)
    host_a = dataclasses.replace(base, pack=dataclasses.replace(base.pack, boundaries=str(tmp_path / "a" / "eg3d.safetensors")))
    host_b = dataclasses.replace(base, pack=dataclasses.replace(base.pack, boundaries=str(tmp_path / "b" / "eg3d.safetensors")))
    db = open_database(base.database_url)
    blobs = BlobStore(db, base.blob_dir)
    clock = [1000.0]
    monkeypatch.setattr("engine.resources.time.monotonic", lambda: clock[0])
    try:
        res_b = EngineResources.load(host_b)
        boundary_job.handlers(res_b)  # host B starts first: nothing stored, it queues the fit and runs on
        assert res_b.boundaries is None
        res_a = EngineResources.load(host_a)
        (fit,) = fit_jobs(db)
        worker = Worker(db, blobs, {BOUNDARY_FIT_KIND: functools.partial(
            boundary_job.handle_fit_boundaries, res_a, score_by_proxy=True)}, "host-a", 60.0)
        assert worker.run_once() and jobs.get_job(db, fit.id).status == "succeeded"
        assert res_a.boundaries is not None
        clock[0] += host_b.pack.boundary_check_seconds - 1
        assert res_b.boundaries is None  # not asked again before boundary_check_seconds
        clock[0] += 2
        assert res_b.boundaries is not None and res_b.boundaries.generator_digest == res_a.generator_digest
        on_a, on_b = (edits.load_boundaries(h.boundaries_path) for h in (host_a, host_b))
        assert on_b.names() == on_a.names() and all(
            torch.equal(on_b.boundaries[n].normal, on_a.boundaries[n].normal) for n in on_a.names())
        # the local copy is lost while B runs: the next look installs the stored one again
        host_b.boundaries_path.unlink()
        clock[0] += host_b.pack.boundary_check_seconds
        assert res_b.boundaries is not None and host_b.boundaries_path.is_file()
        # an engine that has the fit does not rewrite its file at every look
        stamp = host_b.boundaries_path.stat().st_mtime_ns
        clock[0] += host_b.pack.boundary_check_seconds
        assert res_b.boundaries is not None and host_b.boundaries_path.stat().st_mtime_ns == stamp
    finally:
        db.dispose()
