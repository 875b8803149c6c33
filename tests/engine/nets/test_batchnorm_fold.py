"""Batch norms folded into the layers beside them (``engine.nets.batchnorm_fold``), and ArcFace
with its batch norms folded as the identity loss runs it (``FoldedArcFace``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.nets.batchnorm_fold import fold_after, fold_before_linear, fold_sequential


def randomised(bn: nn.Module, seed: int) -> nn.Module:
    """``bn`` in eval mode with running statistics and an affine map far from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) * 2 + 0.1)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(bn.weight.shape, generator=g))
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g))
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_a_convolution_then_its_batch_norm_is_one_convolution(bias, affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=bias)
    bn = randomised(nn.BatchNorm2d(8, affine=affine), 1)
    folded = fold_after(conv, bn)
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    want = bn(conv(x))
    got = folded(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (folded.stride, folded.padding, folded.bias is not None) == ((2, 2), (1, 1), True)
    grads = [torch.autograd.grad(out.square().sum(), x)[0] for out in (got, want)]
    torch.testing.assert_close(*grads, rtol=1e-5, atol=1e-5)


def test_a_linear_layer_between_two_batch_norms_is_one_linear_layer():
    """ArcFace's output layer: BatchNorm2d on a [B, C, H, W] map, flatten, linear, BatchNorm1d."""
    torch.manual_seed(0)
    bn_in, linear, bn_out = randomised(nn.BatchNorm2d(4), 1), nn.Linear(4 * 3 * 3, 5), randomised(nn.BatchNorm1d(5), 2)
    folded = fold_after(fold_before_linear(bn_in, linear), bn_out)
    x = torch.randn(3, 4, 3, 3)
    torch.testing.assert_close(folded(x.flatten(1)), bn_out(linear(bn_in(x).flatten(1))), rtol=1e-5, atol=1e-5)


def test_folding_leaves_its_arguments_alone_and_refuses_what_does_not_fold():
    conv, bn = nn.Conv2d(3, 4, 1), randomised(nn.BatchNorm2d(4), 0)
    before = {k: v.clone() for k, v in [*conv.state_dict().items(), *bn.state_dict().items()]}
    seq = nn.Sequential(nn.BatchNorm2d(3).eval(), conv, nn.PReLU(4), bn)
    folded = fold_sequential(seq)
    assert [type(m) for m in folded] == [nn.BatchNorm2d, nn.Conv2d, nn.PReLU, nn.BatchNorm2d]  # no conv before bn
    seq2 = nn.Sequential(conv, bn, nn.PReLU(4))
    folded2 = fold_sequential(seq2)
    assert [type(m) for m in folded2] == [nn.Conv2d, nn.Identity, nn.PReLU] and folded2[2] is seq2[2]
    after = {k: v for k, v in [*conv.state_dict().items(), *bn.state_dict().items()]}
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="eval mode"):
        fold_after(conv, nn.BatchNorm2d(4).train())
    with pytest.raises(ValueError, match="running statistics"):
        fold_after(conv, nn.BatchNorm2d(4, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="3 output channels against a batch norm of 4"):
        fold_after(nn.Conv2d(3, 3, 1), bn)
    with pytest.raises(ValueError, match="are not 4 channels' maps"):
        fold_before_linear(bn, nn.Linear(10, 2))


def test_folded_arcface_gives_the_embedding_and_the_input_gradient_of_the_backbone():
    """The identity loss's ArcFace: 30 of IR-SE50's 54 batch norms folded (the 24 before a padded
    convolution stay) and the 20 identity shortcuts (1x1 max pools of stride 1) dropped, the same
    embeddings and gradients with respect to the image up to rounding, the loaded network
    untouched."""
    from engine.nets.arcface import ArcFaceBackbone, ArcFaceConfig, FoldedArcFace, embed

    net = ArcFaceBackbone.from_config(ArcFaceConfig(), seed=3).eval().requires_grad_(False)
    norms = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for i, bn in enumerate(norms):
        randomised(bn, i)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    folded = FoldedArcFace(net)
    assert len(norms) == 54
    assert sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules()) == 24
    shortcuts = [type(unit.shortcut_layer) for unit in folded.body]
    assert shortcuts.count(nn.Identity) == 20 and shortcuts.count(nn.MaxPool2d) == 1  # the one of stride 2 stays
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, 256, 256, generator=g) * 2 - 1).requires_grad_(True)
    want, got = embed(net, images), embed(folded, images)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the folding's rounding is far below what tells two images apart (random weights: 5e-3 here)
    assert (want - embed(net, images.flip(0))).abs().max() > 100 * (got - want).abs().max()
    weights = torch.randn(2, 512, generator=g)
    grads = [torch.autograd.grad((e * weights).sum(), images)[0] for e in (got, want)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-3 * float(grads[1].abs().max()))
    with pytest.raises(ValueError, match="eval-mode"):
        FoldedArcFace(net.train())
    with pytest.raises(ValueError, match=r"expected faces \[B,3,112,112\]"):
        folded(images)


def test_the_pipelines_identity_loss_runs_the_folded_arcface():
    from engine.avatar.networks import slim_networks
    from engine.nets.arcface import FoldedArcFace

    nets = slim_networks(0)
    assert isinstance(nets.id_loss.face_id, FoldedArcFace)
    assert not any(p.requires_grad for p in nets.id_loss.face_id.parameters())
