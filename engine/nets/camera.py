"""EG3D cameras: look-at poses, normalised intrinsics and the 25-number label.

Conventions (the same as NVlabs EG3D ``camera_utils.py`` and
``docs/camera_conventions.md``):

* **World frame**: right-handed, +y up, the face looks towards +z. The head
  sits near the origin, inside the box ``[-box_warp/2, box_warp/2]^3``
  (box_warp 1 for FFHQ). Units are EG3D scene units (the box is 1 unit wide).
* **Camera frame**: OpenCV. +x to the image right, +y to the image *bottom*,
  +z forwards along the viewing direction. ``cam2world`` is a 4x4 matrix whose
  columns 0..2 are the camera x/y/z axes in world coordinates and whose column 3
  is the camera centre.
* **Orbit angles** (radians): ``yaw = 0, pitch = 0`` is the frontal view, the
  camera on +z looking towards -z. EG3D's ``LookAtPoseSampler`` takes
  ``horizontal_mean = pi/2 + yaw`` and ``vertical_mean = pi/2 + pitch``; this
  module takes the offsets ``yaw``/``pitch`` directly and reproduces the
  official mapping exactly, including its non-linear polar angle
  ``phi = arccos(1 - 2 v / pi)``.
  - **Positive yaw moves the camera towards world +x**, which is the image
    right of the frontal view (the subject's left cheek turns towards us).
  - **Positive pitch moves the camera down** (world -y); negative pitch looks
    from above.
* **Camera position**: as in the official sampler, the camera sits on the
  sphere of ``radius`` around the *world origin* and looks at ``pivot``. It is
  not placed around the pivot. The frontal camera is at (0, 0, radius).
* **Intrinsics** are normalised by the image size: focal length in units of
  the image width, principal point (0.5, 0.5) at the image centre.
  ``fov_to_intrinsics`` uses the official constants (``3.14159`` and
  ``1.414``), giving focal 4.2634 for 18.837 degrees. The FFHQ dataset labels
  carry 4.2647 (from their own crop geometry); ``FFHQ_FOCAL`` holds that value.
* **Label**: ``c = [cam2world.flatten() (16), intrinsics.flatten() (9)]``,
  float32, shape [25] per camera.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

# Official EG3D constants.
FFHQ_FOV_DEG = 18.837
FFHQ_FOCAL = 4.2647  # focal of the FFHQ dataset labels (normalised)
AVG_CAMERA_RADIUS = 2.7
AVG_CAMERA_PIVOT = (0.0, 0.0, 0.2)
LABEL_DIM = 25


def _as_batch(x: float | Sequence[float] | torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype, device=device)
    return t.reshape(-1)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.norm(v, dim=-1, keepdim=True)


def camera_origin(yaw, pitch, radius: float = AVG_CAMERA_RADIUS, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Camera centre(s) [B,3] for yaw/pitch offsets (radians) from the frontal view.

    Same mapping as EG3D's ``LookAtPoseSampler`` with zero stddev:
    ``theta = pi/2 + yaw``, ``phi = arccos(1 - 2 (pi/2 + pitch) / pi)`` (pitch
    clamped so the polar angle stays inside (0, pi)).
    """
    yaw_t = _as_batch(yaw, dtype, device)
    pitch_t = _as_batch(pitch, dtype, device)
    yaw_t, pitch_t = torch.broadcast_tensors(yaw_t, pitch_t)
    radius_t = _as_batch(radius, dtype, device)
    theta = math.pi / 2 + yaw_t
    v = torch.clamp(math.pi / 2 + pitch_t, 1e-5, math.pi - 1e-5) / math.pi
    phi = torch.arccos(1 - 2 * v)
    x = radius_t * torch.sin(phi) * torch.cos(math.pi - theta)
    y = radius_t * torch.cos(phi)
    z = radius_t * torch.sin(phi) * torch.sin(math.pi - theta)
    return torch.stack([x, y, z], dim=-1)  # [B,3]


def cam2world_from_forward(forward: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """OpenCV cam2world [B,4,4] for viewing directions ``forward`` [B,3] from ``origin`` [B,3].

    World +y is "up" and there is no roll: camera x = -normalize(up x forward),
    camera y = forward x camera_x (pointing down in the image), camera z = forward.
    """
    if forward.shape[-1] != 3 or origin.shape[-1] != 3:
        raise ValueError(f"forward and origin must end in 3, got {tuple(forward.shape)} and {tuple(origin.shape)}")
    forward = _normalize(forward)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device).expand_as(forward)
    right = -_normalize(torch.cross(up, forward, dim=-1))
    cam_up = _normalize(torch.cross(forward, right, dim=-1))
    batch = forward.shape[0]
    m = torch.eye(4, dtype=forward.dtype, device=forward.device).unsqueeze(0).repeat(batch, 1, 1)  # [B,4,4]
    m[:, :3, :3] = torch.stack((right, cam_up, forward), dim=-1)
    m[:, :3, 3] = origin
    return m


