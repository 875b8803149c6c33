"""The stored avatar file.

It is a safetensors file (``engine.avatar.tensor_file``, the container of the
cached artifacts too; ``pack_tensors``/``unpack_tensors`` are re-exported here).

The avatar file (format 2) does not copy what the artifact cache already holds:

* ``refs``: the style finetune (``style_2d``: w_e and the 2D delta, shared by
  every user of the style) and the per-selfie inversion (``portrait_3d``: w_2d,
  w_3d, noise, the PTI delta) are stored as references — (kind, cache key,
  sha256 of the artifact's bytes) — in the safetensors metadata. Reading the
  file needs the cache (:func:`result_from_bytes`); a referenced artifact
  that was evicted or expired raises :class:`AvatarArtifactGone`, one that
  was replaced by different bytes raises :class:`AvatarArtifactChanged`. The
  avatar is then expired too: it cannot outlive the per-user artifact it
  points at, which follows the retention policy.
* ``delta_stylized`` is stored as its residual against the PTI delta,
  ``r = delta_stylized - delta_pti`` (fp32), quantised per output channel
  (dim 0) with a uniform step ``std(r_c) / LEVELS_PER_STD`` to int8 and
  entropy-coded by ``engine.avatar.delta_codec`` (``res.<name>``,
  ``step.<name>``, ``raw.<name>`` for tensors of fewer than 2 dims).
  Decoding gives ``fp16(delta_pti + q * step)``; the PTI delta is the one
  the ``portrait_3d`` artifact gives back (itself stored compactly,
  ``engine.avatar.portrait_artifact``), which is the one the pipeline
  continued from.

Error bound (the setting chosen, ``LEVELS_PER_STD = 2.5``, with the PTI
artifact at 1 level/std, so that a user's pack fits 25 MB): the per-weight
error of the residual is at most step/2 = std(r_c)/5 and its RMS is
std(r_c)/(2.5*sqrt(12)) ≈ 12 % of the residual's RMS, per channel. Measured by
``bench/avatar_bytes.py`` on the full-size EG3D (ffhq512, random weights,
random residual matched in magnitude, see there): the rendered views differ
from those of the uncompressed delta by PSNR >= 40 dB (the stated bound;
43 dB measured; tested on the slim net in
``tests/engine/avatar/test_avatar_file.py``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping, Protocol

import torch

from emoji3d.orders import ENGINE_VERSION
from engine.avatar.pipeline import AvatarResult
from engine.avatar import delta_codec, portrait_artifact, tensor_file
from engine.avatar.tensor_file import TensorFileError, pack_tensors, split_prefixed, unpack_tensors

FORMAT = "2"
LEVELS_PER_STD = 2.5           # quantisation steps per residual standard deviation (per channel)
RENDER_PSNR_BOUND_DB = 40.0    # the stated bound: views from the decoded delta vs the uncompressed one


class AvatarFileError(ValueError):
    """An avatar file that cannot be read back."""


class AvatarArtifactGone(AvatarFileError):
    """A cached artifact the avatar references was evicted or expired (retention): the avatar is gone too."""


class AvatarArtifactChanged(AvatarFileError):
    """A referenced artifact now holds other bytes than the ones the avatar was made from."""


class ArtifactReader(Protocol):
    def get(self, kind: str, key: str) -> bytes | None: ...

    def digest(self, kind: str, key: str) -> str | None:
        """The sha256 hex of the artifact's bytes, or None when it is not cached."""


@dataclass(frozen=True)
class ArtifactRef:
    kind: str     # "style_2d" or "portrait_3d"
    key: str      # the pipeline's cache key (Pipeline.style_key / Pipeline.portrait_key)
    sha256: str   # of the artifact's bytes when the avatar was written


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file."""
    try:
        return tensor_file.read_metadata(data)
    except TensorFileError as exc:
        raise AvatarFileError(f"avatar file: {exc}") from exc



# ----------------------------------------------------------------------------- residual codec

def encode_residual(stylized: Mapping[str, torch.Tensor], pti: Mapping[str, torch.Tensor],
                    levels_per_std: float = LEVELS_PER_STD) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Tensors and shapes that store ``stylized`` relative to ``pti`` (``engine.avatar.delta_codec``)."""
    return delta_codec.encode(stylized, pti, levels_per_std)


def decode_residual(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, list[int]],
                    pti: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fp16 stylized delta back from :func:`encode_residual`'s tensors and the PTI delta."""
    try:
        return delta_codec.decode(tensors, shapes, pti)
    except delta_codec.CompactDeltaError as exc:
        raise AvatarFileError(f"avatar file: the stylized residual of {exc}") from exc


