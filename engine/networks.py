"""Building the pipeline's networks once: pretrained weights, or the slim preset.

``load_networks(weights_dir, preset, device)``:

- ``"pretrained"``: every file converted by ``emoji3d weights convert`` into
  ``<weights_dir>/<name>/`` (config.json + safetensors): StyleGAN2 FFHQ with
  its discriminator, e4e, EG3D FFHQ-512, IR-SE50 ArcFace, and the LPIPS VGG
  trunk. A missing or corrupt file raises ``WeightsError`` naming it.
- ``"slim"``: the same architectures with narrow widths, deterministically
  initialised from a seed (StyleGAN2 at ``SLIM_2D_RESOLUTION`` px, EG3D
  ``slim128``, e4e for that generator, LPIPS with a random trunk, ArcFace
  with random weights). Nothing here is a trained model: results exercise the
  whole pipeline but are not avatars, and every caller must say so.
- ``"auto"``: pretrained when its files are all present, else slim (with a
  loud warning).
"""
from __future__ import annotations

import hashlib
import logging
import pathlib
import warnings

import torch

from .pipeline import Networks

log = logging.getLogger("emoji3d.networks")

SLIM_2D_RESOLUTION = 64
SLIM_3D_PRESET = "slim128"
PRETRAINED_FOLDERS = ("stylegan2_ffhq", "e4e_ffhq_encode", "eg3d_ffhq512", "arcface_ir_se50")

SLIM_WARNING = ("USING SLIM RANDOM WEIGHTS: no pretrained weights are installed, so the networks are "
                "random. Every stage runs, but the output is NOT a real avatar. Install the official "
                "weights with `emoji3d weights fetch` and `emoji3d weights convert`.")


def pretrained_available(weights_dir: pathlib.Path) -> bool:
    return all((weights_dir / name / "config.json").is_file() for name in PRETRAINED_FOLDERS)


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def slim_networks(seed: int = 0, device: str | torch.device = "cpu") -> Networks:
    import lpips

    from .nets import arcface, e4e, eg3d, stylegan2

    g2d, d2d, _w_avg, _cfg = stylegan2.stylegan2_slim(seed, resolution=SLIM_2D_RESOLUTION)
    enc = _seeded(seed + 10, lambda: e4e.Encoder4Editing(e4e.E4EConfig(stylegan_size=SLIM_2D_RESOLUTION)))
    enc_avg = g2d.mapping.w_avg.detach().clone()
    g3d = eg3d.slim_generator(SLIM_3D_PRESET, seed=seed + 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        perceptual = _seeded(seed + 30, lambda: lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True,
                                                            verbose=False))
    face_id = _seeded(seed + 40, lambda: arcface.ArcFaceBackbone())
    for m in (g2d, d2d, enc, perceptual, face_id):
        m.eval().requires_grad_(False)
    return _assemble(g2d, d2d, enc, enc_avg, g3d, perceptual, face_id, "slim", f"slim:{seed}", device)


def pretrained_networks(weights_dir: pathlib.Path, device: str | torch.device = "cpu") -> Networks:
    from safetensors.torch import load_file

    from .nets import arcface, e4e, eg3d, perceptual, stylegan2
    from .weights import WeightsMissing

    missing = [n for n in PRETRAINED_FOLDERS if not (weights_dir / n / "config.json").is_file()]
    if missing:
        raise WeightsMissing(f"converted weights missing in {weights_dir}: {', '.join(missing)}; run "
                             "`emoji3d weights fetch` then `emoji3d weights convert`", file=str(weights_dir / missing[0]))
    g2d, d2d, _latent_avg, _cfg = stylegan2.from_pretrained(weights_dir / "stylegan2_ffhq", with_discriminator=True)
    folder = weights_dir / "e4e_ffhq_encode"
    enc = e4e.build_encoder(load_file(str(folder / "encoder.safetensors")), source=str(folder))
    enc_avg = load_file(str(folder / "latent_avg.safetensors"))["latent_avg"]
    g3d = eg3d.load(weights_dir / "eg3d_ffhq512")
    perceptual_net = perceptual.build_lpips(perceptual.LPIPSConfig(net="vgg"), weights_dir)
    folder = weights_dir / "arcface_ir_se50"
    face_id = arcface.build_arcface(load_file(str(folder / "model.safetensors")), source=str(folder))
    digest = hashlib.sha256()
    for name in PRETRAINED_FOLDERS:
        digest.update((weights_dir / name / "config.json").read_bytes())
    return _assemble(g2d, d2d, enc, enc_avg, g3d, perceptual_net, face_id, "pretrained",
                     f"pretrained:{digest.hexdigest()[:12]}", device)


def _assemble(g2d, d2d, enc, enc_avg, g3d, perceptual_net, face_id, preset, weights_id, device) -> Networks:
    from .nets.arcface import id_loss

    dev = torch.device(device)
    g2d, d2d, enc, g3d = (m.to(dev).eval().requires_grad_(False) for m in (g2d, d2d, enc, g3d))
    perceptual_net = perceptual_net.to(dev).eval().requires_grad_(False)
    face_id = face_id.to(dev).eval().requires_grad_(False)

    def lpips_fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return perceptual_net(a, b).reshape(a.shape[0])

    def id_fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return id_loss(face_id, a, b)

    return Networks(g2d=g2d, d2d=d2d, e4e=enc, e4e_latent_avg=enc_avg.to(dev), g3d=g3d, lpips=lpips_fn,
                    id_loss=id_fn, preset=preset, weights_id=weights_id)


def load_networks(weights_dir: pathlib.Path, preset: str = "auto", device: str | torch.device = "cpu",
                  seed: int = 0) -> Networks:
    if preset == "pretrained" or (preset == "auto" and pretrained_available(weights_dir)):
        return pretrained_networks(weights_dir, device)
    if preset == "auto":
        log.warning(SLIM_WARNING)
    return slim_networks(seed, device)
