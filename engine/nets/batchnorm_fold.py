"""Batch norms in eval mode folded into the layer beside them, for frozen loss networks.

A ``BatchNorm`` in eval mode is a per-channel affine map ``y = s * x + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s``
(``gamma = 1, beta = 0`` without ``affine``). Beside a linear layer it folds
into that layer's weight and bias exactly (up to rounding; the folded values
are computed in float64):

- after a convolution or a linear layer: ``W' = s * W`` (per output channel),
  ``b' = s * b + t``;
- before a linear layer that reads a flattened [C, H, W] map (ArcFace's
  output layer): ``W' = W * s`` (per input channel, repeated over H x W),
  ``b' = b + W @ t``.

A batch norm *before* a padded convolution does not fold: the padding would
pad ``x`` with zeros where the network pads ``s * x + t`` with zeros, and the
border outputs would differ.

Why: each batch norm is a kernel of its own forward and another backward, on a
whole activation map. A network whose input needs gradients but whose weights
do not (ArcFace in PTI's identity loss, every step) pays them at every step
for an affine map that never changes. The functions here return new modules
and leave their arguments as they are; a folded network's state dict is not
the official one and must not be saved as such.
"""
from __future__ import annotations

import torch
from torch import nn


def _affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) [C] float64 of an eval-mode batch norm's per-channel map ``s * x + t``."""
    if bn.training:
        raise ValueError("batch-norm folding: the network must be in eval mode (running statistics)")
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("batch-norm folding: the batch norm keeps no running statistics")
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - mean * s


def _with(layer: nn.Conv2d | nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d | nn.Linear:
    """A copy of ``layer`` (a convolution or a linear layer) with these weight and bias, in its
    dtype and on its device, frozen as the layer was."""
    like = layer.weight
    if isinstance(layer, nn.Conv2d):
        new: nn.Conv2d | nn.Linear = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            layer.groups, bias=True, padding_mode=layer.padding_mode, device=like.device, dtype=like.dtype)
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=True, device=like.device, dtype=like.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new.requires_grad_(like.requires_grad).train(layer.training)


def fold_after(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Conv2d | nn.Linear:
    """``layer`` then ``bn`` as one layer with a bias."""
    s, t = _affine(bn)
    weight = layer.weight.double()  # [out, in, ...]
    if weight.shape[0] != s.shape[0]:
        raise ValueError(f"batch-norm folding: {weight.shape[0]} output channels against a batch norm of {s.shape[0]}")
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(s)
    return _with(layer, weight * s.reshape(-1, *[1] * (weight.ndim - 1)), s * bias + t)


def fold_before_linear(bn: nn.BatchNorm2d, linear: nn.Linear) -> nn.Linear:
    """``bn`` on a [B, C, H, W] map, flattened, then ``linear`` as one linear layer."""
    s, t = _affine(bn)
    weight = linear.weight.double()  # [out, C*H*W], flattened channel-major
    channels = s.shape[0]
    if weight.shape[1] % channels:
        raise ValueError(f"batch-norm folding: {weight.shape[1]} inputs are not {channels} channels' maps")
    per_channel = weight.reshape(weight.shape[0], channels, -1)  # [out, C, H*W]
    bias = linear.bias.double() if linear.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    bias = bias + (per_channel * t[None, :, None]).sum(dim=(1, 2))
    return _with(linear, (per_channel * s[None, :, None]).reshape_as(weight), bias)


def fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    """A copy of ``seq`` with each convolution or linear layer directly followed by a batch norm
    folded into it (the batch norm's place kept by an ``nn.Identity``, so indices do not move).
    Other children are shared with ``seq``, not copied."""
    children = list(seq.children())
    out: list[nn.Module] = []
    i = 0
    while i < len(children):
        layer = children[i]
        nxt = children[i + 1] if i + 1 < len(children) else None
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)):
            out += [fold_after(layer, nxt), nn.Identity()]
            i += 2
        else:
            out.append(layer)
            i += 1
    return nn.Sequential(*out)
