"""Stored bytes per user per pack, before and after, and the render error of each compact setting.

    python bench/avatar_bytes.py [--preset ffhq512|slim128] [--views 2] [--neural-res 32]
                                 [--pti-levels 1 1.5 2] [--levels 2 2.5 4] [--platform telegram]

Weights: ``TriPlaneGenerator.from_config(ffhq512_config(), seed=0)`` (the official FFHQ-512 sizes, random
weights). Deltas: random Gaussian perturbations of each tuned tensor, scaled to its weights' std: PTI
2 %, the stylized residual (dual-branch minus PTI) 5 %. These are assumed magnitudes, not measured ones
(no licensed weights here): a Gaussian delta is the worst case for the entropy coder (real tuning
deltas are heavier-tailed and compress better) and the PSNR scales with the delta's size.
The 2D style delta is the full-size StyleGAN2 synthesis (its parameter count, 28.5 M, at fp16).

Per user per pack = the avatar file + the per-selfie ``portrait_3d`` artifact (inversion latents and
noise + the PTI delta; the avatar references it, and it stays until its retention) + the pack's
sticker files, thumbnail, contact sheet (plus the preview page for ``emoji3d make``'s packs only) and
stills. The pack's files are measured on the easy synthetic
``cartoon`` content of ``bench/stickers.py`` (one sticker encoded, times the configured count) with
the platform's file limits as the upper bound beside it: renders of random weights are noise, not faces.

Printed side by side in one run: before (every delta copied at fp16), the avatar file of format 2
with the fp16 PTI artifact (the state before the PTI delta was compacted), and each pair of settings
(PTI levels/std, stylized levels/std), with the render PSNR of each decoded delta against the exact
one over ``--views`` views of the pack's orbit: at strength 0 (the PTI generator: decoded vs exact PTI
delta) and at strength 1 (the stylized generator; the pipeline continues from the decoded PTI delta,
so the stylized residual is taken against it and only its own quantisation counts). On the CPU the
render uses a reduced neural rendering resolution (``--neural-res``) and 24+24 ray samples, and says so.

    python bench/avatar_bytes.py --artifact-step [--preset ffhq512|slim128] [--device auto|cpu|cuda]

times, side by side in one run, the artifact step of ``Pipeline.invert_portrait`` (from the tuned
weights to the PTI delta and noise the pipeline continues from, and the artifact's bytes where it is
cached) on the tuned tensors of the preset (random PTI delta as above): before, the delta was copied
to the CPU, encoded into the artifact's bytes and decoded again (steps from ``torch.std``), then copied
back to the device, cached or not (:func:`artifact_step_before`); now it is rounded on its device,
and the bytes (entropy coding, the copy of the int8 values to the CPU) are made only when the
artifact is cached. The median of ``--repeats`` runs each, with device syncs; the rows check that the
values continued from are bit-identical.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import pathlib
import sys
import time

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from emoji3d.config import load_config  # noqa: E402
from emoji3d.orders import PLATFORM_TARGETS, PREVIEW_PAGE_PLATFORMS, THUMBNAIL_TARGETS  # noqa: E402
from engine.avatar import avatar_file, params, portrait_artifact  # noqa: E402
from engine.avatar.pipeline import TUNE_PREFIXES_3D  # noqa: E402
from engine.avatar.pipeline import AvatarResult, MemoryCache  # noqa: E402
from engine.avatar.tensor_file import pack_tensors  # noqa: E402
from engine.nets.eg3d import PRESETS, TriPlaneGenerator  # noqa: E402
from engine.render.frames import camera_path  # noqa: E402
from engine.render.pack import STILL_YAWS  # noqa: E402
from engine.stickers.encode import encode  # noqa: E402
from engine.stickers.preview import PackItem, build_pack_preview  # noqa: E402
from engine.stickers.targets import TARGETS  # noqa: E402
from tests.engine.avatar.deltas import psnr, random_delta, render  # noqa: E402
from tests.engine.stickers import content  # noqa: E402

STYLEGAN2_1024_SYNTHESIS_PARAMS = 28_500_000  # the 2D delta's size at full scale (the 57 MB at fp16)
MB = 1e6


def old_file_bytes(result: AvatarResult, n_2d: int) -> int:
    """Format 1: every delta copied at fp16, latents and noise fp32 (the 2D delta counted at full size)."""
    tensors = {"w_e": result.w_e, "w_2d": result.w_2d, "w_3d": result.w_3d, "camera": result.camera,
               **{f"noise.{k}": v for k, v in result.noise.items()},
               **{f"delta_pti.{k}": v for k, v in result.delta_pti.items()},
               **{f"delta_stylized.{k}": v for k, v in result.delta_stylized.items()}}
    return len(pack_tensors(tensors)) + 2 * n_2d


def legacy_portrait_bytes(art: portrait_artifact.PortraitArtifact) -> bytes:
    """The portrait_3d artifact before the compact format: the PTI delta at fp16."""
    return pack_tensors({"w_2d": art.w_2d, "w_3d": art.w_3d, "camera": art.camera,
                         "crop2d_to_crop3d": art.crop2d_to_crop3d, **{f"noise.{n}": v for n, v in art.noise.items()},
                         **{f"delta.{k}": v for k, v in art.delta_pti.items()}})


def pack_file_bytes(platform: str) -> tuple[int, int, int]:
    """(measured bytes, upper bound, sticker count) of one pack's files on ``platform``: every sticker in
    every target, the thumbnail, the contact sheet, the preview page where the platform's packs have one
    (``emoji3d.orders.PREVIEW_PAGE_PLATFORMS``), the stills."""
    cfg = load_config(_HERE.parent / "config.toml", env={})
    n, fps, size = len(cfg.pack.stickers), cfg.pack.fps, cfg.pack.size
    frames = content.cartoon(int(fps * 3), size, size)
    targets = PLATFORM_TARGETS[platform]
    thumb = THUMBNAIL_TARGETS.get(platform)
    per_sticker = sum(len(encode(frames, fps, t).data) for t in targets)
    thumb_bytes = len(encode(frames, fps, thumb).data) if thumb else 0
    preview = build_pack_preview("bench", [PackItem(f"s{i}", frames, fps) for i in range(n)])
    buf = io.BytesIO()
    Image.fromarray(frames[0]).save(buf, format="PNG")
    still = buf.getvalue()
    previews = len(preview.sheet_png) + (len(preview.html.encode("utf-8")) if platform in PREVIEW_PAGE_PLATFORMS else 0)
    measured = n * per_sticker + thumb_bytes + previews + len(STILL_YAWS) * len(still)
    limit = {name: max(rule.max_bytes for rule in target.formats) for name, target in TARGETS.items()}
    bound = (n * sum(limit[t] for t in targets) + (limit[thumb] if thumb else 0)
             + previews + len(STILL_YAWS) * size * size * 4)
    return measured, bound, n


def _encode_before(delta: dict[str, torch.Tensor], levels_per_std: float) -> tuple[dict, dict]:
    """``delta_codec.encode`` before the step became order-independent: ``torch.std`` on the CPU copy."""
    from engine.avatar.delta_codec import _deflate_huffman

    out, shapes = {}, {}
    for name, value in delta.items():
        residual = value.detach().cpu().float()
        shapes[name] = list(residual.shape)
        if residual.dim() < 2:
            out[f"raw.{name}"] = residual.half()
            continue
        rows = residual.reshape(residual.shape[0], -1)
        step = rows.std(dim=1, unbiased=False) / levels_per_std
        step = torch.where(step > 0, step, torch.ones_like(step))
        q = torch.round(rows / step[:, None]).clamp_(-127, 127).to(torch.int8)
        out[f"res.{name}"] = torch.frombuffer(bytearray(_deflate_huffman(q.numpy().tobytes())), dtype=torch.uint8)
        out[f"step.{name}"] = step.float()
    return out, shapes


def artifact_step_before(art: portrait_artifact.PortraitArtifact, tuned: dict, g3d, dev: torch.device):
    """invert_portrait's artifact step before: through the bytes on the CPU, cached or not."""
    import json

    delta = params.compute_delta(tuned, g3d)  # copied to the CPU
    compact, shapes = _encode_before(delta, portrait_artifact.PTI_LEVELS_PER_STD)
    meta = {"format": portrait_artifact.FORMAT, "shapes": json.dumps(shapes),
            "levels_per_std": repr(portrait_artifact.PTI_LEVELS_PER_STD)}
    blob = pack_tensors({"w_2d": art.w_2d, "w_3d": art.w_3d, "camera": art.camera,
                         "crop2d_to_crop3d": art.crop2d_to_crop3d,
                         **{f"noise.{n}": v.half() for n, v in art.noise.items()}, **compact}, meta)
    stored = portrait_artifact.from_bytes(blob)
    return ({k: v.to(dev) for k, v in stored.delta_pti.items()}, {n: v.to(dev) for n, v in stored.noise.items()},
            blob)


