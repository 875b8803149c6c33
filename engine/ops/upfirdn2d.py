"""upfirdn2d: upsample, pad, FIR-filter and downsample a batch of 2D images.

Conventions
-----------
* ``x`` is ``[N, C, H, W]`` (any float dtype), ``f`` is a 2D filter ``[fh, fw]``
  or a separable 1D filter ``[fw]`` (applied along x then y), float32.
* Order of operations, per image: insert ``up - 1`` zeros after every pixel
  (both axes), pad by ``padding = [x0, x1, y0, y1]`` pixels (negative values
  crop), convolve with ``f`` (a true convolution; ``flip_filter=True`` makes it
  a correlation, which is the same thing for the symmetric filters StyleGAN
  uses), keep every ``down``-th pixel starting at 0, multiply by ``gain``
  (for a 1D filter the gain is applied as ``sqrt(gain)`` per axis).
* Output size along x: ``(W * up + x0 + x1 - fw) // down + 1``.
* ``setup_filter([1, 3, 3, 1])`` gives the normalised outer-product 2D filter
  (sum 1) used by StyleGAN2 for every resampling step.

``impl``: ``'ref'`` (pure torch, the readable definition), ``'cuda'`` (our
fused kernel, ``engine/ops/cuda/upfirdn2d.cu``; errors if it cannot be used),
``'auto'`` (the kernel for CUDA tensors when it builds, else the reference).
The adjoint (gradient) of upfirdn2d is again an upfirdn2d with the filter
flipped, up/down swapped and the padding transformed, so the CUDA path
supports gradients of any order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.ops import _build

__all__ = ["setup_filter", "upfirdn2d", "upfirdn2d_ref", "upsample2d", "downsample2d", "filter2d"]


def _parse_scaling(scaling: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = (int(s) for s in scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f"upfirdn2d: up/down factors must be >= 1, got {scaling}")
    return sx, sy


def _parse_padding(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        padding = [padding, padding]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f"upfirdn2d: padding must have 1, 2 or 4 entries, got {padding}")
    return tuple(padding)  # type: ignore[return-value]


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"upfirdn2d: filter must be 1D or 2D, got shape {tuple(f.shape)}")
    fw = f.shape[-1]
    fh = f.shape[0]
    return fw, fh


def setup_filter(
    f: Sequence[float] | np.ndarray | torch.Tensor | None,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1.0,
    separable: bool | None = None,
) -> torch.Tensor:
    """Build the float32 filter tensor: a 1D list becomes its outer product
    (``[fw, fw]``) unless ``separable``; normalised to sum 1, times ``gain``."""
    if f is None:
        f = [1]
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: expected a non-empty 1D or 2D filter, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = f.outer(f)  # [fw, fw]
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _check(x: torch.Tensor, f: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be a [N, C, H, W] tensor, got {getattr(x, 'shape', type(x))}")
    if f is not None and (not isinstance(f, torch.Tensor) or f.dtype != torch.float32):
        raise ValueError("upfirdn2d: filter must be a float32 tensor (use setup_filter)")


def upfirdn2d_ref(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Pure-torch definition (see module docstring)."""
    _check(x, f)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)

    # Upsample by inserting zeros.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)  # [N, C, H*up, W*up]

    # Pad (positive) then crop (negative).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # Convolve (conv2d correlates, so flip unless a correlation is asked for).
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    x = x.reshape(n * c, 1, x.shape[2], x.shape[3])
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None])
    else:
        x = F.conv2d(x, f[None, None, None, :])  # along x
        x = F.conv2d(x, f[None, None, :, None])  # along y
    x = x.reshape(n, c, x.shape[2], x.shape[3])

    # Downsample by taking every down-th pixel.
    return x[:, :, ::downy, ::downx]


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int | Sequence[int] = 1,
    down: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
    impl: str = "auto",
) -> torch.Tensor:
    """upfirdn2d with an implementation switch (``'ref'|'cuda'|'auto'``)."""
    _check(x, f)
    if _build.use_cuda(impl, x, "upfirdn2d"):
        from engine.ops import _upfirdn2d_cuda

        return _upfirdn2d_cuda.upfirdn2d_cuda(
            x, f, up=_parse_scaling(up), down=_parse_scaling(down), padding=_parse_padding(padding),
            flip_filter=flip_filter, gain=gain,
        )
    return upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def filter2d(x, f, padding=0, flip_filter=False, gain=1.0, impl="auto"):
    """Filter with ``f`` keeping the size (padding centred on the filter)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1.0, impl="auto"):
    """Upsample by ``up`` with filter ``f``; gain ``up**2`` keeps the mean."""
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1.0, impl="auto"):
    """Low-pass with ``f`` then keep every ``down``-th pixel."""
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
