"""StyleGAN2 generator and discriminator (one implementation for every layout).

Structure, class names, constructor arguments and parameter/buffer names
follow NVlabs stylegan2-ada / stylegan3 ``training/networks_stylegan2.py``, so
an NVlabs state dict (or EG3D's ``backbone.*`` / ``superresolution.*`` parts)
loads with ``load_state_dict``. rosinality checkpoints are converted by
``engine.nets.stylegan2_layouts``.

Conventions
-----------
* Images are ``[N, 3, R, R]`` float32, nominally in [-1, 1]; R = 2^k >= 4.
* z ``[N, z_dim]``, c ``[N, c_dim]`` (c may be None when c_dim == 0),
  W ``[N, w_dim]``, W+ / ws ``[N, num_ws, w_dim]`` with
  ``num_ws = 2*log2(R) - 2`` (block b4 uses ws[0] for conv1 and ws[1] for
  torgb; block b(2^k) uses ws[2k-5], ws[2k-4] for conv0/conv1 and ws[2k-3] for
  torgb, the torgb latent being shared with the next block's conv0).
* Widths: ``min(channel_base // res, channel_max)`` as NVlabs, or an explicit
  ``channels_dict`` {res: channels} (an extension, used for checkpoints whose
  widths do not follow the formula).
* Noise: ``noise_mode`` 'random' | 'const' | 'none' as NVlabs; in addition
  ``noise_inputs={'b8.conv0': tensor [N or 1, 1, 8, 8], ...}`` supplies explicit
  per-layer noise maps (scaled by the layer's ``noise_strength``), e.g. noise
  being optimised by an inversion; ``noise_generator`` feeds 'random' noise.
* No module state changes during forward, except ``mapping.w_avg`` when the
  caller asks for ``update_emas=True`` (training).
* FP16 blocks (``num_fp16_res``) run in half precision only on CUDA.
* ``impl`` ('ref' | 'cuda' | 'auto') chooses the op implementation
  (``engine.ops``); it is accepted by every forward.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Mapping, Sequence

import numpy as np
import torch

from emoji3d.errors import WeightsError
from engine.nets import stylegan2_layouts as _layouts

from engine.ops import bias_act as _ba
from engine.ops import upfirdn2d as _up
from engine.ops.conv2d_resample import conv2d_resample
from engine.ops.modulated_conv import modulated_conv2d

__all__ = [
    "normalize_2nd_moment",
    "FullyConnectedLayer",
    "Conv2dLayer",
    "MappingNetwork",
    "SynthesisLayer",
    "ToRGBLayer",
    "SynthesisBlock",
    "SynthesisNetwork",
    "Generator",
    "DiscriminatorBlock",
    "MinibatchStdLayer",
    "DiscriminatorEpilogue",
    "Discriminator",
    "truncate",
    "style_mix",
    "channels_for",
    "StyleGAN2Config",
    "build_generator",
    "build_discriminator",
    "load_stylegan2",
    "save_pretrained",
    "from_pretrained",
    "stylegan2_slim",
    "stylegan2_slim_config",
]


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def channels_for(resolutions: Sequence[int], channel_base: int, channel_max: int,
                 channels_dict: Mapping[int, int] | None = None) -> dict[int, int]:
    """Width per resolution: the explicit dict if given, else the NVlabs formula."""
    if channels_dict is not None:
        cd = {int(k): int(v) for k, v in channels_dict.items()}
        missing = [r for r in resolutions if r not in cd]
        if missing:
            raise ValueError(f"channels_dict lacks resolutions {missing}")
        return {r: cd[r] for r in resolutions}
    return {r: min(channel_base // r, channel_max) for r in resolutions}


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
    """Lerp ws [N, num_ws, D] (or W [N, D]) towards w_avg [D] by psi for the first ``cutoff`` latents."""
    if psi == 1:
        return ws
    if ws.ndim == 2 or cutoff is None:
        return w_avg.lerp(ws, psi)
    head = w_avg.lerp(ws[:, :cutoff], psi)
    return torch.cat([head, ws[:, cutoff:]], dim=1)


def style_mix(ws_a: torch.Tensor, ws_b: torch.Tensor, inject_index: int, num_ws: int | None = None) -> torch.Tensor:
    """W+ with ws_a for layers [0, inject_index) and ws_b for [inject_index, num_ws).

    Each input is W [N, D] (broadcast to num_ws) or W+ [N, num_ws, D]."""
    if num_ws is None:
        num_ws = next((w.shape[1] for w in (ws_a, ws_b) if w.ndim == 3), None)
        if num_ws is None:
            raise ValueError("style_mix: num_ws is needed when both inputs are W [N, D]")
    a = ws_a.unsqueeze(1).expand(-1, num_ws, -1) if ws_a.ndim == 2 else ws_a
    b = ws_b.unsqueeze(1).expand(-1, num_ws, -1) if ws_b.ndim == 2 else ws_b
    if not 0 <= inject_index <= num_ws:
        raise ValueError(f"style_mix: inject_index {inject_index} outside [0, {num_ws}]")
    return torch.cat([a[:, :inject_index], b[:, inject_index:]], dim=1)  # [N, num_ws, D]


def _assert_shape(t: torch.Tensor, shape: Sequence[int | None], what: str) -> None:
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        raise ValueError(f"{what}: expected shape {list(shape)}, got {list(t.shape)}")


# --------------------------------------------------------------------------- layers


class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1.0,
                 bias_init=0.0, trainable=True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier
        weight = torch.randn([out_features, in_features]) / lr_multiplier  # [O, I]
        bias_t = torch.full([out_features], np.float32(bias_init)) if bias else None  # [O]
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias_t) if bias_t is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias_t)

    def forward(self, x, impl="auto"):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return _ba.bias_act(x, b, act=self.activation, impl=impl)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _up.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size ** 2))
        self.act_gain = _ba.ACTIVATIONS[activation].def_gain
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        bias_t = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias_t) if bias_t is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias_t)

    def forward(self, x, gain=1, impl="auto"):
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        flip_weight = self.up == 1
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=flip_weight, impl=impl)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return _ba.bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp, impl=impl)

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")


class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.998, freeze_layers=0, freeze_embed=False):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features, trainable=not freeze_embed)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier, trainable=idx >= freeze_layers)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))  # [w_dim]

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, update_emas=False, impl="auto"):
        x = None
        if self.z_dim > 0:
            if z is None:
                raise ValueError("MappingNetwork: z is required (z_dim > 0)")
            _assert_shape(z, [None, self.z_dim], "mapping z")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"MappingNetwork: a conditioning label c [N, {self.c_dim}] is required")
            _assert_shape(c, [None, self.c_dim], "mapping c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32), impl=impl))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x, impl=impl)  # [N, w_dim]
        if update_emas and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, num_ws, w_dim]
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("MappingNetwork: truncation needs w_avg (w_avg_beta is None)")
            x = truncate(x, self.w_avg, truncation_psi, truncation_cutoff if self.num_ws is not None else None)
        return x

    def extra_repr(self):
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


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
        self.register_buffer("resample_filter", _up.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = _ba.ACTIVATIONS[activation].def_gain
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
        _assert_shape(x, [None, self.in_channels, in_res, in_res], f"SynthesisLayer@{self.resolution} input")
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
        return _ba.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp, impl=impl)

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
        return _ba.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp, impl=impl)

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
        self.register_buffer("resample_filter", _up.setup_filter(list(resample_filter)))
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
                impl="auto", **layer_kwargs):
        """``noise_inputs``: optional {'conv0': tensor, 'conv1': tensor} explicit noise maps."""
        del update_emas
        _assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], f"SynthesisBlock@{self.resolution} ws")
        w_iter = iter(ws.unbind(dim=1))
        if ws.device.type != "cuda":
            force_fp32 = True
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == "inference_only":
            fused_modconv = not self.training
        noise_inputs = noise_inputs or {}
        unknown = set(noise_inputs) - {"conv0", "conv1"}
        if unknown:
            raise ValueError(f"SynthesisBlock@{self.resolution}: unknown noise inputs {sorted(unknown)}")

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # [N, C, 4, 4]
        else:
            _assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2],
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
            _assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2],
                          f"SynthesisBlock@{self.resolution} img")
            img = _up.upsample2d(img, self.resample_filter, impl=impl)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv, impl=impl)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
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
        _assert_shape(ws, [None, self.num_ws, self.w_dim], "synthesis ws")
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


# --------------------------------------------------------------------------- discriminator


class DiscriminatorBlock(torch.nn.Module):
    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture="resnet", activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"DiscriminatorBlock: in_channels must be 0 or {tmp_channels}, got {in_channels}")
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", _up.setup_filter(list(resample_filter)))
        self.num_layers = 0

        def trainable() -> bool:
            idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=trainable(), conv_clamp=conv_clamp, channels_last=self.channels_last)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=trainable(), conv_clamp=conv_clamp, channels_last=self.channels_last)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=trainable(), resample_filter=resample_filter, conv_clamp=conv_clamp,
                                 channels_last=self.channels_last)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward_features(self, x, img, force_fp32=False, impl="auto"):
        """Like ``forward`` but also returns the fromrgb output (if any) and the block output."""
        device = (x if x is not None else img).device
        if device.type != "cuda":
            force_fp32 = True
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        feats: list[torch.Tensor] = []
        if x is not None:
            _assert_shape(x, [None, self.in_channels, self.resolution, self.resolution],
                          f"DiscriminatorBlock@{self.resolution} input")
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == "skip":
            _assert_shape(img, [None, self.img_channels, self.resolution, self.resolution],
                          f"Discriminator image at {self.resolution}px")
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img, impl=impl)
            x = x + y if x is not None else y
            feats.append(x)
            img = _up.downsample2d(img, self.resample_filter, impl=impl) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5), impl=impl)
            x = self.conv0(x, impl=impl)
            x = self.conv1(x, gain=np.sqrt(0.5), impl=impl)
            x = y + x
        else:
            x = self.conv0(x, impl=impl)
            x = self.conv1(x, impl=impl)
        feats.append(x)
        return x, img, feats

    def forward(self, x, img, force_fp32=False, impl="auto"):
        x, img, _ = self.forward_features(x, img, force_fp32=force_fp32, impl=impl)
        return x, img

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}"


class MinibatchStdLayer(torch.nn.Module):
    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise ValueError(f"minibatch-stddev: batch {n} is not divisible by the group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)  # [n, F, c, H, W]
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])  # [n, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(torch.nn.Module):
    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture="resnet", mbstd_group_size=4,
                 mbstd_num_channels=1, activation="lrelu", conv_clamp=None):
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * (resolution ** 2), in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False, impl="auto"):
        del force_fp32
        _assert_shape(x, [None, self.in_channels, self.resolution, self.resolution], "DiscriminatorEpilogue input")
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(torch.float32), impl=impl)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x, impl=impl)
        x = self.fc(x.flatten(1), impl=impl)
        x = self.out(x, impl=impl)  # [N, 1 or cmap_dim]
        if self.cmap_dim > 0:
            _assert_shape(cmap, [None, self.cmap_dim], "discriminator cmap")
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}"


class Discriminator(torch.nn.Module):
    def __init__(self, c_dim, img_resolution, img_channels, architecture="resnet", channel_base=32768,
                 channel_max=512, num_fp16_res=4, conv_clamp=256, cmap_dim=None, block_kwargs=None,
                 mapping_kwargs=None, epilogue_kwargs=None, channels_dict=None):
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        self.channels_dict = channels_for(self.block_resolutions + [4], channel_base, channel_max, channels_dict)
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = self.channels_dict[4]
        if c_dim == 0:
            cmap_dim = 0
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = self.channels_dict[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_channels, self.channels_dict[res], self.channels_dict[res // 2],
                                       resolution=res, first_layer_idx=cur_layer_idx, use_fp16=res >= fp16_resolution,
                                       **(block_kwargs or {}), **common)
            setattr(self, f"b{res}", block)
            cur_layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(self.channels_dict[4], cmap_dim=cmap_dim, resolution=4,
                                        **(epilogue_kwargs or {}), **common)

    def forward(self, img, c=None, update_emas=False, return_features=False, impl="auto", **block_kwargs):
        """Score [N, 1]; with ``return_features`` also the list of per-block
        features: the fromrgb output, then each block's output (highest to
        lowest resolution) -- the same tensors as rosinality's ``D.convs[i]``."""
        del update_emas
        _assert_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution], "discriminator image")
        x = None
        feats: list[torch.Tensor] = []
        for res in self.block_resolutions:
            x, img, f = getattr(self, f"b{res}").forward_features(x, img, impl=impl, **block_kwargs)
            feats.extend(f)
        cmap = None
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"Discriminator: a label c [N, {self.c_dim}] is required")
            cmap = self.mapping(None, c, impl=impl)
        out = self.b4(x, img, cmap, impl=impl)
        return (out, feats) if return_features else out

    def features(self, img, c=None, **kwargs) -> list[torch.Tensor]:
        """Per-block features only (see ``forward``)."""
        return self.forward(img, c, return_features=True, **kwargs)[1]

    def extra_repr(self):
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"