# ----------------------------------------------------------------------------- the avatar file

def _ref(cache: ArtifactReader, kind: str, key: str) -> ArtifactRef:
    digest = cache.digest(kind, key)  # not the bytes: the style's are 114 MB at full size
    if digest is None:
        raise AvatarArtifactGone(f"cannot reference the {kind} artifact {key[:40]}: it is not in the cache")
    return ArtifactRef(kind, key, digest)


def quantise_residual(result: AvatarResult, levels_per_std: float = LEVELS_PER_STD) -> delta_codec.QuantisedDelta:
    """The stylized delta quantised against the PTI delta, on the deltas' device: what the avatar file
    stores before the entropy coding."""
    return delta_codec.quantise(result.delta_stylized, result.delta_pti, levels_per_std)


def result_to_bytes(result: AvatarResult, cache: ArtifactReader, *, style_key: str, portrait_key: str,
                    levels_per_std: float = LEVELS_PER_STD,
                    residual: delta_codec.QuantisedDelta | None = None) -> bytes:
    """The storable form of an avatar: references to the style and portrait artifacts (which must be in
    ``cache``, under the pipeline's keys), the camera and the compact stylized residual (safetensors).
    ``residual``: ``quantise_residual(result, levels_per_std)`` made beforehand (the engine makes it on the
    GPU and codes a CPU copy on another thread); the deltas of ``result`` are then not read."""
    refs = [_ref(cache, "style_2d", style_key), _ref(cache, "portrait_3d", portrait_key)]
    if residual is None:
        residual = quantise_residual(result, levels_per_std)
    residual, shapes = delta_codec.entropy_code(residual)
    meta = {"format": FORMAT, "preset": result.preset, "engine_version": result.engine_version,
            "refs": json.dumps([ref.__dict__ for ref in refs]), "shapes": json.dumps(shapes),
            "levels_per_std": repr(float(levels_per_std)),
            "logs": json.dumps({k: v.summary() for k, v in result.logs.items()})}
    return pack_tensors({"camera": result.camera, **residual}, meta)


def _resolve(cache: ArtifactReader, ref: ArtifactRef) -> dict[str, torch.Tensor]:
    data = cache.get(ref.kind, ref.key)
    if data is None:
        raise AvatarArtifactGone(f"the avatar's {ref.kind} artifact has expired or was evicted; "
                                 f"the avatar has expired with it")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise AvatarArtifactChanged(f"the avatar's {ref.kind} artifact was replaced since the avatar was made")
    if ref.kind == "portrait_3d":
        try:
            art = portrait_artifact.from_bytes(data)
        except portrait_artifact.PortraitArtifactError as exc:
            raise AvatarFileError(f"the avatar's {exc}") from exc
        return {"w_2d": art.w_2d, "w_3d": art.w_3d, **{f"noise.{k}": v for k, v in art.noise.items()},
                **{f"delta.{k}": v for k, v in art.delta_pti.items()}}
    try:
        return unpack_tensors(data)
    except TensorFileError as exc:
        raise AvatarFileError(f"the avatar's {ref.kind} artifact: {exc}") from exc


def result_from_bytes(data: bytes, cache: ArtifactReader) -> AvatarResult:
    """The avatar back, reading its referenced artifacts from ``cache``."""
    meta = read_metadata(data)
    if meta.get("format") != FORMAT:
        raise AvatarFileError(f"avatar file format {meta.get('format', '1')!r}; this engine reads {FORMAT!r}")
    try:
        refs = {r["kind"]: ArtifactRef(**r) for r in json.loads(meta["refs"])}
        shapes = json.loads(meta["shapes"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise AvatarFileError(f"avatar file: unreadable references or shapes ({exc})") from exc
    if set(refs) != {"style_2d", "portrait_3d"}:
        raise AvatarFileError(f"avatar file references {sorted(refs)}, expected style_2d and portrait_3d")
    style, portrait = _resolve(cache, refs["style_2d"]), _resolve(cache, refs["portrait_3d"])
    try:
        tensors = unpack_tensors(data)
    except TensorFileError as exc:
        raise AvatarFileError(f"avatar file: {exc}") from exc
    delta_pti = split_prefixed("delta.", portrait)
    return AvatarResult(
        w_e=style["w_e"], w_2d=portrait["w_2d"], w_3d=portrait["w_3d"], noise=split_prefixed("noise.", portrait),
        camera=tensors["camera"], delta_2d=split_prefixed("delta.", style), delta_pti=delta_pti,
        delta_stylized=decode_residual(tensors, shapes, delta_pti), preset=meta.get("preset", "slim"),
        engine_version=meta.get("engine_version", ENGINE_VERSION))
