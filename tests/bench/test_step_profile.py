"""bench/step_profile.py --by-source: operator time goes to the function that ran the operator,
a backward operator's to the function whose forward operator it differentiates."""
from __future__ import annotations

import inspect

import torch
from torch.profiler import ProfilerActivity

from bench.step_profile import by_source, profile_with_sources

HERE = ("tests/bench/",)


def heavy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def light(x: torch.Tensor) -> torch.Tensor:
    return x.sum()


class Twice(torch.autograd.Function):
    """A custom op, as our fused ones are: its backward is its own node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * 2


def twice(x: torch.Tensor) -> torch.Tensor:
    return Twice.apply(x)


def constant(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return x * 2


def frame(f) -> str:
    return f"tests/bench/test_step_profile.py({inspect.getsourcelines(f)[1]}): {f.__name__}"


def test_time_goes_to_the_function_that_ran_or_was_differentiated():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 64, generator=g, requires_grad=True)
    b = torch.randn(64, 64, generator=g)
    with profile_with_sources([ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            (light(twice(heavy(a, b))) + light(constant(b))).backward()
    sources = by_source(prof.events(), on_device=False, packages=HERE)
    ours = {key for key in sources if not key[0].startswith("(")}
    # a frame already running when profiling starts is named by its current line, not its definition's
    assert {(where, d) for where, d in ours if "test_time_goes" not in where} == {
        (frame(heavy), "forward"), (frame(heavy), "backward"), (frame(light), "forward"),
        (frame(light), "backward"), (frame(constant), "forward"),
        (frame(Twice.forward), "forward"),  # the Python of a custom op's forward, as any function
        (frame(twice), "forward"), (frame(twice), "backward")}  # its call, and its backward, go to its caller
    assert {d for where, d in ours if "test_time_goes" in where} == {"forward"}  # the +, run here
    assert not any(where.startswith("(outside this repository") for where, _ in sources), sources
    assert all(us > 0 for us in sources.values())
