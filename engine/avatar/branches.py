"""Independent branches of an optimisation step, run side by side on CUDA streams.

Why: at batch 1 most of a step's kernels occupy a fraction of the GPU (the
replayed steps reach about 41 TFLOP/s on an H200,
``bench/results/2026-12-04-h200-run6-kernels.md``), and one stream runs them
one after another. Parts of a step that do not read each other's results can
run at the same time on separate streams, and so can their backward passes:
autograd runs each operation's backward on the stream its forward ran on, and
makes a stream wait where a gradient crosses from another. The branches:

- stage 5: the 2D cartoon, the 2D style-loss batch and the 3D render;
- PTI: the LPIPS and the ArcFace terms of one render;
- the inversion: the render and the noise regularisation.

Use::

    branches = Branches(device, enabled)   # once per stage: the streams live across its steps
    with branches.fork() as side:          # a side stream starts after the work queued so far
        cartoon = side(make_cartoon, w)    # queued on a side stream
        image = render(w_3d)               # queued on the current stream meanwhile
    # leaving the block, the current stream waits for every side stream used in it

Each branch queues the kernels of the serial step, so the values are the same
(up to the order of atomic adds, which varies from run to run anyway); only the
order in which the GPU runs the kernels changes. On the CPU, or when not
enabled, ``side(fn, *args)`` is ``fn(*args)``, called here.

Memory: the caching allocator hands a freed block out again on the stream that
allocated it, without waiting for other streams. So every tensor argument of a
branch is marked as used on its side stream, and every tensor a branch returns
as used on the current stream (``Tensor.record_stream``); autograd does the
same for the gradients it passes between streams.

CUDA graphs (``engine.avatar.step_graph``): a step may fork while it is being
captured. A side stream joins the capture by waiting for an event recorded on
the capturing stream and leaves it through the join, as PyTorch's notes on
graphs ask, so a replay runs the branches side by side too. A fork lays the
branches on its streams in the order of the ``side`` calls, so a step lays out
its branches the same way in the warm-up runs and in the capture: autograd's
gradient accumulators remember the stream they were made on.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

# Side streams per stage: stage 5 has two branches beside the one on the current stream.
WIDTH = 2

SideFn = Callable[..., Any]


def concurrent_usable(device: torch.device | str, enabled: bool) -> bool:
    """Whether a stage's branches run on side streams: asked for, and a CUDA device."""
    return bool(enabled) and torch.device(device).type == "cuda"


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The CUDA tensors in a value (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _here(fn: SideFn, *args: Any) -> Any:
    return fn(*args)


class Branches:
    """A stage's side streams (none on the CPU or when not ``enabled``)."""

    def __init__(self, device: torch.device | str, enabled: bool, width: int = WIDTH) -> None:
        device = torch.device(device)
        self.streams = ([torch.cuda.Stream(device) for _ in range(width)]
                        if concurrent_usable(device, enabled) else [])

    @property
    def concurrent(self) -> bool:
        return bool(self.streams)

    @contextlib.contextmanager
    def fork(self) -> Iterator[SideFn]:
        """``side(fn, *args)``: ``fn(*args)`` queued on the next side stream (round robin), after
        the work queued on the current stream before the block; the block's end makes the current
        stream wait for the side streams it used."""
        if not self.streams:
            yield _here
            return
        origin = torch.cuda.current_stream(self.streams[0].device)
        start = origin.record_event()  # what a side stream waits for: the work queued before the fork
        used: list[torch.cuda.Stream] = []

        def side(fn: SideFn, *args: Any) -> Any:
            stream = self.streams[len(used) % len(self.streams)]
            if stream not in used:
                stream.wait_event(start)
            used.append(stream)
            for tensor in _tensors(args):
                tensor.record_stream(stream)
            with torch.cuda.stream(stream):
                out = fn(*args)
            for tensor in _tensors(out):
                tensor.record_stream(origin)
            return out

        try:
            yield side
        finally:
            for stream in dict.fromkeys(used):  # each once, in order
                origin.wait_stream(stream)
