"""Multi-view sticker rendering vs recomputing the whole generator for every frame.

    python bench/render.py [--device auto|cpu|cuda] [--frames 48] [--preset slim|full | --presets slim512 ffhq512]
                           [--measure-frames N] [--full-neural-res 32] [--views-per-pass V]

For each EG3D configuration (random weights: the timing does not depend on
them) and each mode, the same latent is rendered along the same ``--frames``
orbit (yaw ±30 deg, deterministic sampling) two ways, in the same run:

* **ours**: ``engine.render.frames.render_frames``: the tri-plane backbone runs once
  for the latent, then the views are ray-marched (and super-resolved)
  ``views_per_pass`` at a time (the engine's choice: 1 on a CPU), through the
  matte region;
* **per-frame**: ``TriPlaneGenerator.synthesis(ws, c_k)`` for every frame
  (backbone + render + super-resolution each time), as a naive loop would.

Modes: ``sr`` (the sticker path, super-resolved to the output resolution)
and ``neural`` (the neural render only, no super-resolution: previews).

On the CPU the slow cases render only ``--measure-frames`` frames of the
orbit per method (stated in the table) and the 48-frame time is
extrapolated from measured parts: ours = backbone time (measured alone) +
(distinct views of the loop) x measured time per view (a sine loop revisits
each head turn, so 48 frames need 25 views); per-frame = 48 x measured time
per frame.
``ffhq512`` on the CPU also uses a reduced neural rendering resolution
(``--full-neural-res``, default 32) and 24+24 ray samples so that it finishes in
a few minutes; the table says so. On CUDA everything runs at full settings.

Columns: fps of a full orbit for each method and their ratio (the issue's
target is >= 5x), plus the largest pixel difference between the two
renders of the first frame (0 up to float noise: our frames are the
generator's frames, only computed once per latent).

What bounds the ratio. Ours saves the backbone B on every frame but one and
renders each distinct view once (25 for the 48-frame loop); the per-view work
V stays. So ratio = 48 (B + V) / (B + 25 V). Counted with
``torch.utils.flop_counter`` on FFHQ-512: B = 94 GFLOP, the neural render
13 GFLOP (plus grid sampling, not counted), the 8XDC super-resolution head
198 GFLOP per view. Neural only, the bound is about 12x; with the
super-resolution head it is 48 x 305 / (94 + 25 x 211) = 2.7x on any device,
and slim512 (narrow backbone, same head) gets little beyond 48/25 = 1.9x. Beating
that would mean changing the pictures (fewer distinct views, a cheaper head),
which this benchmark does not do.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

from engine.render import frames as R  # noqa: E402
from engine.nets import camera, eg3d  # noqa: E402


@dataclasses.dataclass
class Row:
    preset: str
    mode: str
    device: str
    neural_res: int
    samples: str
    measured: int
    frames: int
    fps_ours: float
    fps_naive: float
    max_diff: float
    note: str

    @property
    def ratio(self) -> float:
        return self.fps_ours / self.fps_naive


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(dev, fn):
    _sync(dev)
    t = time.perf_counter()
    out = fn()
    _sync(dev)
    return time.perf_counter() - t, out


@torch.no_grad()
def bench_one(preset: str, mode: str, dev: torch.device, frames: int, measure: int, views_per_pass: int,
              neural_res: int | None, samples: int | None, note: str) -> Row:
    G = eg3d.slim_generator(preset, seed=0, device=dev)
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)).to(dev),
                   camera.conditioning_label(1, device=dev))
    full_path = R.camera_path("orbit", frames)
    distinct = int(torch.unique(full_path, dim=0).shape[0])  # views ours actually renders for the whole loop
    cams = full_path.to(dev)[:measure]
    sr = mode == "sr"
    res = int(neural_res or G.config.neural_rendering_resolution)
    size = G.config.img_resolution if sr else res
    settings = R.RenderSettings(size=size, views_per_pass=views_per_pass, neural_rendering_resolution=neural_res,
                                depth_resolution=samples, depth_resolution_importance=samples, superresolution=sr)
    render_kw = dict(neural_rendering_resolution=neural_res, depth_resolution=samples,
                     depth_resolution_importance=samples, superresolution=sr)
    # warm-up (allocator, kernels) on one frame each
    R.render_frames(G, None, ws, None, cams[:1], settings)
    G.synthesis(ws, cams[:1], **render_kw)

    t_planes, _ = _timed(dev, lambda: G.planes(ws))
    t_ours, batch = _timed(dev, lambda: R.render_frames(G, None, ws, None, cams, settings))
    naive = []
    t_naive, _ = _timed(dev, lambda: naive.extend(G.synthesis(ws, cams[k:k + 1], **render_kw)["image" if sr else "image_raw"]
                                                  for k in range(measure)))
    measured_views = int(torch.unique(cams, dim=0).shape[0])
    per_view = max(t_ours - t_planes, 1e-9) / measured_views
    ours_total = t_ours if measure == frames else t_planes + distinct * per_view
    naive_total = t_naive / measure * frames
    # Same frame without the matte region (which clears background density on purpose): must equal the generator's.
    plain = R.render_frames(G, None, ws, None, cams[:1], dataclasses.replace(settings, matte=R.MatteConfig(mask_density=False)))
    diff = float((plain.rgb[:1] - naive[0].float()).abs().max())
    n_samp = G.config.rendering.depth_resolution if samples is None else samples
    return Row(preset, mode, dev.type, res, f"{n_samp}+{n_samp}", measure, frames, frames / ours_total,
               frames / naive_total, diff, note)


def _fmt(r: Row) -> str:
    return (f"{r.preset:8} {r.mode:6} {r.device:4} {r.neural_res:>4} {r.samples:>7} {r.fps_ours:>9.3f} "
            f"{r.fps_naive:>9.3f} {r.ratio:>5.1f}x {r.max_diff:>8.1e}  {r.note}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="multi-view rendering vs per-frame generator (48-frame orbit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--presets", nargs="*", default=None, choices=sorted(eg3d.PRESETS),
                   help="EG3D configurations (default: slim512 and ffhq512)")
    p.add_argument("--preset", choices=["slim", "full"], default=None,
                   help="the pipeline preset's EG3D: slim = slim512, full = ffhq512 (official size, random weights)")
    p.add_argument("--modes", nargs="*", default=["neural", "sr"], choices=["neural", "sr"])
    p.add_argument("--measure-frames", type=int, default=4, help="frames actually rendered in slow CPU cases")
    p.add_argument("--full-neural-res", type=int, default=32, help="ffhq512 neural resolution on the CPU")
    p.add_argument("--views-per-pass", type=int, default=None,
                   help="default: the engine's auto choice (1 on the CPU, 8 on CUDA)")
    a = p.parse_args(argv)
    if a.preset is not None and a.presets is not None:
        p.error("give --preset or --presets, not both")
    a.presets = a.presets or ({"slim": ["slim512"], "full": ["ffhq512"]}[a.preset] if a.preset else ["slim512", "ffhq512"])
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if a.device == "auto" else a.device))
    vpp = a.views_per_pass or (R.GPU_VIEWS_PER_PASS if dev.type == "cuda" else 1)
    rows = []
    print(f"{'preset':8} {'mode':6} {'dev':4} {'nres':>4} {'samples':>7} {'fps ours':>9} {'fps naive':>9} {'ratio':>6} {'maxdiff':>8}  note",
          file=sys.stderr)
    for preset in a.presets:
        for mode in a.modes:
            full_cpu = dev.type == "cpu" and preset == "ffhq512"
            slow_cpu = dev.type == "cpu" and (mode == "sr" or full_cpu)
            measure = min(a.frames, a.measure_frames) if slow_cpu else a.frames
            neural_res = a.full_neural_res if full_cpu else None
            samples = 24 if full_cpu else None
            note = []
            if measure < a.frames:
                note.append(f"{measure} frames measured, {a.frames} extrapolated")
            if full_cpu:
                note.append(f"CPU: neural res {neural_res}, 24+24 samples (reduced)")
            print(f"running {preset} {mode} on {dev.type} ...", file=sys.stderr, flush=True)
            rows.append(bench_one(preset, mode, dev, a.frames, measure, vpp, neural_res, samples, "; ".join(note)))
            print(_fmt(rows[-1]), file=sys.stderr, flush=True)
    print(f"\n{a.frames}-frame orbit, views_per_pass={vpp}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    head = f"{'preset':8} {'mode':6} {'dev':4} {'nres':>4} {'samples':>7} {'fps ours':>9} {'fps naive':>9} {'ratio':>6} {'maxdiff':>8}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(_fmt(r))
    if dev.type != "cuda":
        print("(no CUDA device: GPU figures not measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
