"""CPU stand-ins for our compiled CUDA extensions, written independently of the
pure-torch references: numpy, float64, straight from each kernel's contract
(the signatures in ``engine/ops/cuda/*.cpp`` and the formulas in the ``.cu``
comments). The references are zero-insertion + ``conv2d`` / torch activations
/ broadcasting; these are a per-tap gather / numpy formulas / explicit einsum,
so agreement between the two is evidence, not a tautology.

They let the CPU tests run the Python side of the fused ops (autograd
Functions, separable split, adjoint backward, bias gradient, higher-order
fall-backs) and the self-check (``engine.ops.dispatch``), injected through
``dispatch.kernel_loader('cpu', ...)``. Deliberately wrong variants (a slightly
scaled output, a cropped output, a gradient kernel that forgets the clamp, a
kernel that crashes, ...) show that the self-check catches them.

Each stand-in counts its calls (``calls``) so a test can tell whether the
dispatcher used it. Conventions as in the kernels: ``act`` is the integer id
of ``cuda/bias_act.cu``'s enum, ``clamp < 0`` means no clamp, an empty bias
means no bias.
"""
from __future__ import annotations

import numpy as np
import torch


def _numpy64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def _like(values: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values)).to(device=t.device, dtype=t.dtype)


# --------------------------------------------------------------------------- upfirdn2d


