"""Multi-view animated sticker frames from a (tuned) EG3D avatar.

Conventions
-----------
* **Time**: a sticker of ``n`` frames shows frame ``k`` at phase
  ``t_k = k / n`` (``k = 0 .. n-1``). Every motion and ramp is a periodic
  function of ``t`` with period 1, so the frame that *would* follow the last
  one (``t = 1``) is exactly frame 0: the loop joins seamlessly with the same
  step at the seam as everywhere else, and no frame is repeated (the encoder
  must not drop one). Limits: at most ``MAX_SECONDS`` s at ``MAX_FPS`` fps.
* **Motions** (camera angles as offsets from the frontal view, radians, signs
  as in :mod:`engine.nets.camera`): ``"still"`` (frontal), ``"orbit"`` (yaw
  ``A sin(2 pi t)``, default A = 30 deg), ``"nod"`` (pitch ``B sin(2 pi t)``,
  default B = 12 deg; the camera moves, so the head appears to nod).
* **Expression ramp** ``s(t)`` in [0, 1]: ``smoothstep(tri(t))`` with
  ``tri(t) = 1 - |2t - 1|``, i.e. 0 -> 1 -> 0 with zero slope at both ends and
  at the peak. The edit at frame ``k`` is ``s_k * strength * d`` along the
  boundary normal. Frame ``k`` and ``n - k`` get bit-identical strengths
  (computed from ``min(k, n - k)``), so they share one latent and one plane set.
* **Speed**: frames are grouped by distinct latent; the backbone runs once per
  distinct latent (``latents_per_pass`` at a time), never per view, and the
  views of a latent are ray-marched ``views_per_pass`` cameras per call
  (auto: 8 on a GPU, 1 on a CPU, where batching views measured slower per
  view: 219 vs 350 ms neural, 5.9 vs 9.2 s with super-resolution, slim512,
  one thread).
  Sampling is EG3D's deterministic mode (no shimmer: the same camera renders
  bit-identically).
* **Alpha matte**: the density is cleared outside the *matte region* (a world
  box, default the EG3D box with its back cut at ``z = -0.45``, where the
  FFHQ model paints its background wall), so the accumulated opacity
  (``image_alpha``, neural resolution) counts the head only. It is
  bilinearly upsampled to the output size and mapped through a soft edge:
  ``alpha = smoothstep((opacity - low) / (high - low))``. Hair and ears, whose
  opacity is partial, survive; empty space has opacity ~ 0. The colour is the
  super-resolved image of the same (masked) render.
* **Output frames**: RGBA ``uint8`` (H, W, 4), straight alpha, H = W = ``size``.
  ``RenderSettings.superresolution = False`` skips the super-resolution and
  upsamples the neural render's RGB instead (fast previews).
* Per-user weights: ``params`` is a dict from ``Pipeline.generator_params``
  (EG3D parameter names), applied with ``engine.avatar.params.call_with``
  around the generator functions below (a name the generator does not have
  is an error); ``{}``/None renders the base generator. ``noise``: backbone
  noise maps by layer name ([1, 1, r, r] each) or None for the generator's
  const noise.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from engine.avatar.params import call_with
from engine.avatar.warp import resize_bilinear
from engine.nets import camera, volume
from engine.render.edits import BoundarySet, ExpressionUnavailableError, apply_edit

Motion = Literal["still", "orbit", "nod"]
MOTIONS: tuple[str, ...] = ("still", "orbit", "nod")
MAX_SECONDS = 3.0
MAX_FPS = 30.0
GPU_VIEWS_PER_PASS = 8
EMPTY_SIGMA = -1.0e4  # raw density that the marcher's softplus(sigma - 1) turns into exactly 0


# ----------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class MatteConfig:
    """Alpha matte from accumulated density. Region bounds are world units (EG3D box_warp 1)."""

    low: float = 0.05                                    # opacity at or below: alpha 0
    high: float = 0.6                                    # opacity at or above: alpha 1
    region_min: tuple[float, float, float] = (-0.5, -0.5, -0.45)
    region_max: tuple[float, float, float] = (0.5, 0.5, 0.5)
    mask_density: bool = True                            # clear the density outside the region

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"matte needs 0 <= low < high <= 1, got low={self.low}, high={self.high}")
        if any(a >= b for a, b in zip(self.region_min, self.region_max)):
            raise ValueError(f"matte region is empty: min {self.region_min}, max {self.region_max}")


@dataclass(frozen=True)
class RenderSettings:
    """How frames are rendered. None = the generator's own value."""

    size: int = 512                                      # output side in px
    views_per_pass: int | None = None                    # cameras ray-marched per call; None: 8 on CUDA, 1 on CPU
    latents_per_pass: int = 4                            # latents through the backbone per call
    neural_rendering_resolution: int | None = None
    depth_resolution: int | None = None
    depth_resolution_importance: int | None = None
    max_points_per_pass: int = 1 << 21                   # decoder points per call (memory bound)
    matte: MatteConfig = field(default_factory=MatteConfig)
    superresolution: bool = True                         # False: the neural render's RGB, upsampled (previews)

    def __post_init__(self) -> None:
        for k in ("size", "views_per_pass", "latents_per_pass", "max_points_per_pass"):
            if getattr(self, k) is not None and int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")


