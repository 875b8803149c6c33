"""EG3D super-resolution heads: SuperresolutionHybrid2X, Hybrid4X, Hybrid8X and Hybrid8XDC.

They lift the neural render (``rgb`` [N,3,R,R] in [-1,1] and the 32-channel
feature image [N,32,R,R]) to the output resolution with two StyleGAN2 skip
blocks, modulated by the *last* w of the generator only (``ws[:, -1:]``
repeated 3 times: conv0, conv1, torgb).

Same architecture, parameter names and forward pass as NVlabs EG3D
``training/superresolution.py``:

* inputs whose side differs from ``input_resolution`` are resized with
  ``F.interpolate(bilinear, align_corners=False, antialias=sr_antialias)``
  (Hybrid4X only resizes *smaller* inputs, as the official code does);
* ``sr_num_fp16_res > 0`` means FP16 blocks on CUDA and ``conv_clamp = 256``
  in every layer of both blocks (on the CPU the blocks run in FP32 but keep
  the clamp);
* Hybrid2X/4X start with a block that does not upsample
  (``SRSynthesisBlock(up=False)``, the official ``SynthesisBlockNoUp``);
  Hybrid8X/8XDC use two upsampling blocks.
* widths are fixed by the official code (128/64 or 256/128), independent of
  the backbone's ``channel_base``/``channel_max``.

Images are NCHW float32, values in the generator's [-1, 1] range.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.nets.stylegan2 import SynthesisLayer, ToRGBLayer
from engine.ops import upfirdn2d

SR_CONV_CLAMP = 256


class SRSynthesisBlock(torch.nn.Module):
    """A 'skip' StyleGAN2 block fed with an existing feature map and image.

    ``up=True``: input [N, in, res/2, res/2] (NVlabs ``SynthesisBlock`` with
    ``in_channels > 0``); ``up=False``: input [N, in, res, res] (NVlabs
    ``SynthesisBlockNoUp``: no upsampling of x or of the skip image).
    Consumes 3 ws: conv0, conv1, torgb.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, *, up: bool, use_fp16: bool = False, conv_clamp: float | None = None,
                 fused_modconv_default: bool | str = True, resample_filter=(1, 3, 3, 1)):
        super().__init__()
        if in_channels <= 0:
            raise ValueError("super-resolution blocks need an input feature map (in_channels > 0)")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.up = up
        self.use_fp16 = use_fp16
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.num_conv = 2
        self.num_torgb = 1
        self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2 if up else 1,
                                    resample_filter=list(resample_filter), conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    resample_filter=list(resample_filter), conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)

    def forward(self, x: torch.Tensor, img: torch.Tensor, ws: torch.Tensor, *, noise_mode: str = "none",
                force_fp32: bool = False, fused_modconv: bool | str | None = None,
                impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        if ws.ndim != 3 or ws.shape[1] != 3 or ws.shape[2] != self.w_dim:
            raise ValueError(f"SR block expects ws [N,3,{self.w_dim}], got {tuple(ws.shape)}")
        in_res = self.resolution // 2 if self.up else self.resolution
        if x.shape[1:] != (self.in_channels, in_res, in_res):
            raise ValueError(f"SR block at {self.resolution} expects x [N,{self.in_channels},{in_res},{in_res}], got {tuple(x.shape)}")
        w0, w1, w2 = ws.unbind(dim=1)
        if ws.device.type != "cuda":
            force_fp32 = True
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == "inference_only":
            fused_modconv = not self.training
        x = x.to(dtype=dtype)
        x = self.conv0(x, w0, noise_mode=noise_mode, fused_modconv=fused_modconv, impl=impl)
        x = self.conv1(x, w1, noise_mode=noise_mode, fused_modconv=fused_modconv, impl=impl)
        if self.up:
            img = upfirdn2d.upsample2d(img, self.resample_filter, impl=impl)
        y = self.torgb(x, w2, fused_modconv=fused_modconv, impl=impl).to(torch.float32).contiguous()  # NCHW images
        img = img + y
        return x, img


def _resize(t: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


class _HybridSR(torch.nn.Module):
    """Shared forward: resize to ``input_resolution``, two blocks with the last w."""

    output_resolution: int
    input_resolution: int
    widths: tuple[int, int]
    first_block_upsamples: bool
    resize_only_smaller: bool = False
    has_module_filter: bool = True  # official 2X/4X/8X register an (unused) ``resample_filter`` buffer

    def __init__(self, channels: int, img_resolution: int, sr_num_fp16_res: int, sr_antialias: bool,
                 num_fp16_res: int = 4, conv_clamp=None, channel_base=None, channel_max=None,  # ignored, as officially
                 fused_modconv_default: bool | str = True, w_dim: int = 512, img_channels: int = 3):
        super().__init__()
        if img_resolution != self.output_resolution:
            raise ValueError(f"{type(self).__name__} produces {self.output_resolution}px images, "
                             f"but img_resolution is {img_resolution}")
        use_fp16 = sr_num_fp16_res > 0
        clamp = SR_CONV_CLAMP if use_fp16 else None
        self.sr_antialias = bool(sr_antialias)
        w0, w1 = self.widths
        first_res = self.input_resolution * 2 if self.first_block_upsamples else self.input_resolution
        self.block0 = SRSynthesisBlock(channels, w0, w_dim, first_res, img_channels, False, up=self.first_block_upsamples,
                                       use_fp16=use_fp16, conv_clamp=clamp, fused_modconv_default=fused_modconv_default)
        self.block1 = SRSynthesisBlock(w0, w1, w_dim, self.output_resolution, img_channels, True, up=True,
                                       use_fp16=use_fp16, conv_clamp=clamp, fused_modconv_default=fused_modconv_default)
        if self.has_module_filter:
            self.register_buffer("resample_filter", upfirdn2d.setup_filter([1, 3, 3, 1]))

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, *, noise_mode: str = "none",
                force_fp32: bool = False, fused_modconv: bool | str | None = None, impl: str = "auto",
                channels_last: bool = False) -> torch.Tensor:
        """rgb [N,3,R,R], features x [N,C,R,R], ws [N,num_ws,w_dim] -> image [N,3,out,out]."""
        return self.forward_detailed(rgb, x, ws, noise_mode=noise_mode, force_fp32=force_fp32,
                                     fused_modconv=fused_modconv, impl=impl, channels_last=channels_last)[0]

    def forward_detailed(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, *, noise_mode: str = "none",
                         force_fp32: bool = False, fused_modconv: bool | str | None = None,
                         impl: str = "auto", channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(image, skip image after block0, whether the inputs were resized). ``channels_last``: the
        features go through the blocks channels-last (see ``engine.nets.stylegan2.synthesis``).

        The official 2X/4X heads add block0's to-RGB output *in place* to the
        rgb tensor they were given when no resize happened, so the official
        ``image_raw`` then equals the second value (see ``TriPlaneGenerator.render``).
        """
        if ws.ndim != 3:
            raise ValueError(f"ws must be [N,num_ws,w_dim], got {tuple(ws.shape)}")
        ws = ws[:, -1:, :].repeat(1, 3, 1)  # [N,3,w_dim]
        side = x.shape[-1]
        resized = (side < self.input_resolution) if self.resize_only_smaller else (side != self.input_resolution)
        if resized:
            x = _resize(x, self.input_resolution, self.sr_antialias)
            rgb = _resize(rgb, self.input_resolution, self.sr_antialias)
        kw = dict(noise_mode=noise_mode, force_fp32=force_fp32, fused_modconv=fused_modconv, impl=impl)
        if channels_last:  # the blocks' convolutions keep the layout they are given
            x = x.contiguous(memory_format=torch.channels_last)
        x, rgb0 = self.block0(x, rgb, ws, **kw)
        x, img = self.block1(x, rgb0, ws, **kw)
        return img, rgb0, resized


class SuperresolutionHybrid2X(_HybridSR):
    """64 -> 128 (block0 without upsampling at 64, block1 to 128), widths 128/64."""

    output_resolution, input_resolution, widths, first_block_upsamples = 128, 64, (128, 64), False


class SuperresolutionHybrid4X(_HybridSR):
    """128 -> 256 (block0 without upsampling at 128, block1 to 256), widths 128/64; resizes only smaller inputs."""

    output_resolution, input_resolution, widths, first_block_upsamples = 256, 128, (128, 64), False
    resize_only_smaller = True


class SuperresolutionHybrid8X(_HybridSR):
    """128 -> 512 with two upsampling blocks, widths 128/64."""

    output_resolution, input_resolution, widths, first_block_upsamples = 512, 128, (128, 64), True


class SuperresolutionHybrid8XDC(_HybridSR):
    """128 -> 512 with two upsampling blocks, widths 256/128 (EG3D FFHQ-512)."""

    output_resolution, input_resolution, widths, first_block_upsamples = 512, 128, (256, 128), True
    has_module_filter = False


SR_MODULES: dict[str, type[_HybridSR]] = {
    cls.__name__: cls
    for cls in (SuperresolutionHybrid2X, SuperresolutionHybrid4X, SuperresolutionHybrid8X, SuperresolutionHybrid8XDC)
}


def sr_class(name: str) -> type[_HybridSR]:
    """Resolve 'training.superresolution.SuperresolutionHybrid8XDC' or a bare class name."""
    short = name.rsplit(".", 1)[-1]
    if short not in SR_MODULES:
        raise ValueError(f"unknown super-resolution module {name!r}; known: {', '.join(SR_MODULES)}")
    return SR_MODULES[short]
