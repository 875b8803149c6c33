"""The face front end's output as the pipeline's input (:class:`PortraitInputs`).

Conventions
-----------
* ``engine.face`` gives uint8 HxWx3 crops and 2x3 pixel matrices whose pixel
  centres sit at integer coordinates; the pipeline takes [1, 3, S, S] float
  images in [-1, 1] and ``engine.avatar.warp`` matrices whose pixel centres sit
  at half-integers (``align_corners=False``).
* ``key`` is the digest of the source image: the per-selfie and per-style
  caches are keyed by it.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.avatar.pipeline import PortraitInputs
from engine.face.analyze import FaceResult


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def centre_to_edge(m: np.ndarray) -> torch.Tensor:
    """The same pixel map with centres moved from integers to half-integers: M' = T(+½) M T(−½)."""
    m = np.asarray(m, dtype=np.float64)
    out = m.copy()
    out[:, 2] = m[:, 2] + 0.5 - m[:, :2] @ np.array([0.5, 0.5])
    return torch.from_numpy(out)


def portrait_inputs(face: FaceResult, key: str) -> PortraitInputs:
    """Both crops, the camera label and the FFHQ→EG3D crop map of one analysed face."""
    return PortraitInputs(
        image_2d=to_tensor(face.ffhq.image), image_3d=to_tensor(face.eg3d.image),
        camera=torch.from_numpy(np.asarray(face.camera_label, dtype=np.float32)).reshape(1, 25),  # [1, 25]
        crop2d_to_crop3d=centre_to_edge(face.ffhq_to_eg3d), key=key)
