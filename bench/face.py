"""Face front end benchmark: milliseconds per image on the CPU.

    python bench/face.py [--repeats N] [--image PATH] [--sizes 512,2048,4032]

For each photo size (the astronaut, or ``--image``, resized so that its longer
side is the given size) it prints the median over ``--repeats`` of:

- decode: ``emoji3d.images.decode_image`` of a JPEG of that photo;
- landmarks: one MediaPipe face-mesh pass (detector created once, outside the timing);
- pose: the weighted Procrustes fit + EG3D label;
- check: ``check_face`` (landmarks + size, pose, eyes checks; what a bot needs);
- ffhq / ffhq recipe / ffhq@1024: the FFHQ 1024 crop with the default config
  (a reduced square sampled at 2x the output after an antialiased shrink of the
  cropped region; direct sampling when it is enlarged), with the recipe's
  sampling at 4096 (``supersample=0``, the path before), and with sampling
  always at 1024;
- refine: the second landmark pass on a quick 512 crop;
- eg3d_512: the EG3D crop;
- analyze: the whole ``analyze_face`` (default config).

Then, side by side in one run, the FFHQ crop of the astronaut upscaled (bicubic)
to ``--megapixels`` (default 12, a phone selfie), and of a close-up of its head
upscaled the same way (the square then spans over 2x the output, so the crop is
shrunk before sampling): before (the recipe's 4096 sampling) and after (the
default), milliseconds and the PSNR between the two crops.

Last, a house style's face per pack job: analysed in every job (before) against
kept between jobs (``engine.face_memo``, now).

One thread (``OMP_NUM_THREADS=1``) unless the environment says otherwise.
"""
from __future__ import annotations

