"""Building the pipeline's networks once: pretrained weights, or the slim preset.

``load_networks(weights_dir, preset, device)``:

- ``"pretrained"``: the pretrained folders ``emoji3d weights convert`` writes
  into ``<weights_dir>/<manifest name>/`` (:mod:`engine.weights.pretrained`),
  each read with ``from_pretrained``: ``stylegan2_ffhq`` (an index folder:
  ``generator/`` and ``discriminator/``), ``e4e_ffhq``, ``eg3d_ffhq`` (the
  NVIDIA pickle's ``G_ema``, its neural rendering resolution in its config),
  ``arcface_ir_se50``, and the LPIPS networks ``vgg16`` (stages 3 and 5) and
  ``alexnet`` (PTI's). A missing, outdated or corrupt folder raises
  ``WeightsError`` naming it.
- ``"slim"``: the same architectures with narrow widths, built by
  ``from_config(config, seed)`` (StyleGAN2 at ``SLIM_2D_RESOLUTION`` px, EG3D
  ``slim128``, e4e for that generator, one LPIPS AlexNet for every stage, ArcFace). Nothing here
  is a trained model: results exercise the whole pipeline but are not
  avatars, and every caller must say so.
- ``"full"``: every network at its official size with random weights, built
  by ``from_config(config, seed)``: EG3D FFHQ-512 (neural rendering 128, the
  8XDC super-resolution), StyleGAN2 FFHQ-1024 and its discriminator, e4e for
  the 1024 px generator, ArcFace IR-SE50, LPIPS VGG and AlexNet with random trunks. It
  measures cost (FLOPs, seconds, memory do not depend on the weight values)
  without the licensed weights; like slim, it is not an avatar, and loading
  it logs ``FULL_WARNING``.
- ``"auto"``: pretrained when every folder is current, else slim (with a
  loud warning).
"""
from __future__ import annotations

import hashlib
import logging
import pathlib
from typing import TYPE_CHECKING

import torch

from engine.avatar.pipeline import Networks

if TYPE_CHECKING:
    from engine.nets.arcface import ArcFaceBackbone

log = logging.getLogger("emoji3d.networks")

SLIM_2D_RESOLUTION = 64
SLIM_3D_PRESET = "slim128"
# manifest names
PRETRAINED_FOLDERS = ("stylegan2_ffhq", "e4e_ffhq", "eg3d_ffhq", "arcface_ir_se50", "vgg16", "alexnet")

SLIM_WARNING = ("USING SLIM RANDOM WEIGHTS: no pretrained weights are installed, so the networks are "
                "random. Every stage runs, but the output is NOT a real avatar. Install the official "
                "weights with `emoji3d weights fetch` and `emoji3d weights convert`.")


FULL_WARNING = ("USING FULL-SIZE RANDOM WEIGHTS (preset 'full'): every network has its official size but "
                "random weights. Use it to measure cost; the output is NOT a real avatar.")
PRESETS = ("auto", "pretrained", "slim", "full")


class IdentityDistance:
    """The ArcFace identity loss as a distance ``(a, b) -> scalar``; ``to_target(b)`` embeds a
    constant target once (PTI compares every step's render with the same photo). It runs the
    eval-mode backbone it is given with its batch norms folded (``FoldedArcFace``: the same
    embedding up to rounding, fewer kernels in every PTI step)."""

    def __init__(self, face_id: ArcFaceBackbone) -> None:
        from engine.nets.arcface import FoldedArcFace

        self.face_id = FoldedArcFace(face_id)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from engine.nets.arcface import id_loss

        return id_loss(self.face_id, a, b)

    def to_target(self, target: torch.Tensor):
        from engine.nets.arcface import embed

        with torch.no_grad():
            target_embedding = embed(self.face_id, target).detach()  # [B, 512]

        def distance(x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] != target_embedding.shape[0]:
                raise ValueError(f"ID loss: batch sizes differ ({x.shape[0]} vs {target_embedding.shape[0]})")
            return (1.0 - (embed(self.face_id, x) * target_embedding).sum(dim=1)).mean()

        return distance


