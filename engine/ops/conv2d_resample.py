"""2D convolution combined with FIR up/downsampling (StyleGAN2 semantics).

``conv2d_resample(x, w, f, up, down, padding)`` equals: upsample ``x`` by ``up``
(zero insertion) and low-pass it with ``f`` (gain ``up**2``), convolve with
``w`` using ``padding`` measured in the upsampled grid, then low-pass with
``f`` and keep every ``down``-th pixel. It is computed with the cheapest
equivalent order (transposed strided conv for up, strided conv for down,
1x1 convs moved to the low-resolution side).

Conventions: ``x`` ``[N, C_in*groups.., H, W]``; ``w`` ``[C_out, C_in/groups, kh, kw]``;
``f`` from ``upfirdn2d.setup_filter`` or None; ``flip_weight=True`` means
correlation (what ``torch.nn.functional.conv2d`` does), False a true
convolution. Weight layout and flips follow NVlabs stylegan2-ada so official
weights give official outputs. A channels-last ``x`` gives a channels-last
output on every backend (see ``_conv``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.ops import upfirdn2d
from engine.ops.dispatch import channels_last

__all__ = ["conv2d_resample"]


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    kh, kw = w.shape[2], w.shape[3]
    if not flip_weight and (kw > 1 or kh > 1):
        w = w.flip([2, 3])
    # Channels-last in, channels-last out. cuDNN does so given either tensor channels-last (and takes
    # the weight so itself); some CPU kernels need the weight so, and the CPU's transposed
    # convolution writes NCHW whatever it is given (the copy back costs nothing where the layout is right).
    keep_last = channels_last(x)
    if keep_last:
        w = w.contiguous(memory_format=torch.channels_last)
    conv = F.conv_transpose2d if transpose else F.conv2d
    y = conv(x, w, stride=stride, padding=padding, groups=groups)
    return y.contiguous(memory_format=torch.channels_last) if keep_last else y


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False, impl="auto"):
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_resample: x and w must be 4D, got {tuple(x.shape)} and {tuple(w.shape)}")
    if not (isinstance(up, int) and isinstance(down, int) and up >= 1 and down >= 1):
        raise ValueError(f"conv2d_resample: up/down must be integers >= 1, got {up}, {down}")
    if x.shape[1] != w.shape[1] * groups:
        raise ValueError(f"conv2d_resample: x has {x.shape[1]} channels, weight expects {w.shape[1]}x{groups} groups")
    if (up > 1 or down > 1) and f is None:
        raise ValueError("conv2d_resample: resampling needs a filter f")
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = (f.shape[-1], f.shape[0]) if f is not None else (1, 1)
    px0, px1, py0, py1 = upfirdn2d.parse_padding(padding)

    # Padding in the resampled grid, extended by the filter support.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 conv with downsampling only: downsample first, then convolve.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter, impl=impl)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 conv with upsampling only: convolve first, then upsample.
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d.upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter,
                                   impl=impl)

    # Downsampling only: filter, then strided conv.
    if down > 1 and up == 1:
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter, impl=impl)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling (optionally then downsampling): transposed strided conv, then filter.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)  # [C_in, C_out, kh, kw]
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d.upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                          flip_filter=flip_filter, impl=impl)
        if down > 1:
            x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl=impl)
        return x

    # No resampling, symmetric non-negative padding: plain conv.
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # General case.
    x = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                      flip_filter=flip_filter, impl=impl)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl=impl)
    return x