def artifact_step_now(art: portrait_artifact.PortraitArtifact, tuned: dict, g3d, cached: bool):
    """invert_portrait's artifact step now (the same calls)."""
    quantised = portrait_artifact.quantise(dataclasses.replace(art, delta_pti=params.compute_delta(tuned, g3d,
                                                                                                     device=None)))
    stored = quantised.stored()
    return stored.delta_pti, stored.noise, (quantised.to_bytes() if cached else None)


def artifact_step_table(preset: str, device: str, repeats: int) -> None:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g3d = TriPlaneGenerator.from_config(PRESETS[preset], seed=0).eval().to(dev)
    gen = torch.Generator().manual_seed(0)
    tuned = {k: (v.detach() + d.to(dev).float()) for (k, v), d in zip(
        params.trainable_copy(g3d, include=TUNE_PREFIXES_3D).items(), random_delta(g3d.cpu(), 0.02, gen).values())}
    g3d.to(dev)
    names = g3d.backbone.synthesis.noise_layer_names()
    noise = {n: torch.randn(1, 1, int(n[1:].split(".")[0]), int(n[1:].split(".")[0]), generator=gen).to(dev)
             for n in names}
    art = portrait_artifact.PortraitArtifact(
        w_2d=torch.randn(1, 14, 512, generator=gen).to(dev), w_3d=torch.randn(1, g3d.num_ws, 512, generator=gen).to(dev),
        noise=noise, camera=camera_path("still", 1), crop2d_to_crop3d=torch.eye(2, 3, dtype=torch.float64),
        delta_pti={})
    n_weights = sum(v.numel() for v in tuned.values())

    def timed(fn):
        times, out = [], None
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2], out

    before_s, (ref_delta, ref_noise, ref_blob) = timed(lambda: artifact_step_before(art, tuned, g3d, dev))
    rows = [("before: through the bytes on the CPU, cached or not", before_s, ref_delta, ref_noise, ref_blob)]
    for cached in (False, True):
        secs, (delta, noise_back, blob) = timed(lambda: artifact_step_now(art, tuned, g3d, cached))
        rows.append((f"now: rounded on the {dev.type}" + (", bytes for the cache" if cached else ", not cached"),
                     secs, delta, noise_back, blob))
    print(f"invert_portrait's artifact step, EG3D {preset}: {n_weights / 1e6:.1f} M tuned weights on {dev} "
          f"(torch threads {torch.get_num_threads()}), median of {repeats}")
    print("| artifact step | s | x before | artifact MB (when cached) | values continued from bit-identical "
          "to before's decode |")
    print("|---|---|---|---|---|")
    _, _, delta_now, noise_now, _ = rows[1]
    for label, secs, delta, noise_back, blob in rows:
        # The steps now come from exact sums, so a few channels may round differently from torch.std's:
        # compare each row with the bytes it would store (decoded), and report the share that matches before's.
        same = sum(int(torch.equal(delta[k], ref_delta[k])) for k in ref_delta)
        print(f"| {label} | {secs:.3f} | {before_s / secs:.1f} | "
              f"{'-' if blob is None else f'{len(blob) / MB:.1f}'} | {same}/{len(ref_delta)} tensors |", flush=True)
    blob = rows[2][4]
    back = portrait_artifact.from_bytes(blob)
    exact = all(torch.equal(back.delta_pti[k], delta_now[k].cpu()) for k in back.delta_pti) and \
        all(torch.equal(back.noise[k], noise_now[k].cpu()) for k in back.noise)
    print(f"the cached artifact reads back bit-identical to the values the fresh run continued from: "
          f"{'yes' if exact else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ffhq512", choices=sorted(PRESETS))
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--neural-res", type=int, default=32, help="CPU only: neural rendering resolution")
    ap.add_argument("--pti-levels", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    ap.add_argument("--levels", type=float, nargs="+", default=[2.0, 2.5, 4.0])
    ap.add_argument("--platform", default="telegram", choices=sorted(PLATFORM_TARGETS))
    ap.add_argument("--artifact-step", action="store_true", help="time invert_portrait's artifact step (see above)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.artifact_step:
        artifact_step_table(args.preset, args.device, args.repeats)
        return
    cfg = PRESETS[args.preset]
    device_note = "full rendering settings"
    if not torch.cuda.is_available() and args.preset == "ffhq512":
        cfg = dataclasses.replace(cfg, neural_rendering_resolution=args.neural_res, rendering=dataclasses.replace(
            cfg.rendering, depth_resolution=24, depth_resolution_importance=24))
        device_note = f"CPU: neural rendering at {args.neural_res} px, 24+24 samples"
    g3d = TriPlaneGenerator.from_config(cfg, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    pti, residual = random_delta(g3d, 0.02, gen), random_delta(g3d, 0.05, gen)
    names = g3d.backbone.synthesis.noise_layer_names()
    noise = {n: torch.randn(1, 1, int(n[1:].split(".")[0]), int(n[1:].split(".")[0]), generator=gen) for n in names}
    w_3d = g3d.mapping(torch.randn(1, cfg.z_dim, generator=gen), camera_path("still", 1)).detach()
    w_e, w_2d = torch.randn(18, 512, generator=gen), torch.randn(1, 18, 512, generator=gen)
    camera = camera_path("still", 1)
    portrait = portrait_artifact.PortraitArtifact(w_2d=w_2d, w_3d=w_3d, noise=noise, camera=camera,
                                                  crop2d_to_crop3d=torch.eye(2, 3, dtype=torch.float64), delta_pti=pti)
    cameras = camera_path("orbit", max(2, 2 * args.views))[: args.views]
    t0 = time.perf_counter()
    exact_pti = render(g3d, pti, w_3d, noise, cameras)
    render_s = time.perf_counter() - t0
    pack_measured, pack_bound, n_stickers = pack_file_bytes(args.platform)
    n_weights = sum(v.numel() for v in pti.values())
    inversion = len(portrait_artifact.to_bytes(dataclasses.replace(portrait, delta_pti={})))

    legacy_inversion = len(legacy_portrait_bytes(dataclasses.replace(portrait, delta_pti={})))

    def row(label: str, pti_l: str, sty_l: str, avatar: int, portrait_b: int, db0: str, db1: str) -> None:
        inv = inversion if pti_l != "-" else legacy_inversion
        total = avatar + portrait_b + pack_measured
        print(f"| {label} | {pti_l} | {sty_l} | {avatar / MB:.1f} | {(portrait_b - inv) / MB:.1f} | "
              f"{inv / MB:.1f} | {pack_measured / MB:.1f} | **{total / MB:.1f}** | "
              f"{(total - pack_measured + pack_bound) / MB:.1f} | {db0} | {db1} |", flush=True)

    print(f"EG3D {args.preset}: {n_weights / 1e6:.1f} M tuned weights; render {args.views} views "
          f"({device_note}, {render_s:.0f} s per set); pack files: {n_stickers} stickers on {args.platform}, "
          f"measured on cartoon content (the bound: every file at its platform limit)")
    print("| stored | PTI levels/std | stylized levels/std | avatar file MB | PTI delta MB | inversion "
          "(latents, noise) MB | pack files MB | per user per pack MB | with pack files at their limits MB | "
          "PSNR s=0 (PTI) dB | PSNR s=1 (stylized) dB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    legacy = legacy_portrait_bytes(portrait)
    stylized_exact = {k: (v.float() + residual[k].float()).half() for k, v in pti.items()}
    result = AvatarResult(w_e=w_e, w_2d=w_2d, w_3d=w_3d, noise=noise, camera=camera, delta_2d={},
                          delta_pti=pti, delta_stylized=stylized_exact)
    row("before: fp16 copies of every delta", "-", "-", old_file_bytes(result, STYLEGAN2_1024_SYNTHESIS_PARAMS),
        len(legacy), "exact", "exact")
    cache = MemoryCache()
    cache.put("style_2d", "style", pack_tensors({"w_e": w_e}))
    cache.put("portrait_3d", "selfie", legacy)
    previous_levels = 4.0  # the avatar file's setting before the PTI artifact was compacted
    blob = avatar_file.result_to_bytes(result, cache, style_key="style", portrait_key="selfie",
                                       levels_per_std=previous_levels)
    db1 = psnr(render(g3d, stylized_exact, w_3d, noise, cameras),
               render(g3d, avatar_file.result_from_bytes(blob, cache).delta_stylized, w_3d, noise, cameras))
    row("refs + int8 stylized residual, fp16 PTI artifact", "-", f"{previous_levels:g}", len(blob),
        len(legacy), "exact", f"{db1:.1f}")
    for pti_levels in args.pti_levels:
        t0 = time.perf_counter()
        portrait_blob = portrait_artifact.to_bytes(portrait, pti_levels)
        pti_q = portrait_artifact.from_bytes(portrait_blob).delta_pti
        codec_s = time.perf_counter() - t0
        db0 = psnr(exact_pti, render(g3d, pti_q, w_3d, noise, cameras))
        # Stage 5 continues from the decoded PTI delta: the stylized delta is that plus its residual.
        stylized = {k: (v.float() + residual[k].float()).half() for k, v in pti_q.items()}
        exact_stylized = render(g3d, stylized, w_3d, noise, cameras)
        result_q = dataclasses.replace(result, delta_pti=pti_q, delta_stylized=stylized)
        cache.put("portrait_3d", "selfie", portrait_blob)
        for levels in args.levels:
            blob = avatar_file.result_to_bytes(result_q, cache, style_key="style", portrait_key="selfie",
                                               levels_per_std=levels)
            back = avatar_file.result_from_bytes(blob, cache)
            db1 = psnr(exact_stylized, render(g3d, back.delta_stylized, w_3d, noise, cameras))
            chosen = (pti_levels == portrait_artifact.PTI_LEVELS_PER_STD and levels == avatar_file.LEVELS_PER_STD)
            row(f"after: compact PTI artifact{' (chosen)' if chosen else ''}", f"{pti_levels:g}", f"{levels:g}",
                len(blob), len(portrait_blob), f"{db0:.1f}", f"{db1:.1f}")
        print(f"  (PTI {pti_levels:g} levels/std: artifact encode + decode {codec_s:.1f} s)", flush=True)
    print(f"bounds: PSNR >= {portrait_artifact.PTI_RENDER_PSNR_BOUND_DB:g} dB at s=0, "
          f">= {avatar_file.RENDER_PSNR_BOUND_DB:g} dB at s=1; budget: 25 MB per user per pack")


if __name__ == "__main__":
    main()
