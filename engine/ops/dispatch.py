"""Choosing, per call, between an op's fused kernel and its pure-torch reference.

A fused kernel is trusted only after it has reproduced its reference: the
first time a process wants a kernel for a (device, dtype), it runs the op's
*probe* (tiny deterministic inputs, the forward AND the gradient through the
op's autograd Function) and compares every result with the reference computed
in float64 from the same (rounded) inputs. A mismatch, or any exception while
probing, warns once (naming the op, the dtype and the error or exception) and
the op runs its reference for that device and dtype for the rest of the process.

Conventions
-----------
* ``impl``: ``'ref'`` always runs the reference; ``'auto'`` runs the fused
  kernel when one loads and passes its self-check, else the reference;
  ``'cuda'`` insists on the fused kernel and raises
  :class:`FusedKernelUnavailable` (with the reason) when it cannot be used,
  never silently running a kernel that failed its self-check.
* A kernel is a module with the functions of the compiled extension
  (``cuda/<extension>.cpp`` states each signature). ``KERNEL_LOADERS`` maps a
  device type to the function that loads the module for an extension name;
  only ``'cuda'`` has one (``_build.build`` compiles or imports our kernels),
  so tensors on other devices run the reference. :func:`kernel_loader` installs
  another loader for a block: the seam for other backends and for tests that
  inject a kernel (a correct or a deliberately wrong one) on the CPU.
* Self-check error = ``max|fused - reference| / max(1, max|reference|)`` per
  probe result; ``SELF_CHECK_TOLERANCE`` is the bound per dtype.
* Decisions are cached per (op name, device, dtype); a build failure is cached
  (and warned about) once per (device type, extension).
* Under ``torch.compile`` nothing is decided while tracing (this module's lock
  and dicts are not traceable). ``upfirdn2d`` and ``triplane_mean``, whose
  kernels do what the compiler cannot (a shared-memory tiled filter; warp-wide
  tri-plane reads and atomics), become ``torch.library`` custom ops there
  (``emoji3d::*``): opaque nodes of the compiled graph that decide as above when
  they run. The other ops (``bias_act``, ``modulate_weights``, ``lpips_layer``)
  are element-wise work and reductions that the compiler fuses with their
  neighbours itself: :func:`fused_kernel` gives their reference to trace.
"""
from __future__ import annotations

import contextlib
import math
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterator

import torch

from engine.ops import _build

IMPLS = ("ref", "cuda", "auto")

# Bound on the self-check error (see module docstring), per dtype a kernel may take.
# float64: the kernels take alpha/gain/clamp as float32 scalars, so even double
# results carry float32-size rounding of those parameters (~1e-7 relative).
# float32: float accumulation over a few filter taps / a weight row, ~1e-6.
# float16: the result itself is rounded to 11 bits (~5e-4 relative).
# bfloat16 (the bf16 autocast of the optimisation stages): rounded to 8 bits (~4e-3 relative).
SELF_CHECK_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-6,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}

