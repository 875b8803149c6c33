"""How good an avatar is, where an instrument can tell: identity, multi-view consistency, style.

Measures (all pure functions of tensors; the networks are passed in):

- **identity**: ArcFace cosine similarity between the selfie and a render of
  the avatar at the selfie's own camera, for the photo-real (PTI) generator
  and for the generator the pack is rendered with (the stylized one at the
  order's strength). Both images are EG3D-frame crops carried back into the
  FFHQ frame (256 px) first, the frame ArcFace's standard ID crop expects
  (the same carry as the PTI identity loss). Range [-1, 1], higher is better.
- **multiview**: depth agreement across head-turn views. The frontal view's
  pixels are lifted to 3D with its depth (EG3D depth is distance along the
  unit ray), projected into a turned view, and compared with the turned
  view's own depth there; a pixel agrees when the two depths differ by less
  than ``DEPTH_TOLERANCE`` (relative). The measure is the opacity-weighted
  share of agreeing pixels (weight: the frontal pixel's opacity; an agreeing
  pixel counts with the turned view's opacity there, so landing on
  background is no agreement), averaged over the turned views. Range
  [0, 1], higher is better. A consistent 3D shape scores near 1 (self-
  occlusion at small turns costs a little); view-dependent geometry, or no
  shape at all, scores low.
- **style**: LPIPS distance between the stylized frontal render and the
  style exemplar's EG3D crop. >= 0, lower is closer to the style.

Conventions: images [B, 3, S, S] in [-1, 1]; cameras are EG3D labels [B, 25]
(:mod:`engine.nets.camera`); a measure that cannot be taken is None, with
the reason in ``notes``. On slim random weights the numbers exist and are
finite but mean nothing (no faces): the report says which preset made it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from engine.avatar import params as generator_params
from engine.avatar.warp import frame_warp, rescale_similarity, resize_bilinear, resize_for_lpips
from engine.nets import camera
from engine.nets.volume import generate_rays

MIN_OPACITY = 1e-3       # a frontal render with less total opacity per pixel than this shows nothing
DEPTH_TOLERANCE = 0.02   # two depths agree when they differ by less than 2 % (about 5 mm on a head)
TURN_YAW_DEGREES = 20.0  # the head-turn views: the frontal camera turned this far left and right
FFHQ_FRAME = 1024        # crop2d_to_crop3d maps the 1024 px FFHQ frame ...
EG3D_FRAME = 512         # ... to the 512 px EG3D frame
ID_FRAME = 256           # ArcFace's ID crop reads 256 px FFHQ-aligned faces

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class QualityMeasures:
    identity_pti: float | None = None
    identity_stylized: float | None = None
    multiview: float | None = None
    style_lpips: float | None = None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- measures

def to_ffhq_frame(crop2d_to_crop3d: torch.Tensor, size: int, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """A warp of EG3D-frame crops [B, 3, size, size] into the FFHQ frame [B, 3, 256, 256]."""
    m = rescale_similarity(crop2d_to_crop3d, 1.0, size / EG3D_FRAME)  # FFHQ 1024 px -> EG3D `size` px
    full = torch.cat([m, torch.tensor([[0.0, 0.0, 1.0]], dtype=m.dtype)])
    back = rescale_similarity(torch.linalg.inv(full)[:2], 1.0, ID_FRAME / FFHQ_FRAME)  # `size` px -> FFHQ 256 px
    warp = frame_warp(back.to(torch.float32), size, ID_FRAME, device)
    return lambda img: warp(img)[0]


def identity_cosine(id_distance: Distance, render: torch.Tensor, selfie: torch.Tensor) -> float:
    """ArcFace cosine of two FFHQ-frame faces [1, 3, 256, 256]; ``id_distance`` is 1 - cosine (batch mean)."""
    with torch.no_grad():
        return float(1.0 - id_distance(render, selfie))


def style_distance(lpips: Distance, render: torch.Tensor, exemplar: torch.Tensor) -> float:
    """LPIPS of a render [1, 3, S, S] to the exemplar crop (any size; resized to S)."""
    with torch.no_grad():
        return float(lpips(render, resize_for_lpips(exemplar.to(render.device), render.shape[-1])).mean())


def depth_agreement(depth: torch.Tensor, alpha: torch.Tensor, labels: torch.Tensor, ref: int, other: int,
                    tolerance: float = DEPTH_TOLERANCE) -> tuple[float, float]:
    """(opacity-weighted share of view ``ref``'s pixels whose depth view ``other`` confirms, total weight).

    ``depth``/``alpha`` [V, 1, R, R] rendered at ``labels`` [V, 25]. Pixels that
    project outside view ``other`` count as disagreeing; the total weight is
    the mean opacity of ``ref`` (0 when it shows nothing).
    """
    cam2world, intrinsics = camera.split_label(labels.to(torch.float64))
    r = depth.shape[-1]
    origins, dirs = generate_rays(cam2world[ref:ref + 1], intrinsics[ref:ref + 1], r)  # [1, R*R, 3]
    d_ref = depth[ref].reshape(-1).to(torch.float64)  # [R*R], same pixel order as generate_rays
    weight = alpha[ref].reshape(-1).to(torch.float64).clamp(0, 1)  # [R*R]
    points = origins[0] + dirs[0] * d_ref[:, None]  # [R*R, 3] world
    world2cam = torch.linalg.inv(cam2world[other])
    cam_pts = points @ world2cam[:3, :3].T + world2cam[:3, 3]  # [R*R, 3] OpenCV camera frame
    k = intrinsics[other]
    z = cam_pts[:, 2].clamp_min(1e-6)
    u = (k[0, 0] * cam_pts[:, 0] + k[0, 1] * cam_pts[:, 1]) / z + k[0, 2]  # normalised image x (column)
    v = k[1, 1] * cam_pts[:, 1] / z + k[1, 2]                               # normalised image y (row)
    grid = torch.stack([2 * u - 1, 2 * v - 1], -1).reshape(1, 1, -1, 2).to(depth.dtype)  # [1, 1, R*R, 2]
    d_other = F.grid_sample(depth[other:other + 1], grid, align_corners=False).reshape(-1).to(torch.float64)
    a_other = F.grid_sample(alpha[other:other + 1], grid, align_corners=False).reshape(-1)
    expected = (points - cam2world[other, :3, 3]).norm(dim=1)  # [R*R] distance along view `other`'s ray
    inside = (u > 0) & (u < 1) & (v > 0) & (v < 1) & (cam_pts[:, 2] > 0)
    agree = inside & ((d_other - expected).abs() < tolerance * expected)
    total = float(weight.mean())
    if total < MIN_OPACITY:
        return 0.0, total
    confirmed = weight * agree.to(torch.float64) * a_other.to(torch.float64).clamp(0, 1)
    return float(confirmed.sum() / weight.sum()), total


def turn_cameras(yaw_degrees: float = TURN_YAW_DEGREES) -> torch.Tensor:
    """Labels [3, 25]: frontal, turned left, turned right (orbit cameras around the average head)."""
    yaw = math.radians(yaw_degrees)
    return camera.orbit_label(torch.tensor([0.0, -yaw, yaw]), torch.zeros(3))


# ----------------------------------------------------------------------------- rendering

def _synthesis(g3d: nn.Module, ws, c, noise_inputs) -> dict:
    return g3d.synthesis(ws, c, noise_inputs=noise_inputs)


def render(g3d: nn.Module, weights: Mapping[str, torch.Tensor], ws: torch.Tensor, labels: torch.Tensor,
           noise: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EG3D outputs (``image`` [V, 3, S, S], ``image_depth``/``image_alpha`` [V, 1, R, R]) of one avatar
    (``ws`` [1, L, 512]) at ``labels`` [V, 25]."""
    dev = next(g3d.parameters()).device
    views = labels.shape[0]
    with torch.no_grad():
        return generator_params.call_with(g3d, weights, _synthesis, ws.to(dev).expand(views, -1, -1),
                                          labels.to(dev), dict(noise))


def measure(g3d: nn.Module, lpips: Distance, id_distance: Distance | None, *, pti: Mapping[str, torch.Tensor],
            stylized: Mapping[str, torch.Tensor], ws: torch.Tensor, noise: Mapping[str, torch.Tensor],
            selfie_camera: torch.Tensor, selfie_3d: torch.Tensor | None, crop2d_to_crop3d: torch.Tensor | None,
            exemplar_3d: torch.Tensor | None) -> QualityMeasures:
    """All measures of one avatar: ``pti``/``stylized`` generator weights, ``ws`` [1, L, 512] and its
    backbone ``noise``, the selfie's camera [1, 25] and EG3D crop [1, 3, S, S] (None when the photo
    is gone), and the exemplar's EG3D crop [1, 3, S', S'] (None when the style is gone)."""
    out = QualityMeasures()
    at_selfie = selfie_camera.reshape(1, 25)
    styl = render(g3d, stylized, ws, torch.cat([at_selfie, turn_cameras()]), noise)
    image = styl["image"]  # [4, 3, S, S]: at the selfie's camera, frontal, left, right
    size = image.shape[-1]
    if selfie_3d is None or crop2d_to_crop3d is None:
        out.notes.append("identity: the selfie photo is no longer stored")
    elif id_distance is None:
        out.notes.append("identity: no ArcFace network loaded")
    else:
        to_ffhq = to_ffhq_frame(crop2d_to_crop3d, size, image.device)
        selfie = to_ffhq(resize_bilinear(selfie_3d.to(image.device), size))
        photo_real = render(g3d, pti, ws, at_selfie, noise)["image"]
        out.identity_pti = identity_cosine(id_distance, to_ffhq(photo_real), selfie)
        out.identity_stylized = identity_cosine(id_distance, to_ffhq(image[:1]), selfie)
    depth, alpha = styl["image_depth"][1:], styl["image_alpha"][1:]  # the three orbit views
    labels = turn_cameras()
    scores = [depth_agreement(depth, alpha, labels, 0, other) for other in (1, 2)]
    if all(total < MIN_OPACITY for _, total in scores):
        out.notes.append("multiview: the frontal render has no opaque pixels")
    else:
        out.multiview = sum(s for s, _ in scores) / len(scores)
    if exemplar_3d is None:
        out.notes.append("style: the style image is no longer stored")
    else:
        out.style_lpips = style_distance(lpips, image[1:2], exemplar_3d)
    return out


def weak_measures(measures: QualityMeasures, *, min_identity: float, min_identity_stylized: float,
                  min_multiview: float, max_style_lpips: float) -> list[str]:
    """Names of the measures past their thresholds (a weak pack)."""
    weak = []
    if measures.identity_pti is not None and measures.identity_pti < min_identity:
        weak.append("identity_pti")
    if measures.identity_stylized is not None and measures.identity_stylized < min_identity_stylized:
        weak.append("identity_stylized")
    if measures.multiview is not None and measures.multiview < min_multiview:
        weak.append("multiview")
    if measures.style_lpips is not None and measures.style_lpips > max_style_lpips:
        weak.append("style_lpips")
    return weak
