"""The optimisation stages' generator passes under ``torch.compile`` (``[pipeline] compile``).

Why: with CUDA graphs a step's time is its kernels', and after our fused ops
the largest remaining families in the EG3D stages' steps are element-wise
work, reductions, copies and layout conversions between the kernels, about a
third of a step on the H200 (``bench/results/2026-12-04-h200-run6-kernels.md``):
the volume marcher, the OSG decoder's MLP, the noise and bias additions.
Inductor fuses such chains into a few generated kernels, forward and backward.
Whether that pays at batch 1, against the compile time, only a GPU can say:
``bench/stage_timing.py --compile both`` measures it (``make gpu-check``'s
``compile`` part). Off by default until it does.

What is compiled: the EG3D generator's forward (backbone, tri-plane render,
super-resolution) and the StyleGAN2 synthesis, as the optimisation stages call
them through ``Pipeline.render_3d`` / ``Pipeline.synthesis_2d``; the losses and
the optimiser stay eager. The weights come in through ``functional_call`` as
graph inputs, so tuned weights do not recompile; a parameter dict with other
names (stage 5's partial dicts) compiles once more.

Conventions:

* ``backend``: ``"off"``, or a ``torch.compile`` backend: ``"inductor"`` (the
  one that fuses), ``"aot_eager"`` / ``"eager"`` (PyTorch's debugging backends:
  trace only; the tests use them on the CPU, where inductor takes minutes), or
  a backend callable (tests).
* Shapes are static per stage (``dynamic=False``): every step of a stage passes
  the same shapes.
* Our fused kernels trace as ``torch.library`` custom ops (``engine.ops.dispatch``).
* CUDA graphs (``engine.avatar.step_graph``): a stage's eager warm-up steps
  compile, the capture then records the generated kernels like any others.
* The engine compiles every pass before its first job
  (``engine.avatar.warm_up``, called by ``engine.resources``), so that no
  user's job waits for a compile.
* A compile that fails (a backend error, an op it cannot trace) warns once,
  naming the error, and that pass runs eagerly for the rest of the process:
  compiling is an optimisation, never a requirement. An error of the
  computation itself (an input it rejects) propagates as it would eagerly,
  and the pass stays compiled. On torch 2.11 with Python 3.12 (the GPU
  machines') a failed compile also leaves dynamo's frame evaluator installed,
  so every later Python call in the process recurses on the C stack: about 750
  nested calls at most (not seen with torch 2.14 on Python 3.11). Nothing in
  the engine nests that deep (the weights reader refuses more than 100 levels).
"""
from __future__ import annotations

import functools
import threading
import time
import warnings
from typing import Any, Callable

import torch

from emoji3d.pipeline_config import COMPILE_BACKENDS


class CompiledPass:
    """``fn`` compiled with ``backend`` on first call; ``fn`` itself once a compile failed."""

    def __init__(self, fn: Callable[..., Any], backend: str | Callable[..., Any], name: str) -> None:
        import torch._dynamo  # about a second to import: only where something is compiled

        self.fn = fn
        self.name = name
        self.failure: str | None = None  # why this pass runs eagerly, once a compile failed
        self._compiled = torch.compile(fn, backend=backend, dynamic=False)
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            return self.fn(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as exc:
            # Tracing also fails on an input the computation itself rejects: the eager run tells the
            # two apart, raising that error as it would without compiling.
            result = self.fn(*args, **kwargs)
            self._give_up(exc)
            return result

    def _give_up(self, exc: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                root = exc
                while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
                    root = inner  # a backend's own error comes wrapped
                lines = str(root).strip().splitlines()
                self.failure = type(exc).__name__ + ("" if root is exc else f", {type(root).__name__}") + (
                    f": {lines[0][:300]}" if lines else "")
                warnings.warn(f"emoji3d: torch.compile of {self.name} failed ({self.failure}); it runs eagerly "
                              "in this process", RuntimeWarning, stacklevel=3)


def compiled(fn: Callable[..., Any], backend: str | Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` itself for ``backend == "off"``, else a :class:`CompiledPass` of it."""
    if isinstance(backend, str) and backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile backend must be one of {list(COMPILE_BACKENDS)} or a callable, got {backend!r}")
    return fn if backend == "off" else CompiledPass(fn, backend, name)


def _probe_pass(x: torch.Tensor) -> torch.Tensor:
    return (x.sin() * 2 + 1).relu().sum(dim=1)  # element-wise work and a reduction: what inductor fuses


def probe(backend: str, device: str) -> tuple[str | None, float]:
    """Compile a small pass with ``backend`` on ``device`` and run it, as the engine would: (why it
    cannot compile, or None; seconds taken). For ``emoji3d doctor``: inductor needs a C++ compiler
    on the CPU, and Triton, a C compiler and the Python headers on CUDA."""
    x = torch.linspace(-1, 1, 64, device=device).reshape(4, 16)  # [4, 16]
    t0 = time.perf_counter()
    probe_pass = CompiledPass(_probe_pass, backend, "the probe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the failure is returned instead
        out = probe_pass(x)
    seconds = time.perf_counter() - t0
    if probe_pass.failure is None and not torch.allclose(out, _probe_pass(x), rtol=1e-5, atol=1e-5):
        return f"the compiled probe computed {out.tolist()} instead of {_probe_pass(x).tolist()}", seconds
    return probe_pass.failure, seconds
