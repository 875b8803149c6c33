"""Volume rendering for EG3D tri-planes, as pure functions.

Same maths as NVlabs EG3D ``training/volumetric_rendering`` (ray sampler,
importance renderer, MipRayMarcher2, plane sampling), written as functions of
tensors with the randomness passed in.

Conventions:

* Cameras are EG3D labels (see ``engine.nets.camera``): OpenCV cam2world,
  intrinsics normalised by the image size. Pixel ``(i, j)`` (row i, column j)
  of an ``R x R`` render looks through the normalised image point
  ``((j + 0.5)/R, (i + 0.5)/R)``; rays are flattened row-major, ray ``i*R + j``.
* Ray directions are unit vectors in world coordinates; depths are distances
  along them (scene units), so a sample is ``origin + depth * direction``.
* Plane features are ``[N, 3, C, H, W]``. A world point ``p`` is scaled by
  ``2 / box_warp`` (so the box ``[-box_warp/2, box_warp/2]^3`` maps to
  ``[-1, 1]^3``) and projected onto the official plane axes: plane 0 reads
  ``(x, y)``, plane 1 ``(x, z)``, plane 2 ``(z, x)`` as ``grid_sample``'s
  ``(u, v)`` (u along W, v along H), bilinear, ``align_corners=False``,
  zero padding outside the box. (Plane 2 is ``(z, x)``, not ``(z, y)``: that is
  what the official ``generate_planes`` + inverse projection does, and the
  pretrained weights depend on it.)
* A *field* is any callable ``field(coords [N,M,3], dirs [N,M,3]) ->
  (sigma [N,M,1], rgb [N,M,C])`` returning *raw* density (before the
  ``softplus(sigma - 1)`` activation of the marcher) and colour/features in
  [0, 1]. The tri-plane decoder is one; analytic test fields are others.
* The marcher outputs features scaled to ``[-1, 1]`` (``2 * composite - 1``),
  depth clamped to the sampled range, and per-ray opacity (sum of weights).

Sampling modes:

* ``"stochastic"`` (training): stratified jitter ``U[0,1)`` in each interval
  and inverse-CDF at uniform random quantiles, drawn from the
  ``torch.Generator`` you pass (on the tensors' device).
* ``"deterministic"`` (stickers, reference fixtures): jitter fixed at 0.5
  (``linspace(start, end, n) + 0.5 * (end - start) / (n - 1)``), importance
  quantiles ``linspace(0, 1, N_importance)`` (the official ``det=True``
  branch). The weight smoothing (max-pool 2, avg-pool 2, + 0.01) is the
  official one in both modes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from engine.ops import triplane

Field = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
SamplingMode = Literal["stochastic", "deterministic"]

# Official plane axes (``generate_planes``): [3 planes, 3, 3]. Kept for
# reference and the equivalence test; ``project_onto_planes`` uses the index
# form below, which is exact.
PLANE_AXES = (
    ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    ((1, 0, 0), (0, 0, 1), (0, 1, 0)),
    ((0, 0, 1), (1, 0, 0), (0, 1, 0)),
)
# coords @ inv(axes[k]) keeps these components as (u, v):
PLANE_COORD_INDEX = ((0, 1), (0, 2), (2, 0))


@dataclass(frozen=True)
class RenderOptions:
    """How rays are sampled and marched. Field names follow EG3D's ``rendering_kwargs``."""

    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: float | str = 2.25  # or "auto" (with ray_end "auto"): intersect the box
    ray_end: float | str = 3.3
    box_warp: float = 1.0
    clamp_mode: str = "softplus"
    disparity_space_sampling: bool = False
    white_back: bool = False
    density_noise: float = 0.0  # stochastic mode only
    sampling: SamplingMode = "deterministic"

    def __post_init__(self) -> None:
        if self.depth_resolution < 2:
            raise ValueError(f"depth_resolution must be >= 2, got {self.depth_resolution}")
        if self.depth_resolution_importance < 0:
            raise ValueError(f"depth_resolution_importance must be >= 0, got {self.depth_resolution_importance}")
        auto = (self.ray_start == "auto", self.ray_end == "auto")
        if auto[0] != auto[1]:
            raise ValueError("ray_start and ray_end must both be 'auto' or both numbers")
        if not auto[0] and not float(self.ray_start) < float(self.ray_end):
            raise ValueError(f"ray_start ({self.ray_start}) must be < ray_end ({self.ray_end})")
        if self.box_warp <= 0:
            raise ValueError(f"box_warp must be > 0, got {self.box_warp}")
        if self.clamp_mode != "softplus":
            raise ValueError(f"only clamp_mode 'softplus' is supported (as in EG3D's MipRayMarcher2), got {self.clamp_mode!r}")
        if self.sampling not in ("stochastic", "deterministic"):
            raise ValueError(f"sampling must be 'stochastic' or 'deterministic', got {self.sampling!r}")

    def with_(self, **changes) -> "RenderOptions":
        return replace(self, **changes)


