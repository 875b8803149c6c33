"""The engine fits its expression boundaries itself: the ``fit_boundaries`` batch job.

When the engine starts with the pretrained weights and finds no usable
boundary file for its base generator, :func:`handlers` enqueues one job of
kind :data:`emoji3d.orders.BOUNDARY_FIT_KIND` at ``batch`` priority, keyed by
the generator's digest (:func:`emoji3d.orders.boundary_fit_key`), so several
engines on one generator make one job and a generator is fitted once. The job
renders and scores ``[pack] boundary_fit_samples`` latents
(:mod:`engine.render.boundary_fit`), reporting the stage ``boundaries`` with
the fraction done after every batch (which is also where a cancel stops it),
and installs the file at ``cfg.boundaries_path``. Packs made meanwhile report
the expression stickers as not made yet; :class:`engine.resources.EngineResources`
reads the file again when it appears, so later packs have them.

Conventions
-----------
* The slim preset is never fitted here (its files are meaningless; ``emoji3d
  boundaries demo`` makes one for the demo).
* Installing never loses a file: an unusable file already at the path (fitted
  for another generator, or damaged) is renamed aside to
  ``<name>.replaced-<its digest prefix | "unreadable">`` first.
* The sampling seed is ``[engine] seed``: one generator and seed, one file.
* Several hosts: the job also stores the file in the blob store (its result's
  ``file``), and an engine that starts without a usable local file but finds
  the fit for its digest already done installs that copy instead of fitting
  again. An engine already running (on any host) looks for a stored fit every
  ``[pack] boundary_check_seconds`` (:class:`StoredBoundaries`, called by
  ``EngineResources.boundaries``) and installs it when it has none, or when a
  newer fit was stored since it last looked (a local file it started with is
  otherwise left alone: it may be the operator's).
* A failed or cancelled fit is recorded by its job, which keeps the
  generator's key until the next attempt. Engines starting within
  ``[pack] boundary_fit_retry_hours`` of that failure do not fit again (one
  warning names the job and the way out); later ones do, and ``emoji3d
  boundaries refit`` (:func:`refit`) asks for a new attempt at once.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import pathlib
import time
from typing import Callable

from emoji3d.errors import UserFacingError
from emoji3d.orders import BOUNDARY_FIT_KIND, boundary_fit_key
from engine.render import boundary_fit, edits
from engine.resources import EngineResources
from storage import jobs
from storage.blobs import BlobStore
from storage.db import Database

log = logging.getLogger("emoji3d.boundaries")

STAGE = "boundaries"
SAMPLE_BATCH = 8      # latents per forward pass: fits a 512 px EG3D render batch on a 16 GB GPU
SAVE_SHARE = 0.02     # of the progress bar left for fitting the SVMs and writing the file


def fit_needed(res: EngineResources) -> bool:
    """The pretrained generator is loaded and no usable boundary file for it is installed."""
    return res.pipeline.nets.preset == "pretrained" and res.boundaries is None


def failed_fit(db: Database, digest: str) -> jobs.Job | None:
    """The last fit for the generator ``digest`` when it failed or was cancelled (the record of the
    failure: its job keeps the generator's key until a new attempt), else None."""
    job = jobs.find_by_key(db, boundary_fit_key(digest))
    return job if job is not None and job.status in jobs.UNSUCCESSFUL else None


def retry_at(db: Database, res: EngineResources) -> float | None:
    """UNIX time before which engines do not fit this generator again (a recent failure); None: no wait."""
    job = failed_fit(db, res.generator_digest)
    if job is None:
        return None
    return (job.finished_at or job.updated_at) + res.cfg.pack.boundary_fit_retry_hours * 3600.0


def enqueue_fit(db: Database, res: EngineResources, *, now: float | None = None) -> int | None:
    """Enqueue the boundary fit for this engine's generator when it is needed; its job id, else None.
    Idempotent per generator digest: a queued, running or finished fit is returned, not repeated; a
    fit that failed is tried again only ``[pack] boundary_fit_retry_hours`` later (or by :func:`refit`)."""
    if not fit_needed(res):
        return None
    wait_until = retry_at(db, res)
    if wait_until is not None and (time.time() if now is None else now) < wait_until:
        job = failed_fit(db, res.generator_digest)
        log.warning("expression boundaries: the fit for generator %s %s (job %s: %s); engines try again after %s, "
                    "or at once after `emoji3d boundaries refit`", res.generator_digest[:12], job.status, job.id,
                    job.error_key or job.error or "no reason recorded",
                    time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(wait_until)))
        return None
    return _enqueue(db, res)


