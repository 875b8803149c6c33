"""StyleGAN2 mapping network (z, c -> W or W+) and the latent helpers: truncation, style mixing.

Shapes: z ``[N, z_dim]``, c ``[N, c_dim]`` (None when c_dim == 0), W
``[N, w_dim]``, W+ ``[N, num_ws, w_dim]``. ``w_avg`` ``[w_dim]`` is a
buffer, changed only when a caller asks for ``update_emas=True`` (training).
"""
from __future__ import annotations

import torch

from engine.nets.stylegan2.layers import FullyConnectedLayer, assert_shape, normalize_2nd_moment


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
            assert_shape(z, [None, self.z_dim], "mapping z")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"MappingNetwork: a conditioning label c [N, {self.c_dim}] is required")
            assert_shape(c, [None, self.c_dim], "mapping c")
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