# (label, fused result, reference result) triples: what a probe returns.
ProbeResults = list[tuple[str, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FusedOp:
    """What dispatch needs to know about one op that has a fused kernel.

    ``probe(kernel, device, dtype)`` runs the op through its fused path with
    ``kernel`` on tiny inputs made from its own ``torch.Generator`` (cast to
    ``dtype``, on ``device``) and returns, for the forward and every gradient,
    the fused result and the reference result in float64 from the same inputs.
    """

    name: str  # the op's name in messages and in ``engine.ops.implementations``
    extension: str  # key of ``_build.EXTENSIONS``: the compiled module the kernel lives in
    dtypes: tuple[torch.dtype, ...]  # the dtypes the kernel is compiled for
    probe: Callable[[ModuleType, torch.device, torch.dtype], ProbeResults]

    def __post_init__(self) -> None:
        unchecked = [d for d in self.dtypes if d not in SELF_CHECK_TOLERANCE]
        if unchecked:
            raise ValueError(f"{self.name}: no self-check tolerance for {unchecked}")


def probe_normal(seed: int) -> Callable[..., torch.Tensor]:
    """``draw(*shape)``: standard-normal float32 tensors for a probe, the same in every process.

    Its own generator (the caller's RNG state is untouched) on the CPU, whatever
    the default device; the probe moves the tensors to the device under test."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return lambda *shape: torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32)


def channels_last(t: torch.Tensor) -> bool:
    """Whether ``t`` is a channels-last [N, C, H, W] tensor that is not also contiguous (one with a
    single channel or pixel is both; the kernels serve it as NCHW)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is contiguous or channels-last, else a contiguous copy: what the kernels read."""
    return t if t.is_contiguous() or channels_last(t) else t.contiguous()


def compare_with_reference(label: str, fused: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                           inputs: list[torch.Tensor], names: tuple[str, ...], device: torch.device,
                           dtype: torch.dtype, draw: Callable[..., torch.Tensor]) -> ProbeResults:
    """One probe case: ``fused(*inputs)`` with the inputs cast to ``dtype`` on ``device``, and
    ``reference(*inputs)`` on the same (rounded) values in float64; the forward results, then
    the gradient w.r.t. each input (named by ``names``) from one random output gradient drawn
    with ``draw``. A forward of the wrong shape is returned alone (nothing to differentiate)."""
    inputs_fused = [t.to(device=device, dtype=dtype, copy=True).requires_grad_(True) for t in inputs]
    inputs_ref = [t.detach().double().requires_grad_(True) for t in inputs_fused]
    out_fused, out_ref = fused(*inputs_fused), reference(*inputs_ref)
    results: ProbeResults = [(f"forward {label}", out_fused, out_ref)]
    if out_fused.shape != out_ref.shape:
        return results
    d_out = draw(*out_ref.shape).to(device=device, dtype=dtype)
    if channels_last(out_fused):  # the output gradient in the output's layout, as a channels-last network hands it
        d_out = d_out.contiguous(memory_format=torch.channels_last)
    grads_fused = torch.autograd.grad(out_fused, inputs_fused, d_out)
    grads_ref = torch.autograd.grad(out_ref, inputs_ref, d_out.double())
    for name, grad_fused, grad_ref in zip(names, grads_fused, grads_ref):
        results.append((f"gradient {label}" + (f" w.r.t. {name}" if len(names) > 1 else ""), grad_fused, grad_ref))
    return results


@dataclass(frozen=True)
class Decision:
    """How an op runs on one (device, dtype): ``kernel`` None means the reference."""

    kernel: ModuleType | None
    summary: str  # "fused CUDA kernel" / "pure-torch reference"
    reason: str  # why, e.g. "self-check passed, float32, max error 2.4e-07 <= 1e-04"

    @property
    def description(self) -> str:
        return f"{self.summary} ({self.reason})"


class FusedKernelUnavailable(RuntimeError):
    """``impl='cuda'`` was asked for but the fused kernel cannot (or must not) be used."""


def _load_cuda_extension(extension: str) -> ModuleType:
    if not torch.cuda.is_available():
        raise _build.OpsBuildError("no CUDA device visible")
    return _build.build(extension)


REFERENCE = "pure-torch reference"

KERNEL_LOADERS: dict[str, Callable[[str], ModuleType]] = {"cuda": _load_cuda_extension}

_lock = threading.RLock()
_decisions: dict[tuple[str, torch.device, torch.dtype], Decision] = {}
_load_results: dict[tuple[str, str], ModuleType | str] = {}  # (device type, extension) -> module or failure reason


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def concrete_device(device: torch.device | str) -> torch.device:
    """``device`` with its index filled in (``'cuda'`` -> ``cuda:<current>``), as tensors report it."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


def fused_kernel(op: FusedOp, impl: str, device: torch.device, dtype: torch.dtype) -> ModuleType | None:
    """The kernel module to run ``op`` with on ``device``/``dtype``, or None for the reference.

    Called on every op call: after the first call per (op, device, dtype) it is one dict look-up.
    Under ``torch.compile`` it is None (the reference is traced, see the module docstring)."""
    if impl == "ref":
        return None
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if torch.compiler.is_compiling():
        if impl == "cuda":
            raise FusedKernelUnavailable(f"{op.name}: impl='cuda' under torch.compile, which traces the reference "
                                         "and fuses it itself")
        return None
    decision = _decisions.get((op.name, device, dtype)) or decide(op, device, dtype)
    if decision.kernel is None and impl == "cuda":
        raise FusedKernelUnavailable(f"{op.name}: impl='cuda' cannot use the fused kernel for {dtype_name(dtype)} "
                                     f"on {device}: {decision.reason}")
    return decision.kernel


def custom_op_traced(impl: str, device: torch.device) -> bool:
    """Under ``torch.compile``: whether an op that has a custom op for its kernel traces that custom op
    (which decides when it runs), rather than its reference: ``impl`` allows a kernel, and tensors of
    ``device``'s type have kernels to load."""
    return impl != "ref" and device.type in KERNEL_LOADERS


def decide(op: FusedOp, device: torch.device, dtype: torch.dtype) -> Decision:
    """Load and self-check ``op``'s kernel for ``device``/``dtype`` once; the cached decision after that."""
    device = concrete_device(device)
    key = (op.name, device, dtype)
    with _lock:
        if key in _decisions:
            return _decisions[key]
        loader = KERNEL_LOADERS.get(device.type)
        if loader is None:
            decision = Decision(None, REFERENCE, f"no fused kernels for {device.type} tensors")
        elif dtype not in op.dtypes:
            decision = Decision(None, f"{REFERENCE} for {dtype_name(dtype)}", "the fused kernel takes "
                                f"{', '.join(dtype_name(d) for d in op.dtypes)} only")
        else:
            kernel = _load(loader, device.type, op)
            if isinstance(kernel, str):
                decision = Decision(None, REFERENCE, f"the fused kernel did not load: {kernel}")
            else:
                decision = _self_checked(op, kernel, device, dtype)
        _decisions[key] = decision
        return decision


def _load(loader: Callable[[str], ModuleType], device_type: str, op: FusedOp) -> ModuleType | str:
    """The loaded kernel module, or the reason it did not load (warned about once per extension)."""
    key = (device_type, op.extension)
    if key not in _load_results:
        try:
            _load_results[key] = loader(op.extension)
        except Exception as exc:  # noqa: BLE001 - any build/import failure means: run the reference
            reason = _exception_text(exc)
            _load_results[key] = reason
            warnings.warn(f"emoji3d: could not load the {device_type.upper()} extension '{op.extension}' of "
                          f"{op.name} ({reason}); falling back to the slower pure-torch reference",
                          RuntimeWarning, stacklevel=5)
    return _load_results[key]


def _exception_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (compiler logs can be long)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def self_check(op: FusedOp, kernel: ModuleType, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Run ``op``'s probe with ``kernel``: (passed, what was found). Never raises for a bad kernel."""
    tolerance = SELF_CHECK_TOLERANCE[dtype]
    try:
        # The probe builds its own graph whatever the caller's mode: first use may be under
        # no_grad/inference_mode (gradients are part of the check) or autocast (which would
        # change the dtypes under test).
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            results = op.probe(kernel, device, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # an asynchronous kernel fault surfaces here, not in a later op
    except Exception as exc:  # noqa: BLE001 - a crashing kernel is a failed self-check
        return False, f"probe raised {_exception_text(exc)}"
    worst = 0.0
    for label, fused, reference in results:
        if fused.shape != reference.shape:
            return False, f"{label}: shape {tuple(fused.shape)}, reference {tuple(reference.shape)}"
        error = relative_error(fused, reference)
        if not error <= tolerance:  # also catches NaN
            return False, f"{label}: max error {error:.3g} > tolerance {tolerance:.0e}"
        worst = max(worst, error)
    return True, f"max error {worst:.1e} <= {tolerance:.0e}"


def relative_error(fused: torch.Tensor, reference: torch.Tensor) -> float:
    """``max|fused - reference| / max(1, max|reference|)`` in float64; NaN/inf when either is not finite."""
    reference = reference.detach().double()
    difference = (fused.detach().double() - reference).abs()
    if difference.numel() == 0:
        return 0.0
    if not bool(torch.isfinite(difference).all()):
        return math.nan
    return float(difference.max()) / max(1.0, float(reference.abs().max()))


def _self_checked(op: FusedOp, kernel: ModuleType, device: torch.device, dtype: torch.dtype) -> Decision:
    kind = f"fused {device.type.upper()} kernel"
    passed, detail = self_check(op, kernel, device, dtype)
    if passed:
        return Decision(kernel, kind, f"self-check passed, {dtype_name(dtype)}, {detail}")
    warnings.warn(f"emoji3d: the {kind} of {op.name} failed its self-check for {dtype_name(dtype)} on {device} "
                  f"({detail}); {op.name} runs its pure-torch reference for {dtype_name(dtype)} in this process",
                  RuntimeWarning, stacklevel=5)
    return Decision(None, f"{REFERENCE} for {dtype_name(dtype)}", f"the {kind} failed its self-check: {detail}")


def describe(op: FusedOp, device: torch.device | str, dtypes: tuple[torch.dtype, ...]) -> str:
    """One line on how ``op`` runs on ``device`` for each of ``dtypes`` (deciding now if needed)."""
    device = concrete_device(device)
    lines: list[str] = []
    for dtype in dtypes:
        text = decide(op, device, dtype).description
        if text not in lines:
            lines.append(text)
    return "; ".join(lines)


def _forget(device_type: str) -> None:
    for key in [k for k in _decisions if k[1].type == device_type]:
        del _decisions[key]
    for key in [k for k in _load_results if k[0] == device_type]:
        del _load_results[key]


@contextlib.contextmanager
def kernel_loader(device_type: str, loader: Callable[[str], ModuleType]) -> Iterator[None]:
    """Load the fused kernels of ``device_type`` tensors with ``loader`` inside the block.

    Decisions for that device type are forgotten on entry and on exit, so the
    kernels it loads are self-checked afresh and none outlives the block."""
    with _lock:
        previous = KERNEL_LOADERS.get(device_type)
        KERNEL_LOADERS[device_type] = loader
        _forget(device_type)
    try:
        yield
    finally:
        with _lock:
            if previous is None:
                KERNEL_LOADERS.pop(device_type, None)
            else:
                KERNEL_LOADERS[device_type] = previous
            _forget(device_type)
