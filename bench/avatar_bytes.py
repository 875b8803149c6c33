"""Stored bytes per user per pack: the old avatar file (copies) vs the new one (references + compact delta).

    python bench/avatar_bytes.py [--preset ffhq512|slim128] [--views 2] [--neural-res 32] [--levels 2 4 8]

Weights: ``TriPlaneGenerator.from_config(ffhq512_config(), seed=0)`` (the official FFHQ-512 sizes, random
weights). Deltas: random Gaussian perturbations of each tuned tensor, scaled to its weights' std: PTI
2 %, the stylized residual (dual-branch minus PTI) 5 %. These are assumed magnitudes, not measured ones
(no licensed weights here): a Gaussian residual is the worst case for the entropy coder (real tuning
deltas are heavier-tailed and compress better) and the PSNR scales with the residual's size.
The 2D style delta is the full-size StyleGAN2 synthesis (its parameter count, 28.5 M, at fp16).

Printed side by side in one run, per quantisation setting: the avatar file's bytes, the per-user bytes
per pack (avatar file + the per-selfie ``portrait_3d`` artifact, which the new file references and which
stays until its retention/eviction), and the render PSNR of the decoded stylized delta against the
exact one over ``--views`` views of the pack's orbit. On the CPU the render uses a reduced neural
rendering resolution (``--neural-res``) and 24+24 ray samples, and says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
import time

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

from engine.avatar import avatar_file, delta_codec, params, portrait_artifact  # noqa: E402
from engine.avatar.pipeline import TUNE_PREFIXES_3D, AvatarResult, MemoryCache  # noqa: E402
from engine.nets.eg3d import PRESETS, TriPlaneGenerator  # noqa: E402
from engine.render.frames import camera_path  # noqa: E402

STYLEGAN2_1024_SYNTHESIS_PARAMS = 28_500_000  # the 2D delta's size at full scale (the 57 MB at fp16)


def random_delta(g3d, relative_std: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in g3d.named_parameters():
        if name.startswith(TUNE_PREFIXES_3D):
            scale = float(p.detach().float().std()) if p.numel() > 1 else 1.0
            out[name] = (relative_std * scale * torch.randn(p.shape, generator=gen)).half()
    return out


def old_file_bytes(result: AvatarResult, n_2d: int) -> int:
    """Format 1: every delta copied at fp16, latents and noise fp32 (the 2D delta counted at full size)."""
    tensors = {"w_e": result.w_e, "w_2d": result.w_2d, "w_3d": result.w_3d, "camera": result.camera,
               **{f"noise.{k}": v for k, v in result.noise.items()},
               **{f"delta_pti.{k}": v for k, v in result.delta_pti.items()},
               **{f"delta_stylized.{k}": v for k, v in result.delta_stylized.items()}}
    return len(avatar_file.pack_tensors(tensors)) + 2 * n_2d


def render(g3d, delta, result, cameras) -> torch.Tensor:
    weights = params.apply_delta(g3d, delta)
    with torch.no_grad():
        return torch.cat([params.call_with(g3d, weights, lambda g, c: g.synthesis(
            result.w_3d, c, noise_inputs=result.noise), cam[None])["image"] for cam in cameras])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())  # images in [-1, 1]
    return 10 * math.log10(4.0 / mse) if mse > 0 else math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ffhq512", choices=sorted(PRESETS))
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--neural-res", type=int, default=32, help="CPU only: neural rendering resolution")
    ap.add_argument("--levels", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    ap.add_argument("--pti-levels", type=float, default=portrait_artifact.PTI_LEVELS_PER_STD,
                    help="quantisation steps per std of the per-selfie PTI delta")
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    device_note = "full rendering settings"
    if not torch.cuda.is_available() and args.preset == "ffhq512":
        cfg = dataclasses.replace(cfg, neural_rendering_resolution=args.neural_res, rendering=dataclasses.replace(
            cfg.rendering, depth_resolution=24, depth_resolution_importance=24))
        device_note = f"CPU: neural rendering at {args.neural_res} px, 24+24 samples"
    g3d = TriPlaneGenerator.from_config(cfg, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    exact_pti, residual = random_delta(g3d, 0.02, gen), random_delta(g3d, 0.05, gen)
    quantized_pti = portrait_artifact.quantize_pti(exact_pti, args.pti_levels)
    pti = delta_codec.dequantize(quantized_pti, None)  # what the pipeline uses and stores
    stylized = {k: (v.float() + residual[k].float()).half() for k, v in pti.items()}
    names = g3d.backbone.synthesis.noise_layer_names()
    noise = {n: torch.randn(1, 1, int(n[1:].split(".")[0]), int(n[1:].split(".")[0]), generator=gen) for n in names}
    w_3d = g3d.mapping(torch.randn(1, cfg.z_dim, generator=gen), camera_path("still", 1)).detach()
    result = AvatarResult(w_e=torch.randn(18, 512, generator=gen), w_2d=torch.randn(1, 18, 512, generator=gen),
                          w_3d=w_3d, noise=noise, camera=camera_path("still", 1), delta_2d={},
                          delta_pti=pti, delta_stylized=stylized)
    cache = MemoryCache()
    cache.put("style_2d", "style", avatar_file.pack_tensors({"w_e": result.w_e}))
    crop = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)
    fp16_portrait_blob = avatar_file.pack_tensors({"w_2d": result.w_2d, "w_3d": w_3d, "camera": result.camera,
                                                   "crop2d_to_crop3d": crop,
                                                   **{f"noise.{n}": v for n, v in noise.items()},
                                                   **{f"delta.{k}": v for k, v in exact_pti.items()}})
    portrait_blob = portrait_artifact.to_bytes(result.w_2d, w_3d, noise, result.camera, crop, quantized_pti)
    cache.put("portrait_3d", "selfie", portrait_blob)
    n_weights = sum(v.numel() for v in stylized.values())
    old = old_file_bytes(result, STYLEGAN2_1024_SYNTHESIS_PARAMS)
    cameras = camera_path("orbit", max(2, 2 * args.views))[: args.views]
    t0 = time.perf_counter()
    exact = render(g3d, stylized, result, cameras)
    render_s = time.perf_counter() - t0
    pti_db = psnr(render(g3d, exact_pti, result, cameras), render(g3d, pti, result, cameras))
    mb = 1e6
    print(f"EG3D {args.preset}: {n_weights / 1e6:.1f} M tuned weights; render {args.views} views "
          f"({device_note}, {render_s:.0f} s)")
    print(f"per-selfie portrait_3d artifact: fp16 delta {len(fp16_portrait_blob) / mb:.1f} MB -> int8 at "
          f"{args.pti_levels:g} levels/std {len(portrait_blob) / mb:.1f} MB; photo-real "
          f"(strength 0) renders from it vs the exact delta: PSNR {pti_db:.1f} dB")
    print("| avatar file | levels/std | avatar MB | per user per pack MB (avatar + portrait_3d) | PSNR dB | encode s |")
    print("|---|---|---|---|---|---|")
    print(f"| before (copies, fp16) | - | {old / mb:.1f} | {(old + len(fp16_portrait_blob)) / mb:.1f} | exact | - |")
    for levels in args.levels:
        t0 = time.perf_counter()
        blob = avatar_file.result_to_bytes(result, cache, style_key="style", portrait_key="selfie",
                                           levels_per_std=levels)
        encode_s = time.perf_counter() - t0
        back = avatar_file.result_from_bytes(blob, cache)
        db = psnr(exact, render(g3d, back.delta_stylized, result, cameras))
        chosen = " (chosen)" if levels == avatar_file.LEVELS_PER_STD else ""
        print(f"| after: refs + int8 residual{chosen} | {levels:g} | {len(blob) / mb:.1f} | "
              f"{(len(blob) + len(portrait_blob)) / mb:.1f} | {db:.1f} | {encode_s:.1f} |", flush=True)
    print(f"bound: PSNR >= {avatar_file.RENDER_PSNR_BOUND_DB:g} dB; budget: 25 MB per user per pack")


if __name__ == "__main__":
    main()
