"""The two StyleGAN2 networks as configured, savable models, and the slim preset.

:class:`StyleGAN2Generator` and :class:`StyleGAN2Discriminator` are the NVlabs
``Generator`` / ``Discriminator`` built from one typed config each, with
``from_config`` / ``from_pretrained`` / ``save_pretrained``
(:mod:`engine.weights.pretrained`). Their state-dict keys are NVlabs'
(``mapping.fc0.weight``, ``synthesis.b4.const``, ``b64.fromrgb.weight`` ...);
reading rosinality or NVlabs checkpoints is the converter's business
(:mod:`engine.weights.stylegan2_layouts`).

Configs: ``channels`` maps resolution -> width for every block (JSON keys
are strings); an empty mapping means the FFHQ widths
``min(32768 // res, 512)``. ``resample_filter`` holds the 1D taps of the
separable FIR filter. The generator's average latent is the buffer
``mapping.w_avg`` [w_dim] (rosinality's ``latent_avg``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from engine.nets.stylegan2.discriminator import Discriminator
from engine.nets.stylegan2.synthesis import Generator
from engine.weights.pretrained import PretrainedConfig, PretrainedMixin

FFHQ_CHANNEL_BASE = 32768
FFHQ_CHANNEL_MAX = 512
SLIM_CHANNELS = {4: 64, 8: 64, 16: 64, 32: 64, 64: 32, 128: 32, 256: 16, 512: 16, 1024: 16}
W_AVG_SAMPLES = 1024  # latents mapped to estimate w_avg for a randomly initialised generator


def _ladder(img_resolution: int, ascending: bool) -> list[int]:
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
    out = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
    return out if ascending else out[::-1]


def _widths(channels: Mapping, img_resolution: int) -> dict[int, int]:
    """``channels`` with int keys for every block resolution (the FFHQ formula when empty)."""
    ladder = _ladder(img_resolution, ascending=True)
    if not channels:
        return {r: min(FFHQ_CHANNEL_BASE // r, FFHQ_CHANNEL_MAX) for r in ladder}
    widths = {int(k): int(v) for k, v in channels.items()}
    if sorted(widths) != ladder:
        raise ValueError(f"channels must list exactly the resolutions {ladder}, got {sorted(widths)}")
    return widths


def _taps(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class StyleGAN2GeneratorConfig(PretrainedConfig):
    img_resolution: int = 1024
    channels: Mapping[int, int] = field(default_factory=dict)
    z_dim: int = 512
    c_dim: int = 0
    w_dim: int = 512
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float | None = 0.998
    layer_features: int | None = None
    embed_features: int | None = None
    architecture: str = "skip"
    conv_clamp: float | None = None
    num_fp16_res: int = 0
    resample_filter: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)
    use_noise: bool = True
    fused_modconv_default: bool | str = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _widths(self.channels, self.img_resolution))
        object.__setattr__(self, "resample_filter", _taps(self.resample_filter))
        if self.architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {self.architecture!r}")

    @property
    def num_ws(self) -> int:
        return 2 * int(math.log2(self.img_resolution)) - 2


@dataclass(frozen=True)
class StyleGAN2DiscriminatorConfig(PretrainedConfig):
    img_resolution: int = 1024
    channels: Mapping[int, int] = field(default_factory=dict)
    c_dim: int = 0
    img_channels: int = 3
    architecture: str = "resnet"
    conv_clamp: float | None = None
    num_fp16_res: int = 0
    cmap_dim: int | None = None
    mbstd_group_size: int | None = 4
    mbstd_num_channels: int = 1
    resample_filter: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _widths(self.channels, self.img_resolution))
        object.__setattr__(self, "resample_filter", _taps(self.resample_filter))
        if self.architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {self.architecture!r}")


class StyleGAN2Generator(PretrainedMixin, Generator):
    """NVlabs ``Generator`` built from a :class:`StyleGAN2GeneratorConfig`."""

    config_class = StyleGAN2GeneratorConfig
    build_on_meta = False  # upfirdn2d.setup_filter copies its filter to the CPU

    def __init__(self, config: StyleGAN2GeneratorConfig) -> None:
        self._check_config(config)
        mapping_kwargs = dict(num_layers=config.mapping_layers, lr_multiplier=config.mapping_lr_multiplier,
                              w_avg_beta=config.w_avg_beta, layer_features=config.layer_features,
                              embed_features=config.embed_features)
        super().__init__(config.z_dim, config.c_dim, config.w_dim, config.img_resolution, config.img_channels,
                         mapping_kwargs=mapping_kwargs, channels_dict=dict(config.channels),
                         num_fp16_res=config.num_fp16_res, architecture=config.architecture,
                         conv_clamp=config.conv_clamp, resample_filter=list(config.resample_filter),
                         use_noise=config.use_noise, fused_modconv_default=config.fused_modconv_default)
        self.config = config

    def init_from_seed(self, generator: torch.Generator) -> None:
        """w_avg = the mean mapped latent of ``W_AVG_SAMPLES`` z drawn from ``generator``, so that
        truncation behaves as with a trained model."""
        if self.config.w_avg_beta is None:
            return
        z = torch.randn([W_AVG_SAMPLES, self.z_dim], generator=generator)  # [1024, z_dim]
        c = torch.zeros([W_AVG_SAMPLES, self.c_dim]) if self.c_dim else None  # [1024, c_dim]
        w = self.mapping(z, c, impl="ref")[:, 0]  # [1024, w_dim]
        self.mapping.w_avg.copy_(w.mean(dim=0))


class StyleGAN2Discriminator(PretrainedMixin, Discriminator):
    """NVlabs ``Discriminator`` built from a :class:`StyleGAN2DiscriminatorConfig`."""

    config_class = StyleGAN2DiscriminatorConfig
    build_on_meta = False  # upfirdn2d.setup_filter copies its filter to the CPU

    def __init__(self, config: StyleGAN2DiscriminatorConfig) -> None:
        self._check_config(config)
        super().__init__(config.c_dim, config.img_resolution, config.img_channels, architecture=config.architecture,
                         num_fp16_res=config.num_fp16_res, conv_clamp=config.conv_clamp, cmap_dim=config.cmap_dim,
                         channels_dict=dict(config.channels),
                         block_kwargs=dict(resample_filter=list(config.resample_filter)),
                         epilogue_kwargs=dict(mbstd_group_size=config.mbstd_group_size,
                                              mbstd_num_channels=config.mbstd_num_channels))
        self.config = config


# ----------------------------------------------------------------------------- slim preset

def slim_widths(resolution: int) -> dict[int, int]:
    """``SLIM_CHANNELS`` up to ``resolution``: 64 up to 32 px, 32 at 64-128 px, 16 from 256 px."""
    _ladder(resolution, ascending=True)  # validates
    return {r: c for r, c in SLIM_CHANNELS.items() if r <= resolution}


def slim_generator_config(resolution: int = 256) -> StyleGAN2GeneratorConfig:
    """The full StyleGAN2 generator (8-layer 512-d mapping, skip architecture) with narrow widths."""
    return StyleGAN2GeneratorConfig(img_resolution=resolution, channels=slim_widths(resolution))


def slim_discriminator_config(resolution: int = 256) -> StyleGAN2DiscriminatorConfig:
    """The full resnet discriminator with the slim widths."""
    return StyleGAN2DiscriminatorConfig(img_resolution=resolution, channels=slim_widths(resolution))
