"""The per-selfie ``portrait_3d`` artifact: stages 1 (portrait), 3 and 4 of the pipeline, cached per selfie.

A safetensors file (``engine.avatar.tensor_file``) holding the latents
``w_2d`` [1, L2, 512] and ``w_3d`` [1, L3, 512] (fp32), the EG3D backbone
noise maps (``noise.<layer>`` [1, 1, r, r], stored fp16 and read back as
fp32: unit-variance noise, so fp16 keeps it to about 1e-3), the photo's
camera [1, 25], the crop transform ``crop2d_to_crop3d`` [2, 3] (fp64) and
the pivotal-tuning delta.

Format ``compact-1`` (metadata ``format``): the PTI delta is stored against
the pretrained weights with ``engine.avatar.delta_codec`` at
``PTI_LEVELS_PER_STD`` (metadata ``shapes`` and ``levels_per_std``). Files
without a format (written before) hold the fp16 delta as ``delta.<name>``
and are still read.

The pipeline continues from the *decoded* PTI delta and noise, so a selfie
gives the same avatar whether its inversion was just computed or read from
the cache, and the avatar file's stylized residual is taken against exactly
what this artifact gives back. It gets them without the bytes
(``Pipeline.invert_portrait``): :func:`quantise` rounds the delta and noise
on their own device (a GPU too) and :meth:`QuantisedPortrait.stored` gives,
bit for bit, what ``from_bytes`` of :meth:`QuantisedPortrait.to_bytes`
would; the entropy coding and the copy to the CPU happen only in
``to_bytes``, when the artifact is cached; the pipeline has them done
beside stage 5 (``ArtifactCache.put_later``), from a CPU copy
(:meth:`QuantisedPortrait.to`).

Error bound (the setting chosen, ``PTI_LEVELS_PER_STD = 1``): each weight of
the delta within step/2 = std(delta_c)/2 per output channel, RMS about
std(delta_c)/sqrt(12) ≈ 29 % of the delta's RMS; measured by
``bench/avatar_bytes.py`` on the full-size EG3D (ffhq512, random weights and
a random PTI delta of 2 % of each tensor's std): the views rendered with the
decoded delta are within PSNR >= ``PTI_RENDER_PSNR_BOUND_DB`` (40 dB; 42.8
measured) of those of the exact delta (tested on the slim net in
``tests/engine/avatar/test_portrait_artifact.py``). The PTI delta is the
photo-real end of the strength slider (s = 0); the stylized end is bounded by
the avatar file's residual (``engine.avatar.avatar_file``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from engine.avatar import delta_codec
from engine.avatar.tensor_file import TensorFileError, pack_tensors, read_metadata, split_prefixed, unpack_tensors

FORMAT = "compact-1"
PTI_LEVELS_PER_STD = 1.0          # quantisation steps per standard deviation of the PTI delta (per channel)
PTI_RENDER_PSNR_BOUND_DB = 40.0   # the stated bound: views from the decoded PTI delta vs the exact one


class PortraitArtifactError(ValueError):
    """A ``portrait_3d`` artifact that cannot be read back (damaged or truncated)."""


@dataclass
class PortraitArtifact:
    w_2d: torch.Tensor                  # [1, L2, 512]
    w_3d: torch.Tensor                  # [1, L3, 512]
    noise: dict[str, torch.Tensor]      # EG3D backbone noise maps, by layer name
    camera: torch.Tensor | None         # [1, 25] (the pipeline always writes it)
    crop2d_to_crop3d: torch.Tensor | None  # [2, 3] fp64 (likewise)
    delta_pti: dict[str, torch.Tensor]  # fp16, against the pretrained EG3D weights



@dataclass
class QuantisedPortrait:
    """An artifact with its PTI delta quantised (``delta_codec.quantise``) and its noise at fp16, on the
    device its tensors are on: what the stored artifact holds, before the bytes."""
    art: PortraitArtifact                   # as given; its delta_pti is not used
    noise_fp16: dict[str, torch.Tensor]
    delta: delta_codec.QuantisedDelta
    levels_per_std: float

    def stored(self) -> PortraitArtifact:
        """What ``from_bytes(self.to_bytes())`` gives back, bit for bit, on the tensors' device."""
        return PortraitArtifact(w_2d=self.art.w_2d, w_3d=self.art.w_3d,
                                noise={n: v.float() for n, v in self.noise_fp16.items()}, camera=self.art.camera,
                                crop2d_to_crop3d=None if self.art.crop2d_to_crop3d is None
                                else self.art.crop2d_to_crop3d.double(),
                                delta_pti=delta_codec.dequantise(self.delta, None))

    def to(self, device: torch.device | str) -> "QuantisedPortrait":
        """What :meth:`to_bytes` reads, copied to ``device`` (the unused ``art.delta_pti`` left out): on the
        CPU, :meth:`to_bytes` makes no CUDA call, so it may run on another thread while a stage captures a
        CUDA graph, and reads a snapshot of the latents and noise whatever later stages do with theirs."""
        def copied(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, copy=True)

        art = self.art
        moved = PortraitArtifact(w_2d=copied(art.w_2d), w_3d=copied(art.w_3d), noise={}, camera=copied(art.camera),
                                 crop2d_to_crop3d=copied(art.crop2d_to_crop3d), delta_pti={})
        # the rounded delta is this object's own (made by quantise): moved, not copied
        return QuantisedPortrait(art=moved, noise_fp16={n: copied(v) for n, v in self.noise_fp16.items()},
                                 delta=self.delta.to(device), levels_per_std=self.levels_per_std)

    def to_bytes(self) -> bytes:
        """The artifact's file: here the delta is entropy-coded and everything copied to the CPU."""
        compact, shapes = delta_codec.entropy_code(self.delta)
        meta = {"format": FORMAT, "shapes": json.dumps(shapes), "levels_per_std": repr(float(self.levels_per_std))}
        art = self.art
        frame = {"camera": art.camera, "crop2d_to_crop3d": None if art.crop2d_to_crop3d is None
                 else art.crop2d_to_crop3d.double()}
        return pack_tensors({"w_2d": art.w_2d, "w_3d": art.w_3d, **{k: v for k, v in frame.items() if v is not None},
                             **{f"noise.{n}": v for n, v in self.noise_fp16.items()}, **compact}, meta)


