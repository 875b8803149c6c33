"""StyleGAN2 synthesis network and the NVlabs ``Generator`` (mapping + synthesis).

Conventions
-----------
* Images are ``[N, img_channels, R, R]`` float32, nominally in [-1, 1]; R = 2^k >= 4.
* W+ ``ws [N, num_ws, w_dim]`` with ``num_ws = 2*log2(R) - 2`` (block b4
  uses ws[0] for conv1 and ws[1] for torgb; block b(2^k) uses ws[2k-5],
  ws[2k-4] for conv0/conv1 and ws[2k-3] for torgb, the torgb latent being
  shared with the next block's conv0).
* Widths: ``min(channel_base // res, channel_max)`` as NVlabs, or an explicit
  ``channels_dict`` {res: channels} (an extension, for checkpoints whose
  widths do not follow the formula).
* Noise: ``noise_mode`` 'random' | 'const' | 'none' as NVlabs; in addition
  ``noise_inputs={'b8.conv0': tensor [N or 1, 1, 8, 8], ...}`` supplies explicit
  per-layer noise maps (scaled by the layer's ``noise_strength``), e.g. noise
  being optimised by an inversion; ``noise_generator`` feeds 'random' noise.
* FP16 blocks (``num_fp16_res``) run in half precision only on CUDA.
* Memory layout: a block's activations are NCHW, or channels-last (NHWC in
  memory) where it was built so (NVlabs' ``fp16_channels_last``, FP16 blocks
  on CUDA only). ``channels_last=True`` in a forward call makes every block
  channels-last whatever it was built with: the convolutions then read and
  write NHWC, and the fused ``upfirdn2d`` and ``bias_act`` have NHWC paths, so
  cuDNN converts nothing between layers. The values are the same up to the
  convolution algorithms' rounding. The ToRGB output is NCHW either way.
* ``impl`` ('ref' | 'cuda' | 'auto') chooses the op implementation (``engine.ops``).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from engine.nets.stylegan2.layers import Conv2dLayer, FullyConnectedLayer, assert_shape, channels_for
from engine.nets.stylegan2.mapping import MappingNetwork
from engine.ops import bias_act, upfirdn2d
from engine.ops.modulated_conv import modulated_conv2d


class SynthesisLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = bias_act.ACTIVATIONS[activation].def_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))  # [R, R]
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="random", fused_modconv=True, gain=1, noise=None, noise_generator=None,
                impl="auto"):
        """``noise``: optional explicit map [N or 1, 1, R, R] (overrides noise_mode)."""
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        in_res = self.resolution // self.up
        assert_shape(x, [None, self.in_channels, in_res, in_res], f"SynthesisLayer@{self.resolution} input")
        styles = self.affine(w, impl=impl)  # [N, I]

        noise_term = None
        if self.use_noise:
            if noise is not None:
                if noise.ndim != 4 or noise.shape[1] != 1 or tuple(noise.shape[2:]) != (self.resolution,) * 2:
                    raise ValueError(f"explicit noise for the {self.resolution}px layer must be [N, 1, "
                                     f"{self.resolution}, {self.resolution}], got {list(noise.shape)}")
                noise_term = noise * self.noise_strength
            elif noise_mode == "random":
                rnd = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device,
                                  generator=noise_generator)  # [N, 1, R, R]
                noise_term = rnd * self.noise_strength
            elif noise_mode == "const":
                noise_term = self.noise_const * self.noise_strength  # [R, R]

        flip_weight = self.up == 1
        x = modulated_conv2d(x, self.weight, styles, noise=noise_term, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=flip_weight,
                             fused_modconv=fused_modconv, impl=impl)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp, impl=impl)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))

    def forward(self, x, w, fused_modconv=True, impl="auto"):
        styles = self.affine(w, impl=impl) * self.weight_gain  # [N, I]
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv, impl=impl)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp, impl=impl)

    def extra_repr(self):
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class SynthesisBlock(torch.nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture="skip",
                 resample_filter=(1, 3, 3, 1), conv_clamp=256, use_fp16=False, fp16_channels_last=False,
                 fused_modconv_default=True, **layer_kwargs):
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))  # [C, R, R]
        if in_channels != 0:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, update_emas=False, noise_inputs=None,
                impl="auto", channels_last=None, **layer_kwargs):
        """``noise_inputs``: optional {'conv0': tensor, 'conv1': tensor} explicit noise maps;
        ``channels_last``: True makes the block's activations channels-last (None: as it was built)."""
        del update_emas
        assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], f"SynthesisBlock@{self.resolution} ws")
        w_iter = iter(ws.unbind(dim=1))
        if ws.device.type != "cuda":
            force_fp32 = True
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        if channels_last is None:
            channels_last = self.channels_last and not force_fp32
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == "inference_only":
            fused_modconv = not self.training
        noise_inputs = noise_inputs or {}
        unknown = set(noise_inputs) - {"conv0", "conv1"}
        if unknown:
            raise ValueError(f"SynthesisBlock@{self.resolution}: unknown noise inputs {sorted(unknown)}")

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # [N, C, 4, 4]
            x = x.contiguous(memory_format=memory_format)
        else:
            assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2],
                          f"SynthesisBlock@{self.resolution} input")
            x = x.to(dtype=dtype, memory_format=memory_format)

        kw = dict(fused_modconv=fused_modconv, impl=impl, **layer_kwargs)
        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), noise=noise_inputs.get("conv1"), **kw)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5), impl=impl)
            x = self.conv0(x, next(w_iter), noise=noise_inputs.get("conv0"), **kw)
            x = self.conv1(x, next(w_iter), gain=np.sqrt(0.5), noise=noise_inputs.get("conv1"), **kw)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), noise=noise_inputs.get("conv0"), **kw)
            x = self.conv1(x, next(w_iter), noise=noise_inputs.get("conv1"), **kw)

        if img is not None:
            assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2],
                          f"SynthesisBlock@{self.resolution} img")
            img = upfirdn2d.upsample2d(img, self.resample_filter, impl=impl)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv, impl=impl)
            # NCHW images: .contiguous(), since to(memory_format=...) keeps a channels-last tensor of
            # batch 1 whose batch stride torch's layout test does not recognise
            y = y.to(dtype=torch.float32).contiguous()
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}"


