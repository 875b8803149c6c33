"""``emoji3d face``: run the face front end on a photo, or check face reference fixtures.

    emoji3d face PATH --out DIR [--max-yaw DEG] [--max-pitch DEG] [--min-face-px PX]
    emoji3d face check-reference DIR [DIR ...]

The first writes into DIR: ``ffhq_1024.png``, ``e4e_256.png``, ``eg3d_512.png``,
``landmarks.png`` (the photo with the 478 points, the five EG3D points and the
FFHQ square drawn on it) and ``face.json`` (landmarks, pose angles, 25-number
camera label, crop matrices; see ``engine.face.analyze.result_to_json``). The photo
is read and decoded as the bots decode uploads (``emoji3d.images``: at most 40 MP,
decoded reduced to a long side of ``--max-side-px``, EXIF orientation applied), so
every pixel coordinate refers to that decoded image (``face.json``'s
``image_size``). On bad input (no such file, a folder, not an image, no usable
face...) it prints the one sentence a chat user gets and exits 2.

The second prints each case's error for every folder (eg3d_crop or
eg3d_camera_labels kind) and exits 0 only when all pass (1 otherwise, 2 when a
folder is not a face-geometry fixture).
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

import numpy as np

from emoji3d.errors import UserFacingError


def _friendly(err: UserFacingError) -> str:
    from emoji3d.texts import explain

    return explain(err)


def draw_overlay(rgb: np.ndarray, result) -> np.ndarray:
    """The photo with the mesh points (green), the five EG3D points (red) and the FFHQ square (yellow)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(rgb)
    d = ImageDraw.Draw(img)
    r = max(1.0, min(img.size) / 400)
    for x, y in result.landmarks.xy[:468]:
        d.ellipse((x - r, y - r, x + r, y + r), fill=(0, 255, 0))
    for x, y in result.landmarks.five_points():
        d.ellipse((x - 3 * r, y - 3 * r, x + 3 * r, y + 3 * r), outline=(255, 0, 0), width=max(1, int(r)))
    q = [tuple(p) for p in result.ffhq.quad]
    d.line(q + [q[0]], fill=(255, 255, 0), width=max(1, int(r)))
    return np.asarray(img)


def _run_photo(path: str, out: pathlib.Path, args: argparse.Namespace) -> int:
    from PIL import Image

    from emoji3d.images import DecodeLimits, read_image_file
    from engine.face.analyze import FaceConfig, analyze_face, result_to_json

    try:
        rgb = read_image_file(path, DecodeLimits(max_megapixels=args.max_megapixels, max_side_px=args.max_side_px))
        cfg = FaceConfig(min_face_px=args.min_face_px, max_yaw_degrees=args.max_yaw, max_pitch_degrees=args.max_pitch)
        result = analyze_face(rgb, cfg)
    except UserFacingError as exc:
        print(_friendly(exc), file=sys.stderr)
        logging.getLogger("emoji3d.face").debug("refused (%s): %s", exc.key, exc)  # shown with emoji3d -v
        return 2
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.ffhq.image).save(out / "ffhq_1024.png")
    Image.fromarray(result.e4e_image).save(out / "e4e_256.png")
    Image.fromarray(result.eg3d.image).save(out / "eg3d_512.png")
    Image.fromarray(draw_overlay(rgb, result)).save(out / "landmarks.png")
    (out / "face.json").write_text(json.dumps(result_to_json(result), indent=1))
    for w in result.warnings:
        from emoji3d.texts import message

        print(message(w.key, **w.params), file=sys.stderr)
    p = result.pose
    turned = f" (photo turned {result.turn_degrees:.0f}° to make the face upright)" if result.turn_degrees else ""
    print(f"face {result.face_px:.0f} px, yaw {p.yaw_degrees:.1f}°, pitch {p.pitch_degrees:.1f}°, "
          f"roll {p.roll_degrees:.1f}°{turned} -> {out}")
    return 0


def _check_reference(folders: list[str]) -> int:
    from engine.checks import format_report
    from engine.checks import face_geometry

    all_ok = True
    for f in folders:
        folder = pathlib.Path(f)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file() or not face_geometry.matches(json.loads(cfg_path.read_text()), folder):
            print(f"{folder}: not an eg3d_crop or eg3d_camera_labels fixture folder", file=sys.stderr)
            return 2
        checks = face_geometry.run(folder)
        print(f"== {folder}")
        print(format_report(checks))
        all_ok &= all(c.passed for c in checks)
    return 0 if all_ok else 1


def main(argv: list[str]) -> int:
    argv = list(argv)
    if argv and argv[0] == "check-reference":
        p = argparse.ArgumentParser(prog="emoji3d face check-reference", description="check face geometry fixtures")
        p.add_argument("folders", nargs="+", metavar="DIR")
        return _check_reference(p.parse_args(argv[1:]).folders)
    p = argparse.ArgumentParser(
        prog="emoji3d face",
        description="Find, align, crop and pose the face in a photo. (Also: `emoji3d face check-reference DIR`.)",
    )
    p.add_argument("path", metavar="PATH", help="the photo")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--max-yaw", type=float, default=40.0, help="refuse heads turned further (degrees, default 40)")
    p.add_argument("--max-pitch", type=float, default=30.0, help="refuse heads tilted further (degrees, default 30)")
    p.add_argument("--min-face-px", type=int, default=128, help="refuse smaller faces (FFHQ square side, px; default 128)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="refuse larger photos (default 40)")
    p.add_argument("--max-side-px", type=int, default=2048,
                   help="decode larger photos reduced to this long side (default 2048, as the bots)")
    args = p.parse_args(argv)
    return _run_photo(args.path, pathlib.Path(args.out), args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
