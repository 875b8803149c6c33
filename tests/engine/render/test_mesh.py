"""Marching cubes on density fields, the GLB container, and the avatar density with tuned weights."""
import struct

import numpy as np
import pytest
import torch

from engine.nets import camera, eg3d
from engine.render import mesh


def sphere_density(radius=0.3, center=(0.05, -0.02, 0.0), inside=40.0, outside=-20.0):
    c = torch.tensor(center)

    def density(points):
        d = (points - c).norm(dim=-1)
        sigma = outside + (inside - outside) * torch.sigmoid((radius - d) * 200.0)  # smooth shell at radius
        rgb = torch.stack([torch.full_like(d, 0.2), (points[:, 1] + 0.5).clamp(0, 1), torch.full_like(d, 0.9)], -1)
        return sigma, rgb

    return density, np.array(center)


def test_sphere_mesh_vertices_lie_on_the_sphere_and_face_outwards():
    density, center = sphere_density()
    sphere = mesh.mesh_from_density(density, resolution=48, half=0.5, level=10.0)
    r = np.linalg.norm(sphere.vertices - center, axis=1)
    level_radius = 0.3 - np.log((40.0 - (-20.0)) / (10.0 - (-20.0)) - 1) / 200.0  # where sigma == level
    assert np.abs(r - level_radius).max() < 0.01  # within 1% of the box
    tri = sphere.vertices[sphere.faces.astype(np.int64)]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((normal * (tri.mean(1) - center)).sum(1) > 0).mean() > 0.99  # counter-clockwise from outside
    assert ((sphere.normals * (sphere.vertices - center)).sum(1) > 0).mean() > 0.99
    # colours come from the field at the vertices
    assert sphere.colors.shape == (len(sphere.vertices), 4) and (sphere.colors[:, 2] == 230).all()
    assert (sphere.colors[:, 3] == 255).all()


def test_glb_parses_with_consistent_accessors(tmp_path):
    density, _ = sphere_density()
    sphere = mesh.mesh_from_density(density, resolution=24, half=0.5)
    data = mesh.write_glb(sphere)
    magic, version, total = struct.unpack_from("<III", data, 0)
    assert data[:4] == b"glTF" and version == 2 and total == len(data) and total % 4 == 0
    jlen, jtype = struct.unpack_from("<II", data, 12)
    assert jtype == 0x4E4F534A and jlen % 4 == 0
    doc, blob = mesh.read_glb(data)
    assert doc["asset"]["version"] == "2.0"
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["mode"] == 4
    pos = mesh.read_accessor(doc, blob, prim["attributes"]["POSITION"])
    nrm = mesh.read_accessor(doc, blob, prim["attributes"]["NORMAL"])
    col = mesh.read_accessor(doc, blob, prim["attributes"]["COLOR_0"])
    idx = mesh.read_accessor(doc, blob, prim["indices"])
    assert pos.shape == (len(sphere.vertices), 3) and nrm.shape == pos.shape and col.shape == (len(pos), 4)
    assert idx.size == sphere.faces.size and idx.max() < len(pos)
    np.testing.assert_array_equal(pos, sphere.vertices)
    acc = doc["accessors"][prim["attributes"]["POSITION"]]
    np.testing.assert_allclose(acc["min"], pos.min(0), rtol=1e-6)
    assert doc["buffers"][0]["byteLength"] == len(blob)
    for v in doc["bufferViews"]:
        assert v["byteOffset"] % 4 == 0 and v["byteOffset"] + v["byteLength"] <= len(blob)
    with pytest.raises(ValueError, match="glTF 2"):
        mesh.read_glb(b"x" * 32)


def test_empty_field_is_a_clear_error():
    with pytest.raises(ValueError, match="nothing to mesh"):
        mesh.mesh_from_density(lambda p: (torch.zeros(len(p)), torch.zeros(len(p), 3)), 8, 0.5)


def test_export_glb_from_the_slim_generator(tmp_path):
    G = eg3d.slim_generator("slim128", seed=0)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), camera.conditioning_label(1))
    density = mesh.avatar_density(G, None, ws, None)
    sigma = mesh.density_grid(density, 16, 0.5)
    level = float(np.quantile(sigma, 0.7))  # a random network has no calibrated density: pick a level inside its range
    path = tmp_path / "avatar.glb"
    avatar_mesh = mesh.export_glb(G, None, ws, None, path, resolution=16, level=level)
    doc, blob = mesh.read_glb(path.read_bytes())
    assert doc["accessors"][0]["count"] == len(avatar_mesh.vertices) > 0
    assert np.abs(avatar_mesh.vertices).max() <= 0.5 + 1e-6


def test_tuned_weights_shape_the_avatar_density_and_unknown_names_are_refused():
    from engine.avatar.params import UnknownParameterError

    G = eg3d.slim_generator("slim128", seed=0)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), camera.conditioning_label(1))
    points = mesh.grid_points(4, 0.4)  # [64, 3]
    base_sigma, base_rgb = mesh.avatar_density(G, None, ws, None)(points)
    same = {k: v.detach().clone() for k, v in G.named_parameters() if k.startswith("decoder.")}
    sigma, rgb = mesh.avatar_density(G, same, ws, None)(points)
    assert torch.equal(sigma, base_sigma) and torch.equal(rgb, base_rgb)
    tuned = {k: v * 1.5 for k, v in same.items()}
    tuned_sigma, _ = mesh.avatar_density(G, tuned, ws, None)(points)
    assert (tuned_sigma - base_sigma).abs().max() > 1e-3
    with pytest.raises(UnknownParameterError, match="decoder.renamed"):
        mesh.avatar_density(G, {"decoder.renamed": torch.zeros(1)}, ws, None)
