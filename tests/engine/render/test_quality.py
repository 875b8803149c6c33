"""The pack quality measures: right on constructed cases, finite and in range on slim networks."""
from __future__ import annotations

import math

import pytest
import torch

from engine.avatar.networks import slim_networks
from engine.nets import camera
from engine.nets.volume import generate_rays
from engine.render import quality


def sphere_views(labels: torch.Tensor, resolution: int = 48, radius: float = 0.3):
    """Exact depth [V,1,R,R] (distance along the ray) and opacity of a sphere at the origin."""
    c2w, k = camera.split_label(labels)
    origins, dirs = generate_rays(c2w, k, resolution)  # [V, RR, 3]
    b = (origins * dirs).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - radius ** 2)
    hit = disc > 0
    t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.full_like(b, 3.0))
    shape = (labels.shape[0], 1, resolution, resolution)
    return t.reshape(shape).float(), hit.reshape(shape).float()


@pytest.fixture(scope="module")
def nets():
    return slim_networks(0)


def test_a_consistent_shape_agrees_across_views_and_a_broken_one_does_not():
    labels = quality.turn_cameras()
    depth, alpha = sphere_views(labels)
    for other in (1, 2):
        score, total = quality.depth_agreement(depth, alpha, labels, 0, other)
        assert total > 0.05 and score > 0.9
    # The turned views see another shape: depth off by 5 % where the frontal view agrees with the sphere.
    broken = depth.clone()
    broken[1:] *= 1.05
    assert quality.depth_agreement(broken, alpha, labels, 0, 1)[0] < 0.1
    # Nothing opaque: no measure.
    assert quality.depth_agreement(depth, torch.zeros_like(alpha), labels, 0, 1) == (0.0, 0.0)


def test_identity_and_style_rank_a_match_above_a_mismatch(nets):
    gen = torch.Generator().manual_seed(3)
    face = torch.rand(1, 3, 256, 256, generator=gen) * 2 - 1
    other = torch.rand(1, 3, 256, 256, generator=gen) * 2 - 1
    same = quality.identity_cosine(nets.id_loss, face, face)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert quality.identity_cosine(nets.id_loss, other, face) < same
    assert quality.style_distance(nets.lpips, face, face) == pytest.approx(0.0, abs=1e-6)
    assert quality.style_distance(nets.lpips, other, face) > 0.01


def test_measures_of_a_slim_avatar_are_finite_and_in_range(nets):
    g = nets.g3d
    ws = g.mapping(torch.randn(1, g.config.z_dim, generator=torch.Generator().manual_seed(1)),
                   camera.conditioning_label(1))
    noise = {n: torch.zeros(1, 1, int(n[1:].split(".")[0]), int(n[1:].split(".")[0]))
             for n in g.backbone.synthesis.noise_layer_names()}
    crop = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)  # FFHQ 1024 -> EG3D 512
    selfie = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(2)) * 2 - 1
    m = quality.measure(g, nets.lpips, nets.id_loss, pti={}, stylized={}, ws=ws, noise=noise,
                        selfie_camera=camera.orbit_label(torch.tensor([0.1]), torch.tensor([0.0])),
                        selfie_3d=selfie, crop2d_to_crop3d=crop, exemplar_3d=selfie)
    for value in (m.identity_pti, m.identity_stylized):
        assert value is not None and math.isfinite(value) and -1.0 <= value <= 1.0
    assert m.multiview is not None and 0.0 <= m.multiview <= 1.0
    assert m.style_lpips is not None and math.isfinite(m.style_lpips) and m.style_lpips >= 0.0
    gone = quality.measure(g, nets.lpips, nets.id_loss, pti={}, stylized={}, ws=ws, noise=noise,
                           selfie_camera=camera.orbit_label(torch.tensor([0.1]), torch.tensor([0.0])),
                           selfie_3d=None, crop2d_to_crop3d=None, exemplar_3d=selfie)
    assert gone.identity_pti is None and "no longer stored" in gone.notes[0]


def test_weak_measures_name_what_is_past_its_threshold():
    m = quality.QualityMeasures(identity_pti=0.7, identity_stylized=0.1, multiview=0.95, style_lpips=0.8)
    limits = dict(min_identity=0.5, min_identity_stylized=0.3, min_multiview=0.8, max_style_lpips=0.6)
    assert quality.weak_measures(m, **limits) == ["identity_stylized", "style_lpips"]
    assert quality.weak_measures(quality.QualityMeasures(), **limits) == []
