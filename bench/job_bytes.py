"""The CPU work a make_pack job did on its own thread between the GPU's parts, before and now, side by side.

    python bench/job_bytes.py [--preset ffhq512|slim128] [--device auto|cpu|cuda] [--repeats 3]

Two places in ``engine.tasks._make_pack`` at the preset's size (random weights; random deltas of the
magnitude ``bench/avatar_bytes.py`` assumes: PTI 2 %, stylized residual 5 % of each tensor's std), into a
real job cache (``engine.tasks.BlobArtifactCache``: SQLite and a local blob folder in a temporary folder):

* **after pivotal tuning**, before stage 5 starts: the ``portrait_3d`` artifact. Before, the job's thread
  rounded the PTI delta, entropy-coded it into the artifact's bytes, stored them, and the first-look
  still decoded those bytes again to render the photo-real avatar. Now it rounds the delta, copies the
  rounded values to the CPU and hands the bytes to the cache's own thread (``put_later``); the still
  takes the rounded values themselves.
* **after the pack's files**: the avatar file. Before, it was made there (rounding and coding of the
  stylized residual). Now the residual is rounded right after stage 5 and coded on a thread beside the
  render and encode of the pack.

Columns: the seconds on the job's thread (the critical path: the GPU waits), and the seconds of the work
moved beside it, which overlaps stage 5 or the pack (on a GPU host, stage 5 takes seconds and the pack's
encoders leave cores free; ``engine.render.pack`` uses at most 12). The still's render itself is the same
GPU work either way and is left out. Each row checks that the stored bytes hold the same tensors as
before's. Medians of ``--repeats``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

from bench.store_pack import job_context  # noqa: E402
from engine.avatar import avatar_file, params, portrait_artifact  # noqa: E402
from engine.avatar.pipeline import AvatarResult  # noqa: E402
from engine.avatar.tensor_file import pack_tensors, unpack_tensors  # noqa: E402
from engine.nets.eg3d import PRESETS, TriPlaneGenerator  # noqa: E402
from engine.render.frames import camera_path  # noqa: E402
from engine.tasks import BlobArtifactCache  # noqa: E402
from storage import users  # noqa: E402
from storage.blobs import BlobStore  # noqa: E402
from storage.db import open_database  # noqa: E402
from tests.engine.avatar.deltas import random_delta  # noqa: E402

PORTRAIT, STYLE = "the-selfie", "the-style"


def portrait_before(cache: BlobArtifactCache, art: portrait_artifact.PortraitArtifact, g3d) -> dict:
    """The hand-off after PTI as it was: everything on the job's thread, and the still from the bytes."""
    quantised = portrait_artifact.quantise(art)
    quantised.stored()  # what stage 5 continues from, made either way
    blob = quantised.to_bytes()
    cache.put("portrait_3d", PORTRAIT, blob)
    return params.apply_delta(g3d, portrait_artifact.from_bytes(blob).delta_pti)


def portrait_now(cache: BlobArtifactCache, art: portrait_artifact.PortraitArtifact, g3d) -> dict:
    """The hand-off now (``Pipeline.invert_portrait`` and the engine's ``on_portrait``)."""
    quantised = portrait_artifact.quantise(art)
    stored = quantised.stored()
    cache.put_later("portrait_3d", PORTRAIT, quantised.to("cpu").to_bytes)
    return params.apply_delta(g3d, stored.delta_pti)