# --------------------------------------------------------------------------- config, loading, saving, presets


@dataclass
class StyleGAN2Config:
    """Everything needed to rebuild G (and D) without the weights.

    ``channels`` / ``d_channels`` map resolution -> width (JSON keys are
    strings). ``source`` records where the weights came from.
    """

    img_resolution: int = 1024
    channels: dict[int, int] = field(default_factory=dict)
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
    resample_filter: list[float] = field(default_factory=lambda: [1.0, 3.0, 3.0, 1.0])
    use_noise: bool = True
    fused_modconv_default: bool | str = True
    has_discriminator: bool = True
    d_channels: dict[int, int] | None = None
    d_architecture: str = "resnet"
    d_conv_clamp: float | None = None
    d_num_fp16_res: int = 0
    mbstd_group_size: int | None = 4
    mbstd_num_channels: int = 1
    d_cmap_dim: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.channels = {int(k): int(v) for k, v in self.channels.items()}
        if self.d_channels is not None:
            self.d_channels = {int(k): int(v) for k, v in self.d_channels.items()}
        if not self.channels:
            n = int(np.log2(self.img_resolution))
            self.channels = {2 ** i: min(32768 // 2 ** i, 512) for i in range(2, n + 1)}

    @property
    def num_ws(self) -> int:
        return 2 * int(np.log2(self.img_resolution)) - 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {str(k): v for k, v in self.channels.items()}
        if self.d_channels is not None:
            d["d_channels"] = {str(k): v for k, v in self.d_channels.items()}
        return d

    def to_json(self) -> str:
        return json.dumps({"kind": "stylegan2", **self.to_dict()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "StyleGAN2Config":
        d = json.loads(text)
        if d.pop("kind", "stylegan2") != "stylegan2":
            raise WeightsError("config.json does not describe a StyleGAN2 network")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise WeightsError(f"StyleGAN2 config.json has unknown keys: {unknown}")
        return cls(**d)


def build_generator(cfg: StyleGAN2Config) -> Generator:
    mapping_kwargs = dict(num_layers=cfg.mapping_layers, lr_multiplier=cfg.mapping_lr_multiplier,
                          w_avg_beta=cfg.w_avg_beta, layer_features=cfg.layer_features,
                          embed_features=cfg.embed_features)
    return Generator(cfg.z_dim, cfg.c_dim, cfg.w_dim, cfg.img_resolution, cfg.img_channels,
                     mapping_kwargs=mapping_kwargs, channels_dict=cfg.channels, num_fp16_res=cfg.num_fp16_res,
                     architecture=cfg.architecture, conv_clamp=cfg.conv_clamp,
                     resample_filter=list(cfg.resample_filter), use_noise=cfg.use_noise,
                     fused_modconv_default=cfg.fused_modconv_default)


def build_discriminator(cfg: StyleGAN2Config) -> Discriminator:
    return Discriminator(cfg.c_dim, cfg.img_resolution, cfg.img_channels, architecture=cfg.d_architecture,
                         num_fp16_res=cfg.d_num_fp16_res, conv_clamp=cfg.d_conv_clamp, cmap_dim=cfg.d_cmap_dim,
                         channels_dict=cfg.d_channels or cfg.channels,
                         block_kwargs=dict(resample_filter=list(cfg.resample_filter)),
                         epilogue_kwargs=dict(mbstd_group_size=cfg.mbstd_group_size,
                                              mbstd_num_channels=cfg.mbstd_num_channels))


def _load_into(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load, except derived constant buffers (resample filters) may be absent."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("resample_filter")]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise WeightsError(f"{what}: state dict does not fit the architecture inferred from it "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise WeightsError(f"{what}: tensor '{k}' has shape {list(v.shape)}, expected {list(expected[k].shape)}")
    full = dict(expected)
    full.update({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()})
    module.load_state_dict(full, strict=True)


def _split_sd(obj):
    """(state_dict, init_kwargs or None) from a state dict or a (sd, kwargs) pair."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], Mapping):
        return obj[0], dict(obj[1] or {})
    if isinstance(obj, Mapping):
        return obj, None
    raise WeightsError(f"expected a state dict or (state_dict, init_kwargs), got {type(obj).__name__}")


def _config_from_sds(g_sd, d_sd, g_kwargs, d_kwargs, source) -> StyleGAN2Config:
    ga = _layouts.infer_g_arch(g_sd)
    filt = [1.0, 3.0, 3.0, 1.0]
    if "synthesis.b8.resample_filter" in g_sd:
        filt = _layouts.filter_1d_from_2d(g_sd["synthesis.b8.resample_filter"])
    cfg = StyleGAN2Config(
        img_resolution=ga["img_resolution"], channels=ga["channels"], z_dim=ga["z_dim"], c_dim=ga["c_dim"],
        w_dim=ga["w_dim"], img_channels=ga["img_channels"], mapping_layers=ga["mapping_layers"],
        layer_features=ga.get("layer_features"), embed_features=ga.get("embed_features"),
        architecture=ga["architecture"], use_noise=ga["use_noise"], resample_filter=filt,
        has_discriminator=d_sd is not None, source=source)
    if g_kwargs:
        mk = dict(g_kwargs.get("mapping_kwargs") or {})
        cfg.mapping_lr_multiplier = float(mk.get("lr_multiplier", cfg.mapping_lr_multiplier))
        if "w_avg_beta" in mk:
            cfg.w_avg_beta = mk["w_avg_beta"]
        syn = dict(g_kwargs.get("synthesis_kwargs") or {})
        syn.update({k: v for k, v in g_kwargs.items() if k in ("conv_clamp", "num_fp16_res", "fused_modconv_default")})
        cfg.conv_clamp = syn.get("conv_clamp", 256)  # NVlabs SynthesisBlock default
        cfg.num_fp16_res = int(syn.get("num_fp16_res", 4))
        cfg.fused_modconv_default = syn.get("fused_modconv_default", True)
    if d_sd is not None:
        da = _layouts.infer_d_arch(d_sd)
        if da["img_resolution"] != cfg.img_resolution:
            raise WeightsError(f"discriminator resolution {da['img_resolution']} != generator {cfg.img_resolution}")
        cfg.d_channels = da["channels"]
        cfg.d_architecture = da["architecture"]
        cfg.mbstd_num_channels = da["mbstd_num_channels"]
        if da["c_dim"]:
            cfg.d_cmap_dim = da["cmap_dim"]
        if d_kwargs:
            cfg.d_conv_clamp = d_kwargs.get("conv_clamp", 256)
            cfg.d_num_fp16_res = int(d_kwargs.get("num_fp16_res", 4))
            ek = dict(d_kwargs.get("epilogue_kwargs") or {})
            cfg.mbstd_group_size = ek.get("mbstd_group_size", cfg.mbstd_group_size)
    return cfg


def load_stylegan2(obj, device: torch.device | str = "cpu"):
    """Build StyleGAN2 G (and D) from any supported layout.

    ``obj`` is one of: a rosinality checkpoint dict ``{'g_ema', 'd'?, 'latent_avg'?}``;
    an NVlabs generator state dict or ``(state_dict, init_kwargs)`` pair; a dict
    ``{'G_ema' or 'G': sd-or-pair, 'D'?: sd-or-pair}``.
    Returns ``(G, D or None, latent_avg [w_dim] or None, StyleGAN2Config)``.
    """
    if not isinstance(obj, (Mapping, tuple, list)):
        raise WeightsError(f"cannot read a StyleGAN2 checkpoint from {type(obj).__name__}")
    latent_avg = None
    g_kwargs = d_kwargs = None
    d_sd = None
    if isinstance(obj, Mapping) and "g_ema" in obj:
        g_src, d_src = obj["g_ema"], obj.get("d")
        la = obj.get("latent_avg")
        latent_avg = la.reshape(-1).to(torch.float32) if isinstance(la, torch.Tensor) else None
    elif isinstance(obj, Mapping) and ("G_ema" in obj or "G" in obj):
        g_src, d_src = obj.get("G_ema", obj.get("G")), obj.get("D")
    else:
        g_src, d_src = obj, None
    g_sd, g_kwargs = _split_sd(g_src)
    if d_src is not None:
        d_sd, d_kwargs = _split_sd(d_src)

    g_layout = _layouts.detect_layout(g_sd)
    if g_layout == "rosinality_g":
        g_sd = _layouts.rosinality_g_to_nvlabs(g_sd, latent_avg)
        source = "rosinality"
    elif g_layout == "nvlabs_g":
        g_sd = dict(g_sd)
        source = "nvlabs"
        if latent_avg is None and "mapping.w_avg" in g_sd:
            latent_avg = g_sd["mapping.w_avg"].reshape(-1).to(torch.float32)
        elif latent_avg is not None:
            g_sd["mapping.w_avg"] = latent_avg
    else:
        raise WeightsError(f"expected a generator state dict, got a {g_layout} layout")
    if d_sd is not None:
        d_layout = _layouts.detect_layout(d_sd)
        if d_layout == "rosinality_d":
            d_sd = _layouts.rosinality_d_to_nvlabs(d_sd)
        elif d_layout != "nvlabs_d":
            raise WeightsError(f"expected a discriminator state dict, got a {d_layout} layout")

    cfg = _config_from_sds(g_sd, d_sd, g_kwargs, d_kwargs, source)
    if source == "rosinality" and latent_avg is None:
        cfg.w_avg_beta = 0.998  # w_avg stays zero: no average latent stored
    G = build_generator(cfg)
    if "mapping.w_avg" not in g_sd:
        g_sd["mapping.w_avg"] = torch.zeros([cfg.w_dim])
    _load_into(G, g_sd, "StyleGAN2 generator")
    D = None
    if d_sd is not None:
        D = build_discriminator(cfg)
        _load_into(D, d_sd, "StyleGAN2 discriminator")
        D = D.to(device).eval()
    return G.to(device).eval(), D, latent_avg, cfg


def _contiguous_sd(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_pretrained(folder, G: Generator, D: Discriminator | None, cfg: StyleGAN2Config) -> pathlib.Path:
    """Write ``config.json``, ``generator.safetensors`` and (with D) ``discriminator.safetensors``."""
    from safetensors.torch import save_file

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, has_discriminator=D is not None)
    save_file(_contiguous_sd(G), str(folder / "generator.safetensors"))
    if D is not None:
        save_file(_contiguous_sd(D), str(folder / "discriminator.safetensors"))
    (folder / "config.json").write_text(cfg.to_json())
    return folder


def _from_converted(folder: pathlib.Path, raw: dict, device, with_discriminator: bool):
    """A folder written by ``emoji3d weights convert`` (engine.weights.core): rosinality or stylegan2-ada groups."""
    from engine.weights.core import load_converted

    conf, groups = load_converted(folder)
    kind = conf.get("kind")
    if kind == "stylegan2_rosinality":
        if "g_ema" not in groups:
            raise WeightsError(f"{folder}: converted rosinality checkpoint has no g_ema group")
        obj = {"g_ema": groups["g_ema"]}
        if with_discriminator and "d" in groups:
            obj["d"] = groups["d"]
        if "latent_avg" in groups:
            obj["latent_avg"] = groups["latent_avg"]["latent_avg"]
    else:  # stylegan2_ada_pickle: networks with init_kwargs
        nets = conf.get("networks") or {}
        g_name = "G_ema" if "G_ema" in groups else "G"
        if g_name not in groups:
            raise WeightsError(f"{folder}: converted stylegan2-ada pickle has no G_ema/G network")
        obj = {"G_ema": (groups[g_name], (nets.get(g_name) or {}).get("init_kwargs") or {})}
        if with_discriminator and "D" in groups:
            obj["D"] = (groups["D"], (nets.get("D") or {}).get("init_kwargs") or {})
    G, D, _, cfg = load_stylegan2(obj, device=device)
    return G, D, G.mapping.w_avg.detach().clone(), cfg


def from_pretrained(folder, device: torch.device | str = "cpu", with_discriminator: bool = True):
    """Inverse of ``save_pretrained``: ``(G, D or None, w_avg [w_dim], cfg)``.

    Also reads the folders ``emoji3d weights convert`` writes for the kinds
    ``stylegan2_rosinality`` and ``stylegan2_ada_pickle`` (converted on the fly)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = pathlib.Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(f"{cfg_path}: missing (not a converted StyleGAN2 folder)")
    try:
        raw = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise WeightsError(f"{cfg_path}: unreadable StyleGAN2 config ({exc})") from exc
    if isinstance(raw, dict) and raw.get("kind") in ("stylegan2_rosinality", "stylegan2_ada_pickle"):
        return _from_converted(folder, raw, device, with_discriminator)
    try:
        cfg = StyleGAN2Config.from_json(cfg_path.read_text())
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{cfg_path}: unreadable StyleGAN2 config ({exc})") from exc

    def read(name: str) -> dict[str, torch.Tensor]:
        path = folder / name
        if not path.is_file():
            raise WeightsError(f"{path}: missing")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: corrupt or truncated safetensors file ({exc})") from exc

    G = build_generator(cfg)
    _load_into(G, read("generator.safetensors"), f"{folder / 'generator.safetensors'}")
    D = None
    if with_discriminator and cfg.has_discriminator:
        D = build_discriminator(cfg)
        _load_into(D, read("discriminator.safetensors"), f"{folder / 'discriminator.safetensors'}")
        D = D.to(device).eval()
    return G.to(device).eval(), D, G.mapping.w_avg.detach().clone(), cfg


SLIM_CHANNELS = {4: 64, 8: 64, 16: 64, 32: 64, 64: 32, 128: 32, 256: 16, 512: 16, 1024: 16}


def stylegan2_slim_config(resolution: int = 256) -> StyleGAN2Config:
    """The slim preset: full StyleGAN2 architecture (8-layer 512-d mapping,
    skip generator, resnet discriminator) with narrow widths ``SLIM_CHANNELS``
    (64 up to 32 px, 32 at 64-128 px, 16 from 256 px), default 256 px."""
    if resolution < 4 or resolution > 1024 or resolution & (resolution - 1):
        raise ValueError(f"slim preset resolution must be a power of two in [4, 1024], got {resolution}")
    ch = {r: c for r, c in SLIM_CHANNELS.items() if r <= resolution}
    return StyleGAN2Config(img_resolution=resolution, channels=ch, d_channels=dict(ch), source="slim")


def stylegan2_slim(seed: int = 0, resolution: int = 256, with_discriminator: bool = True):
    """Deterministically initialised slim preset: ``(G, D or None, w_avg, cfg)``.

    Weights follow the NVlabs initialisation drawn from ``seed`` (the global
    torch RNG is left untouched); ``w_avg`` is the mean of the mapping of 1024
    latents drawn from the same seed, so truncation behaves as with a trained model.
    """
    cfg = replace(stylegan2_slim_config(resolution), source=f"slim:seed={seed}",
                  has_discriminator=with_discriminator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = build_generator(cfg)
        D = build_discriminator(cfg) if with_discriminator else None
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        z = torch.randn([1024, cfg.z_dim], generator=gen)  # [1024, z_dim]
        w = G.mapping(z, None, impl="ref")[:, 0]  # [1024, w_dim]
        G.mapping.w_avg.copy_(w.mean(dim=0))
    return G.eval(), (D.eval() if D is not None else None), G.mapping.w_avg.detach().clone(), cfg
