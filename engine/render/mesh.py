"""Avatar mesh export: marching cubes on the tri-plane density, vertex colours, binary glTF (GLB).

Conventions
-----------
* The density is sampled on a regular grid of ``resolution^3`` points covering
  the EG3D box ``[-box_warp/2, box_warp/2]^3`` (world units; +y up, the face
  looks towards +z, see :mod:`engine.nets.camera`), grid index ``[i, j, k]``
  = world ``(x, y, z)``, points at the cell corners ``-h + 2h * i / (R - 1)``.
* The iso-surface is taken on the *raw* decoder density (before the marcher's
  ``softplus(sigma - 1)``) at ``level`` (default 10, as EG3D's own shape
  extraction does). The grid border is set to a value below the level so
  every surface is closed.
* Vertex colours are the first three decoder feature channels (the
  neural-render RGB, [0, 1]) at the vertex, written as normalised unsigned
  bytes (RGBA, A = 255).
* glTF 2.0 binary container: 12-byte header (``glTF``, version 2, total
  length), a JSON chunk (padded with spaces to 4 bytes) and a BIN chunk
  (padded with zeros). One mesh, one primitive (triangles, mode 4) with
  ``POSITION`` (float32 VEC3, with min/max), ``NORMAL`` (float32 VEC3),
  ``COLOR_0`` (uint8 normalised VEC4) and uint32 indices. Front faces are
  counter-clockwise seen from outside (glTF's rule), so normals point out.
  glTF's axes (+y up, +z towards the viewer, metres) match EG3D's world, one
  world unit per metre.
* Per-user weights (``params``, EG3D parameter names) are applied with
  ``engine.avatar.params.call_with`` around the generator functions of
  :mod:`engine.render.frames`, as for the sticker frames.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from engine.avatar.params import call_with
from engine.render.frames import compute_planes, sample_points

GLB_MAGIC = 0x46546C67  # b"glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
DEFAULT_LEVEL = 10.0

DensityFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # points [M,3] -> (sigma [M], rgb [M,3])


@dataclass
class Mesh:
    vertices: np.ndarray  # (V, 3) float32 world units
    faces: np.ndarray     # (F, 3) uint32, counter-clockwise seen from outside
    normals: np.ndarray   # (V, 3) float32 unit, outward
    colors: np.ndarray    # (V, 4) uint8 RGBA


def grid_points(resolution: int, half: float) -> torch.Tensor:
    """Grid corner points [R^3, 3] in [i, j, k] = (x, y, z) order (row-major)."""
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    a = torch.linspace(-half, half, resolution, dtype=torch.float32)
    gx, gy, gz = torch.meshgrid(a, a, a, indexing="ij")
    return torch.stack([gx, gy, gz], -1).reshape(-1, 3)


@torch.no_grad()
def density_grid(density: DensityFn, resolution: int, half: float, chunk: int = 1 << 18) -> np.ndarray:
    """Raw density at the grid points, as an array (R, R, R) indexed [i, j, k] = (x, y, z)."""
    pts = grid_points(resolution, half)
    out = torch.cat([density(pts[s:s + chunk])[0].reshape(-1).float().cpu() for s in range(0, pts.shape[0], chunk)])
    return out.reshape(resolution, resolution, resolution).numpy()


def extract_surface(sigma: np.ndarray, level: float, half: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching cubes of ``sigma`` (R, R, R) at ``level``: vertices (V,3) world, faces (F,3), normals (V,3)."""
    from skimage import measure

    if sigma.ndim != 3 or len(set(sigma.shape)) != 1:
        raise ValueError(f"density grid must be a cube (R, R, R), got {sigma.shape}")
    grid = np.array(sigma, dtype=np.float32, copy=True)
    if not np.isfinite(grid).all():
        raise ValueError("density grid has non-finite values")
    border = min(float(grid.min()), level) - 1.0
    grid[[0, -1], :, :] = border
    grid[:, [0, -1], :] = border
    grid[:, :, [0, -1]] = border
    if not (grid.max() > level):
        raise ValueError(f"no density above level {level} (max {float(grid.max()):.3g}): nothing to mesh")
    r = grid.shape[0]
    spacing = (2.0 * half / (r - 1),) * 3
    verts, faces, normals, _ = measure.marching_cubes(grid, level=level, spacing=spacing)
    verts = verts - half
    faces = faces[:, [0, 2, 1]]  # skimage winds them clockwise from outside for "density high inside"
    n = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = normals / np.maximum(n, 1e-12)
    return verts.astype(np.float32), faces.astype(np.uint32), normals.astype(np.float32)


def mesh_from_density(density: DensityFn, resolution: int, half: float, level: float = DEFAULT_LEVEL) -> Mesh:
    sigma = density_grid(density, resolution, half)
    verts, faces, normals = extract_surface(sigma, level, half)
    with torch.no_grad():
        rgb = density(torch.from_numpy(verts))[1].float().cpu().numpy()  # (V, 3) in [0, 1]
    colors = np.concatenate([np.clip(np.round(rgb[:, :3] * 255), 0, 255), np.full((len(verts), 1), 255)], 1)
    return Mesh(vertices=verts, faces=faces, normals=normals, colors=colors.astype(np.uint8))


# ----------------------------------------------------------------------------- GLB

def _pad(b: bytes, fill: bytes) -> bytes:
    return b + fill * ((4 - len(b) % 4) % 4)


