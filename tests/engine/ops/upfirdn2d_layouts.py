"""The FIR step of ``upfirdn2d_ref`` in its previous layout, kept only to compare
with the product's depthwise layout: the bit-equality test
(``test_upfirdn2d.py``) and the before/after timing in ``bench/nets.py``.

Previous layout: the images are viewed as ``[N*C, 1, H, W]`` and convolved with
one ``[1, 1, fh, fw]`` filter. Product layout: ``[N, C, H, W]`` convolved with
``groups=C`` and the filter repeated to ``[C, 1, fh, fw]``. Same arithmetic per
output pixel, so the results are bit-identical; the depthwise form is faster on
the CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.ops import upfirdn2d


def upfirdn2d_ref_single_filter_layout(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    """``upfirdn2d_ref`` (same arguments and conventions) with the single-filter ``[N*C, 1, H, W]`` layout."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    upx, upy = upfirdn2d.parse_scaling(up)
    downx, downy = upfirdn2d.parse_scaling(down)
    px0, px1, py0, py1 = upfirdn2d.parse_padding(padding)
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)  # [N, C, H*up, W*up]
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    x = x.reshape(n * c, 1, x.shape[2], x.shape[3])  # [N*C, 1, H', W']
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None])
    else:
        x = F.conv2d(x, f[None, None, None, :])  # along x
        x = F.conv2d(x, f[None, None, :, None])  # along y
    x = x.reshape(n, c, x.shape[2], x.shape[3])
    return x[:, :, ::downy, ::downx]
