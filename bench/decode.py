"""Decoding small files of huge images: seconds and peak memory, before and after reduced decoding.

    python bench/decode.py [--code ROOT] [--repeats N]

The files are the two of issue 15 (written to a temporary folder):

- ``grey_39mp.png``: a 7200x5400 grey PNG, about 50 KB;
- ``eoi_36mp.jpg``: a 2 KB JPEG whose header says 6000x6000 (its data ends
  early with an end-of-image marker, which libjpeg fills with grey);

and, for scale, ``photo_24mp.jpg``: the astronaut enlarged to 6000x4000.

For each file, in a fresh process each time (``--code`` picks the source tree
to measure, default this repository; pass an older checkout to get the
"before" numbers), it prints:

- decode: ``emoji3d.images.decode_image(data, DecodeLimits())``;
- intake: decode, then ``engine.face.analyze.analyze_face`` with one warm
  detector, what the bots do with every upload;
- intake x6: six uploads at once in six threads, as six users sending at the
  same moment (the detector is shared, as in the bots).

Seconds are wall time of the step (median of ``--repeats`` processes); peak MB
is the step's peak resident memory above the resident size it started from
(after imports and detector warm-up; Linux ``VmHWM`` reset through
``/proc/self/clear_refs``, else ``ru_maxrss``; the largest of the repeats). The outcome is the refusal key, or ``ok``. One thread per library
(``OMP_NUM_THREADS=1``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent

STEP = r"""
import json, resource, sys, threading, time
import numpy as np
from emoji3d.images import DecodeLimits, decode_image

step, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
detector = None
if step != "decode":
    from engine.face.analyze import FaceConfig, analyze_face
    from engine.face.landmarks import LandmarkDetector
    detector = LandmarkDetector(max_faces=4)
    detector.detect(np.full((64, 64, 3), 128, np.uint8))  # warm: MediaPipe's graph and buffers exist

def one(out):
    try:
        rgb = decode_image(data, DecodeLimits())
        if detector is not None:
            analyze_face(rgb, FaceConfig(), detector)
        out.append("ok")
    except Exception as exc:
        out.append(getattr(exc, "key", type(exc).__name__))

def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None

try:  # reset the peak (VmHWM) to the current size, so imports' own peak does not hide the step's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, peak_of = status_mb("VmRSS"), lambda: status_mb("VmHWM")
except OSError:
    base, peak_of = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
outcomes = []
t = time.perf_counter()
if step == "intake x6":
    threads = [threading.Thread(target=one, args=(outcomes,)) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
else:
    one(outcomes)
seconds = time.perf_counter() - t
peak = peak_of() - base
print(json.dumps({"seconds": seconds, "peak_mb": peak, "outcome": sorted(set(outcomes))}))
"""


def make_files(folder: pathlib.Path) -> list[pathlib.Path]:
    from PIL import Image

    grey = folder / "grey_39mp.png"
    Image.new("L", (7200, 5400), 128).save(grey, "PNG", optimize=True)
    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000), (128, 128, 128)).save(buf, "JPEG", quality=50)
    cut = folder / "eoi_36mp.jpg"
    cut.write_bytes(buf.getvalue()[:2046] + b"\xff\xd9")
    photo = folder / "photo_24mp.jpg"
    try:
        from skimage import data

        Image.fromarray(data.astronaut()).resize((6000, 4000), Image.BICUBIC).save(photo, "JPEG", quality=90)
    except ImportError:
        return [grey, cut]
    return [grey, cut, photo]


def run_step(code: pathlib.Path, step: str, path: pathlib.Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    proc = subprocess.run([sys.executable, "-c", STEP, step, str(path)], capture_output=True, text=True, cwd=code,
                          env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{step} {path.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=pathlib.Path, default=REPO, help="source tree to measure (default: this one)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    code = args.code.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(pathlib.Path(tmp))
        print(f"code: {code}   (seconds: median of {args.repeats} processes; peak MB: the largest)")
        print(f"{'file':<16} {'bytes':>8}  {'step':<10} {'seconds':>8} {'peak MB':>8}  outcome")
        for path in files:
            for step in ("decode", "intake", "intake x6"):
                runs = [run_step(code, step, path) for _ in range(args.repeats)]
                seconds = statistics.median(r["seconds"] for r in runs)
                peak = max(r["peak_mb"] for r in runs)
                outcome = ",".join(sorted({o for r in runs for o in r["outcome"]}))
                print(f"{path.name:<16} {path.stat().st_size:>8}  {step:<10} {seconds:>8.2f} {peak:>8.0f}  {outcome}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