def write_glb(mesh: Mesh) -> bytes:
    """The mesh as a GLB byte string (see the module docstring for the layout)."""
    v = np.ascontiguousarray(mesh.vertices, dtype="<f4")
    nrm = np.ascontiguousarray(mesh.normals, dtype="<f4")
    col = np.ascontiguousarray(mesh.colors, dtype=np.uint8)
    idx = np.ascontiguousarray(mesh.faces, dtype="<u4").reshape(-1)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ValueError(f"vertices must be (V>0, 3), got {v.shape}")
    if nrm.shape != v.shape or col.shape != (len(v), 4):
        raise ValueError(f"normals {nrm.shape} / colors {col.shape} do not match {len(v)} vertices")
    if idx.size == 0 or idx.size % 3 or int(idx.max()) >= len(v):
        raise ValueError("faces must be (F>0, 3) indices into the vertices")
    parts = [v.tobytes(), nrm.tobytes(), col.tobytes(), idx.tobytes()]
    offsets, blob = [], b""
    for p in parts:
        offsets.append(len(blob))
        blob = _pad(blob + p, b"\x00")
    views = [
        {"buffer": 0, "byteOffset": offsets[0], "byteLength": len(parts[0]), "target": 34962},
        {"buffer": 0, "byteOffset": offsets[1], "byteLength": len(parts[1]), "target": 34962},
        {"buffer": 0, "byteOffset": offsets[2], "byteLength": len(parts[2]), "target": 34962},
        {"buffer": 0, "byteOffset": offsets[3], "byteLength": len(parts[3]), "target": 34963},
    ]
    accessors = [
        {"bufferView": 0, "componentType": 5126, "count": len(v), "type": "VEC3",
         "min": v.min(0).astype(float).tolist(), "max": v.max(0).astype(float).tolist()},
        {"bufferView": 1, "componentType": 5126, "count": len(v), "type": "VEC3"},
        {"bufferView": 2, "componentType": 5121, "normalized": True, "count": len(v), "type": "VEC4"},
        {"bufferView": 3, "componentType": 5125, "count": int(idx.size), "type": "SCALAR"},
    ]
    doc = {
        "asset": {"version": "2.0", "generator": "emoji3d"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "avatar"}],
        "meshes": [{"name": "avatar", "primitives": [
            {"attributes": {"POSITION": 0, "NORMAL": 1, "COLOR_0": 2}, "indices": 3, "mode": 4}]}],
        "buffers": [{"byteLength": len(blob)}], "bufferViews": views, "accessors": accessors,
    }
    js = _pad(json.dumps(doc, separators=(",", ":")).encode(), b" ")
    total = 12 + 8 + len(js) + 8 + len(blob)
    return (struct.pack("<III", GLB_MAGIC, 2, total) + struct.pack("<II", len(js), CHUNK_JSON) + js
            + struct.pack("<II", len(blob), CHUNK_BIN) + blob)


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """(JSON document, BIN chunk) of a GLB; raises ValueError on a malformed container."""
    if len(data) < 20:
        raise ValueError("GLB too short")
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2:
        raise ValueError(f"not a glTF 2 binary (magic {magic:#x}, version {version})")
    if total != len(data):
        raise ValueError(f"GLB header says {total} bytes, got {len(data)}")
    jlen, jtype = struct.unpack_from("<II", data, 12)
    if jtype != CHUNK_JSON or jlen % 4:
        raise ValueError("first GLB chunk is not a 4-byte aligned JSON chunk")
    doc = json.loads(data[20:20 + jlen])
    off = 20 + jlen
    blob = b""
    if off < total:
        blen, btype = struct.unpack_from("<II", data, off)
        if btype != CHUNK_BIN:
            raise ValueError("second GLB chunk is not BIN")
        blob = data[off + 8:off + 8 + blen]
    return doc, blob


def read_accessor(doc: dict, blob: bytes, index: int) -> np.ndarray:
    """Array of accessor ``index`` (tightly packed views only)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: "<f4", 5125: "<u4", 5121: "u1", 5123: "<u2"}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    arr = np.frombuffer(blob, dtype=dtype, count=acc["count"] * width, offset=start)
    return arr.reshape(acc["count"], width) if width > 1 else arr


# ----------------------------------------------------------------------------- avatar export

def avatar_density(generator: nn.Module, params: Mapping[str, torch.Tensor] | None, w_3d: torch.Tensor,
                   noise: Mapping[str, torch.Tensor] | None) -> DensityFn:
    """Density function of an avatar: planes computed once from ``w_3d`` [1,L,D] with the tuned ``params``."""
    dev = next(generator.parameters()).device
    noise_inputs = {k: v.to(dev) for k, v in noise.items()} if noise else None
    with torch.no_grad():
        plane_sets = call_with(generator, params, compute_planes, w_3d[:1].to(dev, torch.float32), noise_inputs)

    def density(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            sigma, feats = call_with(generator, params, sample_points, plane_sets, points.to(dev).unsqueeze(0))
        return sigma[0, :, 0], feats[0, :, :3]

    return density


def export_glb(generator: nn.Module, params: Mapping[str, torch.Tensor] | None, w_3d: torch.Tensor,
               noise: Mapping[str, torch.Tensor] | None, path: str | os.PathLike, resolution: int = 128,
               level: float = DEFAULT_LEVEL) -> Mesh:
    """Write the avatar's mesh to ``path`` (GLB, atomically) and return it."""
    half = float(generator.config.rendering.box_warp) / 2
    mesh = mesh_from_density(avatar_density(generator, params, w_3d, noise), resolution, half, level)
    data = write_glb(mesh)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return mesh