@dataclass(frozen=True)
class StickerSpec:
    """One sticker of a pack. ``expression`` None = no edit; ``strength`` scales its precomputed d."""

    name: str
    emoji: str
    motion: Motion = "still"
    expression: str | None = None
    strength: float = 1.0
    seconds: float = 2.0
    yaw_degrees: float = 30.0
    pitch_degrees: float = 12.0
    optional: bool = False        # skipped (not an error) when its expression has no boundary

    def __post_init__(self) -> None:
        if self.motion not in MOTIONS:
            raise ValueError(f"sticker {self.name!r}: motion must be one of {MOTIONS}, got {self.motion!r}")
        if not self.emoji:
            raise ValueError(f"sticker {self.name!r} needs an emoji")
        if not 0.0 < self.seconds <= MAX_SECONDS:
            raise ValueError(f"sticker {self.name!r}: seconds must be in (0, {MAX_SECONDS}], got {self.seconds}")
        if self.motion == "still" and self.expression is None:
            raise ValueError(f"sticker {self.name!r} neither moves nor changes expression")


def spec_from_entry(entry) -> StickerSpec:
    """A ``[[pack.stickers]]`` entry (:class:`emoji3d.config.StickerEntry`) as a StickerSpec;
    config.toml spells "no expression" as "" (TOML has no null)."""
    return StickerSpec(**{**dataclasses.asdict(entry), "expression": entry.expression or None})


def _config_default_pack() -> tuple[StickerSpec, ...]:
    from emoji3d.config import PackConfig  # torch-free; the pack is defined once, in the config schema

    return tuple(spec_from_entry(e) for e in PackConfig().stickers)


DEFAULT_PACK: tuple[StickerSpec, ...] = _config_default_pack()


@dataclass
class StickerFrames:
    name: str
    emoji: str
    frames: list[np.ndarray]  # RGBA uint8 (size, size, 4), straight alpha
    fps: float


@dataclass
class FrameBatch:
    """Rendered frames, NCHW float32: rgb [F,3,S,S] in [-1,1], alpha [F,1,S,S] in [0,1],
    opacity [F,1,R,R] (raw accumulated opacity) and depth [F,1,R,R] at the neural resolution."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    planes_computed: int  # backbone evaluations spent (distinct latents)
    views_rendered: int = 0  # cameras ray-marched (distinct (latent, camera) pairs)


# ----------------------------------------------------------------------------- time, paths, ramps

def frame_count(seconds: float, fps: float) -> int:
    """Frames of a loop of ``seconds`` at ``fps`` (rounded, at least 2)."""
    if not (0.0 < float(seconds) <= MAX_SECONDS):
        raise ValueError(f"duration must be in (0, {MAX_SECONDS}] s, got {seconds}")
    if not (0.0 < float(fps) <= MAX_FPS):
        raise ValueError(f"fps must be in (0, {MAX_FPS}], got {fps}")
    return max(2, int(round(float(seconds) * float(fps))))


def phases(n_frames: int) -> torch.Tensor:
    """t_k = k / n [n] float64."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    return torch.arange(n_frames, dtype=torch.float64) / n_frames