def pretrained_states(weights_dir: pathlib.Path) -> dict[str, str]:
    """Each pretrained folder the pipeline reads, with its state ("current", "outdated", "invalid", "missing")."""
    from engine.weights.pretrained import folder_state

    return {name: folder_state(pathlib.Path(weights_dir) / name) for name in PRETRAINED_FOLDERS}


def pretrained_available(weights_dir: pathlib.Path) -> bool:
    """Every pretrained folder the pipeline reads is there, in this version's format."""
    return all(state == "current" for state in pretrained_states(weights_dir).values())


def slim_networks(seed: int = 0, device: str | torch.device = "cpu") -> Networks:
    from engine.nets import arcface, e4e, eg3d, perceptual, stylegan2

    g2d = stylegan2.StyleGAN2Generator.from_config(stylegan2.slim_generator_config(SLIM_2D_RESOLUTION), seed=seed)
    d2d = stylegan2.StyleGAN2Discriminator.from_config(stylegan2.slim_discriminator_config(SLIM_2D_RESOLUTION),
                                                       seed=seed + 5)
    enc = e4e.E4EModel.from_config(e4e.E4EConfig(stylegan_size=SLIM_2D_RESOLUTION), seed=seed + 10)
    with torch.no_grad():  # encode around the slim generator's average latent, as e4e does around FFHQ's
        enc.latent_avg.copy_(g2d.mapping.w_avg.expand_as(enc.latent_avg))
    g3d = eg3d.slim_generator(SLIM_3D_PRESET, seed=seed + 20)
    perceptual_net = perceptual.LPIPSNetwork.from_config(perceptual.LPIPSConfig(net="alex"), seed=seed + 30)
    face_id = arcface.ArcFaceBackbone.from_config(arcface.ArcFaceConfig(), seed=seed + 40)
    return assemble(g2d, d2d, enc, g3d, perceptual_net, perceptual_net, face_id, "slim", f"slim:{seed}", device)


def full_configs() -> dict[str, tuple[type, object]]:
    """The ``full`` preset's networks as (class, config), in ``assemble``'s order: the official
    FFHQ-1024 StyleGAN2 and its discriminator, e4e for it, EG3D ``ffhqrebalanced512-128``, LPIPS
    VGG and AlexNet, ArcFace IR-SE50."""
    from engine.nets import arcface, e4e, eg3d, perceptual, stylegan2

    return {
        "g2d": (stylegan2.StyleGAN2Generator, stylegan2.StyleGAN2GeneratorConfig(img_resolution=1024)),
        "d2d": (stylegan2.StyleGAN2Discriminator, stylegan2.StyleGAN2DiscriminatorConfig(img_resolution=1024)),
        "e4e": (e4e.E4EModel, e4e.E4EConfig(stylegan_size=1024)),
        "g3d": (eg3d.TriPlaneGenerator, eg3d.PRESETS["ffhq512"]),
        "lpips": (perceptual.LPIPSNetwork, perceptual.LPIPSConfig(net="vgg")),
        "lpips_pti": (perceptual.LPIPSNetwork, perceptual.LPIPSConfig(net="alex")),
        "arcface": (arcface.ArcFaceBackbone, arcface.ArcFaceConfig()),
    }


def full_modules(seed: int = 0) -> tuple:
    """The ``full`` preset's networks with random weights (``from_config`` with per-network seeds),
    built on the CPU, in ``assemble``'s order."""
    built = {name: cls.from_config(config, seed=seed + 5 * i)
             for i, (name, (cls, config)) in enumerate(full_configs().items())}
    with torch.no_grad():  # encode around the generator's average latent, as e4e does around FFHQ's
        built["e4e"].latent_avg.copy_(built["g2d"].mapping.w_avg.expand_as(built["e4e"].latent_avg))
    return tuple(built.values())


def full_networks(seed: int = 0, device: str | torch.device = "cpu") -> Networks:
    log.warning(FULL_WARNING)
    return assemble(*full_modules(seed), "full", f"full:{seed}", device)


