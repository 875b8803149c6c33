"""Alpha matte on analytic density fields through the real volume renderer."""
import torch

from engine.render import frames
from engine.nets import camera, volume


def sphere_with_wall(radius=0.3, wall_z=-0.8, inside=60.0, outside=-60.0):
    """A head stand-in (sphere at the origin) plus a background wall behind it (z < wall_z), as EG3D paints one."""

    def field(coords, dirs):
        d = coords.norm(dim=-1, keepdim=True)  # [N,M,1]
        solid = (d <= radius) | (coords[..., 2:3] <= wall_z)
        sigma = torch.where(solid, torch.full_like(d, inside), torch.full_like(d, outside))
        rgb = torch.full(coords.shape[:-1] + (4,), 0.5)
        return sigma, rgb

    return field


def _render(field, res=32):
    c = camera.orbit_label(0.0, 0.0, pivot=(0.0, 0.0, 0.0))
    c2w, k = camera.split_label(c)
    opts = volume.RenderOptions(depth_resolution=48, depth_resolution_importance=48, ray_start=2.25, ray_end=3.6)
    out = volume.render_views(field, c2w, k, res, opts, n_fields=1)
    origins, dirs = volume.generate_rays(c2w, k, res)
    # analytic silhouette: distance of each ray to the origin vs the radius
    closest = (origins - (origins * dirs).sum(-1, keepdim=True) * dirs).norm(dim=-1).reshape(1, 1, res, res)
    return out["opacity"], closest


def test_matte_keeps_the_head_and_drops_the_background_wall():
    radius = 0.3
    field = sphere_with_wall(radius)
    cfg = frames.MatteConfig()
    opacity_raw, closest = _render(field)
    # without the region mask the wall makes every pixel opaque
    assert float(opacity_raw.min()) > 0.95
    opacity, _ = _render(frames.region_field(field, cfg.region_min, cfg.region_max))
    alpha = frames.alpha_matte(opacity, 32, cfg)
    inside = closest < radius - 0.03
    outside = closest > radius + 0.03
    assert inside.sum() > 50 and outside.sum() > 50
    assert float(alpha[inside].min()) > 0.99
    assert float(alpha[outside].max()) < 0.01
    assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0


def test_matte_upsamples_with_a_soft_edge():
    opacity = torch.zeros(2, 1, 8, 8)
    opacity[:, :, 2:6, 2:6] = 1.0
    alpha = frames.alpha_matte(opacity, 64)
    assert alpha.shape == (2, 1, 64, 64)
    assert float(alpha[0, 0, 32, 32]) == 1.0 and float(alpha[0, 0, 2, 2]) == 0.0
    edge = alpha[0, 0, 32, 8:24]
    assert bool(((edge > 0) & (edge < 1)).any())  # soft, not a hard step
    assert bool((edge[1:] >= edge[:-1]).all())


def test_thin_partial_opacity_survives():
    """Hair-like strands (opacity ~0.7) stay opaque; faint haze (0.03) vanishes."""
    opacity = torch.tensor([0.03, 0.3, 0.7, 1.0]).reshape(1, 1, 1, 4).expand(1, 1, 4, 4)
    a = frames.alpha_matte(opacity, 4, frames.MatteConfig(low=0.05, high=0.6))[0, 0, 0]  # same size: no resampling
    assert float(a[0]) == 0.0
    assert 0.2 < float(a[1]) < 0.8
    assert float(a[2]) == 1.0 and float(a[3]) == 1.0


def test_matte_config_validation():
    import pytest

    with pytest.raises(ValueError, match="low < high"):
        frames.MatteConfig(low=0.7, high=0.5)
    with pytest.raises(ValueError, match="empty"):
        frames.MatteConfig(region_min=(0, 0, 0), region_max=(0, 1, 1))
    with pytest.raises(ValueError, match=r"\[B,1,R,R\]"):
        frames.alpha_matte(torch.zeros(1, 2, 4, 4), 8)
