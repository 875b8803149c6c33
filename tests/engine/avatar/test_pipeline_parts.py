"""Building blocks of the pipeline that need no pretrained network."""
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from engine.avatar import params
from engine.avatar.steps import StageLog, StopAt, ramped_lr, run_steps
from engine.avatar.warp import rescale_similarity, resize_bilinear, resize_for_lpips, warp_to_frame


def similarity(scale, angle_deg, tx, ty):
    a = math.radians(angle_deg)
    return torch.tensor([[scale * math.cos(a), -scale * math.sin(a), tx],
                         [scale * math.sin(a), scale * math.cos(a), ty]], dtype=torch.float64)


def test_warp_moves_a_dot_where_the_similarity_says():
    src = torch.zeros(1, 1, 64, 64)
    src[0, 0, 20:24, 40:44] = 1.0  # a 4x4 dot centred at pixel coords (42, 22)
    m = similarity(1.5, 20.0, 10.0, -5.0)
    out, mask = warp_to_frame(src, m, 128)
    ys, xs = torch.nonzero(out[0, 0] > 0.5, as_tuple=True)
    got = torch.stack([xs.double().mean() + 0.5, ys.double().mean() + 0.5])
    want = m[:, :2] @ torch.tensor([42.0, 22.0], dtype=torch.float64) + m[:, 2]
    assert torch.allclose(got, want, atol=0.75), (got, want)
    assert mask.min() == 0 and mask.max() == 1  # parts of the destination lie outside the source


def test_identity_warp_is_exact_and_differentiable():
    img = torch.rand(2, 3, 32, 32, requires_grad=True)
    out, mask = warp_to_frame(img, similarity(1, 0, 0, 0), 32)
    assert torch.allclose(out, img, atol=1e-5) and bool(mask.all())
    out.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_rescaled_similarity_agrees_with_resized_frames():
    m = similarity(0.8, -10, 30, 12)
    m2 = rescale_similarity(m, src_scale=0.25, dst_scale=0.5)
    p = torch.tensor([100.0, 60.0], dtype=torch.float64)
    full = m[:, :2] @ p + m[:, 2]
    small = m2[:, :2] @ (p * 0.25) + m2[:, 2]
    assert torch.allclose(small, full * 0.5)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


