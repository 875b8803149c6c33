"""IR-SE residual body shared by the e4e encoder and the IR-SE50 ArcFace network.

This is the "improved residual" unit with squeeze-and-excitation used by the
InsightFace IR-SE family, in the layout of pSp / e4e (``models/encoders/helpers.py``
there), so official state dicts load key-for-key:

- ``shortcut_layer``: ``MaxPool2d(1, stride)`` when the width is unchanged, else
  ``Sequential(Conv2d(in, out, 1, stride, bias=False), BatchNorm2d(out))``;
- ``res_layer``: ``Sequential(BatchNorm2d(in), Conv2d(in, out, 3, 1, 1, bias=False),
  PReLU(out), Conv2d(out, out, 3, stride, 1, bias=False), BatchNorm2d(out), SE(out, 16))``;
- ``SE``: global average pool, ``fc1`` 1x1 conv out→out/16 (no bias), ReLU,
  ``fc2`` 1x1 conv back (no bias), sigmoid, channel-wise gating.

Tensors are NCHW float. Stages for 50/100/152 layers follow ``get_blocks``: four
stages of widths 64, 128, 256, 512; every stage starts with a stride-2 unit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.nets.batchnorm_fold import fold_sequential

# units per stage for each supported depth (IR / IR-SE networks)
STAGE_UNITS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class UnitSpec:
    """One residual unit: input width, output width, stride of its second conv."""

    in_channels: int
    out_channels: int
    stride: int


def unit_specs(num_layers: int) -> list[UnitSpec]:
    """The flat list of residual units of an IR(-SE) body with ``num_layers`` layers."""
    if num_layers not in STAGE_UNITS:
        raise ValueError(f"IR-SE body: num_layers must be one of {sorted(STAGE_UNITS)}, got {num_layers}")
    specs: list[UnitSpec] = []
    in_c = 64
    for width, n in zip(STAGE_WIDTHS, STAGE_UNITS[num_layers]):
        specs.append(UnitSpec(in_c, width, 2))
        specs.extend(UnitSpec(width, width, 1) for _ in range(n - 1))
        in_c = width
    return specs


class SqueezeExcite(nn.Module):
    """Channel gating: x * sigmoid(fc2(relu(fc1(mean_hw(x)))))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.avg_pool(x)  # [B,C,1,1]
        g = self.sigmoid(self.fc2(self.relu(self.fc1(g))))
        return x * g


class BottleneckIRSE(nn.Module):
    """IR-SE residual unit (pre-activation BN, PReLU, SE gate)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_se: bool = True) -> None:
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, (1, 1), stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if use_se:
            layers.append(SqueezeExcite(out_channels, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def frozen_unit(unit: BottleneckIRSE) -> BottleneckIRSE:
    """A copy of an eval-mode ``unit`` computing the same map in fewer kernels, for a network whose
    weights stay fixed: the batch norm after each of its convolutions folded into it
    (``engine.nets.batchnorm_fold``: the residual branch's last one and, where the width changes,
    the shortcut's; the first, before a padded convolution, stays), and a shortcut that is a 1x1
    max pool of stride 1, the identity, dropped. The other layers are shared with ``unit``."""
    folded = BottleneckIRSE.__new__(BottleneckIRSE)
    nn.Module.__init__(folded)
    shortcut = unit.shortcut_layer
    if isinstance(shortcut, nn.Sequential):
        shortcut = fold_sequential(shortcut)
    elif isinstance(shortcut, nn.MaxPool2d) and {shortcut.kernel_size, shortcut.stride} <= {1, (1, 1)}:
        shortcut = nn.Identity()  # a 1x1 max pool of stride 1
    folded.shortcut_layer = shortcut
    folded.res_layer = fold_sequential(unit.res_layer)
    return folded.train(unit.training)


def make_input_layer() -> nn.Sequential:
    """Stem: 3x3 conv 3→64 (no bias), BatchNorm, PReLU; keeps the resolution."""
    return nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))


def make_body(num_layers: int, mode: str) -> nn.Sequential:
    """The residual body as one ``Sequential`` (keys ``body.<i>.…``)."""
    if mode not in ("ir", "ir_se"):
        raise ValueError(f"IR-SE body: mode must be 'ir' or 'ir_se', got {mode!r}")
    return nn.Sequential(
        *[BottleneckIRSE(s.in_channels, s.out_channels, s.stride, use_se=mode == "ir_se") for s in unit_specs(num_layers)]
    )


def stage_end_indices(num_layers: int) -> tuple[int, ...]:
    """Index (in ``body``) of the last unit of each of the four stages, e.g. (2, 6, 20, 23) for 50."""
    ends, acc = [], -1
    for n in STAGE_UNITS[num_layers]:
        acc += n
        ends.append(acc)
    return tuple(ends)