def pretrained_networks(weights_dir: pathlib.Path, device: str | torch.device = "cpu") -> Networks:
    from engine.nets import arcface, e4e, eg3d, perceptual, stylegan2
    from engine.weights.convert import DISCRIMINATOR, GENERATOR
    from engine.weights.errors import WeightsError, WeightsMissing
    from engine.weights.pretrained import folder_state

    weights_dir = pathlib.Path(weights_dir)
    missing = [n for n in PRETRAINED_FOLDERS if folder_state(weights_dir / n) == "missing"]
    if missing:
        raise WeightsMissing(f"converted weights missing in {weights_dir}: {', '.join(missing)}; run "
                             "`emoji3d weights fetch` then `emoji3d weights convert`", file=str(weights_dir / missing[0]))
    g2d = stylegan2.StyleGAN2Generator.from_pretrained(weights_dir / "stylegan2_ffhq" / GENERATOR)
    d2d = stylegan2.StyleGAN2Discriminator.from_pretrained(weights_dir / "stylegan2_ffhq" / DISCRIMINATOR)
    enc = e4e.E4EModel.from_pretrained(weights_dir / "e4e_ffhq")
    if enc.config.n_styles != g2d.num_ws:  # caught here rather than at the first selfie
        raise WeightsError(f"{weights_dir / 'e4e_ffhq'}: the e4e encoder makes {enc.config.n_styles} latents but the "
                           f"StyleGAN2 generator in {weights_dir / 'stylegan2_ffhq'} takes {g2d.num_ws}",
                           file=str(weights_dir / "e4e_ffhq"))
    g3d = eg3d.TriPlaneGenerator.from_pretrained(weights_dir / "eg3d_ffhq")
    perceptual_net = perceptual.LPIPSNetwork.from_pretrained(weights_dir / "vgg16")
    pti_perceptual_net = perceptual.LPIPSNetwork.from_pretrained(weights_dir / "alexnet")
    face_id = arcface.ArcFaceBackbone.from_pretrained(weights_dir / "arcface_ir_se50")
    digest = hashlib.sha256()
    for config_file in sorted(weights_dir.glob("*/config.json")) + sorted(weights_dir.glob("*/*/config.json")):
        if config_file.relative_to(weights_dir).parts[0] in PRETRAINED_FOLDERS:
            digest.update(config_file.read_bytes())
    return assemble(g2d, d2d, enc, g3d, perceptual_net, pti_perceptual_net, face_id, "pretrained",
                    f"pretrained:{digest.hexdigest()[:12]}", device)


def assemble(g2d, d2d, enc, g3d, perceptual_net, pti_perceptual_net, face_id, preset: str, weights_id: str,
             device: str | torch.device) -> Networks:
    """The pipeline's ``Networks`` from loaded modules, frozen, in eval mode, on ``device``.
    ``enc`` is an ``E4EModel``: the pipeline gets its encoder and its ``latent_avg``.
    ``pti_perceptual_net`` may be ``perceptual_net`` itself."""
    target = torch.device(device)
    g2d, d2d, enc, g3d, perceptual_net, pti_perceptual_net, face_id = (
        m.to(target).eval().requires_grad_(False)
        for m in (g2d, d2d, enc, g3d, perceptual_net, pti_perceptual_net, face_id))

    return Networks(g2d=g2d, d2d=d2d, e4e=enc.encoder, e4e_latent_avg=enc.latent_avg, g3d=g3d, lpips=perceptual_net,
                    lpips_pti=pti_perceptual_net, id_loss=IdentityDistance(face_id), preset=preset,
                    weights_id=weights_id)


def load_networks(weights_dir: pathlib.Path, preset: str = "auto", device: str | torch.device = "cpu",
                  seed: int = 0) -> Networks:
    if preset not in PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; known: {', '.join(PRESETS)}")
    if preset == "full":
        return full_networks(seed, device)
    if preset == "pretrained":
        return pretrained_networks(weights_dir, device)
    if preset == "auto":
        states = pretrained_states(weights_dir)
        unusable = {name: state for name, state in states.items() if state != "current"}
        if not unusable:
            return pretrained_networks(weights_dir, device)
        if len(unusable) < len(states):  # a partial install, e.g. a folder a newer version reads
            log.warning("pretrained weights in %s are incomplete (%s), so the slim preset is used; run "
                        "`emoji3d weights fetch` then `emoji3d weights convert`", weights_dir,
                        ", ".join(f"{name}: {state}" for name, state in unusable.items()))
        log.warning(SLIM_WARNING)
    return slim_networks(seed, device)
