"""What the engine process loads once, before its first job.

At start it also logs how each custom op will run on its device (a fused
CUDA kernel that passed its self-check, or the reference and why), and with
``[pipeline] compile`` on, compiles the generator passes before the first job
(:func:`compile_before_jobs`).

:class:`EngineResources` holds the networks (through the avatar
:class:`~engine.avatar.pipeline.Pipeline`), the face-mesh detector, the face
and decoding limits, and the expression boundaries for this generator. Job
handlers (:mod:`engine.tasks`) receive it; nothing in it changes while jobs
run (per-user weights are parameter dicts, never written into the modules),
except the boundaries: reading ``boundaries`` looks at the boundary file's
stat and reads it again when it appeared or changed (the engine's own
boundary fit, :mod:`engine.boundary_job`, or an operator's), so packs made
after it include the expression stickers without a restart. It also asks
``stored_boundaries`` (set by :func:`engine.boundary_job.handlers`: installs
the file a fit on any host stored in the shared blob store, when it differs
from the local one) at most every ``[pack] boundary_check_seconds``, so an
engine running on another host gets a new fit without a restart too. And
``artifact_memo`` keeps house styles' finetunes between jobs
(:mod:`engine.blob_memo`), and ``style_faces`` their analysed style images
(:mod:`engine.face_memo`).
"""
from __future__ import annotations

import logging
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from emoji3d.config import Config
from emoji3d.errors import UserFacingError
from emoji3d.images import DecodeLimits
from engine import ops
from engine.avatar.networks import SLIM_WARNING, load_networks
from engine.avatar.pipeline import Pipeline
from engine.avatar.warm_up import warm_up
from engine.blob_memo import BlobMemo
from engine.cuda_math import configure_cuda_math
from engine.face.analyze import FaceConfig
from engine.face.landmarks import LandmarkDetector
from engine.face_memo import FaceMemo
from engine.render.edits import BoundarySet, generator_digest, load_boundaries

log = logging.getLogger("emoji3d.engine")


@dataclass
class EngineResources:
    cfg: Config
    pipeline: Pipeline
    detector: LandmarkDetector
    face_cfg: FaceConfig
    decode_limits: DecodeLimits
    generator_digest: str = ""             # of the base EG3D (nets.g3d): what a boundary file must match
    _boundaries: BoundarySet | None = None
    _boundaries_problem: str = ""
    _boundaries_stamp: tuple | None = field(default=None, repr=False)  # the file's stat when last read
    # installs the fit stored in the blob store when it differs from the local file; True if it did
    stored_boundaries: Callable[[], bool] | None = field(default=None, repr=False)
    _stored_checked_at: float | None = field(default=None, repr=False)  # time.monotonic() of the last look
    # shared artifacts' bytes between jobs (a house style's finetune); never anything of a user's
    artifact_memo: BlobMemo = field(default_factory=lambda: BlobMemo(0), repr=False)
    # shared styles' analysed faces between jobs; never a user's upload
    style_faces: FaceMemo = field(default_factory=FaceMemo, repr=False)

    @property
    def boundaries(self) -> BoundarySet | None:
        """The usable boundaries for this generator; None when no usable file is installed."""
        self._check_stored_boundaries()
        self.refresh_boundaries()
        return self._boundaries

    @property
    def boundaries_problem(self) -> str:
        """Why there are no boundaries (reported with each pack); empty when there are."""
        self._check_stored_boundaries()
        self.refresh_boundaries()
        return self._boundaries_problem

    def local_boundaries(self) -> BoundarySet | None:
        """The boundaries of the local file (read again if it changed), without asking the blob store."""
        self.refresh_boundaries()
        return self._boundaries

    def _check_stored_boundaries(self) -> None:
        """Ask ``stored_boundaries`` at most every ``[pack] boundary_check_seconds``."""
        if self.stored_boundaries is None:
            return
        now = time.monotonic()
        if self._stored_checked_at is not None and now - self._stored_checked_at < self.cfg.pack.boundary_check_seconds:
            return
        self._stored_checked_at = now  # before asking: the installer reads the boundaries itself
        try:
            self.stored_boundaries()
        except Exception:  # noqa: BLE001 - storage briefly unreachable: the local file still serves
            log.warning("could not look for a stored expression boundary file", exc_info=True)

    def refresh_boundaries(self) -> bool:
        """Read the boundary file again if it appeared, changed or went since the last read; True if it did."""
        stamp = _file_stamp(self.cfg.boundaries_path)
        if stamp == self._boundaries_stamp and (stamp is not None or self._boundaries_problem):
            return False
        self._boundaries, self._boundaries_problem = load_installed_boundaries(
            self.cfg, self.pipeline.nets.g3d, digest=self.generator_digest)
        self._boundaries_stamp = stamp
        if self._boundaries is not None:
            log.info("expression boundaries: %s", ", ".join(self._boundaries.names()))
        return True

    @classmethod
    def load(cls, cfg: Config) -> "EngineResources":
        device = "cuda" if cfg.engine.device == "cuda" or (
            cfg.engine.device == "auto" and torch.cuda.is_available()) else "cpu"
        if device == "cuda":
            configure_cuda_math(cfg.engine.cudnn_autotune)
        for op, how in ops.implementations(device).items():  # builds and self-checks the kernels on CUDA
            log.info("op %s: %s", op, how)
        nets = load_networks(cfg.weights_dir, cfg.engine.preset, device, seed=cfg.engine.seed)
        if nets.preset == "slim":
            log.warning(SLIM_WARNING)
        face_cfg = FaceConfig(min_face_px=cfg.limits.min_face_px, max_yaw_degrees=cfg.limits.max_yaw_degrees,
                              max_pitch_degrees=cfg.limits.max_pitch_degrees)
        pipeline = Pipeline(nets, cfg.pipeline)
        log.info("optimisation steps: %s, %s, generator passes %s", pipeline.precision,
                 "captured as CUDA graphs" if pipeline.graphs else "eager (no CUDA graphs)",
                 "eager" if cfg.pipeline.compile == "off" else f"compiled ({cfg.pipeline.compile})")
        if cfg.pipeline.compile != "off":
            compile_before_jobs(pipeline, cfg)
        res = cls(cfg, pipeline, LandmarkDetector(), face_cfg,
                  DecodeLimits.from_config(cfg.limits), generator_digest(nets.g3d),
                  artifact_memo=BlobMemo(cfg.engine.shared_artifact_cache_mb << 20))
        res.refresh_boundaries()
        return res


