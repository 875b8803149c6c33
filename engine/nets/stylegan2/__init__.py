"""StyleGAN2 generator and discriminator: one implementation for every checkpoint layout.

Structure, class names, constructor arguments and parameter/buffer names
follow NVlabs stylegan2-ada / stylegan3 ``training/networks_stylegan2.py``, so
an NVlabs state dict (or EG3D's ``backbone.*`` / ``superresolution.*`` parts)
loads as it is; rosinality checkpoints are renamed by the converter
(:mod:`engine.weights.stylegan2_layouts`).

Modules: ``layers`` (equalised-lr FC/conv layers), ``mapping`` (mapping
network, truncation, style mixing), ``synthesis`` (synthesis network and the
NVlabs ``Generator``), ``discriminator`` (the NVlabs ``Discriminator``),
``models`` (the config-built, savable ``StyleGAN2Generator`` /
``StyleGAN2Discriminator`` and the slim preset). The names below are the
package's public API.

No module state changes during forward, except ``mapping.w_avg`` when the
caller asks for ``update_emas=True`` (training).
"""
from engine.nets.stylegan2.discriminator import (Discriminator, DiscriminatorBlock, DiscriminatorEpilogue,
                                                 MinibatchStdLayer)
from engine.nets.stylegan2.layers import Conv2dLayer, FullyConnectedLayer, channels_for, normalize_2nd_moment
from engine.nets.stylegan2.mapping import MappingNetwork, style_mix, truncate
from engine.nets.stylegan2.models import (SLIM_CHANNELS, StyleGAN2Discriminator, StyleGAN2DiscriminatorConfig,
                                          StyleGAN2Generator, StyleGAN2GeneratorConfig, slim_discriminator_config,
                                          slim_generator_config, slim_widths)
from engine.nets.stylegan2.synthesis import Generator, SynthesisBlock, SynthesisLayer, SynthesisNetwork, ToRGBLayer

__all__ = [
    "Conv2dLayer", "Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue", "FullyConnectedLayer",
    "Generator", "MappingNetwork", "MinibatchStdLayer", "SLIM_CHANNELS", "StyleGAN2Discriminator",
    "StyleGAN2DiscriminatorConfig", "StyleGAN2Generator", "StyleGAN2GeneratorConfig", "SynthesisBlock",
    "SynthesisLayer", "SynthesisNetwork", "ToRGBLayer", "channels_for", "normalize_2nd_moment",
    "slim_discriminator_config", "slim_generator_config", "slim_widths", "style_mix", "truncate",
]
