"""Network weights as plain dictionaries.

A long-lived engine keeps each pretrained network loaded once and never
mutates it. A per-style or per-user variant of a network is a dictionary
``{parameter name: tensor}`` that is applied with
``torch.func.functional_call`` for one forward pass; the module's own weights
stay the pretrained ones. Variants are stored compactly as fp16 *deltas*
against the base weights (only the tensors that changed).

Conventions: names are ``module.named_parameters()`` (or buffer) names; a
params dict may hold a subset, the rest falls back to the module's own
tensors. A name the module does not have is an error
(:class:`UnknownParameterError`), never silently skipped: ``functional_call``
with ``strict=False`` would ignore it and run the base weight instead, so a
renamed layer or a converter bug would give a plausible but wrong avatar.
The set of a module's names is computed once per module (the networks are
loaded once and never restructured), so the check is a set comparison per
call.
"""
from __future__ import annotations

import weakref
from collections.abc import Set
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

Params = dict[str, torch.Tensor]


class UnknownParameterError(KeyError):
    """A params dict names tensors its module does not have.

    A KeyError (a name lookup failed), with a readable message rather than
    KeyError's quoted repr."""

    def __init__(self, module: nn.Module, unknown: Iterable[str]) -> None:
        self.module_type = type(module).__name__
        self.unknown = sorted(unknown)
        shown = ", ".join(self.unknown[:5]) + (f" (and {len(self.unknown) - 5} more)" if len(self.unknown) > 5 else "")
        super().__init__(f"{self.module_type} has no parameter or buffer named {shown}")

    def __str__(self) -> str:
        return str(self.args[0])


# module -> the names functional_call accepts for it; weak, so a dropped network is not kept alive.
_NAMES: weakref.WeakKeyDictionary[nn.Module, frozenset[str]] = weakref.WeakKeyDictionary()


def _tensor_names(module: nn.Module) -> frozenset[str]:
    # remove_duplicate=False: a tied tensor may be addressed by any of its names.
    return frozenset(name for name, _ in module.named_parameters(remove_duplicate=False)) | frozenset(
        name for name, _ in module.named_buffers(remove_duplicate=False))


def check_names(module: nn.Module, names: Iterable[str]) -> None:
    """Raise :class:`UnknownParameterError` for any of ``names`` that ``module`` lacks."""
    wanted = names if isinstance(names, Set) else set(names)  # dict keys are a Set already
    known = _NAMES.get(module)
    if known is None or not wanted <= known:
        known = _NAMES[module] = _tensor_names(module)  # first use, or the module changed since
        unknown = wanted - known
        if unknown:
            raise UnknownParameterError(module, unknown)


def trainable_copy(module: nn.Module, prefix: str = "", include: tuple[str, ...] = ()) -> Params:
    """Detached float32 copies of the parameters (optionally only names that
    start with one of ``include``), with ``requires_grad`` set, for an
    optimiser to own."""
    out: Params = {}
    for name, p in module.named_parameters(prefix=prefix.rstrip(".") if prefix else ""):
        if include and not name.startswith(include):
            continue
        out[name] = p.detach().clone().float().requires_grad_(True)
    return out


def call(module: nn.Module, params: Mapping[str, torch.Tensor] | None, *args, **kwargs):
    """Run ``module`` with ``params`` standing in for its own tensors.

    Raises :class:`UnknownParameterError` when ``params`` names a tensor the module lacks."""
    if not params:
        return module(*args, **kwargs)
    check_names(module, params.keys())
    # strict=False allows a partial dict (a variant holds only what it changed); names were checked above.
    return torch.func.functional_call(module, dict(params), args, kwargs, strict=False)


class _Using(nn.Module):
    """Lets ``functional_call`` reach ``fn(module, ...)`` (a method other than ``forward``, or a
    function that drives the module); the module's tensors are named ``m.<name>`` here."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.m = module
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(self.m, *args, **kwargs)


def call_with(module: nn.Module, params: Mapping[str, torch.Tensor] | None, fn: Callable[..., Any], *args, **kwargs):
    """``fn(module, *args, **kwargs)`` with ``params`` standing in for the module's tensors.

    ``fn`` is any function of the module, e.g. an unbound method
    (``TriPlaneGenerator.planes``). Raises :class:`UnknownParameterError`
    (naming ``module``'s type, not the wrapper's) for a name the module lacks."""
    if not params:
        return fn(module, *args, **kwargs)
    check_names(module, params.keys())
    return torch.func.functional_call(_Using(module, fn), {f"m.{k}": v for k, v in params.items()}, args, kwargs,
                                      strict=False)


def compute_delta(tuned: Mapping[str, torch.Tensor], base: nn.Module, dtype=torch.float16,
                  device: torch.device | str | None = "cpu") -> Params:
    """``tuned - base`` for every tensor that changed, in ``dtype``, on ``device`` (None: where it is)."""
    own = dict(base.named_parameters())
    diffs = {name: t.detach().float() - own[name].detach().float() for name, t in tuned.items()}
    if not diffs:
        return {}
    # Which tensors changed, read from the device in one transfer rather than one wait per tensor.
    changed = torch.stack([d.ne(0).any() for d in diffs.values()]).tolist()
    return {name: d.to(dtype).to(device or d.device).contiguous()
            for (name, d), keep in zip(diffs.items(), changed) if keep}


def apply_delta(base: nn.Module, delta: Mapping[str, torch.Tensor], device=None) -> Params:
    """Materialise a variant from the base weights and a stored delta."""
    own = dict(base.named_parameters())
    unknown = set(delta) - set(own)
    if unknown:
        raise UnknownParameterError(base, unknown)
    out: Params = {}
    for name, d in delta.items():
        p = own[name]
        out[name] = (p.detach().float() + d.to(p.device, torch.float32)).to(device or p.device)
    return out


def interpolate(base: nn.Module, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], s: float) -> Params:
    """Weights between variant ``a`` (s = 0) and variant ``b`` (s = 1).

    ``torch.lerp`` evaluates ``end - (end - start) * (1 - w)`` for w >= 0.5,
    so s = 1 reproduces ``b`` bit for bit, and s = 0 returns ``a`` unchanged.
    A tensor present in only one variant is taken from the base network for
    the other.
    """
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"strength must be within [0, 1], got {s}")
    own = dict(base.named_parameters())
    unknown = (a.keys() | b.keys()) - own.keys()
    if unknown:
        raise UnknownParameterError(base, unknown)
    out: Params = {}
    for name in set(a) | set(b):
        start = a.get(name, own[name].detach())
        end = b.get(name, own[name].detach())
        if s == 0.0:
            out[name] = start
        elif s == 1.0:
            out[name] = end
        else:
            out[name] = torch.lerp(start.float(), end.float(), s)
    return out