# ----------------------------------------------------------------------------- rays

def generate_rays(cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions [N, R*R, 3] for cameras cam2world [N,4,4], intrinsics [N,3,3]."""
    if cam2world.ndim != 3 or cam2world.shape[1:] != (4, 4):
        raise ValueError(f"cam2world must be [N,4,4], got {tuple(cam2world.shape)}")
    if intrinsics.ndim != 3 or intrinsics.shape[1:] != (3, 3) or intrinsics.shape[0] != cam2world.shape[0]:
        raise ValueError(f"intrinsics must be [N,3,3] with N={cam2world.shape[0]}, got {tuple(intrinsics.shape)}")
    if int(resolution) < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    n, m = cam2world.shape[0], resolution * resolution
    dev, dt = cam2world.device, cam2world.dtype
    cam_locs = cam2world[:, :3, 3]  # [N,3]
    fx, fy = intrinsics[:, 0, 0:1], intrinsics[:, 1, 1:2]  # [N,1]
    cx, cy, sk = intrinsics[:, 0, 2:3], intrinsics[:, 1, 2:3], intrinsics[:, 0, 1:2]

    ar = torch.arange(resolution, dtype=torch.float32, device=dev)
    uv = torch.stack(torch.meshgrid(ar, ar, indexing="ij")) * (1.0 / resolution) + (0.5 / resolution)  # [2,R,R]
    uv = uv.flip(0).reshape(2, -1).transpose(1, 0).to(dt)  # [M,2] as (x=column, y=row)
    x_cam = uv[:, 0].unsqueeze(0).expand(n, m)  # [N,M]
    y_cam = uv[:, 1].unsqueeze(0).expand(n, m)
    z_cam = torch.ones((n, m), dtype=dt, device=dev)

    x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam
    y_lift = (y_cam - cy) / fy * z_cam
    cam_rel = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)  # [N,M,4]
    world = torch.bmm(cam2world, cam_rel.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]  # [N,M,3]
    dirs = F.normalize(world - cam_locs[:, None, :], dim=2)
    origins = cam_locs.unsqueeze(1).expand(n, m, 3).contiguous()
    return origins, dirs


def ray_box_limits(origins: torch.Tensor, dirs: torch.Tensor, box_side: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry/exit depths [..., 1] of rays through the cube of side ``box_side`` at the origin.

    Rays that miss get start -1, end -2 (the official convention).
    """
    shape = origins.shape
    o = origins.detach().reshape(-1, 3)
    d = dirs.detach().reshape(-1, 3)
    half = box_side / 2
    inv = 1 / d
    t0 = (-half - o) * inv  # [K,3]
    t1 = (half - o) * inv
    tmin = torch.minimum(t0, t1)
    tmax = torch.maximum(t0, t1)
    near = tmin.max(dim=-1).values
    far = tmax.min(dim=-1).values
    valid = far >= near
    near = torch.where(valid, near, torch.full_like(near, -1.0))
    far = torch.where(valid, far, torch.full_like(far, -2.0))
    return near.reshape(*shape[:-1], 1), far.reshape(*shape[:-1], 1)


# ----------------------------------------------------------------------------- sampling along rays

def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        raise ValueError("stochastic sampling needs a torch.Generator (pass generator=...)")
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def sample_stratified(
    origins: torch.Tensor,
    ray_start: float | torch.Tensor,
    ray_end: float | torch.Tensor,
    n: int,
    *,
    sampling: SamplingMode,
    disparity_space: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Coarse depths [N, M, n, 1]; ray_start/end are floats or per-ray tensors [N, M, 1]."""
    nb, m, _ = origins.shape
    dev, dt = origins.device, origins.dtype
    shape = (nb, m, n, 1)
    if sampling == "deterministic":
        jitter = torch.full(shape, 0.5, dtype=dt, device=dev)
    else:
        jitter = _uniform(shape, origins, generator)
    if disparity_space:
        t = torch.linspace(0, 1, n, dtype=dt, device=dev).reshape(1, 1, n, 1) + jitter / (n - 1)
        return 1.0 / (1.0 / ray_start * (1.0 - t) + 1.0 / ray_end * t)
    if isinstance(ray_start, torch.Tensor):
        steps = torch.arange(n, dtype=dt, device=dev) / (n - 1)  # [n]
        start = ray_start.unsqueeze(-2)  # [N,M,1,1]
        end = ray_end.unsqueeze(-2)
        depths = start + steps.reshape(1, 1, n, 1) * (end - start)
        delta = (end - start) / (n - 1)
        return depths + jitter * delta
    depths = torch.linspace(float(ray_start), float(ray_end), n, dtype=dt, device=dev).reshape(1, 1, n, 1)
    delta = (float(ray_end) - float(ray_start)) / (n - 1)
    return depths + jitter * delta


def sample_pdf(
    bins: torch.Tensor,
    weights: torch.Tensor,
    n_importance: int,
    *,
    sampling: SamplingMode,
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Inverse-CDF samples [K, n_importance] from piecewise-constant pdfs.

    bins [K, >=B+1] are interval edges (only the first B+1 are used, as in the
    official code, which passes one edge more), weights [K, B] unnormalised masses.
    """
    k, nb = weights.shape
    if bins.ndim != 2 or bins.shape[0] != k or bins.shape[1] < nb + 1:
        raise ValueError(f"bins must be [{k}, >={nb + 1}], got {tuple(bins.shape)}")
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)  # [K,B+1]
    if sampling == "deterministic":
        u = torch.linspace(0, 1, n_importance, dtype=bins.dtype, device=bins.device).expand(k, n_importance)
    else:
        u = _uniform((k, n_importance), bins, generator)
    u = u.contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(inds - 1, 0)
    above = torch.clamp_max(inds, nb)
    idx = torch.stack([below, above], -1).view(k, 2 * n_importance)
    cdf_g = torch.gather(cdf, 1, idx).view(k, n_importance, 2)
    bins_g = torch.gather(bins, 1, idx).view(k, n_importance, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def sample_importance(
    depths: torch.Tensor,
    weights: torch.Tensor,
    n_importance: int,
    *,
    sampling: SamplingMode,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fine depths [N, M, n_importance, 1] from coarse depths [N,M,S,1] and marcher weights [N,M,S-1,1]."""
    with torch.no_grad():
        nb, m, s, _ = depths.shape
        z = depths.reshape(nb * m, s)
        w = weights.reshape(nb * m, -1)
        # Official smoothing: max-pool 2 (padding 1), avg-pool 2, + 0.01.
        w = F.max_pool1d(w.unsqueeze(1).float(), 2, 1, padding=1)
        w = F.avg_pool1d(w, 2, 1).squeeze(1).to(z.dtype)
        w = w + 0.01
        z_mid = 0.5 * (z[:, :-1] + z[:, 1:])
        fine = sample_pdf(z_mid, w[:, 1:-1], n_importance, sampling=sampling, generator=generator)
    return fine.detach().reshape(nb, m, n_importance, 1)


# ----------------------------------------------------------------------------- marching

class _PositiveCumprod(torch.autograd.Function):
    """``torch.cumprod(x, dim)`` for ``x > 0`` everywhere, with a backward that never reads the
    device from the host.

    PyTorch's cumprod backward on CUDA first asks whether ``x`` holds a zero (a device-to-host
    read: the queue drains every step, and a step with it cannot be captured as a CUDA graph,
    engine/avatar/step_graph.py). The marcher's transmittance factors ``1 - alpha + 1e-10`` are
    positive by construction, and for positive inputs PyTorch's answer is the closed form
    used here: d out_j / d x_i = out_j / x_i for j >= i, so
    grad_x = reversed_cumsum(grad * out) / x. Same forward values as ``torch.cumprod``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        out = torch.cumprod(x, dim)
        ctx.save_for_backward(x, out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, out = ctx.saved_tensors
        dim = ctx.dim
        reversed_cumsum = torch.flip(torch.cumsum(torch.flip(grad * out, [dim]), dim), [dim])
        return (reversed_cumsum / x).to(x.dtype), None


def positive_cumprod(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.cumprod`` of a tensor whose entries are all > 0 (see :class:`_PositiveCumprod`)."""
    return _PositiveCumprod.apply(x, dim)


def march_weights(densities: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """MipRayMarcher2's weight of each interval [N,M,S-1,1], from raw densities [N,M,S,1] and depths
    [N,M,S,1] sorted along S: density ``softplus(sigma - 1)`` at the interval midpoint, alpha
    ``1 - exp(-density * delta)``, times the transmittance before the interval."""
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    alpha = 1 - torch.exp(-densities_mid * deltas)
    alpha_shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    return alpha * positive_cumprod(alpha_shifted, -2)[:, :, :-1]  # the factors are > 0


def ray_march(colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, *, white_back: bool = False):
    """MipRayMarcher2: composite [N,M,C] in [-1,1], depth [N,M,1], weights [N,M,S-1,1].

    colors [N,M,S,C], densities [N,M,S,1] (raw), depths [N,M,S,1], sorted along S.
    Values are taken at interval midpoints; density is ``softplus(sigma - 1)``.
    """
    return march_sample_sets([colors], densities, depths, depth_sorted=True, white_back=white_back)


def march_sample_sets(colors: Sequence[torch.Tensor], densities: torch.Tensor, depths: torch.Tensor, *,
                      depth_sorted: bool = False, white_back: bool = False):
    """:func:`ray_march` over samples in any order along S (the coarse set, then the fine one):
    ``colors`` one [N,M,S_k,C] per set, ``densities`` and ``depths`` [N,M,S,1] the sets
    concatenated along S in the same order (S = sum of S_k).

    The colour composite, sum_s w_s (c_s + c_{s+1}) / 2 over the depth-sorted intervals, is
    taken as sum_j u_j c_j with one weight per sample, u_j = (w_{j-1} + w_j) / 2 (w_{-1} =
    w_{S-1} = 0): the same sum. Only the per-sample scalars (depth, density, u) are sorted and
    put back; the colours stay in the sets they were made in, each read once by a batched
    product. Concatenating, sorting and averaging the colours into midpoints instead (the
    official marcher) moves the render's largest tensors several times over, forward and
    backward (``bench/memory_traffic.py``).
    """
    order = None
    if not depth_sorted:
        order = torch.argsort(depths, dim=-2)  # [N,M,S,1]
        depths, densities = depths.gather(-2, order), densities.gather(-2, order)
    weights = march_weights(densities, depths)  # [N,M,S-1,1], in depth order
    per_sample = (F.pad(weights, (0, 0, 1, 0)) + F.pad(weights, (0, 0, 0, 1))) / 2  # [N,M,S,1]
    if order is not None:
        per_sample = torch.zeros_like(per_sample).scatter(-2, order, per_sample)  # back to the sets' order
    parts = per_sample.split([c.shape[-2] for c in colors], dim=-2)
    dtype = functools.reduce(torch.promote_types, [c.dtype for c in colors], per_sample.dtype)  # as a plain sum
    with torch.autocast(densities.device.type, enabled=False):
        composite_rgb = functools.reduce(torch.add, ((u.to(dtype).transpose(-1, -2) @ c.to(dtype)).squeeze(-2)
                                                     for u, c in zip(parts, colors)))  # [N,M,C]
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    weight_total = weights.sum(2)
    composite_depth = torch.sum(weights * depths_mid, -2) / weight_total
    composite_depth = torch.nan_to_num(composite_depth, float("inf"))
    composite_depth = torch.clamp(composite_depth, torch.min(depths), torch.max(depths))
    if white_back:
        composite_rgb = composite_rgb + 1 - weight_total
    return composite_rgb * 2 - 1, composite_depth, weights


def map_composite(features: torch.Tensor, opacity: torch.Tensor, scale: float, shift: float, *,
                  white_back: bool = False) -> torch.Tensor:
    """The marcher's features (``2 * composite - 1``, [N,C,...]) for the colours ``scale * c +
    shift`` of a field, from those it made of the field's colours ``c``, with the ray's opacity
    ``W`` (the sum of its weights, broadcastable to ``features``). The composite is a weighted sum
    of the samples' colours, so ``sum w (a c + b) = a sum w c + b W``: a field can leave an affine
    map of its colours to the rays, far fewer than its samples. Worked through the marcher's
    ``2 x - 1`` (and the white background's ``+ 1 - W``), that is ``scale * features`` plus a
    per-ray offset ``W k1 + k0``: one pass over the features."""
    if white_back:
        k1, k0 = 2 * (scale + shift - 1), 1 - scale
    else:
        k1, k0 = 2 * shift, scale - 1
    return torch.add(opacity * k1 + k0, features, alpha=scale)


# ----------------------------------------------------------------------------- tri-plane sampling

def project_onto_planes(coords: torch.Tensor) -> torch.Tensor:
    """Plane coordinates [N, 3, M, 2] of points [N, M, 3] (official axes, see module docstring)."""
    # Basic indexing only: a list index builds an index tensor on the host, and its backward
    # (index_put with accumulation) synchronises the GPU every optimisation step.
    return torch.stack([torch.stack((coords[..., u], coords[..., v]), dim=-1) for u, v in PLANE_COORD_INDEX], dim=1)


def _check_planes_and_points(planes: torch.Tensor, coords: torch.Tensor) -> None:
    if planes.ndim != 5 or planes.shape[1] != 3:
        raise ValueError(f"planes must be [N,3,C,H,W], got {tuple(planes.shape)}")
    n = planes.shape[0]
    if coords.ndim != 3 or coords.shape[0] != n or coords.shape[2] != 3:
        raise ValueError(f"coords must be [{n},M,3] to match planes, got {tuple(coords.shape)}")


def _grid_sample_planes(planes: torch.Tensor, coords: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Bilinear features [N, 3, C, M] of planes [N,3,C,H,W] at world points [N,M,3]."""
    _check_planes_and_points(planes, coords)
    n, n_planes, c, h, w = planes.shape
    m = coords.shape[1]
    grid = project_onto_planes((2 / box_warp) * coords).reshape(n * n_planes, 1, m, 2)
    feats = F.grid_sample(
        planes.reshape(n * n_planes, c, h, w), grid.to(planes.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # [N*3, C, 1, M]
    return feats.view(n, n_planes, c, m)


def sample_from_planes(planes: torch.Tensor, coords: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Bilinear features [N, 3, M, C] of planes [N,3,C,H,W] at world points [N,M,3]."""
    return _grid_sample_planes(planes, coords, box_warp).transpose(2, 3)


def sample_plane_mean(planes: torch.Tensor, coords: torch.Tensor, box_warp: float, impl: str = "auto") -> torch.Tensor:
    """The mean over the three planes of :func:`sample_from_planes`, [N, M, C]: what the OSG
    decoder reads. On CUDA a fused kernel samples channels-last planes (``engine.ops.triplane``)."""
    _check_planes_and_points(planes, coords)
    grid = project_onto_planes((2 / box_warp) * coords)  # [N, 3, M, 2]
    return triplane.triplane_mean(planes, grid, impl=impl)


# ----------------------------------------------------------------------------- full renderer

@dataclass
class RayRender:
    """Per-ray results: features [N,M,C] in [-1,1], depth [N,M,1], opacity [N,M,1]."""

    features: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor


def _query(field: Field, coords: torch.Tensor, dirs: torch.Tensor, opts: RenderOptions, generator):
    sigma, rgb = field(coords, dirs)
    if opts.density_noise > 0 and opts.sampling == "stochastic":
        sigma = sigma + _uniform_normal(sigma, generator) * opts.density_noise
    return sigma, rgb


def _uniform_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        raise ValueError("density_noise needs a torch.Generator (pass generator=...)")
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def render_rays(
    field: Field,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    opts: RenderOptions,
    *,
    generator: torch.Generator | None = None,
) -> RayRender:
    """Two-pass (coarse + importance) volume rendering of rays [N,M,3] through ``field``.

    The field is called with [N, M*S, 3] points; ``generator`` is needed in
    stochastic mode.
    """
    if origins.shape != dirs.shape or origins.ndim != 3 or origins.shape[-1] != 3:
        raise ValueError(f"origins and dirs must both be [N,M,3], got {tuple(origins.shape)} and {tuple(dirs.shape)}")
    mode = opts.sampling
    if opts.ray_start == "auto":
        start, end = ray_box_limits(origins, dirs, opts.box_warp)
        valid = end > start
        if bool(valid.any()):
            start = torch.where(valid, start, start[valid].min())
            end = torch.where(valid, end, start[valid].max())
        depths_c = sample_stratified(origins, start, end, opts.depth_resolution, sampling=mode,
                                     disparity_space=opts.disparity_space_sampling, generator=generator)
    else:
        depths_c = sample_stratified(origins, float(opts.ray_start), float(opts.ray_end), opts.depth_resolution,
                                     sampling=mode, disparity_space=opts.disparity_space_sampling, generator=generator)
    n, m, s, _ = depths_c.shape  # [N,M,S,1]

    coords = (origins.unsqueeze(-2) + depths_c * dirs.unsqueeze(-2)).reshape(n, -1, 3)
    sdirs = dirs.unsqueeze(-2).expand(-1, -1, s, -1).reshape(n, -1, 3)
    sigma_c, rgb_c = _query(field, coords, sdirs, opts, generator)
    rgb_c = rgb_c.reshape(n, m, s, rgb_c.shape[-1])
    sigma_c = sigma_c.reshape(n, m, s, 1)

    n_imp = opts.depth_resolution_importance
    if n_imp > 0:
        with torch.no_grad():  # the coarse weights only place the fine samples
            w = march_weights(sigma_c, depths_c)
        depths_f = sample_importance(depths_c, w, n_imp, sampling=mode, generator=generator)  # [N,M,I,1]
        coords = (origins.unsqueeze(-2) + depths_f * dirs.unsqueeze(-2)).reshape(n, -1, 3)
        sdirs = dirs.unsqueeze(-2).expand(-1, -1, n_imp, -1).reshape(n, -1, 3)
        sigma_f, rgb_f = _query(field, coords, sdirs, opts, generator)
        rgb_f = rgb_f.reshape(n, m, n_imp, rgb_f.shape[-1])
        sigma_f = sigma_f.reshape(n, m, n_imp, 1)
        feats, depth, w = march_sample_sets([rgb_c, rgb_f], torch.cat([sigma_c, sigma_f], -2),
                                            torch.cat([depths_c, depths_f], -2), white_back=opts.white_back)
    else:
        feats, depth, w = ray_march(rgb_c, sigma_c, depths_c, white_back=opts.white_back)
    return RayRender(features=feats, depth=depth, opacity=w.sum(2))


def render_views(
    field: Field,
    cam2world: torch.Tensor,
    intrinsics: torch.Tensor,
    resolution: int,
    opts: RenderOptions,
    *,
    n_fields: int,
    generator: torch.Generator | None = None,
    ray_chunk: int | None = None,
) -> dict[str, torch.Tensor]:
    """Render B = n_fields * V cameras, V views per field, as images.

    Cameras are grouped per field: camera ``b`` belongs to field ``b // V``.
    The field is called with ``[n_fields, rays*S, 3]`` points, all the views
    of a field together, so one plane set serves all its views. ``ray_chunk``
    bounds memory: at most that many rays per field per call (in
    deterministic mode with a fixed depth range the result does not depend
    on it; in stochastic mode the random draws are laid out per chunk).
    Returns ``features`` [B,C,R,R] (in [-1,1]), ``depth`` [B,1,R,R] and
    ``opacity`` [B,1,R,R].
    """
    b = cam2world.shape[0]
    if n_fields < 1 or b % n_fields != 0:
        raise ValueError(f"{b} cameras cannot be split evenly over {n_fields} plane sets")
    v = b // n_fields
    origins, dirs = generate_rays(cam2world, intrinsics, resolution)  # [B,RR,3]
    rr = origins.shape[1]
    origins = origins.reshape(n_fields, v * rr, 3)
    dirs = dirs.reshape(n_fields, v * rr, 3)
    total = v * rr
    step = total if not ray_chunk else max(1, int(ray_chunk))
    parts = [render_rays(field, origins[:, s:s + step], dirs[:, s:s + step], opts, generator=generator)
             for s in range(0, total, step)]
    feats = torch.cat([p.features for p in parts], 1)  # [P, V*RR, C]
    depth = torch.cat([p.depth for p in parts], 1)
    opacity = torch.cat([p.opacity for p in parts], 1)

    def to_img(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, rr, t.shape[-1]).permute(0, 2, 1).reshape(b, t.shape[-1], resolution, resolution).contiguous()

    return {"features": to_img(feats), "depth": to_img(depth), "opacity": to_img(opacity)}