def same_tensors(a: bytes, b: bytes) -> bool:
    mine, theirs = unpack_tensors(a), unpack_tensors(b)
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ffhq512", choices=sorted(PRESETS))
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    g3d = TriPlaneGenerator.from_config(PRESETS[args.preset], seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    pti, residual = random_delta(g3d, 0.02, gen), random_delta(g3d, 0.05, gen)
    g3d.to(dev)
    names = g3d.backbone.synthesis.noise_layer_names()
    noise = {n: torch.randn(1, 1, int(n[1:].split(".")[0]), int(n[1:].split(".")[0]), generator=gen).to(dev)
             for n in names}
    w_2d, w_3d = torch.randn(1, 14, 512, generator=gen).to(dev), torch.randn(1, g3d.num_ws, 512, generator=gen).to(dev)
    art = portrait_artifact.PortraitArtifact(
        w_2d=w_2d, w_3d=w_3d, noise=noise, camera=camera_path("still", 1),
        crop2d_to_crop3d=torch.eye(2, 3, dtype=torch.float64), delta_pti={k: v.to(dev) for k, v in pti.items()})
    stored_pti = portrait_artifact.quantise(art).stored().delta_pti
    result = AvatarResult(w_e=torch.randn(14, 512, generator=gen), w_2d=w_2d, w_3d=w_3d, noise=noise,
                          camera=camera_path("still", 1), delta_2d={}, delta_pti=stored_pti,
                          delta_stylized={k: (v.float() + residual[k].to(dev).float()).half()
                                          for k, v in stored_pti.items()})
    n_weights = sum(v.numel() for v in pti.values())

    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(f"sqlite:///{tmp}/bench.db")
        blobs = BlobStore(db, pathlib.Path(tmp) / "blobs")
        user = users.get_or_create_user(db, "telegram", "1")
        times: dict[str, list[float]] = {}
        stored: dict[str, bytes] = {}

        def timed(label: str, fn):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.setdefault(label, []).append(time.perf_counter() - t0)
            return out

        for _ in range(args.repeats):
            for way in ("before", "now"):
                with BlobArtifactCache(job_context(db, blobs), user.id, shared_style=False) as cache:
                    cache.put("style_2d", STYLE, pack_tensors({"w_e": result.w_e}))
                    hand_off = portrait_before if way == "before" else portrait_now
                    timed(f"portrait {way}", lambda: hand_off(cache, art, g3d))
                    if way == "now":  # what is left of the bytes' making when the job's thread goes on
                        timed("portrait now beside", cache.settle)
                    stored[f"portrait {way}"] = cache.get("portrait_3d", PORTRAIT)
                    keys = {"style_key": STYLE, "portrait_key": PORTRAIT}
                    if way == "before":
                        stored["avatar before"] = timed("avatar before", lambda: avatar_file.result_to_bytes(
                            result, cache, **keys))
                    else:
                        rounded = timed("avatar now", lambda: avatar_file.quantise_residual(result).to("cpu"))
                        stored["avatar now"] = timed("avatar now beside", lambda: avatar_file.result_to_bytes(
                            result, cache, **keys, residual=rounded))
        db.dispose()

    def median(label: str) -> float:
        values = sorted(times[label])
        return values[len(values) // 2]

    print(f"make_pack's bytes between its GPU parts, EG3D {args.preset}: {n_weights / 1e6:.1f} M tuned weights "
          f"on {dev} (torch threads {torch.get_num_threads()}), SQLite + local blob folder, median of {args.repeats}")
    print("| where | before: s on the job's thread | now: s on the job's thread | now: s beside it | "
          "x before (job's thread) | same stored tensors |")
    print("|---|---:|---:|---:|---:|---|")
    for what, label in (("portrait", "after pivotal tuning: the portrait_3d artifact and the first look's delta"),
                        ("avatar", "after the pack files: the avatar file")):
        before, now, beside = median(f"{what} before"), median(f"{what} now"), median(f"{what} now beside")
        same = same_tensors(stored[f"{what} before"], stored[f"{what} now"])
        print(f"| {label} | {before:.3f} | {now:.3f} | {beside:.3f} | {before / max(now, 1e-9):.1f} | "
              f"{'yes' if same else 'NO'} |", flush=True)
    saved = median("portrait before") + median("avatar before") - median("portrait now") - median("avatar now")
    print(f"off the job's thread per order: {saved:.2f} s")


if __name__ == "__main__":
    main()
