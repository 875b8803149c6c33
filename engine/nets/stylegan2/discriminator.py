"""StyleGAN2 discriminator (NVlabs ``Discriminator``), with per-block features.

Input images ``[N, img_channels, R, R]`` float32 in [-1, 1]; output scores
``[N, 1]``. ``return_features=True`` also returns the fromrgb output and each
block's output, highest resolution first: the same tensors as rosinality's
``D.convs[i]`` (JoJoGAN's feature loss).
"""
from __future__ import annotations

import numpy as np
import torch

from engine.nets.stylegan2.layers import Conv2dLayer, FullyConnectedLayer, assert_shape, channels_for
from engine.nets.stylegan2.mapping import MappingNetwork
from engine.ops import upfirdn2d


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
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
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
            assert_shape(x, [None, self.in_channels, self.resolution, self.resolution],
                          f"DiscriminatorBlock@{self.resolution} input")
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == "skip":
            assert_shape(img, [None, self.img_channels, self.resolution, self.resolution],
                          f"Discriminator image at {self.resolution}px")
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img, impl=impl)
            x = x + y if x is not None else y
            feats.append(x)
            img = upfirdn2d.downsample2d(img, self.resample_filter, impl=impl) if self.architecture == "skip" else None
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
        assert_shape(x, [None, self.in_channels, self.resolution, self.resolution], "DiscriminatorEpilogue input")
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(torch.float32), impl=impl)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x, impl=impl)
        x = self.fc(x.flatten(1), impl=impl)
        x = self.out(x, impl=impl)  # [N, 1 or cmap_dim]
        if self.cmap_dim > 0:
            assert_shape(cmap, [None, self.cmap_dim], "discriminator cmap")
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
        assert_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution], "discriminator image")
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