def refit(db: Database) -> list[int]:
    """The operator asks for the failed fits again now, whatever the back-off (``emoji3d boundaries
    refit``): a new attempt for every generator whose last fit failed or was cancelled. Their ids."""
    ids = []
    for job in jobs.list_jobs(db, kind=BOUNDARY_FIT_KIND, limit=1000):
        digest = str(job.payload.get("generator_digest", ""))
        if digest and job.idempotency_key == boundary_fit_key(digest) and job.status in jobs.UNSUCCESSFUL:
            ids.append(jobs.enqueue(db, BOUNDARY_FIT_KIND, dict(job.payload), job.idempotency_key,
                                    priority="batch", max_attempts=job.max_attempts))
            log.info("expression boundaries: fitting generator %s again (job %s)", digest[:12], ids[-1])
    return ids


def _enqueue(db: Database, res: EngineResources) -> int:
    payload = {"generator_digest": res.generator_digest, "samples": res.cfg.pack.boundary_fit_samples}
    job_id = jobs.enqueue(db, BOUNDARY_FIT_KIND, payload, boundary_fit_key(res.generator_digest),
                          priority="batch", max_attempts=res.cfg.engine.max_attempts)
    log.info("expression boundaries: %s; fitting them in job %s (batch)", res.boundaries_problem, job_id)
    return job_id


def stored_fit(db: Database, digest: str) -> tuple[jobs.Job, str] | None:
    """The succeeded fit for the generator ``digest`` and the blob digest of the file it stored."""
    job = jobs.find_by_key(db, boundary_fit_key(digest))
    file = (job.result or {}).get("file") if job is not None and job.status == "succeeded" else None
    return (job, file) if file else None


def install_fitted(db: Database, blobs: BlobStore, res: EngineResources) -> bool:
    """When the fit for this generator already succeeded (on another host, or before this file was
    lost), install its stored copy; True if the engine now has boundaries from it."""
    found = stored_fit(db, res.generator_digest)
    if found is None or not blobs.exists(found[1]):
        return False
    job, digest = found
    path = res.cfg.boundaries_path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.stored{os.getpid()}")
    try:
        staging.write_bytes(blobs.read_bytes(digest))
        bset = edits.load_boundaries(staging, expected_digest=res.generator_digest)
    except UserFacingError as exc:
        log.error("the stored boundary file of job %s is unusable: %s", job.id, exc)
        return False
    finally:
        staging.unlink(missing_ok=True)
    install_boundaries(bset, path)
    log.info("expression boundaries installed from job %s's stored file", job.id)
    return res.local_boundaries() is not None


