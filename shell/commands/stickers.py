"""``emoji3d stickers ...`` commands (wired by shell/cli.py through :func:`main`).

* ``encode FRAMES_DIR --target NAME --out FILE [--fps 30] [--json REPORT]``:
  frames are numbered PNGs (``0001.png``, ``frame_2.png`` ...; sorted by the
  last number in the name). RGB PNGs are read as opaque RGBA. Writes FILE
  atomically and prints the report. Exit 0 on success, 1 if nothing fits.
* ``verify FILE --target NAME [--json]``: decodes FILE, prints the report and
  exits 1 on any violation, 0 when it passes.
* ``preview FRAMES_DIR [FRAMES_DIR ...] --out-dir DIR [--fps 30] [--title T]``:
  writes ``sheet.png`` and ``index.html`` (self-contained) for a pack; each
  folder is one sticker named after the folder.
Exit code 2 is a usage or input error (bad folder, unreadable frame).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from emoji3d.errors import UserFacingError

from engine.stickers.targets import TARGETS

_NUM = re.compile(r"(\d+)")


def load_frames_dir(folder: str | os.PathLike) -> list[np.ndarray]:
    """Numbered PNGs in ``folder`` -> RGBA uint8 frames ``(H, W, 4)`` in numeric order."""
    from PIL import Image

    from engine.stickers.errors import StickerInputError

    d = Path(folder)
    if not d.is_dir():
        raise StickerInputError(f"{d} is not a folder")
    numbered = []
    for p in d.iterdir():
        if p.suffix.lower() != ".png" or not p.is_file():
            continue
        nums = _NUM.findall(p.stem)
        if not nums:
            raise StickerInputError(f"{p.name} has no frame number in its name")
        numbered.append((int(nums[-1]), p.name, p))
    if not numbered:
        raise StickerInputError(f"no PNG frames in {d}")
    numbered.sort()
    seen = [n for n, _, _ in numbered]
    if len(set(seen)) != len(seen):
        raise StickerInputError(f"two frames in {d} share a number")
    frames = []
    for _, name, p in numbered:
        try:
            with Image.open(p) as im:
                frames.append(np.asarray(im.convert("RGBA")).copy())
        except OSError as e:
            raise StickerInputError(f"cannot read frame {name}: {e}") from e
    return frames


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _cmd_encode(a) -> int:
    from engine.stickers.encode import encode
    from engine.stickers.errors import StickerEncodeError

    frames = load_frames_dir(a.frames_dir)
    try:
        res = encode(frames, a.fps, a.target)
    except StickerEncodeError as e:
        print(f"error [{e.key}]: {e}", file=sys.stderr)
        return 1
    out = Path(a.out)
    _write_atomic(out, res.data)
    r = res.report
    print(r.summary())
    for adj in r.adjustments:
        print(f"  adjusted: {adj}")
    if out.suffix.lower() != res.extension:
        print(f"  note: wrote a {r.container.upper()} file; its usual extension is {res.extension}")
    if a.json:
        _write_atomic(Path(a.json), json.dumps(_jsonable(asdict(r)), indent=2).encode())
    return 0


def _cmd_verify(a) -> int:
    from engine.stickers.verify import verify

    p = Path(a.file)
    if not p.is_file():
        print(f"error: {p} is not a file", file=sys.stderr)
        return 2
    rep = verify(p, a.target)
    if a.json:
        print(json.dumps(_jsonable(asdict(rep)), indent=2))
    else:
        print(rep.summary())
    return 0 if rep.ok else 1


def _cmd_preview(a) -> int:
    from engine.stickers.preview import PackItem, build_pack_preview

    names = [Path(d).resolve().name for d in a.frames_dirs]
    if len(set(names)) != len(names):
        print("error: two frame folders have the same name; each folder names one sticker", file=sys.stderr)
        return 2
    items = [PackItem(n, load_frames_dir(d), a.fps) for n, d in zip(names, a.frames_dirs)]
    pv = build_pack_preview(a.title, items)
    out = Path(a.out_dir)
    _write_atomic(out / "sheet.png", pv.sheet_png)
    _write_atomic(out / "index.html", pv.html.encode("utf-8"))
    print(f"wrote {out / 'sheet.png'} and {out / 'index.html'} ({len(items)} stickers)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="emoji3d stickers", description="Encode, verify and preview sticker files.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    names = sorted(TARGETS)
    e = sub.add_parser("encode", help="encode numbered RGBA PNG frames into a sticker file")
    e.add_argument("frames_dir")
    e.add_argument("--target", required=True, choices=names)
    e.add_argument("--out", required=True)
    e.add_argument("--fps", type=float, default=30.0, help="input frame rate (default 30)")
    e.add_argument("--json", help="also write the encode report as JSON here")
    e.set_defaults(fn=_cmd_encode)
    v = sub.add_parser("verify", help="check a file against a target's rules (exit 1 on any violation)")
    v.add_argument("file")
    v.add_argument("--target", required=True, choices=names)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(fn=_cmd_verify)
    p = sub.add_parser("preview", help="contact sheet + self-contained HTML page for a pack")
    p.add_argument("frames_dirs", nargs="+")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--title", default="emoji3d sticker pack")
    p.set_defaults(fn=_cmd_preview)
    return ap


def main(argv: list[str]) -> int:
    ap = build_parser()
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help / usage errors
        return int(e.code or 0) if e.code in (0, None) else 2
    try:
        return a.fn(a)
    except UserFacingError as e:
        print(f"error [{e.key}]: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