import argparse
import io
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image", help="photo to use (default: skimage.data.astronaut)")
    p.add_argument("--sizes", default="512,2048,4032", help="longer side of the photo, comma-separated")
    p.add_argument("--megapixels", type=float, default=12.0, help="photo size of the before/after FFHQ crop")
    args = p.parse_args(argv)

    from emoji3d.images import decode_image, read_image_file
    from engine.face import align as fa
    from engine.face.analyze import FaceConfig, analyze_face, check_face, refined_ffhq_anchors
    from engine.face.landmarks import LandmarkDetector
    from engine.face.pose import label_from_pose, solve_head_pose

    if args.image:
        base = read_image_file(args.image)
    else:
        from skimage import data

        base = data.astronaut()
    rows = []
    with LandmarkDetector() as det:
        for size in (int(s) for s in args.sizes.split(",")):
            h, w = base.shape[:2]
            k = size / max(h, w)
            rgb = np.asarray(Image.fromarray(base).resize((round(w * k), round(h * k)), Image.BICUBIC))
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, "JPEG", quality=92)
            jpeg = buf.getvalue()
            face = det.detect(rgb, 1)[0]
            anchors = fa.ffhq_anchor_points(face)
            r = args.repeats
            row = {
                "photo": f"{rgb.shape[1]}x{rgb.shape[0]}",
                "decode": _median_ms(lambda: decode_image(jpeg), r),
                "landmarks": _median_ms(lambda: det.detect(rgb, 1), r),
                "pose": _median_ms(lambda: label_from_pose(solve_head_pose(face.points)), r),
                "check": _median_ms(lambda: check_face(rgb, FaceConfig(), det), r),
                "ffhq": _median_ms(lambda: fa.ffhq_crop(rgb, anchors), r),
                "ffhq recipe": _median_ms(lambda: fa.ffhq_crop(rgb, anchors, fa.FfhqCropConfig(supersample=0)), r),
                "ffhq@1024": _median_ms(lambda: fa.ffhq_crop(rgb, anchors, fa.FfhqCropConfig(transform_size=1024)), r),
                "refine": _median_ms(lambda: refined_ffhq_anchors(rgb, face, det), r),
                "eg3d_512": _median_ms(lambda: fa.eg3d_crop(rgb, face.five_points()), r),
                "analyze": _median_ms(lambda: analyze_face(rgb, FaceConfig(), det), max(1, r // 2)),
            }
            rows.append(row)
    cols = list(rows[0])
    print(f"face front end, ms per image (median), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("  ".join(f"{c:>10}" for c in cols))
    for row in rows:
        print("  ".join(f"{row[c]:>10}" if isinstance(row[c], str) else f"{row[c]:>10.1f}" for c in cols))
    ffhq_before_after(base, args.megapixels, args.repeats)
    if not args.image:  # a close-up selfie: the astronaut's head, filling more of the frame
        ffhq_before_after(np.ascontiguousarray(base[0:256, 112:368]), args.megapixels, args.repeats)
    style_face_before_after(base, args.repeats)
    return 0


def style_face_before_after(base: np.ndarray, repeats: int) -> None:
    """A house style's face per pack job: analysed from the image's bytes in every job (before)
    against kept between jobs by ``engine.face_memo.FaceMemo`` (now, every job after the first)."""
    from emoji3d.images import decode_image
    from engine.face.analyze import FaceConfig, analyze_face
    from engine.face.landmarks import LandmarkDetector
    from engine.face_memo import FaceMemo

    toon = pathlib.Path(__file__).resolve().parent.parent / "styles" / "toon" / "exemplar.png"
    buf = io.BytesIO()
    Image.fromarray(base).resize((2048, 2048), Image.BICUBIC).save(buf, "JPEG", quality=92)
    images = {"the bundled toon exemplar (512 px PNG)": toon.read_bytes(),
              "a 2048 px JPEG style image": buf.getvalue()}
    print("\nA house style's face per pack job (decode and analyse, ms, median; now: after the style's first job)")
    print("| style image | analysed every job (before) | kept between jobs (now) |")
    print("|---|---:|---:|")
    with LandmarkDetector() as det:
        for name, data in images.items():
            def analyse(data=data):
                return analyze_face(decode_image(data), FaceConfig(), det)

            memo = FaceMemo()
            memo.get_or_analyse(name, analyse)  # the style's first job
            before = _median_ms(analyse, repeats)
            now = _median_ms(lambda: memo.get_or_analyse(name, analyse), repeats)
            print(f"| {name} | {before:.1f} | {now:.3f} |")


def ffhq_before_after(base: np.ndarray, megapixels: float, repeats: int) -> None:
    """The FFHQ crop of ``base`` upscaled to ``megapixels``: the recipe's sampling vs the default."""
    from engine.checks.face_geometry import psnr
    from engine.face import align as fa
    from engine.face.landmarks import LandmarkDetector

    h, w = base.shape[:2]
    k = (megapixels * 1e6 / (h * w)) ** 0.5
    rgb = np.asarray(Image.fromarray(base).resize((round(w * k), round(h * k)), Image.BICUBIC))
    with LandmarkDetector() as det:
        anchors = fa.ffhq_anchor_points(det.detect(rgb, 1)[0])
    before_cfg, after_cfg = fa.FfhqCropConfig(supersample=0), fa.FfhqCropConfig()
    before, after = fa.ffhq_crop(rgb, anchors, before_cfg), fa.ffhq_crop(rgb, anchors, after_cfg)
    ms_before = _median_ms(lambda: fa.ffhq_crop(rgb, anchors, before_cfg), repeats)
    ms_after = _median_ms(lambda: fa.ffhq_crop(rgb, anchors, after_cfg), repeats)
    print(f"\nFFHQ 1024 crop of a {rgb.shape[1]}x{rgb.shape[0]} photo ({rgb.shape[0] * rgb.shape[1] / 1e6:.1f} MP; "
          f"the square spans {before.qsize:.0f} px)")
    print("| crop | ms (median) | speed-up | PSNR vs before dB | matrix max diff px |")
    print("|---|---|---|---|---|")
    print(f"| before: the recipe (4096 sampling) | {ms_before:.0f} | 1.0x | - | - |")
    corners = np.array([[0.0, 0.0], [rgb.shape[1], 0.0], [0.0, rgb.shape[0]], [rgb.shape[1], rgb.shape[0]]])
    moved = float(np.abs(fa.apply(after.matrix, corners) - fa.apply(before.matrix, corners)).max())
    print(f"| after (default): shrink the crop, sample at {int(after_cfg.supersample * after_cfg.output_size)} | "
          f"{ms_after:.0f} | {ms_before / ms_after:.1f}x | {psnr(after.image, before.image):.1f} | {moved:.2g} |")
    one_cfg = fa.FfhqCropConfig(supersample=1.0)
    one = fa.ffhq_crop(rgb, anchors, one_cfg)
    ms_one = _median_ms(lambda: fa.ffhq_crop(rgb, anchors, one_cfg), repeats)
    print(f"| supersample 1: shrink the crop, sample at {one_cfg.output_size} | {ms_one:.0f} | "
          f"{ms_before / ms_one:.1f}x | {psnr(one.image, before.image):.1f} | "
          f"{float(np.abs(fa.apply(one.matrix, corners) - fa.apply(before.matrix, corners)).max()):.2g} |")


if __name__ == "__main__":
    sys.exit(main())