class Upfirdn2dKernel:
    """``upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain)``, 2D filters only.

    Output pixel (oy, ox) reads the zero-upsampled, padded grid at
    ``oy*down + t`` for filter tap t; only taps landing on a real sample
    (upsampled coordinate divisible by ``up``, inside the image) contribute;
    tap t meets filter entry ``f-1-t`` (a convolution) unless ``flip``."""

    def __init__(self) -> None:
        self.calls = 0

    def upfirdn2d(self, x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain):
        self.calls += 1
        if x.ndim != 4:
            raise RuntimeError("upfirdn2d: x must be [N, C, H, W]")
        if f.ndim != 2 or f.dtype != torch.float32:
            raise RuntimeError("upfirdn2d: the kernel takes a 2D float32 filter [fh, fw]")
        if min(upx, upy, downx, downy) < 1:
            raise RuntimeError("upfirdn2d: up/down must be >= 1")
        xs, fs = _numpy64(x), _numpy64(f)
        n, c, h, w = xs.shape
        fh, fw = fs.shape
        oh = (h * upy + py0 + py1 - fh) // downy + 1
        ow = (w * upx + px0 + px1 - fw) // downx + 1
        if oh < 1 or ow < 1:
            raise RuntimeError("upfirdn2d: output would be empty")
        out = np.zeros((n, c, oh, ow))  # [N, C, OH, OW]
        base_y = np.arange(oh) * downy - py0  # upsampled row of tap 0, per output row
        base_x = np.arange(ow) * downx - px0
        for ty in range(fh):
            uy = base_y + ty
            rows_ok = (uy >= 0) & (uy % upy == 0) & (uy // upy < h)
            iy = np.where(rows_ok, uy // upy, 0)
            fy = ty if flip else fh - 1 - ty
            for tx in range(fw):
                ux = base_x + tx
                cols_ok = (ux >= 0) & (ux % upx == 0) & (ux // upx < w)
                ix = np.where(cols_ok, ux // upx, 0)
                fx = tx if flip else fw - 1 - tx
                taps = xs[:, :, iy[:, None], ix[None, :]]  # [N, C, OH, OW]
                out += taps * (rows_ok[:, None] & cols_ok[None, :]) * fs[fy, fx]
        out = _like(self.finish(out * gain, x), x)
        # the kernel's contract: a channels-last input gives a channels-last output
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def finish(self, out: np.ndarray, x: torch.Tensor) -> np.ndarray:
        """Hook for the deliberately wrong variants; the correct kernel returns ``out``."""
        return out


class Upfirdn2dScaledOutput(Upfirdn2dKernel):
    """Every output 0.1% too large: slightly wrong, forward and gradient."""

    def finish(self, out, x):
        return out * 1.001


class Upfirdn2dCroppedOutput(Upfirdn2dKernel):
    """Drops the last output row (an off-by-one in the output size)."""

    def finish(self, out, x):
        return out[:, :, :-1]


class Upfirdn2dWrongInHalf(Upfirdn2dKernel):
    """Correct in float32/float64, garbage (as from a mis-typed load) in float16."""

    def finish(self, out, x):
        return out[..., ::-1] if x.dtype == torch.float16 else out


class Upfirdn2dCrashes(Upfirdn2dKernel):
    """Fails like a kernel with a bad memory access."""

    def upfirdn2d(self, *args):
        self.calls += 1
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


# --------------------------------------------------------------------------- bias_act

_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# Activation id (cuda/bias_act.cu enum) -> (value(z, alpha), derivative(z, alpha)).
ACTIVATION_FORMULAS = {
    1: (lambda z, a: z, lambda z, a: np.ones_like(z)),
    2: (lambda z, a: np.where(z > 0, z, 0.0), lambda z, a: np.where(z > 0, 1.0, 0.0)),
    3: (lambda z, a: np.where(z > 0, z, z * a), lambda z, a: np.where(z > 0, 1.0, a)),
    4: (lambda z, a: np.tanh(z), lambda z, a: 1 - np.tanh(z) ** 2),
    5: (lambda z, a: _sigmoid(z), lambda z, a: _sigmoid(z) * (1 - _sigmoid(z))),
    6: (lambda z, a: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
        lambda z, a: np.where(z > 0, 1.0, np.exp(np.minimum(z, 0)))),
    7: (lambda z, a: _SELU_SCALE * np.where(z > 0, z, _SELU_ALPHA * np.expm1(np.minimum(z, 0))),
        lambda z, a: _SELU_SCALE * np.where(z > 0, 1.0, _SELU_ALPHA * np.exp(np.minimum(z, 0)))),
    8: (lambda z, a: np.where(z > 20, z, np.log1p(np.exp(np.minimum(z, 20)))),
        lambda z, a: np.where(z > 20, 1.0, _sigmoid(z))),
    9: (lambda z, a: z * _sigmoid(z), lambda z, a: _sigmoid(z) + z * _sigmoid(z) * (1 - _sigmoid(z))),
}


class BiasActKernel:
    """``forward(x, b, dim, act, alpha, gain, clamp)`` and ``grad(dy, x, b, dim, act, alpha, gain, clamp)``:
    ``y = clamp(act(x + b) * gain)``, ``dx = dy * act'(x + b) * gain``, zero where clamped."""

    def __init__(self) -> None:
        self.calls = 0

    def _z(self, x, b, dim):
        if b.numel() > 0 and (b.ndim != 1 or b.shape[0] != x.shape[dim] or b.dtype != x.dtype):
            raise RuntimeError("bias_act: bias must be [x.shape[dim]] in x's dtype")
        z = _numpy64(x)
        if b.numel() > 0:
            z = z + _numpy64(b).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
        return z

    def forward(self, x, b, dim, act, alpha, gain, clamp):
        self.calls += 1
        value, _ = ACTIVATION_FORMULAS[act]
        y = value(self._z(x, b, dim), alpha) * gain
        if clamp >= 0:
            y = np.clip(y, -clamp, clamp)
        return _like(y, x)

    def grad(self, dy, x, b, dim, act, alpha, gain, clamp):
        self.calls += 1
        if dy.shape != x.shape:
            raise RuntimeError("bias_act: grad shape must match x")
        value, derivative = ACTIVATION_FORMULAS[act]
        z = self._z(x, b, dim)
        dx = _numpy64(dy) * derivative(z, alpha) * gain
        if clamp >= 0 and self.masks_clamped():
            dx = dx * (np.abs(value(z, alpha) * gain) <= clamp)
        return _like(dx, x)

    def masks_clamped(self) -> bool:
        return True


class BiasActGradientIgnoresClamp(BiasActKernel):
    """Right forward; the gradient kernel forgets that clamped outputs have zero gradient."""

    def masks_clamped(self) -> bool:
        return False


# --------------------------------------------------------------------------- modconv


class ModconvKernel:
    """``modulate_weights(weight, styles, demodulate, eps)``, float32 only:
    ``out[n,o,i,k] = W[o,i,k] s[n,i] d[n,o]``, ``d = rsqrt(sum_{i,k} (W s)^2 + eps)`` (1 without demod)."""

    def __init__(self) -> None:
        self.calls = 0

    def modulate_weights(self, weight, styles, demodulate, eps):
        self.calls += 1
        if weight.dtype != torch.float32 or styles.dtype != torch.float32:
            raise RuntimeError("modulate_weights: float32 only")
        if weight.ndim != 4 or styles.ndim != 2 or styles.shape[1] != weight.shape[1]:
            raise RuntimeError("modulate_weights: weight must be [O, I, kh, kw] and styles [N, I]")
        out = np.einsum("oihw,ni->noihw", _numpy64(weight), _numpy64(styles))  # [N, O, I, kh, kw]
        if demodulate or self.always_demodulates():
            out = out / np.sqrt((out ** 2).sum(axis=(2, 3, 4), keepdims=True) + eps)
        return _like(out, weight)

    def always_demodulates(self) -> bool:
        return False


class ModconvAlwaysDemodulates(ModconvKernel):
    """Ignores ``demodulate=False`` (the ToRGB layers')."""

    def always_demodulates(self) -> bool:
        return True


# --------------------------------------------------------------------------- triplane


class TriplaneKernel:
    """``triplane_mean_forward(planes [N, 3, H, W, C], grid [N, 3, M, 2]) -> [N, M, C]`` and
    ``triplane_mean_backward(dy [N, M, C], grid, H, W) -> [N, 3, H, W, C]``, float32 in and out.

    Plane coordinate g in [-1, 1] is pixel ``((g + 1) * size - 1) / 2``; the four texels around it
    are weighted bilinearly, texels outside the plane count as zero; the three planes' samples are
    averaged. The backward pass scatters ``dy / 3`` with the same weights."""

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def _corners(grid: np.ndarray, h: int, w: int):
        """Per plane k, point: four (y, x, weight, inside) corner arrays."""
        px = ((grid[..., 0] + 1) * w - 1) / 2  # [N, 3, M]
        py = ((grid[..., 1] + 1) * h - 1) / 2
        x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
        fx, fy = px - x0, py - y0
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                y, x = y0 + dy, x0 + dx
                inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
                yield np.clip(y, 0, h - 1), np.clip(x, 0, w - 1), wy * wx, inside

    def triplane_mean_forward(self, planes, grid):
        self.calls += 1
        if planes.ndim != 5 or planes.shape[1] != 3 or planes.dtype != torch.float32:
            raise RuntimeError("triplane_mean: planes must be a float32 [N, 3, H, W, C] tensor")
        ps, gs = _numpy64(planes), _numpy64(grid)
        n, _, h, w, c = ps.shape
        out = np.zeros((n, gs.shape[2], c))
        nn, kk = np.meshgrid(np.arange(n), np.arange(3), indexing="ij")  # [N, 3]
        for y, x, weight, inside in self._corners(gs, h, w):
            texels = ps[nn[..., None], kk[..., None], y, x]  # [N, 3, M, C]
            out += (texels * (weight * inside)[..., None]).sum(axis=1)
        return _like(out / 3, planes)

    def triplane_mean_backward(self, dy, grid, h, w):
        self.calls += 1
        ds, gs = _numpy64(dy), _numpy64(grid)
        n, m, c = ds.shape
        grad = np.zeros((n, 3, h, w, c))
        for y, x, weight, inside in self._corners(gs, h, w):
            for b in range(n):
                for k in range(3):
                    share = ds[b] / 3 * (weight[b, k] * inside[b, k])[:, None]  # [M, C]
                    np.add.at(grad[b, k], (y[b, k], x[b, k]), share)
        return _like(grad, dy)


class TriplaneForgetsTheMean(TriplaneKernel):
    """Sums the three planes' samples instead of averaging them."""

    def triplane_mean_forward(self, planes, grid):
        return super().triplane_mean_forward(planes, grid) * 3


# --------------------------------------------------------------------------- lpips_layer


class LPIPSLayerKernel:
    """``lpips_layer_forward(a, b, weight [C] float32, thread_per_pixel) -> terms [N, H*W] float32`` and
    ``lpips_layer_backward(a, b, weight, d_terms, need_a, need_b, thread_per_pixel) -> [grad_a or None,
    grad_b or None]`` (the form, a thread or a warp per pixel, changes nothing in the results).

    Per pixel: u = a / (|a| + eps), v = b / (|b| + eps) over the C channels, term = sum_c w_c (u_c - v_c)^2;
    a ``b`` of one image serves every image of ``a``. The gradients are the closed forms in the ``.cu``
    comment (d_c = 2 w_c (u_c - v_c) s; the second part taken as zero where a norm is zero), written
    with numpy einsums, in the features' dtype and layout."""

    eps = 1e-10

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def _check(a, b, weight):
        if a.ndim != 4 or b.ndim != 4 or b.shape[1:] != a.shape[1:] or b.shape[0] not in (1, a.shape[0]):
            raise RuntimeError("lpips_layer: a must be [N, C, H, W] and b [N or 1, C, H, W]")
        if a.dtype != b.dtype or weight.dtype != torch.float32 or tuple(weight.shape) != (a.shape[1],):
            raise RuntimeError("lpips_layer: a and b must have one dtype, weight a float32 [C]")

    def _parts(self, a, b, weight):
        av, bv, w = _numpy64(a), np.broadcast_to(_numpy64(b), a.shape), _numpy64(weight)
        na = np.sqrt(np.einsum("nchw,nchw->nhw", av, av))[:, None]  # [N, 1, H, W]
        nb = np.sqrt(np.einsum("nchw,nchw->nhw", bv, bv))[:, None]
        diff = av / (na + self.eps) - bv / (nb + self.eps)
        return av, bv, w[None, :, None, None], na, nb, diff

    def lpips_layer_forward(self, a, b, weight, thread_per_pixel):
        self.calls += 1
        self._check(a, b, weight)
        _, _, w, _, _, diff = self._parts(a, b, weight)
        terms = np.einsum("nchw->nhw", w * diff * diff).reshape(a.shape[0], -1)
        return torch.from_numpy(np.ascontiguousarray(terms)).to(device=a.device, dtype=torch.float32)

    def _second_part(self, features, norm, d):
        dot = np.einsum("nchw,nchw->nhw", d, features)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(norm > 0, dot / (norm * (norm + self.eps) ** 2), 0.0)
        return features * factor

    def lpips_layer_backward(self, a, b, weight, d_terms, need_a, need_b, thread_per_pixel):
        self.calls += 1
        self._check(a, b, weight)
        av, bv, w, na, nb, diff = self._parts(a, b, weight)
        s = _numpy64(d_terms).reshape(a.shape[0], 1, a.shape[2], a.shape[3])
        d = 2 * w * diff * s
        grad_a = d / (na + self.eps) - self._second_part(av, na, d) if need_a else None
        grad_b = -d / (nb + self.eps) + self._second_part(bv, nb, d) if need_b else None

        def laid_out(values, like):
            if values is None:
                return None
            return torch.empty_like(like).copy_(torch.from_numpy(np.ascontiguousarray(values)))
        return [laid_out(grad_a, a), laid_out(grad_b, b)]


class LPIPSLayerForgetsTheNormGradient(LPIPSLayerKernel):
    """Differentiates as if the norms were constants: the gradient's second part is missing."""

    def _second_part(self, features, norm, d):
        return np.zeros_like(features)


def loader(upfirdn2d=None, bias_act=None, modconv=None, triplane=None, lpips_layer=None):
    """A ``dispatch.kernel_loader`` function serving the given stand-ins (correct ones by default)."""
    kernels = {"upfirdn2d": upfirdn2d or Upfirdn2dKernel(), "bias_act": bias_act or BiasActKernel(),
               "modconv": modconv or ModconvKernel(), "triplane": triplane or TriplaneKernel(),
               "lpips_layer": lpips_layer or LPIPSLayerKernel()}
    return lambda extension: kernels[extension]