def motion_angles(motion: str, t: torch.Tensor, yaw_degrees: float = 30.0,
                  pitch_degrees: float = 12.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(yaw, pitch) radians [T] at phases t [T] (period 1)."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    zero = torch.zeros_like(t)
    if motion == "still":
        return zero, zero
    wave = torch.sin(2 * math.pi * torch.remainder(t, 1.0))
    if motion == "orbit":
        return math.radians(yaw_degrees) * wave, zero
    if motion == "nod":
        return zero, math.radians(pitch_degrees) * wave
    raise ValueError(f"unknown motion {motion!r}; known: {', '.join(MOTIONS)}")


def camera_path(motion: str, n_frames: int, *, yaw_degrees: float = 30.0, pitch_degrees: float = 12.0,
                radius: float = camera.AVG_CAMERA_RADIUS, pivot: Sequence[float] = camera.AVG_CAMERA_PIVOT,
                fov_degrees: float = camera.FFHQ_FOV_DEG) -> torch.Tensor:
    """EG3D labels [n_frames, 25] (float32) of a looping camera path."""
    yaw, pitch = motion_angles(motion, phases(n_frames), yaw_degrees, pitch_degrees)
    # Round the angles (to 1e-9 rad, far below a pixel) so that frames whose angles agree
    # mathematically (sin is symmetric: frame k and frame n/2 - k of a loop) get bit-identical
    # cameras; render_frames then renders each distinct camera once.
    yaw, pitch = (torch.round(a * 1e9) / 1e9 for a in (yaw, pitch))
    return camera.orbit_label(yaw.float(), pitch.float(), radius, pivot, fov_degrees)


def smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def expression_ramp(n_frames: int) -> torch.Tensor:
    """s_k in [0, 1] [n] float64: 0 -> 1 -> 0, eased; s_k == s_{n-k} exactly, s_0 = 0."""
    k = torch.arange(n_frames, dtype=torch.float64)
    tri = torch.minimum(k, n_frames - k) * (2.0 / n_frames)  # exact symmetry
    return smoothstep(tri)


# ----------------------------------------------------------------------------- matte

def region_field(field_fn: volume.Field, region_min: Sequence[float], region_max: Sequence[float]) -> volume.Field:
    """``field_fn`` with its raw density set to EMPTY_SIGMA outside the axis-aligned world box."""
    lo_t = torch.tensor(tuple(region_min), dtype=torch.float32)
    hi_t = torch.tensor(tuple(region_max), dtype=torch.float32)

    def masked(coords: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, rgb = field_fn(coords, dirs)
        lo, hi = lo_t.to(coords.device, coords.dtype), hi_t.to(coords.device, coords.dtype)
        inside = ((coords >= lo) & (coords <= hi)).all(-1, keepdim=True)  # [N,M,1]
        return torch.where(inside, sigma, torch.full_like(sigma, EMPTY_SIGMA)), rgb

    return masked


def alpha_matte(opacity: torch.Tensor, size: int, matte: MatteConfig = MatteConfig()) -> torch.Tensor:
    """Accumulated opacity [B,1,R,R] -> alpha [B,1,size,size] in [0,1] (bilinear upsampling, soft edge)."""
    if opacity.ndim != 4 or opacity.shape[1] != 1:
        raise ValueError(f"opacity must be [B,1,R,R], got {tuple(opacity.shape)}")
    a = resize_bilinear(opacity.float(), size)
    return smoothstep((a - matte.low) / (matte.high - matte.low))


def to_rgba(rgb: torch.Tensor, alpha: torch.Tensor) -> list[np.ndarray]:
    """rgb [F,3,S,S] in [-1,1] and alpha [F,1,S,S] in [0,1] -> F RGBA uint8 (S, S, 4) arrays."""
    if rgb.shape[0] != alpha.shape[0] or rgb.shape[-2:] != alpha.shape[-2:]:
        raise ValueError(f"rgb {tuple(rgb.shape)} and alpha {tuple(alpha.shape)} do not match")
    x = torch.cat([(rgb.float() + 1) * 127.5, alpha.float() * 255], 1)  # [F,4,S,S]
    x = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return [x[i] for i in range(x.shape[0])]


# ----------------------------------------------------------------------------- rendering

# Functions of the generator for ``call_with``: ``functional_call`` swaps weights in for a module's
# ``forward`` only, so the generator's other methods are reached through these plain functions.

def compute_planes(g: nn.Module, ws: torch.Tensor,
                   noise_inputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``TriPlaneGenerator.planes``: ws [P,L,D] -> planes [P,3,32,H,W] (const or given noise)."""
    return g.planes(ws, noise_inputs=noise_inputs)


def sample_points(g: nn.Module, plane_sets: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``TriPlaneGenerator.sample_points``: raw sigma [P,M,1] and features [P,M,32] at coords [P,M,3]."""
    return g.sample_points(plane_sets, coords)


def _render_masked(g: nn.Module, plane_sets: torch.Tensor, ws: torch.Tensor, c: torch.Tensor,
                   settings: RenderSettings, superresolution: bool = True) -> dict[str, torch.Tensor]:
    """``TriPlaneGenerator.render`` (deterministic sampling) through the matte-region field.

    plane_sets [P,3,32,H,W], ws [P,L,D], c [P*V,25] -> image [B,3,S,S] (when
    superresolution), features [B,32,R,R], opacity/depth [B,1,R,R].
    """
    cfg = g.config
    p, b = plane_sets.shape[0], c.shape[0]
    v = b // p
    res = int(settings.neural_rendering_resolution or cfg.neural_rendering_resolution)
    opts = g.render_options("deterministic", depth_resolution=settings.depth_resolution,
                            depth_resolution_importance=settings.depth_resolution_importance)
    field_fn = g.field(plane_sets)
    if settings.matte.mask_density:
        field_fn = region_field(field_fn, settings.matte.region_min, settings.matte.region_max)
    per_ray = opts.depth_resolution + opts.depth_resolution_importance
    ray_chunk = max(1, int(settings.max_points_per_pass) // (p * per_ray))
    out = volume.render_views(field_fn, c[:, :16].reshape(b, 4, 4), c[:, 16:25].reshape(b, 3, 3), res, opts,
                              n_fields=p, ray_chunk=ray_chunk)
    feats = out["features"]  # [B,32,R,R]
    result = {"features": feats, "opacity": out["opacity"], "depth": out["depth"]}
    if superresolution:
        ws_b = ws.repeat_interleave(v, dim=0)
        image, _, _ = g.superresolution.forward_detailed(feats[:, :3], feats, ws_b,
                                                         noise_mode=cfg.rendering.superresolution_noise_mode)
        result["image"] = image  # [B,3,S,S]
    return result


def _latent_groups(ws: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """Distinct rows [U,...] of ws [F,...] (first-seen order) and the row indices of each
    (used for latents, and for the cameras of one latent)."""
    keys: dict[bytes, int] = {}
    groups: list[list[int]] = []
    firsts: list[int] = []
    flat = ws.detach().cpu().contiguous()
    for i in range(ws.shape[0]):
        k = flat[i].numpy().tobytes()
        if k not in keys:
            keys[k] = len(groups)
            groups.append([])
            firsts.append(i)
        groups[keys[k]].append(i)
    return ws[firsts], groups


@torch.no_grad()
def render_frames(generator: nn.Module, params: Mapping[str, torch.Tensor] | None, ws: torch.Tensor,
                  noise: Mapping[str, torch.Tensor] | None, cameras: torch.Tensor,
                  settings: RenderSettings = RenderSettings()) -> FrameBatch:
    """Render frame ``k`` from latent ``ws[k]`` (or the single ``ws``) at camera ``cameras[k]``.

    ws [F,L,D] or [1,L,D]; cameras [F,25]. The backbone runs once per distinct
    latent, and each distinct (latent, camera) pair is ray-marched once (a loop's
    frames k and n/2 - k share their camera); views are batched. Deterministic:
    equal inputs give bit-identical frames.
    """
    if cameras.ndim != 2 or cameras.shape[1] != camera.LABEL_DIM:
        raise ValueError(f"cameras must be [F,25], got {tuple(cameras.shape)}")
    n = cameras.shape[0]
    if ws.ndim != 3 or ws.shape[0] not in (1, n):
        raise ValueError(f"ws must be [1,L,D] or [{n},L,D], got {tuple(ws.shape)}")
    dev = next(generator.parameters()).device
    ws = ws.to(dev, torch.float32)
    cameras = cameras.to(dev, torch.float32)
    if ws.shape[0] == 1:
        ws = ws.expand(n, -1, -1)
    noise_inputs = {k: v.to(dev) for k, v in noise.items()} if noise else None
    unique, groups = _latent_groups(ws)
    size = int(settings.size)
    per_pass = settings.views_per_pass or (GPU_VIEWS_PER_PASS if dev.type == "cuda" else 1)
    rgb = opacity = depth = None
    views_rendered = 0
    for u0 in range(0, unique.shape[0], settings.latents_per_pass):
        ws_u = unique[u0:u0 + settings.latents_per_pass]  # [P,L,D]
        plane_sets = call_with(generator, params, compute_planes, ws_u, noise_inputs)  # [P,3,32,256,256]
        for j in range(ws_u.shape[0]):
            idx = groups[u0 + j]
            # Each distinct camera of this latent is rendered once, then copied to all its frames.
            cams_u, cam_groups = _latent_groups(cameras[idx])
            for v0 in range(0, cams_u.shape[0], per_pass):
                views = range(v0, min(v0 + per_pass, cams_u.shape[0]))
                out = call_with(generator, params, _render_masked, plane_sets[j:j + 1], ws_u[j:j + 1],
                                cams_u[v0:views.stop], settings, superresolution=settings.superresolution)
                views_rendered += len(views)
                img = resize_bilinear(out["image"] if settings.superresolution else out["features"][:, :3], size)
                if rgb is None:
                    r = out["opacity"].shape[-1]
                    rgb = torch.empty(n, 3, size, size, device=dev)  # [F,3,S,S]
                    opacity = torch.empty(n, 1, r, r, device=dev)    # [F,1,R,R]
                    depth = torch.empty(n, 1, r, r, device=dev)
                for local, view in enumerate(views):
                    frames = torch.tensor([idx[p] for p in cam_groups[view]], device=dev)
                    rgb[frames] = img[local].float()
                    opacity[frames] = out["opacity"][local].float()
                    depth[frames] = out["depth"][local].float()
    alpha = alpha_matte(opacity, size, settings.matte)
    return FrameBatch(rgb=rgb, alpha=alpha, opacity=opacity, depth=depth, planes_computed=unique.shape[0],
                      views_rendered=views_rendered)


def sticker_latents_and_cameras(spec: StickerSpec, w_3d: torch.Tensor, boundaries: BoundarySet | None,
                                n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame ws [F,L,D] (or [1,L,D] without an expression) and cameras [F,25] of one sticker."""
    cams = camera_path(spec.motion, n_frames, yaw_degrees=spec.yaw_degrees, pitch_degrees=spec.pitch_degrees)
    if spec.expression is None:
        return w_3d[:1], cams
    if boundaries is None:
        raise ExpressionUnavailableError(f"sticker {spec.name!r} needs the {spec.expression!r} boundary and no "
                                         "boundary file is loaded", expression=spec.expression)
    b = boundaries.get(spec.expression)
    ramp = expression_ramp(n_frames).to(torch.float32)  # [F]
    ws = apply_edit(w_3d[:1].float(), b.normal, ramp * float(spec.strength * b.d), b.layers)  # [F,L,D]
    return ws, cams


def available_stickers(pack: Sequence[StickerSpec], boundaries: BoundarySet | None) -> tuple[list[StickerSpec], list[str]]:
    """The stickers that can be rendered and the names of optional ones skipped for a missing boundary.

    A non-optional sticker whose boundary is missing raises ExpressionUnavailableError.
    """
    have = set(boundaries.names()) if boundaries is not None else set()
    keep, skipped = [], []
    for s in pack:
        if s.expression is None or s.expression in have:
            keep.append(s)
        elif s.optional:
            skipped.append(s.name)
        else:
            raise ExpressionUnavailableError(f"sticker {s.name!r} needs the {s.expression!r} boundary; available: "
                                             f"{', '.join(sorted(have)) or 'none'}", expression=s.expression)
    return keep, skipped


def render_pack(generator: nn.Module, params: Mapping[str, torch.Tensor] | None, w_3d: torch.Tensor,
                noise: Mapping[str, torch.Tensor] | None, boundaries: BoundarySet | None,
                pack_spec: Sequence[StickerSpec] = DEFAULT_PACK, fps: float = 15.0, size: int = 512,
                settings: RenderSettings | None = None) -> list[StickerFrames]:
    """Frames of every renderable sticker of ``pack_spec``, in order (optional ones without a boundary are left out).

    w_3d [1,L,D] is the avatar's latent (edits are applied to it; the boundary
    comes from the base generator's W space); ``params`` the avatar's tuned
    weights. Each sticker has ``frame_count(seconds, fps)`` frames.
    """
    settings = settings or RenderSettings()
    if settings.size != size:
        settings = dataclasses.replace(settings, size=int(size))
    if w_3d.ndim != 3 or w_3d.shape[0] != 1:
        raise ValueError(f"w_3d must be [1,L,D], got {tuple(w_3d.shape)}")
    specs, _ = available_stickers(pack_spec, boundaries)
    out: list[StickerFrames] = []
    for spec in specs:
        n = frame_count(spec.seconds, fps)
        ws, cams = sticker_latents_and_cameras(spec, w_3d, boundaries, n)
        batch = render_frames(generator, params, ws, noise, cams, settings)
        out.append(StickerFrames(name=spec.name, emoji=spec.emoji, frames=to_rgba(batch.rgb, batch.alpha), fps=float(fps)))
    return out
