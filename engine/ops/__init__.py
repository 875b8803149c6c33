"""Custom ops for the StyleGAN2 family: ``upfirdn2d``, ``bias_act``,
``conv2d_resample`` and ``modulated_conv``; EG3D's tri-plane sampling, ``triplane``;
and one layer's term of the LPIPS distance, ``lpips_layer``.

Every op with a fused kernel is one file holding its readable pure-torch
reference (``*_ref``), the autograd Function around our CUDA kernel
(``*_fused``, sources under ``cuda/``) and the ``impl='ref'|'cuda'|'auto'``
switch. Kernels are compiled lazily on first CUDA use (``_build``), never at
import; ``python -m engine.ops.prebuild`` compiles them ahead of time
(Dockerfile). A kernel is used only after it reproduced its reference on a
small probe, forward and gradient, for that device and dtype
(``dispatch``); otherwise the op warns once and runs its reference.

Imports point one way: this package -> the op modules -> ``dispatch`` -> ``_build``.
"""
from __future__ import annotations

import torch

from engine.ops import bias_act, dispatch, lpips_layer, modulated_conv, triplane, upfirdn2d

__all__ = ["FUSED_OPS", "implementations"]

# Every op that has a fused kernel, in the order ``implementations`` reports them.
FUSED_OPS: tuple[dispatch.FusedOp, ...] = (upfirdn2d.FUSED, bias_act.FUSED, modulated_conv.FUSED, triplane.FUSED,
                                           lpips_layer.FUSED)


def implementations(device: torch.device | str,
                    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)) -> dict[str, str]:
    """How each op with a fused kernel runs on ``device``, for each of ``dtypes``.

    On CUDA this builds (or loads) every kernel and self-checks it now, so a
    bad kernel is found at start, not mid-job. Returns ``{op name: text}``, to
    be logged as ``f"{name}: {text}"``, e.g. ``upfirdn2d: fused CUDA kernel
    (self-check passed, float32, max error 2.4e-07 <= 1e-04)`` or
    ``bias_act: pure-torch reference (no fused kernels for cpu tensors)``.
    float16 is in the default because StyleGAN2/EG3D run their high-resolution
    blocks in half precision on CUDA, bfloat16 because of the stages' bf16 autocast.
    """
    return {op.name: dispatch.describe(op, device, dtypes) for op in FUSED_OPS}