class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=4,
                 channels_dict=None, **block_kwargs):
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        self.channels_dict = channels_for(self.block_resolutions, channel_base, channel_max, channels_dict)
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = self.channels_dict[res // 2] if res > 4 else 0
            out_channels = self.channels_dict[res]
            is_last = res == self.img_resolution
            block = SynthesisBlock(in_channels, out_channels, w_dim=w_dim, resolution=res, img_channels=img_channels,
                                   is_last=is_last, use_fp16=res >= fp16_resolution, **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def noise_layer_names(self) -> list[str]:
        """Names accepted as keys of ``noise_inputs`` ('b4.conv1', 'b8.conv0', ...)."""
        names = []
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            for conv in ("conv0", "conv1"):
                layer = getattr(block, conv, None)
                if layer is not None and layer.use_noise:
                    names.append(f"b{res}.{conv}")
        return names

    def forward(self, ws, noise_inputs: Mapping[str, torch.Tensor] | None = None, **block_kwargs):
        """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R] (float32)."""
        assert_shape(ws, [None, self.num_ws, self.w_dim], "synthesis ws")
        ws = ws.to(torch.float32)
        per_block: dict[int, dict[str, torch.Tensor]] = {}
        for name, t in (noise_inputs or {}).items():
            head, _, conv = name.partition(".")
            res = int(head[1:]) if head.startswith("b") and head[1:].isdigit() else -1
            if res not in self.block_resolutions or conv not in ("conv0", "conv1"):
                raise ValueError(f"unknown noise input {name!r}; expected one of {self.noise_layer_names()}")
            per_block.setdefault(res, {})[conv] = t
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur_ws, noise_inputs=per_block.get(res), **block_kwargs)
        return img

    def extra_repr(self):
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")


class Generator(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None, **synthesis_kwargs):
        # stylegan2-ada passes the synthesis arguments as one dict, stylegan3 as keywords: accept both.
        nested = synthesis_kwargs.pop("synthesis_kwargs", None) or {}
        synthesis_kwargs = {**dict(nested), **synthesis_kwargs}
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, update_emas=False, impl="auto",
                **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas, impl=impl)
        return self.synthesis(ws, update_emas=update_emas, impl=impl, **synthesis_kwargs)