def look_at_cam2world(
    yaw,
    pitch,
    radius: float = AVG_CAMERA_RADIUS,
    pivot: Sequence[float] | torch.Tensor = AVG_CAMERA_PIVOT,
    *,
    dtype: torch.dtype = torch.float32,
    device="cpu",
) -> torch.Tensor:
    """cam2world [B,4,4] of a camera on the orbit (yaw, pitch offsets in radians) looking at ``pivot``.

    ``yaw``/``pitch`` may be floats or 1-d sequences/tensors (broadcast
    against each other). See the module docstring for the sign conventions.
    """
    pivot_t = torch.as_tensor(pivot, dtype=dtype, device=device).reshape(-1, 3)
    origin = camera_origin(yaw, pitch, radius, dtype=dtype, device=device)
    origin, pivot_b = torch.broadcast_tensors(origin, pivot_t)
    return cam2world_from_forward(pivot_b - origin, origin)


def fov_to_intrinsics(fov_degrees: float = FFHQ_FOV_DEG, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Normalised 3x3 intrinsics for a vertical=horizontal FOV in degrees (EG3D's formula)."""
    if not (0.0 < float(fov_degrees) < 180.0):
        raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees}")
    focal = float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))
    return focal_to_intrinsics(focal, dtype=dtype, device=device)


def focal_to_intrinsics(focal: float, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Normalised 3x3 intrinsics with the given normalised focal and principal point (0.5, 0.5)."""
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def camera_label(cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """The 25-number EG3D label(s): [B,25] from cam2world [B,4,4] (or [4,4]) and intrinsics [3,3] or [B,3,3]."""
    if cam2world.shape[-2:] != (4, 4):
        raise ValueError(f"cam2world must be [...,4,4], got {tuple(cam2world.shape)}")
    if intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [...,3,3], got {tuple(intrinsics.shape)}")
    c2w = cam2world.reshape(-1, 16)
    k = intrinsics.reshape(-1, 9).to(c2w.dtype).to(c2w.device)
    if k.shape[0] == 1 and c2w.shape[0] > 1:
        k = k.expand(c2w.shape[0], 9)
    if k.shape[0] != c2w.shape[0]:
        raise ValueError(f"{c2w.shape[0]} poses but {k.shape[0]} intrinsics")
    return torch.cat([c2w, k], dim=1)  # [B,25]


def split_label(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``camera_label``: (cam2world [B,4,4], intrinsics [B,3,3])."""
    if c.ndim != 2 or c.shape[1] != LABEL_DIM:
        raise ValueError(f"camera labels must be [B,25], got {tuple(c.shape)}")
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3)


def orbit_label(
    yaw,
    pitch,
    radius: float = AVG_CAMERA_RADIUS,
    pivot: Sequence[float] = AVG_CAMERA_PIVOT,
    fov_degrees: float = FFHQ_FOV_DEG,
    *,
    dtype=torch.float32,
    device="cpu",
) -> torch.Tensor:
    """Labels [B,25] for orbit cameras (look-at pivot) with a shared FOV."""
    c2w = look_at_cam2world(yaw, pitch, radius, pivot, dtype=dtype, device=device)
    return camera_label(c2w, fov_to_intrinsics(fov_degrees, dtype=dtype, device=device))


def conditioning_label(
    batch: int = 1,
    radius: float = AVG_CAMERA_RADIUS,
    pivot: Sequence[float] = AVG_CAMERA_PIVOT,
    fov_degrees: float = FFHQ_FOV_DEG,
    *,
    dtype=torch.float32,
    device="cpu",
) -> torch.Tensor:
    """The frontal conditioning camera EG3D's mapping expects, repeated [batch,25]."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return orbit_label(0.0, 0.0, radius, pivot, fov_degrees, dtype=dtype, device=device).expand(batch, LABEL_DIM).clone()


def orbit_path(n_frames: int, yaw_amplitude: float, pitch_amplitude: float = 0.0, *, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Yaw/pitch offsets [n_frames] for a closed loop: yaw = A sin(2 pi t), pitch = B cos(2 pi t) - B.

    ``t = k / n_frames`` so frame ``n_frames`` would equal frame 0 (a seamless
    loop); pitch starts and ends at 0 (frontal).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    t = torch.arange(n_frames, dtype=dtype) / n_frames
    yaw = yaw_amplitude * torch.sin(2 * math.pi * t)
    pitch = pitch_amplitude * (torch.cos(2 * math.pi * t) - 1)
    return yaw, pitch
