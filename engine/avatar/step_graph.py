"""Optimisation steps captured once as CUDA graphs and replayed.

Why: at batch 1 a full-size step launches thousands of small kernels, and on
an H200 the GPU sat idle 77 % of the time waiting for the host to launch
them (``bench/results/2026-12-04-h200-run3-profile.md``). A CUDA graph
records one step's kernels (forward, backward, optimiser update) once and
replays them with one launch.

A stage's step comes in two parts (:class:`SplitStep`):

- ``prepare(i)`` runs on the host before every step. It writes everything
  that changes between steps (random draws, noise scales, learning rates)
  *into* tensors that live across steps, and returns the step's *variant*: a
  hashable value that names which computation this step runs (stage 5's
  rounds come with the 2D update and the style loss, with the 2D update
  alone, or without either).
- ``compute(variant)`` is the device part: forward, loss, ``backward``,
  optimiser step. Between two steps of one variant it must differ only in
  the values of the tensors it reads: same shapes, no host reads of device
  values (``.item()``, ``float(t)``, ``if t:``), no new host-to-device copies,
  Python control flow on the variant alone. It returns the loss terms as
  detached device tensors.

:class:`StepGraphs` runs ``compute``. With graphs off (the CPU, or
``[pipeline] cuda_graphs = false``) it simply calls it. On CUDA each variant
runs eagerly ``WARMUP`` times on a side stream (cuDNN and cuBLAS choose their
algorithms, the optimiser creates its state, as the PyTorch CUDA-graph notes
ask), is then captured, and every later step of that variant is a replay.
Capturing executes nothing, so the capturing step is replayed at once. The
returned terms are cloned after each replay, because a replay overwrites the
graph's outputs in place. Each graph keeps its own memory pool (a step's
activations, about a step's peak memory per variant) until the stage ends.
The warm-up runs and the captures share one side stream: autograd's gradient
accumulators remember the stream they were made on.

The optimiser must update on the device without host reads (Adam's
``capturable=True``), and a learning rate that changes per step must be a
device tensor filled by ``prepare``: :func:`adam` and :func:`set_lr` do both
on CUDA, graphs or not (a captured and an eager run then do the same
arithmetic), and keep plain Adam with a float learning rate on the CPU (whose
results stay those of the plain loop).

If a capture fails (an op that cannot be captured, or a device too old), the
stage warns once, naming the error, and carries on eagerly with the same
``compute``: a graph is an optimisation, never a requirement. A failed
capture leaves the device's default random generator marked as capturing
(PyTorch ends that mark only when a capture succeeds), and every later random
draw on the device would fail; the generator's state is carried over into a
fresh one, so the process goes on as if no capture had been tried.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Mapping

import torch

log = logging.getLogger("emoji3d.avatar")

# (variant) -> loss terms (detached device tensors, or floats)
ComputeFn = Callable[[Hashable], Mapping[str, "torch.Tensor | float"]]

# Eager runs of a variant before it is captured.
WARMUP = 2


@dataclass(frozen=True)
class SplitStep:
    """A step as host part ``prepare(i) -> variant`` and device part ``compute(variant) -> terms``."""

    prepare: Callable[[int], Hashable]
    compute: ComputeFn


def graphs_usable(device: torch.device | str, enabled: bool) -> bool:
    """Whether steps on ``device`` are captured: asked for, and a CUDA device."""
    return bool(enabled) and torch.device(device).type == "cuda"


def adam(params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float],
         varying_lr: bool = False) -> torch.optim.Adam:
    """Adam for a stage's step. On CUDA it updates on the device (``capturable``, with or without
    graphs, so that a captured and an eager run do the same arithmetic), and a ``varying_lr``
    lives in a device tensor that :func:`set_lr` fills before each step. Elsewhere: plain Adam."""
    params = list(params)
    if not params or not params[0].is_cuda:
        return torch.optim.Adam(params, lr=lr, betas=betas)
    rate = torch.tensor(lr, dtype=torch.float32, device=params[0].device) if varying_lr else lr
    return torch.optim.Adam(params, lr=rate, betas=betas, capturable=True, foreach=True)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate: in place for a device-tensor rate (a captured step reads
    that tensor), by assignment for a float."""
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def reset_default_generator() -> None:
    """Give the current device's default generator a fresh state with the same seed and offset
    (see the module notes: a failed capture leaves it marked as capturing)."""
    default = torch.cuda.default_generators[torch.cuda.current_device()]
    fresh = torch.Generator(device=default.device)
    fresh.set_state(default.get_state())
    default.graphsafe_set_state(fresh)


