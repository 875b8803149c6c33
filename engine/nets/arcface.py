"""IR-SE50 ArcFace (InsightFace ``Backbone(112, 50, 'ir_se')``) and the e4e/pSp ID loss.

Conventions
- :class:`ArcFaceBackbone` takes faces [B,3,112,112] float in [-1, 1] and returns
  L2-normalised embeddings [B,512] (unit length along dim 1).
- :func:`id_crop` turns a 256x256 FFHQ-aligned image (larger ones are first
  average-pooled to 256, as e4e's ID loss does) into the ArcFace input: rows
  35:223, columns 32:220, then adaptive average pooling to 112x112.
- :func:`id_loss` is e4e's ID loss: mean over the batch of 1 − ⟨e(y_hat), e(y)⟩,
  with the target embedding detached.
- State-dict keys equal ``model_ir_se50.pth`` (``input_layer.*``, ``body.*``,
  ``output_layer.{0,3,4}.*``); the converter (:mod:`engine.weights.convert`)
  infers the config from them and saves a pretrained folder. ``output_layer`` = BatchNorm2d(512), Dropout,
  Flatten, Linear(512·7·7, 512), BatchNorm1d(512); the network runs in eval
  mode, so Dropout is the identity and BatchNorm uses running statistics.
- :class:`FoldedArcFace` is a loaded backbone with the batch norms that follow a
  convolution or sit beside the output's linear layer folded in (30 of 54), and
  the 20 shortcuts that are 1x1 max pools of stride 1 (the identity) dropped:
  the same embedding up to rounding, without those layers' kernels (on CUDA a
  folded convolution's bias is added in a kernel of its own, in place of the
  batch norm's forward). The identity loss uses it; it is never saved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from engine.nets.batchnorm_fold import fold_after, fold_before_linear, fold_sequential
from engine.nets.irse import frozen_unit, make_body, make_input_layer
from engine.weights.pretrained import PretrainedConfig, PretrainedMixin

CROP_ROWS = (35, 223)
CROP_COLS = (32, 220)
ARCFACE_SIZE = 112


@dataclass(frozen=True)
class ArcFaceConfig(PretrainedConfig):
    input_size: int = 112  # 112 or 224
    num_layers: int = 50
    mode: str = "ir_se"
    drop_ratio: float = 0.6  # as in e4e's IDLoss; only matters in training mode
    affine: bool = True


class ArcFaceBackbone(PretrainedMixin, nn.Module):
    config_class = ArcFaceConfig

    def __init__(self, config: ArcFaceConfig = ArcFaceConfig()) -> None:
        self._check_config(config)
        super().__init__()
        if config.input_size not in (112, 224):
            raise ValueError(f"ArcFace: input_size must be 112 or 224, got {config.input_size}")
        self.config = config
        self.input_layer = make_input_layer()
        side = 7 if config.input_size == 112 else 14
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(config.drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * side * side, 512),
            nn.BatchNorm1d(512, affine=config.affine),
        )
        self.body = make_body(config.num_layers, config.mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,S,S] in [-1,1], S = input_size → embedding [B,512], unit L2 norm."""
        s = self.config.input_size
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (s, s):
            raise ValueError(f"ArcFace: expected faces [B,3,{s},{s}], got {tuple(x.shape)}")
        x = self.input_layer(x)  # [B,64,S,S]
        x = self.body(x)  # [B,512,S/16,S/16]
        x = self.output_layer(x)  # [B,512]
        return x / torch.norm(x, 2, 1, keepdim=True)


class FoldedArcFace(nn.Module):
    """An eval-mode :class:`ArcFaceBackbone` with its foldable batch norms folded
    (``engine.nets.batchnorm_fold``): the stem's, each residual unit's last and its shortcut's,
    and the output layer's two (BatchNorm2d, Dropout, Flatten, Linear, BatchNorm1d become one
    Flatten and Linear); and its identity shortcuts dropped (``engine.nets.irse.frozen_unit``).
    PTI runs ArcFace forward and backward at every step with frozen weights, so those maps never
    change. The state dict is not ``model_ir_se50.pth``'s: made from a loaded backbone, never
    saved."""

    def __init__(self, net: ArcFaceBackbone) -> None:
        if net.training:
            raise ValueError("ArcFace: fold the batch norms of an eval-mode network (running statistics)")
        super().__init__()
        self.config = net.config
        self.input_layer = fold_sequential(net.input_layer)
        self.body = nn.Sequential(*[frozen_unit(unit) for unit in net.body])
        bn_in, _dropout, flatten, linear, bn_out = net.output_layer
        self.output_layer = nn.Sequential(flatten, fold_after(fold_before_linear(bn_in, linear), bn_out))
        self.eval()

    forward = ArcFaceBackbone.forward


def id_crop(images: torch.Tensor) -> torch.Tensor:
    """FFHQ-aligned images [B,3,H,W] (H=W ≥ 256) in [-1,1] → ArcFace input [B,3,112,112]."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.shape[2] < 256:
        raise ValueError(f"ID crop: expected square images [B,3,S,S] with S >= 256, got {tuple(images.shape)}")
    if images.shape[2] != 256:
        images = functional.adaptive_avg_pool2d(images, (256, 256))  # [B,3,256,256]
    face = images[:, :, CROP_ROWS[0]:CROP_ROWS[1], CROP_COLS[0]:CROP_COLS[1]]  # [B,3,188,188]
    return functional.adaptive_avg_pool2d(face, (ARCFACE_SIZE, ARCFACE_SIZE))  # [B,3,112,112]


def embed(net: ArcFaceBackbone, images: torch.Tensor) -> torch.Tensor:
    """Embeddings [B,512] of FFHQ-aligned images through the standard ID crop."""
    return net(id_crop(images))


def id_loss(net: ArcFaceBackbone, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Scalar ID loss: mean(1 − cos(e(y_hat), e(y))); gradients flow into y_hat only."""
    if y_hat.shape[0] != y.shape[0]:
        raise ValueError(f"ID loss: batch sizes differ ({y_hat.shape[0]} vs {y.shape[0]})")
    e_y = embed(net, y).detach()
    e_hat = embed(net, y_hat)
    return (1.0 - (e_hat * e_y).sum(dim=1)).mean()
