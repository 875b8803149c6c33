"""Building the pipeline's networks once: pretrained weights, or the slim preset.

``load_networks(weights_dir, preset, device)``:

- ``"pretrained"``: every file converted by ``emoji3d weights convert`` into
  ``<weights_dir>/<manifest name>/`` (config.json + safetensors groups):
  ``stylegan2_ffhq`` (rosinality, with its discriminator), ``e4e_ffhq``,
  ``eg3d_ffhq`` (the NVIDIA pickle's ``G_ema``, neural rendering at 128 as in
  ``ffhqrebalanced512-128``), ``arcface_ir_se50``, and the LPIPS VGG trunk
  (``vgg16``). A missing or corrupt file raises ``WeightsError`` naming it.
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

from engine.avatar.pipeline import Networks

log = logging.getLogger("emoji3d.networks")

SLIM_2D_RESOLUTION = 64
SLIM_3D_PRESET = "slim128"
PRETRAINED_FOLDERS = ("stylegan2_ffhq", "e4e_ffhq", "eg3d_ffhq", "arcface_ir_se50")  # manifest names
EG3D_NEURAL_RESOLUTION = 128  # ffhqrebalanced512-128: the "-128" is its neural rendering resolution

SLIM_WARNING = ("USING SLIM RANDOM WEIGHTS: no pretrained weights are installed, so the networks are "
                "random. Every stage runs, but the output is NOT a real avatar. Install the official "
                "weights with `emoji3d weights fetch` and `emoji3d weights convert`.")


def pretrained_available(weights_dir: pathlib.Path) -> bool:
    """Every converted network folder is there, and LPIPS finds its VGG trunk."""
    from emoji3d.errors import WeightsError

    from engine.nets.perceptual import find_backbone

    if not all((weights_dir / name / "config.json").is_file() for name in PRETRAINED_FOLDERS):
        return False
    try:
        find_backbone("vgg", weights_dir)
    except WeightsError:
        return False
    return True


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def slim_networks(seed: int = 0, device: str | torch.device = "cpu") -> Networks:
    import lpips

    from engine.nets import arcface, e4e, eg3d, stylegan2

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


def eg3d_from_converted(folder: pathlib.Path):
    """The EG3D generator from a folder ``weights convert`` wrote for an NVIDIA pickle."""
    from emoji3d.errors import WeightsError

    from engine.nets import eg3d
    from engine.weights.core import load_converted

    cfg, groups = load_converted(folder)
    nets = cfg.get("networks") or {}
    name = next((n for n in ("G_ema", "G") if n in groups and n in nets), None)
    if name is None:
        raise WeightsError(f"{folder}: no generator (G_ema or G) in this converted EG3D folder", file=str(folder))
    return eg3d.from_official(groups[name], nets[name]["init_kwargs"], EG3D_NEURAL_RESOLUTION,
                              source=f"{folder}/{name}.safetensors")


def pretrained_networks(weights_dir: pathlib.Path, device: str | torch.device = "cpu") -> Networks:
    from engine.nets import arcface, e4e, perceptual, stylegan2
    from engine.weights.core import WeightsMissing

    missing = [n for n in PRETRAINED_FOLDERS if not (weights_dir / n / "config.json").is_file()]
    if missing:
        raise WeightsMissing(f"converted weights missing in {weights_dir}: {', '.join(missing)}; run "
                             "`emoji3d weights fetch` then `emoji3d weights convert`", file=str(weights_dir / missing[0]))
    g2d, d2d, _latent_avg, _cfg = stylegan2.from_pretrained(weights_dir / "stylegan2_ffhq", with_discriminator=True)
    enc, enc_avg = e4e.load_e4e(weights_dir / "e4e_ffhq")
    g3d = eg3d_from_converted(weights_dir / "eg3d_ffhq")
    perceptual_net = perceptual.build_lpips(perceptual.LPIPSConfig(net="vgg"), weights_dir)
    face_id = arcface.load_arcface(weights_dir / "arcface_ir_se50")
    digest = hashlib.sha256()
    for name in PRETRAINED_FOLDERS:
        digest.update((weights_dir / name / "config.json").read_bytes())
    return _assemble(g2d, d2d, enc, enc_avg, g3d, perceptual_net, face_id, "pretrained",
                     f"pretrained:{digest.hexdigest()[:12]}", device)


def _assemble(g2d, d2d, enc, enc_avg, g3d, perceptual_net, face_id, preset, weights_id, device) -> Networks:
    from engine.nets.arcface import id_loss

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
