"""Building blocks of the pipeline that need no pretrained network."""
import math

import pytest
import torch
from torch import nn

from engine.avatar import params as P
from engine.avatar.steps import Cancelled, run_steps, ramped_lr
from engine.avatar.warp import rescale_similarity, warp_to_frame


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
    tuned = P.trainable_copy(net)
    opt = torch.optim.SGD(list(tuned.values()), lr=0.1)
    x = torch.randn(8, 4)
    for _ in range(3):
        loss = P.call(net, tuned, x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    delta = P.compute_delta(tuned, net)
    assert set(delta) == {"lin.weight", "lin.bias"} and all(d.dtype == torch.float16 for d in delta.values())
    restored = P.apply_delta(net, delta)
    for k in tuned:
        assert torch.allclose(restored[k], tuned[k].detach(), atol=1e-3)


def test_strength_interpolation_hits_both_endpoints_exactly():
    net = Tiny()
    a = {k: v.detach() + 0.123 for k, v in net.named_parameters()}
    b = {k: v.detach() * 1.7 - 0.3 for k, v in net.named_parameters()}
    for k in a:
        assert torch.equal(P.interpolate(net, a, b, 0.0)[k], a[k])
        assert torch.equal(P.interpolate(net, a, b, 1.0)[k], b[k])
        mid = P.interpolate(net, a, b, 0.5)[k]
        assert torch.allclose(mid, (a[k] + b[k]) / 2, atol=1e-6)
    with pytest.raises(ValueError):
        P.interpolate(net, a, b, 1.5)


def test_run_steps_cancels_between_steps_and_logs_losses():
    calls = []
    seen = []

    def step(i):
        calls.append(i)
        return {"total": 10.0 - i}

    log = run_steps("s", 5, step, progress=lambda *a: seen.append(a))
    assert log.steps == 5 and log.decreased() and seen[-1] == ("s", 5, 5)
    calls.clear()
    with pytest.raises(Cancelled):
        run_steps("s", 100, step, should_cancel=lambda: len(calls) >= 3)
    assert len(calls) == 3


def test_projector_learning_rate_schedule_ramps_up_and_down():
    lrs = [ramped_lr(i, 100, 0.01) for i in range(100)]
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(0.01) and lrs[-1] < 0.001