def quantise(art: PortraitArtifact, levels_per_std: float = PTI_LEVELS_PER_STD) -> QuantisedPortrait:
    """``art`` rounded as its file stores it, on its tensors' device (nothing copied, nothing coded)."""
    return QuantisedPortrait(art=art, noise_fp16={n: v.half() for n, v in art.noise.items()},
                             delta=delta_codec.quantise(art.delta_pti, None, levels_per_std),
                             levels_per_std=levels_per_std)


def to_bytes(art: PortraitArtifact, levels_per_std: float = PTI_LEVELS_PER_STD) -> bytes:
    return quantise(art, levels_per_std).to_bytes()


def from_bytes(data: bytes) -> PortraitArtifact:
    """The artifact back; :class:`PortraitArtifactError` names what is wrong with a damaged one."""
    try:
        meta = read_metadata(data)
        tensors = unpack_tensors(data)
    except TensorFileError as exc:
        raise PortraitArtifactError(f"portrait_3d artifact: {exc}") from exc
    fmt = meta.get("format")
    if fmt is None:  # before compact-1: the fp16 delta as it is
        delta = split_prefixed("delta.", tensors)
    elif fmt == FORMAT:
        try:
            delta = delta_codec.decode(tensors, json.loads(meta["shapes"]), None)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise PortraitArtifactError(f"portrait_3d artifact: unreadable delta shapes ({exc!r})") from exc
        except delta_codec.CompactDeltaError as exc:
            raise PortraitArtifactError(f"portrait_3d artifact: the PTI delta of {exc}") from exc
    else:
        raise PortraitArtifactError(f"portrait_3d artifact format {fmt!r}; this engine reads {FORMAT!r}")
    missing = [k for k in ("w_2d", "w_3d") if k not in tensors]
    if missing:
        raise PortraitArtifactError(f"portrait_3d artifact: {', '.join(missing)} missing")
    noise = {k: v.float() for k, v in split_prefixed("noise.", tensors).items()}
    return PortraitArtifact(w_2d=tensors["w_2d"], w_3d=tensors["w_3d"], noise=noise,
                            camera=tensors.get("camera"), crop2d_to_crop3d=tensors.get("crop2d_to_crop3d"),
                            delta_pti=delta)
