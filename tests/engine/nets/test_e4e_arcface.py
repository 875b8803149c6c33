"""e4e encoder and IR-SE50 ArcFace against the e4e_arcface_recipe reference fixture."""
from __future__ import annotations

import json

import pytest
import torch

from engine.checks import REL_TOL
from engine.checks.e4e_arcface import layout_checks, recipe_state_dict
from engine.nets.arcface import ArcFaceBackbone, FoldedArcFace, embed, id_crop, id_loss
from engine.nets.e4e import E4EConfig, Encoder4Editing, encode, preprocess_uint8
from engine.weights.convert import arcface_from_state_dict, e4e_model
from engine.weights.tensor_files import load_safetensors


def _tol(ref: torch.Tensor) -> float:
    return REL_TOL * max(1.0, ref.abs().max().item())


@pytest.fixture(scope="module")
def fixture(reference_fixtures):
    folder = reference_fixtures / "e4e_arcface_recipe"
    if not folder.is_dir():
        pytest.skip("e4e_arcface_recipe fixture missing")
    return json.loads((folder / "config.json").read_text()), load_safetensors(folder / "io.safetensors")


@pytest.fixture(scope="module")
def arcface(fixture):
    cfg, _ = fixture
    return arcface_from_state_dict(recipe_state_dict(cfg["arcface"]["state_dict_keys_in_order"],
                                                     cfg["arcface"]["seed"]), "arcface recipe")


@pytest.fixture(scope="module")
def encoder(fixture):
    cfg, _ = fixture
    recipe = recipe_state_dict(cfg["e4e"]["state_dict_keys_in_order"], cfg["e4e"]["seed"])
    model = e4e_model(recipe, torch.zeros(512), "e4e recipe")
    assert model.config == E4EConfig()  # 18 style heads: the 1024 generator's, as the official checkpoint
    return model.encoder


def test_layout_and_parameter_counts(fixture):
    cfg, _ = fixture
    checks = layout_checks(cfg)
    assert checks and all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_meta_parameter_counts():
    with torch.device("meta"):
        n_e4e = sum(p.numel() for p in Encoder4Editing().parameters())
        n_arc = sum(p.numel() for p in ArcFaceBackbone().parameters())
    assert round(n_e4e / 1e6, 1) == 267.1
    assert round(n_arc / 1e6, 1) == 43.8


def test_arcface_crop_and_embedding_match_reference(fixture, arcface):
    _, io = fixture
    x112 = id_crop(io["input_256"])
    assert x112.shape == (2, 3, 112, 112)
    assert (x112 - io["arcface_input_112"]).abs().max() <= _tol(io["arcface_input_112"])
    with torch.no_grad():
        e = arcface(x112)
    assert (e - io["arcface_embedding"]).abs().max() <= _tol(io["arcface_embedding"])
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    with torch.no_grad():  # as the identity loss runs it, its batch norms folded
        folded = FoldedArcFace(arcface.eval())(x112)
    assert (folded - io["arcface_embedding"]).abs().max() <= _tol(io["arcface_embedding"])


def test_id_loss_properties(fixture, arcface):
    _, io = fixture
    x = io["input_256"]
    same = id_loss(arcface, x, x)
    assert abs(same.item()) < 1e-5
    y_hat = x.flip(0).clone().requires_grad_(True)
    target = x.clone().requires_grad_(True)
    loss = id_loss(arcface, y_hat, target)
    assert 0.0 < loss.item() <= 2.0
    loss.backward()
    assert y_hat.grad is not None and y_hat.grad.abs().sum() > 0
    assert target.grad is None  # the target embedding is detached
    # a 1024 image is pooled to 256 first, as e4e's pipeline does
    big = torch.nn.functional.interpolate(x, size=(1024, 1024), mode="nearest")
    with torch.no_grad():
        assert torch.allclose(embed(arcface, big), embed(arcface, x), atol=1e-4)


def test_id_crop_rejects_bad_shapes():
    with pytest.raises(ValueError, match="S >= 256"):
        id_crop(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="ArcFace"):
        ArcFaceBackbone()(torch.zeros(1, 3, 100, 100))


def test_e4e_codes_match_reference(fixture, encoder):
    _, io = fixture
    with torch.no_grad():
        codes = encoder(io["input_256"])
    assert (codes - io["e4e_codes"]).abs().max() <= _tol(io["e4e_codes"])


def test_encode_adds_latent_avg(fixture, encoder):
    _, io = fixture
    x = io["input_256"][:1]
    g = torch.Generator().manual_seed(3)
    avg = torch.randn(18, 512, generator=g)
    with torch.no_grad():
        codes = encoder(x)
        w = encode(encoder, x, avg)
        w1 = encode(encoder, x, avg[0])
    assert w.shape == (1, 18, 512)
    assert torch.allclose(w, codes + avg, atol=1e-6)
    assert torch.allclose(w1, codes + avg[0], atol=1e-6)
    with pytest.raises(ValueError, match="latent_avg"):
        encode(encoder, x, torch.zeros(5, 512))


def test_e4e_input_validation(encoder):
    with pytest.raises(ValueError, match="256x256"):
        encoder(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="float"):
        encoder(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))


def test_preprocess_uint8_range_and_size():
    img = torch.tensor([[[0, 128, 255]]], dtype=torch.uint8).expand(256, 256, 3).contiguous()
    x = preprocess_uint8(img)
    assert x.shape == (1, 3, 256, 256)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 128 / 255 * 2 - 1, 1.0], abs=1e-6)
    assert preprocess_uint8(torch.zeros(2, 300, 300, 3, dtype=torch.uint8)).shape == (2, 3, 256, 256)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_uint8(torch.zeros(256, 256, 3))


def test_e4e_config_styles():
    assert E4EConfig(stylegan_size=1024).n_styles == 18
    assert E4EConfig(stylegan_size=256).n_styles == 14


@pytest.mark.slow
def test_real_checkpoint_formats_round_trip(tmp_path, fixture):
    """e4e_ffhq_encode.pt / model_ir_se50.pth layouts → convert → from_pretrained → the reference outputs
    (≈1.3 GB on disk)."""
    import argparse

    from engine.nets.arcface import ArcFaceBackbone
    from engine.nets.e4e import E4EModel
    from engine.weights.convert import convert

    cfg, io = fixture
    enc_sd = recipe_state_dict(cfg["e4e"]["state_dict_keys_in_order"], cfg["e4e"]["seed"])
    arc_sd = recipe_state_dict(cfg["arcface"]["state_dict_keys_in_order"], cfg["arcface"]["seed"])
    avg = torch.randn(18, 512, generator=torch.Generator().manual_seed(5))
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in enc_sd.items()}, "latent_avg": avg,
                "opts": argparse.Namespace(stylegan_size=1024)}, tmp_path / "e4e_ffhq_encode.pt")
    torch.save(arc_sd, tmp_path / "model_ir_se50.pth")
    del enc_sd, arc_sd
    model = E4EModel.from_pretrained(convert(tmp_path / "e4e_ffhq_encode.pt", tmp_path / "e4e", "e4e"))
    arc = ArcFaceBackbone.from_pretrained(convert(tmp_path / "model_ir_se50.pth", tmp_path / "arc", "arcface"))
    x = io["input_256"]
    with torch.no_grad():
        assert torch.equal(model.latent_avg, avg)
        assert (model(x) - avg - io["e4e_codes"]).abs().max() <= _tol(io["e4e_codes"])
        assert (arc(id_crop(x)) - io["arcface_embedding"]).abs().max() <= _tol(io["arcface_embedding"])
