"""Channels-last activations in the generators (``[pipeline] channels_last``): the same images and
gradients as NCHW, with the layers' activations really channels-last in between."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from emoji3d.pipeline_config import PipelineConfig
from engine.avatar.networks import slim_networks
from engine.avatar.pipeline import Pipeline
from engine.ops.dispatch import channels_last


def _layouts_seen(module: torch.nn.Module, names: list[str]) -> dict[str, bool]:
    """Registers hooks; the returned dict fills with each named layer's output layout as it runs."""
    seen: dict[str, bool] = {}
    for name in names:
        module.get_submodule(name).register_forward_hook(
            lambda _m, _inp, out, name=name: seen.__setitem__(name, channels_last(out)))
    return seen


def test_both_generators_give_the_nchw_images_and_gradients_with_channels_last_layers_between():
    nets = slim_networks(0)
    nchw, nhwc = Pipeline(nets, PipelineConfig()), Pipeline(nets, dataclasses.replace(PipelineConfig(),
                                                                                     channels_last=True))
    g = torch.Generator().manual_seed(0)
    ws_2d = torch.randn(1, nets.g2d.num_ws, 512, generator=g) * 0.5 + nets.g2d.mapping.w_avg
    ws_3d = nets.g3d.mapping(torch.randn(1, 512, generator=g), torch.zeros(1, 25))
    c = torch.tensor([[1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.26, 0, 0.5, 0, 4.26, 0.5, 0, 0, 1.0]])
    noise = [torch.randn(s, generator=g) for s in nchw.noise_shapes_3d()]
    synth2d = nets.g2d.synthesis
    layers_2d = [f"b{r}.conv1" for r in synth2d.block_resolutions]
    sr = nets.g3d.superresolution
    layers_3d = [f"backbone.synthesis.b{r}.conv1" for r in nets.g3d.backbone.synthesis.block_resolutions] + [
        "superresolution.block0.conv1", "superresolution.block1.conv1"]
    assert sr is not None
    seen_2d, seen_3d = _layouts_seen(synth2d, layers_2d), _layouts_seen(nets.g3d, layers_3d)
    for name, render, ws, layers, seen in (
            ("2D", lambda p, w: p.synthesis_2d({}, w), ws_2d, layers_2d, seen_2d),
            ("3D", lambda p, w: p.render_3d({}, w, c, noise), ws_3d, layers_3d, seen_3d)):
        out = {}
        for label, pipe in (("nchw", nchw), ("nhwc", nhwc)):
            w = ws.detach().clone().requires_grad_(True)
            image = render(pipe, w)
            (grad,) = torch.autograd.grad(image.square().mean(), w)
            out[label] = (image.detach(), grad, dict(seen))
        (a, ga, layout_a), (b, gb, layout_b) = out["nchw"], out["nhwc"]
        assert not any(layout_a.values()) and all(layout_b[n] for n in layers), (name, layout_a, layout_b)
        assert b.is_contiguous() and b.shape == a.shape, name  # images leave the generators NCHW
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(gb, ga, rtol=1e-3, atol=1e-6, msg=name)


def test_a_batch_of_latents_keeps_its_layers_channels_last_and_the_nchw_images():
    """Stage 5's 2D style loss renders two latents at once. The fused modulated convolution folds the
    batch into the channels (a grouped convolution), which NHWC memory cannot view; channels-last
    batches take the shared-weight form instead, and give the same images."""
    nets = slim_networks(0)
    g = torch.Generator().manual_seed(1)
    ws = torch.randn(2, nets.g2d.num_ws, 512, generator=g) * 0.5 + nets.g2d.mapping.w_avg
    synth = nets.g2d.synthesis
    layers = [f"b{r}.conv{i}" for r in synth.block_resolutions[1:] for i in (0, 1)]
    seen = _layouts_seen(synth, layers)
    with torch.no_grad():
        nchw = synth(ws, noise_mode="const")
        assert not any(seen.values())
        nhwc = synth(ws, noise_mode="const", channels_last=True)
    assert all(seen[n] for n in layers), seen
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-5)


def test_the_loss_networks_read_channels_last_images_and_give_the_same_distances():
    """With ``channels_last`` the stages hand LPIPS (and ArcFace) their images channels-last
    (``FramedDistance`` with ``channels_last_image``): the same distances, one to a cached target
    and a pair, with the trunk's first convolution reading NHWC."""
    from engine.avatar.invert import FramedDistance, channels_last_image, distance_to, distances_to_target_and_other

    nets = slim_networks(0)
    lpips = nets.lpips
    laid_out = Pipeline(nets, dataclasses.replace(PipelineConfig(), channels_last=True))._laid_out(lpips)
    assert isinstance(laid_out, FramedDistance) and laid_out.frame is channels_last_image
    assert Pipeline(nets, PipelineConfig())._laid_out(lpips) is lpips
    g = torch.Generator().manual_seed(2)
    x, target, other = (torch.rand(1, 3, 64, 64, generator=g) * 2 - 1 for _ in range(3))
    first_conv = next(m for m in lpips.modules() if isinstance(m, torch.nn.Conv2d))
    inputs_seen: list[bool] = []
    first_conv.register_forward_hook(lambda _m, inp, _out: inputs_seen.append(channels_last(inp[0])))
    plain = (lpips(x, target), distance_to(lpips, target)(x), *distances_to_target_and_other(lpips, target)(x, other))
    assert not any(inputs_seen)
    inputs_seen.clear()
    nhwc = (laid_out(x, target), distance_to(laid_out, target)(x),
            *distances_to_target_and_other(laid_out, target)(x, other))
    assert inputs_seen and all(inputs_seen)
    for a, b in zip(nhwc, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # 17 s; the decision it records is taken once, when the switch's default changes
def test_the_whole_pipeline_channels_last_gives_the_nchw_avatar_up_to_rounding():
    """Every stage (style finetune, inversion, PTI, dual-branch) a few steps in each layout, from the
    same seed: the stylized avatar renders the same up to rounding (measured RMS 3.5e-5 against a
    render RMS of 0.74; Adam's normalised steps carry rounding-size differences into the weights)."""
    import pathlib

    from bench.stage_timing import sample_inputs
    from engine.avatar import params

    portrait, exemplar = sample_inputs(pathlib.Path(__file__).resolve().parents[3])
    nets = slim_networks(0)
    renders = []
    for layout in (False, True):
        pipe = Pipeline(nets, dataclasses.replace(PipelineConfig().reduced(3), channels_last=layout))
        result = pipe(portrait, exemplar, seed=0)
        assert all(log.steps == 3 for name, log in result.logs.items() if name != "total")
        with torch.no_grad():
            renders.append(pipe.render_3d(params.apply_delta(nets.g3d, result.delta_stylized), result.w_3d,
                                          result.camera, [result.noise[n] for n in pipe.noise_names_3d()]))
    nchw, nhwc = renders
    assert float((nhwc - nchw).square().mean().sqrt()) < 1e-3 < float(nchw.square().mean().sqrt())
