"""Volume rendering: rays, stratified/importance sampling, plane sampling, marching.

The renderer-correctness acceptance (issue 6): an analytic sphere supplied by
a field stand-in; ray generation, stratified + importance sampling and the
marcher stay real, and the rendered depth must match the analytic ray/sphere
intersection within 1% of the box size.
"""
import math

import pytest
import torch

from engine.nets import camera, volume

BOX = 1.0


def sphere_field(center, radius, inside=200.0, outside=-60.0):
    center = torch.as_tensor(center, dtype=torch.float32)

    def field(coords, dirs):
        d = (coords - center).norm(dim=-1, keepdim=True)  # [N,M,1]
        sigma = torch.where(d <= radius, torch.full_like(d, inside), torch.full_like(d, outside))
        rgb = torch.cat([(coords - center) / radius * 0.5 + 0.5, torch.ones_like(d)], dim=-1).clamp(0, 1)  # [N,M,4]
        return sigma, rgb

    return field


def analytic_depth(origins, dirs, center, radius):
    """First intersection depth along unit rays, +inf on a miss; and chord length."""
    oc = origins - torch.as_tensor(center, dtype=origins.dtype)
    b = (oc * dirs).sum(-1)
    cc = (oc * oc).sum(-1) - radius**2
    disc = b * b - cc
    hit = disc > 0
    sq = torch.sqrt(disc.clamp_min(0))
    t = torch.where(hit, -b - sq, torch.full_like(b, math.inf))
    return t, 2 * sq * hit


POSES = [(0.0, 0.0), (0.4, -0.15), (-0.6, 0.25), (0.9, 0.1), (0.0, -0.5)]


@pytest.mark.parametrize("yaw,pitch", POSES)
def test_analytic_sphere_depth_deterministic(yaw, pitch):
    center, radius = (0.05, -0.04, 0.08), 0.3
    opts = volume.RenderOptions(depth_resolution=48, depth_resolution_importance=48, ray_start=2.25, ray_end=3.3,
                                box_warp=BOX, sampling="deterministic")
    c = camera.orbit_label(yaw, pitch, 2.7, (0, 0, 0.2))
    c2w, k = camera.split_label(c)
    res = 32
    out = volume.render_views(sphere_field(center, radius), c2w, k, res, opts, n_fields=1)
    origins, dirs = volume.generate_rays(c2w, k, res)
    t, chord = analytic_depth(origins[0], dirs[0], center, radius)
    depth = out["depth"][0, 0].reshape(-1)
    alpha = out["opacity"][0, 0].reshape(-1)
    solid = chord > 0.05  # away from the silhouette
    miss = ~torch.isfinite(t)
    assert int(solid.sum()) > 50 and int(miss.sum()) > 50
    err = (depth[solid] - t[solid]).abs().max()
    assert float(err) < 0.01 * BOX, float(err)
    assert float(alpha[solid].min()) > 0.99
    assert float(alpha[miss].max()) < 1e-3


