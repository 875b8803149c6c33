"""What the engine process loads once, before its first job.

At start it also logs how each custom op will run on its device (a fused
CUDA kernel that passed its self-check, or the reference and why).

:class:`EngineResources` holds the networks (through the avatar
:class:`~engine.avatar.pipeline.Pipeline`), the face-mesh detector, the face
and decoding limits, and the expression boundaries for this generator. Job
handlers (:mod:`engine.tasks`) receive it; nothing in it changes while jobs
run (per-user weights are parameter dicts, never written into the modules).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from emoji3d.config import Config
from emoji3d.errors import UserFacingError
from emoji3d.images import DecodeLimits
from engine import ops
from engine.avatar.networks import SLIM_WARNING, load_networks
from engine.avatar.pipeline import Pipeline
from engine.face.analyze import FaceConfig
from engine.face.landmarks import LandmarkDetector
from engine.render.edits import BoundarySet, generator_digest, load_boundaries

log = logging.getLogger("emoji3d.engine")


@dataclass
class EngineResources:
    cfg: Config
    pipeline: Pipeline
    detector: LandmarkDetector
    face_cfg: FaceConfig
    decode_limits: DecodeLimits
    boundaries: BoundarySet | None = None  # None when no usable boundary file is installed
    boundaries_problem: str = ""           # why there are none (reported with each pack)

    @classmethod
    def load(cls, cfg: Config) -> "EngineResources":
        device = "cuda" if cfg.engine.device == "cuda" or (
            cfg.engine.device == "auto" and torch.cuda.is_available()) else "cpu"
        if device == "cuda":
            # TF32 matmuls/convolutions: ~3x faster on Ampere/Hopper, well inside GAN-training tolerance.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        for op, how in ops.implementations(device).items():  # builds and self-checks the kernels on CUDA
            log.info("op %s: %s", op, how)
        nets = load_networks(cfg.weights_dir, cfg.engine.preset, device, seed=cfg.engine.seed)
        if nets.preset == "slim":
            log.warning(SLIM_WARNING)
        face_cfg = FaceConfig(min_face_px=cfg.limits.min_face_px, max_yaw_degrees=cfg.limits.max_yaw_degrees,
                              max_pitch_degrees=cfg.limits.max_pitch_degrees)
        boundaries, problem = load_installed_boundaries(cfg, nets.g3d)
        return cls(cfg, Pipeline(nets, cfg.pipeline), LandmarkDetector(), face_cfg,
                   DecodeLimits.from_config(cfg.limits), boundaries, problem)


def load_installed_boundaries(cfg: Config, g3d: torch.nn.Module) -> tuple[BoundarySet | None, str]:
    """The expression boundaries for this base generator, or (None, why not).

    A missing, damaged or mismatched file is not fatal: motion stickers are
    still made, and every result says which expressions are unavailable and why.
    """
    path = cfg.boundaries_path
    if not path.is_file():
        return None, f"no expression boundary file at {path} (make one with `emoji3d boundaries fit`)"
    try:
        return load_boundaries(path, expected_digest=generator_digest(g3d)), ""
    except UserFacingError as exc:
        log.error("expression boundaries unusable: %s", exc)
        return None, f"expression boundary file {path} is unusable: {exc}"
