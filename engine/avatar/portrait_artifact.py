"""The per-selfie artifact (``portrait_3d``): what stages 3 and 4 made of one photo.

It holds the e4e code ``w_2d`` [1, L2, 512], the EG3D pivot ``w_3d`` [1, L3, 512]
and its noise maps, the photo's camera label [1, 25] and crop map [2, 3]
(float64), and the pivotal-tuning delta of the EG3D weights. The delta is
stored compactly (:mod:`engine.avatar.delta_codec`, ``PTI_LEVELS_PER_STD``
steps per standard deviation, relative to zero: ``pti.res.*``, ``pti.step.*``,
``pti.raw.*`` and the shapes in the metadata); about 5x smaller than fp16
(bench/avatar_bytes.py).
Artifacts written before this format hold the fp16 delta as ``delta.<name>``
and still read.

Container: safetensors (``engine.avatar.tensor_file``), CPU tensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from engine.avatar import delta_codec
from engine.avatar.tensor_file import TensorFileError, pack_tensors, read_metadata, unpack_tensors

# 2 steps per std: the photo-real renders (strength 0) from the stored delta stay within PSNR >= 40 dB of
# the exact delta's (measured 48.8 dB at full size, bench/avatar_bytes.py; the bound tested on slim
# weights in tests/engine/avatar/test_avatar_file.py); 12.5 MB at full size against 60.5 MB in fp16.
PTI_LEVELS_PER_STD = 2.0
_DELTA = "pti."
_LEGACY_DELTA = "delta."


class PortraitArtifactError(ValueError):
    """A per-selfie artifact that cannot be read back."""


@dataclass
class PortraitArtifact:
    w_2d: torch.Tensor                    # [1, L2, 512]
    w_3d: torch.Tensor                    # [1, L3, 512]
    noise: dict[str, torch.Tensor]        # EG3D backbone noise maps by name
    camera: torch.Tensor                  # [1, 25]
    crop2d_to_crop3d: torch.Tensor        # [2, 3] float64
    delta_pti: dict[str, torch.Tensor]    # fp16, as the pipeline used it


def quantize_pti(delta: dict[str, torch.Tensor],
                 levels_per_std: float = PTI_LEVELS_PER_STD) -> delta_codec.QuantizedDelta:
    return delta_codec.quantize(delta, None, levels_per_std)


def to_bytes(w_2d: torch.Tensor, w_3d: torch.Tensor, noise: dict[str, torch.Tensor], camera: torch.Tensor,
             crop2d_to_crop3d: torch.Tensor, pti: delta_codec.QuantizedDelta) -> bytes:
    tensors = {"w_2d": w_2d, "w_3d": w_3d, "camera": camera, "crop2d_to_crop3d": crop2d_to_crop3d.double(),
               **{f"noise.{n}": v for n, v in noise.items()},
               **{_DELTA + k: v for k, v in delta_codec.to_tensors(pti).items()}}
    return pack_tensors(tensors, {"pti_shapes": json.dumps(pti.shapes), "pti_levels_per_std": repr(PTI_LEVELS_PER_STD)})


def from_bytes(data: bytes) -> PortraitArtifact:
    try:
        meta = read_metadata(data)
        tensors = unpack_tensors(data)
    except (TensorFileError, ValueError) as exc:
        raise PortraitArtifactError(f"per-selfie artifact: not a readable tensor file ({exc})") from exc
    missing = [k for k in ("w_2d", "w_3d", "camera", "crop2d_to_crop3d") if k not in tensors]
    if missing:
        raise PortraitArtifactError(f"per-selfie artifact: {', '.join(missing)} missing")
    if "pti_shapes" in meta:
        try:
            shapes = json.loads(meta["pti_shapes"])
            stored = {k[len(_DELTA):]: v for k, v in tensors.items() if k.startswith(_DELTA)}
            delta = delta_codec.dequantize(delta_codec.from_tensors(stored, shapes, "pivotal-tuning delta"), None)
        except (json.JSONDecodeError, TypeError, delta_codec.DeltaCodecError) as exc:
            raise PortraitArtifactError(f"per-selfie artifact: {exc}") from exc
    else:
        delta = {k[len(_LEGACY_DELTA):]: v for k, v in tensors.items() if k.startswith(_LEGACY_DELTA)}
    return PortraitArtifact(
        w_2d=tensors["w_2d"], w_3d=tensors["w_3d"], camera=tensors["camera"],
        crop2d_to_crop3d=tensors["crop2d_to_crop3d"].double(),
        noise={k[len("noise."):]: v for k, v in tensors.items() if k.startswith("noise.")}, delta_pti=delta)