def test_deterministic_is_repeatable_and_stochastic_varies_with_seed():
    opts = volume.RenderOptions(depth_resolution=12, depth_resolution_importance=12, sampling="deterministic")
    c2w, k = camera.split_label(camera.orbit_label([0.0, 0.3], [0.0, -0.1]))
    field = sphere_field((0, 0, 0), 0.3, inside=3.0)
    a = volume.render_views(field, c2w, k, 16, opts, n_fields=1)
    b = volume.render_views(field, c2w, k, 16, opts, n_fields=1)
    for key in a:
        assert torch.equal(a[key], b[key])
    st = opts.with_(sampling="stochastic")
    r1 = volume.render_views(field, c2w, k, 16, st, n_fields=1, generator=torch.Generator().manual_seed(1))
    r1b = volume.render_views(field, c2w, k, 16, st, n_fields=1, generator=torch.Generator().manual_seed(1))
    r2 = volume.render_views(field, c2w, k, 16, st, n_fields=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(r1["depth"], r1b["depth"])
    assert float((r1["depth"] - r2["depth"]).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="Generator"):
        volume.render_views(field, c2w, k, 8, st, n_fields=1)


def test_views_folded_per_field_equal_separate_renders():
    opts = volume.RenderOptions(depth_resolution=8, depth_resolution_importance=8)
    c2w, k = camera.split_label(camera.orbit_label([0.0, 0.3, -0.2], [0.0, -0.1, 0.2]))
    field = sphere_field((0, 0, 0), 0.25, inside=5.0)
    together = volume.render_views(field, c2w, k, 8, opts, n_fields=1)
    for i in range(3):
        alone = volume.render_views(field, c2w[i : i + 1], k[i : i + 1], 8, opts, n_fields=1)
        assert torch.allclose(together["features"][i], alone["features"][0], atol=1e-6)
        assert torch.allclose(together["opacity"][i], alone["opacity"][0], atol=1e-6)


def test_rays_project_back_to_their_pixels():
    c = camera.orbit_label(0.3, -0.2, 2.7, (0, 0, 0.2), dtype=torch.float64)
    c2w, k = camera.split_label(c)
    res = 8
    o, d = volume.generate_rays(c2w, k, res)
    assert torch.allclose(d.norm(dim=-1), torch.ones(1, res * res, dtype=torch.float64))
    p = o + 1.7 * d  # world points along the rays
    w2c = torch.linalg.inv(c2w[0])
    pc = (w2c[:3, :3] @ p[0].T + w2c[:3, 3:]).T  # camera frame
    uv = (k[0] @ (pc / pc[:, 2:]).T).T[:, :2]  # normalised image coords
    jj, ii = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="xy")
    expect = torch.stack([(jj.reshape(-1) + 0.5) / res, (ii.reshape(-1) + 0.5) / res], -1).to(uv)
    assert torch.allclose(uv, expect, atol=1e-9)


def test_stratified_deterministic_midpoints():
    o = torch.zeros(1, 2, 3)
    dz = volume.sample_stratified(o, 2.25, 3.3, 5, sampling="deterministic")[0, 0, :, 0]
    step = (3.3 - 2.25) / 4
    expect = torch.tensor([2.25 + step * (i + 0.5) for i in range(5)])
    assert torch.allclose(dz, expect, atol=1e-6)


def test_sample_pdf_deterministic_inverse_cdf():
    bins = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    w = torch.tensor([[1.0, 0.0, 0.0, 3.0]])
    s = volume.sample_pdf(bins, w, 9, sampling="deterministic")
    # cdf: 0, .25, .25, .25, 1 -> quantile u maps to 4u in bin 0 and 3 + (u-.25)/.75 in bin 3
    u = torch.linspace(0, 1, 9)
    expect = torch.where(u < 0.25, 4 * u, 3 + (u - 0.25) / 0.75)
    off_edge = (u - 0.25).abs() > 1e-3  # u = 0.25 may land anywhere in the empty bins
    assert torch.allclose(s[0][off_edge], expect[off_edge], atol=1e-3)
    # stochastic: empirical distribution follows the pdf
    g = torch.Generator().manual_seed(0)
    ss = volume.sample_pdf(bins.expand(1, 5), w, 20000, sampling="stochastic", generator=g)
    frac_last = float((ss >= 3).float().mean())
    assert abs(frac_last - 0.75) < 0.02


def test_plane_projection_matches_official_axes():
    pts = torch.randn(2, 10, 3)
    axes = torch.tensor(volume.PLANE_AXES, dtype=torch.float32)
    official = torch.stack([(pts @ torch.linalg.inv(axes[i]))[..., :2] for i in range(3)], dim=1)
    assert torch.allclose(volume.project_onto_planes(pts), official, atol=1e-6)