class StepGraphs:
    """Runs ``compute(variant)``: eagerly, or warmed up, captured once per variant and replayed."""

    def __init__(self, name: str, compute: ComputeFn, enabled: bool) -> None:
        self.name = name
        self.compute = compute
        self.enabled = enabled and torch.cuda.is_available()  # the caller asks graphs_usable for its device
        self.captured: dict[Hashable, tuple[torch.cuda.CUDAGraph, dict]] = {}
        self.eager_runs: dict[Hashable, int] = {}
        self.failure: str | None = None
        # One side stream for the warm-up runs and the captures: autograd's gradient accumulators
        # remember the stream they were made on, and a capture needs them on its own stream.
        self.stream = torch.cuda.Stream() if self.enabled else None

    def __call__(self, variant: Hashable) -> Mapping[str, torch.Tensor | float]:
        if not self.enabled or self.failure is not None:
            return self.compute(variant)
        if variant in self.captured:
            return self._replay(variant)
        runs = self.eager_runs.get(variant, 0)
        if runs < WARMUP:
            self.eager_runs[variant] = runs + 1
            return self._on_side_stream(variant)
        try:
            self.captured[variant] = self._capture(variant)
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back to the eager step
            self.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            warnings.warn(f"stage {self.name}: CUDA graph capture failed ({self.failure}); "
                          "running its steps without graphs", RuntimeWarning, stacklevel=2)
            log.warning("stage %s: CUDA graph capture failed (%s); running eagerly", self.name, self.failure)
            torch.cuda.synchronize()
            try:
                reset_default_generator()
            except Exception as reset_exc:  # noqa: BLE001 - an older torch without graphsafe_set_state
                log.warning("stage %s: could not reset the CUDA random generator after the failed capture: %s",
                            self.name, reset_exc)
            return self.compute(variant)
        return self._replay(variant)

    def _on_side_stream(self, variant: Hashable) -> Mapping[str, torch.Tensor | float]:
        main, side = torch.cuda.current_stream(), self.stream
        side.wait_stream(main)
        with torch.cuda.stream(side):
            terms = self.compute(variant)
        main.wait_stream(side)
        for value in terms.values():
            if isinstance(value, torch.Tensor) and value.is_cuda:
                value.record_stream(main)  # made on the side stream, read on the main one
        return terms

    def _capture(self, variant: Hashable) -> tuple[torch.cuda.CUDAGraph, dict]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            terms = dict(self.compute(variant))
        for key, value in terms.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"a captured step must return tensors, got {type(value).__name__} for {key!r}")
        return graph, terms

    def _replay(self, variant: Hashable) -> dict[str, torch.Tensor]:
        graph, outputs = self.captured[variant]
        graph.replay()
        return {key: value.clone() for key, value in outputs.items()}

    def release(self) -> None:
        """Free the graphs and their memory pools (a stage's graphs serve that stage's run only),
        after the queued replays are done with them."""
        if self.captured:
            torch.cuda.synchronize()
            self.captured.clear()

    @property
    def mode(self) -> str:
        """How the steps ran: "eager", "graphs" or "eager (capture failed: ...)"."""
        if self.failure is not None:
            return f"eager (capture failed: {self.failure})"
        return "graphs" if self.enabled and self.captured else "eager"