def test_functional_params_leave_the_module_untouched_and_deltas_roundtrip():
    torch.manual_seed(0)
    net = Tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tuned = params.trainable_copy(net)
    opt = torch.optim.SGD(list(tuned.values()), lr=0.1)
    x = torch.randn(8, 4)
    for _ in range(3):
        loss = params.call(net, tuned, x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    delta = params.compute_delta(tuned, net)
    assert set(delta) == {"lin.weight", "lin.bias"} and all(d.dtype == torch.float16 for d in delta.values())
    restored = params.apply_delta(net, delta)
    for k in tuned:
        assert torch.allclose(restored[k], tuned[k].detach(), atol=1e-3)



def test_compute_delta_keeps_only_the_tensors_that_changed():
    net = Tiny()
    tuned = {k: v.detach().clone() for k, v in net.named_parameters()}
    tuned["lin.bias"] = tuned["lin.bias"] + 0.5
    delta = params.compute_delta(tuned, net)
    assert set(delta) == {"lin.bias"} and torch.equal(delta["lin.bias"], torch.full_like(delta["lin.bias"], 0.5))
    assert params.compute_delta({}, net) == {}

def test_strength_interpolation_hits_both_endpoints_exactly():
    net = Tiny()
    a = {k: v.detach() + 0.123 for k, v in net.named_parameters()}
    b = {k: v.detach() * 1.7 - 0.3 for k, v in net.named_parameters()}
    for k in a:
        assert torch.equal(params.interpolate(net, a, b, 0.0)[k], a[k])
        assert torch.equal(params.interpolate(net, a, b, 1.0)[k], b[k])
        mid = params.interpolate(net, a, b, 0.5)[k]
        assert torch.allclose(mid, (a[k] + b[k]) / 2, atol=1e-6)
    with pytest.raises(ValueError):
        params.interpolate(net, a, b, 1.5)


class Stop(Exception):
    """What a progress callback raises to stop a stage (the worker raises JobCancelled)."""


def test_run_steps_logs_losses_and_an_exception_from_progress_stops_it_after_that_step():
    calls = []
    seen = []

    def step(i):
        calls.append(i)
        return {"total": 10.0 - i}

    log = run_steps("s", 5, step, progress=lambda *a: seen.append(a))
    assert log.steps == 5 and log.decreased() and seen[-1] == ("s", 5, 5)
    assert log.terms["total"] == [10.0, 9.0, 8.0, 7.0, 6.0]
    calls.clear()

    def progress(stage, step_no, total):
        if step_no == 3:
            raise Stop(stage)

    with pytest.raises(Stop, match="^s$"):
        run_steps("s", 100, step, progress)
    assert calls == [0, 1, 2]  # the step that reported is done, no further one starts


def test_a_stop_rule_ends_the_stage_one_step_after_the_step_that_reached_it():
    """PTI's early stop: step 3 is the first whose LPIPS is at most 0.06; step 4 was queued before
    its value was read (on a GPU), so the stage ends after step 4 and reports itself complete."""
    values = [0.5, 0.4, 0.3, 0.06, 0.2, 0.01, 0.0]
    calls, seen = [], []

    def step(i):
        calls.append(i)
        return {"total": torch.tensor(values[i] + 1), "lpips": torch.tensor(values[i])}

    log = run_steps("s", 7, step, progress=lambda *a: seen.append(a), stop=StopAt("lpips", 0.06))
    assert calls == [0, 1, 2, 3, 4]
    assert (log.steps, log.planned, log.stopped_early) == (5, 7, True)
    assert seen == [("s", 1, 7), ("s", 2, 7), ("s", 3, 7), ("s", 4, 7), ("s", 7, 7)]
    assert log.terms["lpips"] == pytest.approx(values[:5])
    assert log.summary()["planned_steps"] == 7 and log.summary()["steps"] == 5

    # never reached, or reached only by the last two steps: every step runs
    for threshold, total in ((0.001, 7), (0.06, 4), (0.06, 5)):
        calls.clear()
        log = run_steps("s", total, step, stop=StopAt("lpips", threshold))
        assert calls == list(range(total)) and not log.stopped_early
        assert "planned_steps" not in log.summary()
    assert not StageLog("s", skipped=True).stopped_early


class CountOps(TorchDispatchMode):
    """Counts the aten ops run while active (observes; changes nothing)."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_the_step_loop_reads_losses_once_per_interval_not_per_step():
    """``float(t)``/``.item()`` is ``_local_scalar_dense``, a device-to-host wait per call on a GPU:
    the loop must not call it; it stacks each term once per interval (and at the end) instead."""
    losses = [torch.tensor(10.0 - i) * 1.5 for i in range(10)]  # made outside the counted region

    def step(i):
        return {"total": losses[i], "aux": losses[i] + 1}

    with CountOps() as ops:
        log = run_steps("s", 10, step, log_every=4)
    assert ops.counts.get("_local_scalar_dense", 0) == 0, ops.counts
    assert ops.counts["stack"] == 3 * 2  # flushes after steps 4 and 8 and at the end, two terms each
    assert log.terms["total"] == [float(t) for t in losses]  # the same numbers a per-step float() gave
    assert log.terms["aux"] == [float(t + 1) for t in losses]


def test_stage_log_materialises_pending_terms_on_read():
    log = StageLog("s")
    for i in range(6):
        log.record({"total": torch.tensor(6.0 - i), "mixed": float(i) if i % 2 else torch.tensor(float(i))})
    assert log.terms["total"] == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    assert log.terms["mixed"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert log.decreased() and log.window_mean("total", first=True) == 6.0
    log.record({"total": torch.tensor(0.5), "mixed": 6.0})
    assert log.summary()["total_last"] == 0.5 and log.summary()["total_first"] == 6.0


def test_unknown_parameter_names_raise_and_name_the_module():
    net = Tiny()
    x = torch.randn(2, 4)
    full = {k: v.detach() * 2 for k, v in net.named_parameters()}
    partial = {"lin.bias": torch.zeros(4)}
    assert torch.allclose(params.call(net, full, x), x @ full["lin.weight"].T + full["lin.bias"])
    assert torch.allclose(params.call(net, partial, x), x @ net.lin.weight.T)  # weight falls back to the module's
    with pytest.raises(params.UnknownParameterError, match=r"Tiny has no parameter or buffer named lin\.weights"):
        params.call(net, {**partial, "lin.weights": torch.zeros(4, 4)}, x)
    # call_with: the check is against the module itself, not the wrapper that prefixes its names
    double = lambda m, t: 2 * m(t)  # noqa: E731
    assert torch.allclose(params.call_with(net, partial, double, x), 2 * (x @ net.lin.weight.T))
    with pytest.raises(params.UnknownParameterError, match=r"^Tiny has no parameter or buffer named m\.lin\.bias$"):
        params.call_with(net, {"m.lin.bias": torch.zeros(4)}, double, x)
    with pytest.raises(KeyError):  # it is a failed name lookup, as apply_delta's always was
        params.apply_delta(net, {"lin.gain": torch.zeros(4)})
    with pytest.raises(params.UnknownParameterError, match="lin.gain"):
        params.interpolate(net, {"lin.gain": torch.zeros(4)}, {}, 0.5)


def test_the_name_check_sees_a_module_changed_after_its_first_use():
    net = Tiny()
    x = torch.randn(2, 4)
    params.call(net, {"lin.bias": torch.zeros(4)}, x)  # caches the module's names
    net.register_buffer("offset", torch.ones(4))
    assert "offset" in dict(net.named_buffers())
    params.call(net, {"offset": torch.zeros(4)}, x)  # a new name is re-read, not refused


def test_resizing_filters():
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    blocks = torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]])  # means of the 2x2 blocks
    assert torch.equal(resize_for_lpips(img, 2), blocks)
    assert resize_for_lpips(img, 4) is img and resize_bilinear(img, 4) is img
    small = resize_bilinear(img, 2)  # antialiased bilinear: a wider (triangle) filter than the block mean
    assert small.shape == (1, 1, 2, 2) and not torch.equal(small, blocks)
    assert torch.allclose(small.mean(), img.mean())
    assert resize_bilinear(img, 8).shape == resize_for_lpips(img, 8).shape == (1, 1, 8, 8)


def test_projector_learning_rate_schedule_ramps_up_and_down():
    lrs = [ramped_lr(i, 100, 0.01) for i in range(100)]
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(0.01) and lrs[-1] < 0.001


def test_a_prepared_frame_warp_gives_the_same_pixels_as_warp_to_frame():
    from engine.avatar.warp import frame_warp

    img = torch.rand(1, 3, 32, 32, requires_grad=True)
    m = similarity(1.7, 12.0, 4.0, -3.0).float()
    warp = frame_warp(m, 32, 48, img.device)
    out, mask = warp(img)
    ref, ref_mask = warp_to_frame(img, m, 48)
    assert torch.equal(out, ref) and torch.equal(mask, ref_mask)
    out.sum().backward()  # still differentiable with respect to the image (Eq. 5's 2D branch)
    assert img.grad is not None and img.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="takes 32 px crops, got 16 px"):
        warp(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="one \\[2, 3\\] similarity"):
        frame_warp(m.expand(2, 2, 3), 32, 48, img.device)


def test_noise_regularisation_takes_the_maps_of_one_size_together_with_the_same_sum():
    """EG3D's 13 backbone noise maps (4 to 256 px), and odd sizes and [h, w] maps besides: the
    batched sum and its gradients are the map-by-map sum's (bench/stages_before.py), in a
    fraction of the ops (each a kernel on a GPU)."""
    from bench.stages_before import noise_regularisation as map_by_map
    from engine.avatar.invert import noise_regularisation

    gen = torch.Generator().manual_seed(0)
    eg3d = [(1, 1, 4, 4)] + [(1, 1, s, s) for s in (8, 16, 32, 64, 128, 256) for _ in range(2)]
    mixed = [(1, 1, 12, 12), (20, 20), (1, 1, 24, 24), (1, 1, 6, 6), (1, 1, 16, 8)]
    for shapes in (eg3d, mixed):
        maps = [torch.randn(s, generator=gen).requires_grad_(True) for s in shapes]
        with CountOps() as batched_ops:
            batched = noise_regularisation(maps)
            batched_grads = torch.autograd.grad(batched, maps)
        with CountOps() as per_map_ops:
            reference = map_by_map(maps)
            reference_grads = torch.autograd.grad(reference, maps)
        assert torch.allclose(batched, reference, rtol=1e-5, atol=0), (float(batched), float(reference))
        for got, want in zip(batched_grads, reference_grads):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-9)
        if shapes is eg3d:
            assert sum(batched_ops.counts.values()) * 5 < sum(per_map_ops.counts.values()), (
                sum(batched_ops.counts.values()), sum(per_map_ops.counts.values()))