def test_sample_from_planes_bilinear_and_box_warp():
    # A plane whose value is a linear function of the normalised u coordinate
    # is sampled exactly by bilinear interpolation inside the box.
    h = w = 16
    u = (torch.arange(w) + 0.5) / w * 2 - 1  # pixel centres, align_corners=False
    v = (torch.arange(h) + 0.5) / h * 2 - 1
    planes = torch.zeros(1, 3, 2, h, w)
    planes[0, :, 0] = u.reshape(1, 1, w).expand(3, h, w)
    planes[0, :, 1] = v.reshape(1, h, 1).expand(3, h, w)
    pts = (torch.rand(1, 50, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 1.6  # inside box 2*0.8
    box = 2.0
    f = volume.sample_from_planes(planes, pts, box)  # [1,3,50,2]
    q = pts * 2 / box
    inner = (q.abs() < 1 - 1 / w).all(-1)[0]
    for i, (a, b) in enumerate(volume.PLANE_COORD_INDEX):
        assert torch.allclose(f[0, i, inner, 0], q[0, inner, a], atol=1e-5)
        assert torch.allclose(f[0, i, inner, 1], q[0, inner, b], atol=1e-5)
    far = torch.tensor([[[5.0, 5.0, 5.0]]])
    assert float(volume.sample_from_planes(planes, far, box).abs().max()) == 0.0


def test_options_validation():
    with pytest.raises(ValueError):
        volume.RenderOptions(ray_start=3.0, ray_end=2.0)
    with pytest.raises(ValueError):
        volume.RenderOptions(sampling="random")
    with pytest.raises(ValueError):
        volume.RenderOptions(ray_start="auto", ray_end=3.3)


def test_auto_ray_limits_hit_the_box():
    c2w, k = camera.split_label(camera.orbit_label(0.2, 0.1))
    o, d = volume.generate_rays(c2w, k, 4)
    near, far = volume.ray_box_limits(o, d, 1.0)
    p_near, p_far = o + near * d, o + far * d
    assert torch.allclose(p_near.abs().amax(-1), torch.full_like(near[..., 0], 0.5), atol=1e-5)
    assert torch.allclose(p_far.abs().amax(-1), torch.full_like(far[..., 0], 0.5), atol=1e-5)


def test_ray_chunking_does_not_change_deterministic_renders():
    opts = volume.RenderOptions(depth_resolution=10, depth_resolution_importance=10)
    c2w, k = camera.split_label(camera.orbit_label([0.0, 0.5], [0.0, 0.2]))
    field = sphere_field((0, 0.05, 0), 0.3, inside=4.0)
    whole = volume.render_views(field, c2w, k, 12, opts, n_fields=1)
    parts = volume.render_views(field, c2w, k, 12, opts, n_fields=1, ray_chunk=37)
    for key in whole:
        assert torch.allclose(whole[key], parts[key], atol=1e-6), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_positive_cumprod_gives_torch_cumprod_and_its_gradient(dtype):
    """The marcher's cumprod: the same values and, for positive factors, the same gradient bits as
    ``torch.cumprod`` (whose CUDA backward reads the device to look for zeros)."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(3, 4, 48, 1, generator=gen, dtype=dtype) + 1e-10).requires_grad_(True)
    grad = torch.randn(3, 4, 48, 1, generator=gen, dtype=dtype)
    expected = torch.cumprod(x, -2)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    got = volume.positive_cumprod(x, -2)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    assert torch.equal(got, expected) and torch.equal(got_grad, expected_grad)
    small = (torch.rand(2, 3, 6, 1, generator=gen, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda t: volume.positive_cumprod(t, -2), (small,))


@pytest.mark.gpu
def test_positive_cumprod_backward_makes_no_host_sync():
    x = (torch.rand(2, 64, 48, 1, device="cuda") + 1e-10).requires_grad_(True)
    out = volume.positive_cumprod(x, -2)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_the_marcher_composites_per_sample_as_the_interval_midpoints_did():
    """MipRayMarcher2 takes each interval's colour as the mean of its two samples; the marcher
    folds that into one weight per sample. Values and gradients equal the midpoint form's
    (bench/stages_before.py, as the official marcher has it)."""
    from bench.stages_before import ray_march_midpoints

    gen = torch.Generator().manual_seed(3)
    colors = torch.rand(2, 5, 7, 4, generator=gen).requires_grad_(True)
    densities = (torch.randn(2, 5, 7, 1, generator=gen) * 3).requires_grad_(True)
    depths = (2.25 + torch.rand(2, 5, 7, 1, generator=gen).sort(dim=2).values).requires_grad_(True)
    got_rgb, _depth, got_weights = volume.ray_march(colors, densities, depths)
    want_rgb, want_weights = ray_march_midpoints(colors, densities, depths)
    assert torch.allclose(got_rgb, want_rgb, atol=1e-6) and torch.allclose(got_weights, want_weights, atol=1e-7)
    probe = torch.randn(got_rgb.shape, generator=gen)
    got = torch.autograd.grad((got_rgb * probe).sum(), (colors, densities, depths))
    want = torch.autograd.grad((want_rgb * probe).sum(), (colors, densities, depths))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5), float((g - w).abs().max())


def test_two_sample_sets_are_marched_as_if_concatenated_and_sorted():
    """The importance renderer's final pass: coarse and fine samples interleave in depth. Marching
    the two sets where they are gives the official concatenate-sort-march result, values and
    gradients (the colours are never concatenated or sorted)."""
    from bench.stages_before import ray_march_midpoints, unify_samples

    gen = torch.Generator().manual_seed(4)
    coarse_depths = 2.25 + torch.linspace(0, 1, 6).reshape(1, 1, 6, 1).expand(2, 3, 6, 1).clone()
    fine_depths = 2.25 + torch.rand(2, 3, 5, 1, generator=gen)  # unsorted, between the coarse ones
    leaves = [coarse_depths.requires_grad_(True), torch.rand(2, 3, 6, 4, generator=gen).requires_grad_(True),
              (torch.randn(2, 3, 6, 1, generator=gen) * 3).requires_grad_(True), fine_depths.requires_grad_(True),
              torch.rand(2, 3, 5, 4, generator=gen).requires_grad_(True),
              (torch.randn(2, 3, 5, 1, generator=gen) * 3).requires_grad_(True)]
    d_c, c_c, s_c, d_f, c_f, s_f = leaves
    got_rgb, got_depth, got_weights = volume.march_sample_sets([c_c, c_f], torch.cat([s_c, s_f], -2),
                                                               torch.cat([d_c, d_f], -2))
    depths, colors, densities = unify_samples(d_c, c_c, s_c, d_f, c_f, s_f)
    want_rgb, want_weights = ray_march_midpoints(colors, densities, depths)
    _, want_depth, _ = volume.ray_march(colors, densities, depths)
    assert torch.allclose(got_rgb, want_rgb, atol=1e-6) and torch.allclose(got_weights, want_weights, atol=1e-7)
    assert torch.allclose(got_depth, want_depth, atol=1e-6)
    probe = torch.randn(got_rgb.shape, generator=gen)
    got = torch.autograd.grad((got_rgb * probe).sum() + got_depth.sum(), leaves)
    want = torch.autograd.grad((want_rgb * probe).sum() + want_depth.sum(), leaves)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5), float((g - w).abs().max())


@pytest.mark.parametrize("white_back", [False, True])
def test_an_affine_map_of_the_colours_applied_to_the_composites_gives_the_mapped_fields_render(white_back):
    """``map_composite``: rendering a field's colours and mapping the composite (by the ray's
    opacity) gives the render of the field whose colours are mapped, values and gradients, with
    white backgrounds too; by rays, far fewer than samples."""
    scale, shift = 1.002, -0.001
    opts = volume.RenderOptions(depth_resolution=10, depth_resolution_importance=10, white_back=white_back)
    c2w, k = camera.split_label(camera.orbit_label([0.0, 0.5], [0.0, 0.2]))
    gen = torch.Generator().manual_seed(5)
    tint = torch.rand(4, generator=gen).requires_grad_(True)
    sphere = sphere_field((0, 0.05, 0), 0.3, inside=4.0)

    def field(coords, dirs):  # colours in (0, 1) that carry a gradient
        sigma, rgb = sphere(coords, dirs)
        return sigma, torch.sigmoid(rgb * 4 - 2 + tint)

    def mapped(coords, dirs):
        sigma, rgb = field(coords, dirs)
        return sigma, rgb * scale + shift

    want = volume.render_views(mapped, c2w, k, 12, opts, n_fields=1)
    plain = volume.render_views(field, c2w, k, 12, opts, n_fields=1)
    got = volume.map_composite(plain["features"], plain["opacity"], scale, shift, white_back=white_back)
    assert float(plain["opacity"].min()) < 0.5 < float(plain["opacity"].max())  # rays that miss and rays that hit
    assert (got - plain["features"]).abs().max() > 1e-4  # the map moves the features
    torch.testing.assert_close(got, want["features"], rtol=0, atol=2e-6)
    probe = torch.randn(got.shape, generator=gen)
    (g_got,), (g_want,) = (torch.autograd.grad((f * probe).sum(), tint) for f in (got, want["features"]))
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)