def compile_cache_dir(cfg: Config) -> pathlib.Path:
    """Where inductor keeps what it compiled, unless the operator chose a folder: in the data folder
    (a volume in the Docker image), so that a restarted engine finds it; inductor's default is under /tmp."""
    return cfg.data_dir / "cache" / "torch-compile"


def _inductor_default_cache_dir() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch that keeps it elsewhere: the same rule
        import getpass
        import tempfile

        return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return default_cache_dir()


def use_compile_cache_dir(cfg: Config) -> str:
    """Point inductor at :func:`compile_cache_dir` unless ``TORCHINDUCTOR_CACHE_DIR`` names another
    folder than its default (the importing of ``torch._dynamo`` writes the default into the
    variable, so a default there is not the operator's choice); inductor reads the variable whenever
    it looks for its cache. Returns the folder in use."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(_inductor_default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir(cfg))
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def compile_before_jobs(pipeline: Pipeline, cfg: Config) -> None:
    """Compile every generator pass a job calls (:mod:`engine.avatar.warm_up`), so that no user's job
    waits for it, with inductor's cache in :func:`use_compile_cache_dir`, and report the passes whose
    compile failed."""
    log.info("compiling the generator passes (%s) before the first job, inductor's cache in %s ...",
             pipeline.cfg.compile, use_compile_cache_dir(cfg))
    done = warm_up(pipeline)
    for name, why in done.failures.items():
        log.warning("torch.compile of %s failed, it runs eagerly: %s", name, why)
    log.info("compile warm-up done in %.1f s (steps per stage: %d; they ran as %s)", done.seconds, done.steps,
             ", ".join(f"{stage}: {mode}" for stage, mode in done.modes.items()))


def _file_stamp(path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns



def load_installed_boundaries(cfg: Config, g3d: torch.nn.Module,
                              digest: str | None = None) -> tuple[BoundarySet | None, str]:
    """The expression boundaries for this base generator, or (None, why not).

    A missing, damaged or mismatched file is not fatal: motion stickers are
    still made, and every result says which expressions are unavailable and why.
    """
    path = cfg.boundaries_path
    if not path.is_file():
        return None, (f"no expression boundary file at {path} (`emoji3d setup` fits one; with the pretrained "
                      "weights a started engine also fits one by itself)")
    try:
        return load_boundaries(path, expected_digest=digest or generator_digest(g3d)), ""
    except UserFacingError as exc:
        log.error("expression boundaries unusable: %s", exc)
        return None, f"expression boundary file {path} is unusable: {exc}"