def _file_digest(path: pathlib.Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class StoredBoundaries:
    """``EngineResources.stored_boundaries`` of a running engine: installs the fit stored in the blob store
    when the engine has no usable file, or when a fit newer than the one it last saw was stored (see the
    module docstring). Opens its own storage on first use and keeps it for the process."""

    def __init__(self, res: EngineResources, storage: tuple[Database, BlobStore] | None = None) -> None:
        self.res = res
        self.storage = storage
        self.seen: str | None = None  # the stored file's digest when last looked

    def __call__(self) -> bool:
        if self.storage is None:
            from storage.connect import open_storage

            self.storage = open_storage(self.res.cfg)
        db, blobs = self.storage
        found = stored_fit(db, self.res.generator_digest)
        if found is None:
            return False
        stored, first, newer = found[1], self.seen is None, found[1] != self.seen
        self.seen = stored
        if self.res.local_boundaries() is not None and (first or not newer):
            return False  # the file it has (perhaps the operator's), or this fit already
        if stored == _file_digest(self.res.cfg.boundaries_path):
            return False  # this host made that fit
        return install_fitted(db, blobs, self.res)


def handlers(res: EngineResources) -> dict:
    """The job kind's handler for :func:`engine.tasks.build_handlers`. At the engine's start, when the
    boundaries are missing: installs the stored result of an earlier fit for this generator, else
    enqueues the fit. A storage that cannot be reached is logged: the engine fails on it next."""
    if fit_needed(res):
        from storage.connect import open_storage

        try:
            db, blobs = open_storage(res.cfg)
            try:
                if not install_fitted(db, blobs, res):
                    enqueue_fit(db, res)
            finally:
                db.dispose()
        except Exception:  # noqa: BLE001 - the worker reports the storage itself, with its own error
            log.exception("could not install or enqueue the expression boundary fit")
    if res.pipeline.nets.preset == "pretrained":
        res.stored_boundaries = StoredBoundaries(res)
    return {BOUNDARY_FIT_KIND: functools.partial(handle_fit_boundaries, res)}


def fit_for(res: EngineResources, samples: int, progress: Callable[[int, int], None], *,
            score_by_proxy: bool = False) -> edits.BoundarySet:
    """Fit every geometry expression and installed classifier on the engine's base generator.

    ``score_by_proxy`` scores with image statistics (a file marked for tests only) instead of face-mesh
    geometry: for tests whose random weights, written as a pretrained folder, draw no faces."""
    plan = boundary_fit.plan_fit(res.cfg.weights_dir)
    kind = "slim" if score_by_proxy else res.pipeline.nets.preset
    return boundary_fit.fit_boundary_set(
        res.pipeline.nets.g3d, kind, plan, edits.SampleConfig(n=samples, batch=SAMPLE_BATCH), edits.FitConfig(),
        res.cfg.engine.seed, detector=res.detector, progress=progress)


def install_boundaries(bset: edits.BoundarySet, path: pathlib.Path) -> pathlib.Path | None:
    """Write ``bset`` at ``path`` (atomically); an unusable file there is kept aside. Returns where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = None
    if path.is_file():
        try:
            found = edits.load_boundaries(path)
            if found.generator_digest == bset.generator_digest:
                found = None  # the same generator's file: replaced, nothing of another generator lost
            label = found.generator_digest[:12] if found is not None else ""
        except UserFacingError:
            found, label = None, "unreadable"
        if label:
            aside = path.with_name(f"{path.name}.replaced-{label}")
            os.replace(path, aside)
            log.warning("kept the previous boundary file as %s", aside)
    edits.save_boundaries(bset, path)
    return aside


def handle_fit_boundaries(res: EngineResources, job, jc, *, score_by_proxy: bool = False) -> dict:
    """The job: fit, install, and have the engine read the new file."""
    digest = str(job.payload.get("generator_digest", ""))
    if digest != res.generator_digest:
        return {"skipped": f"this engine's generator is {res.generator_digest[:12]}, the job is for {digest[:12]}"}
    if res.boundaries is not None:
        return {"skipped": f"a boundary file for this generator is installed at {res.cfg.boundaries_path}"}
    samples = int(job.payload.get("samples") or res.cfg.pack.boundary_fit_samples)
    jc.progress(STAGE, 0.0)
    bset = fit_for(res, samples, lambda done, total: jc.progress(STAGE, (1 - SAVE_SHARE) * done / total),
                   score_by_proxy=score_by_proxy)
    jc.check_cancelled()
    aside = install_boundaries(bset, res.cfg.boundaries_path)
    stored = jc.put_blob(res.cfg.boundaries_path.read_bytes())  # for engines on other hosts (install_fitted)
    res.refresh_boundaries()
    log.info("expression boundaries fitted: %s -> %s", ", ".join(bset.names()), res.cfg.boundaries_path)
    return {"path": str(res.cfg.boundaries_path), "file": stored, "generator_digest": bset.generator_digest,
            "samples": samples,
            "boundaries": {n: {"d": _finite(b.d), "accuracy": _finite(b.accuracy)} for n, b in bset.boundaries.items()},
            "for_tests_only": bset.for_tests_only, "replaced": str(aside) if aside else None}


def _finite(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None  # JSON has no NaN
