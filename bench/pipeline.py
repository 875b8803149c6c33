"""Seconds per pipeline stage, and in total, for selfie + style -> stylized 3D avatar.

    python bench/pipeline.py [--preset slim|full] [--steps N] [--device auto|cpu|cuda]

- ``slim`` (default on the CPU): the slim random-weight networks.
- ``full`` (GPU): full-size architectures (StyleGAN2 1024 + D, e4e, EG3D
  FFHQ-512, ArcFace, LPIPS VGG trunk) with random weights; compute cost does
  not depend on the weight values.

Each stage runs ``--steps`` optimiser steps; the table also projects the time
of the configured step counts (config.toml [pipeline.*]) from the measured
seconds per step. The portrait and exemplar are the real face crops of the
bundled sample selfie and 'toon' style. A second call with the style cached
shows what a returning style costs (the product goal: < 60 s on one H100).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def full_networks(device):
    from engine.nets import arcface, e4e, eg3d, perceptual, stylegan2
    from engine.avatar.networks import assemble

    g2d = stylegan2.StyleGAN2Generator.from_config(stylegan2.StyleGAN2GeneratorConfig(img_resolution=1024), seed=1)
    d2d = stylegan2.StyleGAN2Discriminator.from_config(stylegan2.StyleGAN2DiscriminatorConfig(img_resolution=1024),
                                                       seed=2)
    enc = e4e.E4EModel.from_config(e4e.E4EConfig(), seed=3)
    g3d = eg3d.slim_generator("ffhq512", seed=4)
    perceptual_net = perceptual.LPIPSNetwork.from_config(perceptual.LPIPSConfig(net="vgg"), seed=5)
    face_id = arcface.ArcFaceBackbone.from_config(arcface.ArcFaceConfig(), seed=6)
    return assemble(g2d, d2d, enc, g3d, perceptual_net, face_id, "full-random", "full-random", device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["slim", "full"], default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per stage (default: 4 on CPU, 20 on GPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    preset = args.preset or ("full" if device.type == "cuda" else "slim")
    steps = args.steps or (20 if device.type == "cuda" else 4)

    from PIL import Image

    from emoji3d.config import load_config
    from engine.face.analyze import analyze_face
    from engine.face.landmarks import LandmarkDetector
    from engine.avatar.networks import slim_networks
    from engine.avatar.pipeline import MemoryCache, Pipeline
    from engine.avatar.portrait import portrait_inputs

    repo = _HERE.parent
    configured = load_config(repo / "config.toml").pipeline
    with LandmarkDetector() as det:
        selfie = np.asarray(Image.open(repo / "samples" / "selfie.jpg").convert("RGB"))
        style = np.asarray(Image.open(repo / "styles" / "toon" / "exemplar.png").convert("RGB"))
        t0 = time.perf_counter()
        portrait = portrait_inputs(analyze_face(selfie, detector=det), "selfie")
        face_s = time.perf_counter() - t0
        exemplar = portrait_inputs(analyze_face(style, detector=det), "toon")
    t0 = time.perf_counter()
    nets = full_networks(device) if preset == "full" else slim_networks(0, device)
    load_s = time.perf_counter() - t0
    pipe = Pipeline(nets, configured.reduced(steps))
    cache = MemoryCache()
    if device.type == "cuda":
        torch.cuda.synchronize()
    result = pipe(portrait, exemplar, seed=0, cache=cache)
    second = pipe(dataclasses.replace(portrait, key="another-selfie"), exemplar, seed=0, cache=cache)

    full_steps = {"style_finetune": configured.style.steps, "invert_3d": configured.inversion.steps,
                  "pivotal_tuning": configured.pti.steps, "dual_branch": configured.dual.steps}
    print(f"# preset {preset}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} CPU thread(s)") + f", {steps} steps per stage")
    print(f"# network loading {load_s:.1f} s (once per engine process); face analysis {face_s * 1000:.0f} ms")
    print(f"{'stage':<16} {'steps':>5} {'seconds':>9} {'s/step':>8} {'config steps':>12} {'projected s':>12}")
    total_proj = 0.0
    total_proj_cached = 0.0
    for stage, n_full in full_steps.items():
        log = result.logs[stage]
        per = log.seconds / max(1, log.steps)
        proj = per * n_full
        total_proj += proj
        if stage != "style_finetune":
            total_proj_cached += proj
        print(f"{stage:<16} {log.steps:>5} {log.seconds:>9.2f} {per:>8.3f} {n_full:>12} {proj:>12.1f}")
    print(f"{'total (measured)':<16} {'':>5} {result.logs['total'].seconds:>9.2f}")
    print(f"projected with the configured steps: {total_proj:.1f} s; with the style cached: {total_proj_cached:.1f} s")
    print(f"second selfie, style cached (measured at {steps} steps): {second.logs['total'].seconds:.2f} s, "
          f"style stage skipped = {second.logs['style_finetune'].skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
