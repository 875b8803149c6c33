"""The optimisation stages' generator passes under ``torch.compile`` (engine.avatar.compiled).

On the CPU by default with PyTorch's ``eager`` backend (dynamo's tracing alone, seconds): both
generators trace whole, without a graph break, and give the eager pass's values and gradients.
Inductor and AOT tracing of the whole generators take minutes on the CPU: ``-m slow``. The
custom ops inside are tested at op level (tests/engine/ops/test_traced_ops.py)."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch._dynamo.utils import counters

from emoji3d.pipeline_config import PipelineConfig
from engine.avatar import params
from engine.avatar.compiled import CompiledPass, compiled
from engine.avatar.pipeline import TUNE_PREFIXES_2D, TUNE_PREFIXES_3D, Pipeline
from engine.nets.camera import orbit_label
from tests.engine.avatar.loss_curves import assert_curves_agree
from tests.engine.avatar.own_process import in_a_process_of_its_own


def _inputs(pipe: Pipeline, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ws_3d = torch.randn(1, pipe.nets.g3d.backbone.mapping.num_ws, 512, generator=g).requires_grad_(True)
    ws_2d = torch.randn(1, pipe.nets.g2d.num_ws, 512, generator=g).requires_grad_(True)
    noise = [torch.randn(s, generator=g) for s in pipe.noise_shapes_3d()]
    return ws_3d, ws_2d, orbit_label(0.3, -0.1), noise


def _passes(pipe: Pipeline, ws_3d, ws_2d, c, noise):
    """Both generators' images and the gradients of one loss w.r.t. the latents and every weight."""
    weights_3d = params.trainable_copy(pipe.nets.g3d, include=TUNE_PREFIXES_3D)
    weights_2d = params.trainable_copy(pipe.nets.g2d, include=TUNE_PREFIXES_2D)
    image_3d = pipe.render_3d(weights_3d, ws_3d, c, noise)
    image_2d = pipe.synthesis_2d(weights_2d, ws_2d)
    loss = image_3d.square().mean() + image_2d.square().mean()
    leaves = [ws_3d, ws_2d, *weights_3d.values(), *weights_2d.values()]
    return [image_3d.detach(), image_2d.detach(), *torch.autograd.grad(loss, leaves, allow_unused=True,
                                                                      materialize_grads=True)]


def test_the_generator_passes_trace_whole_and_give_the_eager_values(nets):
    torch._dynamo.reset()
    counters.clear()
    backend = torch._dynamo.testing.CompileCounterWithBackend("eager")
    eager_pipe, compiled_pipe = Pipeline(nets), Pipeline(nets, compile_backend=backend)
    inputs = _inputs(eager_pipe)
    eager = _passes(eager_pipe, *inputs)
    first = _passes(compiled_pipe, *inputs)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert backend.frame_count == 2  # one graph per generator
    for a, b in zip(first, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # other weight tensors (a fresh trainable copy) and latents: graph inputs, no recompile
    again = _passes(compiled_pipe, *_inputs(eager_pipe, seed=1))
    assert backend.frame_count == 2
    for a, b in zip(again, _passes(eager_pipe, *_inputs(eager_pipe, seed=1))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _raise_in_backend(graph_module, example_inputs):
    raise RuntimeError("the backend fell over")


def failed_compile_warns_once_and_runs_eagerly() -> None:
    x = torch.linspace(-1, 1, 12).reshape(3, 4)
    double_sin = compiled(lambda t: t.sin() * 2, _raise_in_backend, "the test pass")
    with pytest.warns(RuntimeWarning, match="torch.compile of the test pass failed .*the backend fell over"):
        torch.testing.assert_close(double_sin(x), x.sin() * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(double_sin(x + 1), (x + 1).sin() * 2)  # eagerly, without a second warning
    assert "the backend fell over" in double_sin.failure


def error_of_the_computation_propagates_and_keeps_the_compile() -> None:
    product = compiled(lambda a, b: a @ b, "eager", "the test pass")
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        product(torch.ones(2, 3), torch.ones(2, 3))
    assert product.failure is None
    torch.testing.assert_close(product(torch.ones(2, 3), torch.ones(3, 2)), torch.full((2, 2), 3.0))


def test_a_compile_that_fails_warns_once_and_runs_eagerly():
    in_a_process_of_its_own(__name__, "failed_compile_warns_once_and_runs_eagerly")


def test_an_error_of_the_computation_itself_propagates_and_keeps_the_compile():
    in_a_process_of_its_own(__name__, "error_of_the_computation_propagates_and_keeps_the_compile")


def test_off_is_the_function_itself_and_a_backend_must_be_known():
    def fn(t):
        return t

    assert compiled(fn, "off", "fn") is fn
    assert isinstance(compiled(fn, "aot_eager", "fn"), CompiledPass)
    with pytest.raises(ValueError, match="compile backend must be one of"):
        compiled(fn, "fastest", "fn")
    with pytest.raises(ValueError, match="compile must be one of"):
        PipelineConfig(compile="fastest")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_stages_follow_the_eager_loss_curves(unaligned_faces, backend):
    """Every stage, a few steps, with the generators compiled by ``backend`` against eager: the loss
    curves agree as two eager runs do (inductor reorders float sums; its CPU compile takes minutes)."""
    from engine.avatar.networks import slim_networks

    portrait, style = unaligned_faces
    cfg = dataclasses.replace(PipelineConfig().reduced(4), precision="fp32")
    eager = Pipeline(slim_networks(seed=0), cfg)(portrait, style, seed=0)
    eager_again = Pipeline(slim_networks(seed=0), cfg)(portrait, style, seed=0)
    torch._dynamo.reset()
    counters.clear()
    result = Pipeline(slim_networks(seed=0), dataclasses.replace(cfg, compile=backend))(portrait, style, seed=0)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert_curves_agree(result, eager, eager_again, f"{backend} vs eager")


@pytest.mark.gpu
@pytest.mark.slow  # inductor compiles each generator pass: make gpu-check's `compile` part runs it
def test_compiled_steps_are_captured_and_follow_the_eager_curves(unaligned_faces):
    """On CUDA, the engine's way: inductor-compiled generator passes inside steps captured as CUDA
    graphs (fp32 without TF32, whose rounding would grow through the steps), our fused kernels
    in the graph as custom ops, against eager captured steps; the bound is the gap between two
    eager runs (the tri-plane gradient's atomic adds vary from run to run)."""
    from engine.avatar.dual import round_cycle
    from engine.avatar.networks import slim_networks
    from engine.avatar.step_graph import WARMUP
    from tests.engine.avatar.loss_curves import STAGES

    portrait, style = unaligned_faces
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        cfg = dataclasses.replace(PipelineConfig().reduced((WARMUP + 1) * round_cycle(PipelineConfig().dual) + 1),
                                  precision="fp32", cuda_graphs=True)
        runs = [Pipeline(slim_networks(seed=0, device="cuda"), dataclasses.replace(cfg, compile=backend))(
            portrait, style, seed=0) for backend in ("off", "off", "inductor")]
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    eager, eager_again, compiled_run = runs
    assert {s: compiled_run.logs[s].mode for s in STAGES} == dict.fromkeys(STAGES, "graphs")
    assert_curves_agree(compiled_run, eager, eager_again, "inductor vs eager, CUDA graphs")
