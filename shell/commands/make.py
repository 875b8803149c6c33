"""``emoji3d make``: one sticker pack from a selfie and a style, on this machine.

It runs the real job path on the embedded defaults: the selfie and style go
into the SQLite database and blob folder, a ``make_pack`` job is queued, an
in-process engine worker runs it (with a progress bar fed by the job's
recorded stage and fraction), and the result's files are copied to ``--out``.
Whatever the build cannot do yet is printed plainly, and slim random weights
are announced loudly: nothing is ever faked.
"""
from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import pathlib
import sys
import threading
import time

from emoji3d.config import Config, load_config
from emoji3d.errors import UserFacingError
from storage.connect import open_storage
from emoji3d.texts import explain, message, quality_summary


def _prepare(cfg: Config, args):
    from storage import selfies, styles as st, users

    from emoji3d.images import DecodeLimits, decode_image
    from emoji3d.orders import PackOrder
    from storage.packs import order_pack
    from storage.style_catalog import sync_global_styles

    db, blobs = open_storage(cfg)
    limits = DecodeLimits(max_megapixels=cfg.limits.max_image_megapixels, max_bytes=cfg.limits.max_upload_mb << 20)

    def read_image(path: pathlib.Path) -> bytes:
        data = path.read_bytes()
        decode_image(data, limits)  # refuse bad input before anything is stored
        return data

    user = users.get_or_create_user(db, "local", getpass.getuser() or "local")
    users.record_consent(db, user.id)
    selfie_digest = blobs.put_bytes(read_image(args.selfie))
    ttl = cfg.privacy.selfie_retention_hours * 3600 or None
    selfies.add_selfie(db, user.id, selfie_digest, ttl_seconds=ttl)

    style_path = pathlib.Path(args.style)
    if style_path.is_file():
        exemplar, style_id, style_version = blobs.put_bytes(read_image(style_path)), None, None
    else:
        sync_global_styles(db, blobs, cfg.styles_dir, cfg.limits.max_image_megapixels)
        style = st.find_style(db, args.style)
        if style is None:
            raise st.StyleNotFound(f"no global style named {args.style!r} in {cfg.styles_dir}", name=args.style)
        exemplar, style_id, style_version = style.exemplar_digest, style.id, style.version
    order = PackOrder(user_id=user.id, selfie_digest=selfie_digest, exemplar_digest=exemplar, strength=args.strength,
                      platform="local", style_id=style_id, style_version=style_version, seed=args.seed,
                      settings=cfg.pipeline.digest("style", "inversion", "pti", "dual"), mesh=args.mesh)
    pack, job_id = order_pack(db, order)
    return db, blobs, pack, job_id


def _progress_bar(db, job_id: int, done: threading.Event) -> None:
    """A live bar on a terminal; one line per stage change otherwise (logs, CI)."""
    from tqdm import tqdm

    from storage import jobs

    live = sys.stderr.isatty()
    bar = tqdm(total=100, unit="%", bar_format="{desc:<28} {bar} {n:.0f}% [{elapsed}]", file=sys.stderr,
               disable=not live)
    last_stage = None
    while True:
        finished = done.wait(0.5)
        job = jobs.get_job(db, job_id)
        stage = job.stage or job.status
        if live:
            bar.set_description_str(job.status if finished else stage)
            bar.n = 100.0 if job.status == "succeeded" else round(100 * (job.progress or 0.0), 1)
            bar.refresh()
        elif stage != last_stage:
            print(f"[{100 * (job.progress or 0.0):5.1f}%] {stage}", file=sys.stderr, flush=True)
        last_stage = stage
        if finished:
            break
    bar.close()


def _run_job(cfg: Config, db, blobs, job_id: int) -> None:
    from engine.tasks import build_handlers
    from engine.worker import Worker
    from storage import jobs

    if jobs.get_job(db, job_id).done:
        return
    print("loading the networks (once per engine process)...", file=sys.stderr)
    worker = Worker(db, blobs, build_handlers(cfg), f"make:{os.getpid()}", float(cfg.engine.lease_seconds),
                    poll_interval=0.2)
    done = threading.Event()
    bar = threading.Thread(target=_progress_bar, args=(db, job_id, done), daemon=True)
    bar.start()
    try:
        while not jobs.get_job(db, job_id).done:
            if not worker.run_once():
                time.sleep(0.2)  # waiting for a retry backoff, or another worker holds it
    finally:
        done.set()
        bar.join(timeout=5)


def _extension(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"GIF8"):
        return "gif"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "bin"


def _export(blobs, result, out: pathlib.Path) -> list[pathlib.Path]:
    from storage.blobs import copy_out

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, digest in enumerate(result.renders):
        written.append(copy_out(blobs, digest, out / f"avatar_view{i}.png"))
    if result.avatar:
        written.append(copy_out(blobs, result.avatar, out / "avatar.safetensors"))
    for s in result.stickers:
        for target, digest in s.files.items():
            ext = _extension(blobs.read_bytes(digest)[:16])
            written.append(copy_out(blobs, digest, out / f"{s.idx:02d}_{s.name}.{target}.{ext}"))
    for target, digest in result.thumbnail.items():
        written.append(copy_out(blobs, digest, out / f"thumbnail.{target}.{_extension(blobs.read_bytes(digest)[:16])}"))
    for name, digest in (("preview.png", result.preview_png), ("preview.html", result.preview_html),
                         ("avatar.glb", result.mesh)):
        if digest:
            written.append(copy_out(blobs, digest, out / name))
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    written.append(out / "result.json")
    return written


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="emoji3d make", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="path to config.toml")
    p.add_argument("--selfie", required=True, type=pathlib.Path, help="a photo of one face")
    p.add_argument("--style", required=True, help="a global style name (see `emoji3d styles list`) or an image path")
    p.add_argument("--strength", type=float, default=1.0, help="0 = photo-real, 1 = fully stylized (default 1)")
    p.add_argument("--out", type=pathlib.Path, help="output folder (default: config's out_dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="cut every optimisation stage to this many steps (quick CPU runs)")
    p.add_argument("--mesh", action="store_true", help="also export the avatar as a GLB mesh (avatar.glb)")
    args = p.parse_args(argv)
    if not 0.0 <= args.strength <= 1.0:
        p.error(f"--strength must be within [0, 1], got {args.strength}")
    cfg = load_config(args.config)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, pipeline=cfg.pipeline.reduced(args.steps))
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    out = args.out or cfg.out_dir

    from engine.avatar.networks import SLIM_WARNING, pretrained_available
    from storage import jobs

    from storage.packs import result_of

    slim = cfg.engine.preset == "slim" or (cfg.engine.preset == "auto" and not pretrained_available(cfg.weights_dir))
    if slim:
        print(f"\n*** {SLIM_WARNING} ***\n", file=sys.stderr)
    db, blobs, pack, job_id = _prepare(cfg, args)
    try:
        print(f"pack {pack.id}: job {job_id}", file=sys.stderr)
        _run_job(cfg, db, blobs, job_id)
        job = jobs.get_job(db, job_id)
        if job.status != "succeeded":
            text = message(job.error_key or "internal", detail=job.error or "")
            print(f"job {job_id} {job.status}: {text}", file=sys.stderr)
            if job.error and job.error_key in (None, "internal"):
                print(f"  reason: {job.error}", file=sys.stderr)
            return 2 if job.error_key and job.error_key != "internal" else 1
        result = result_of(job)
        for path in _export(blobs, result, out):
            print(f"wrote {path}")
        for w in result.warnings:
            print(f"note: {message(w['key'], **{k: v for k, v in w.items() if k != 'key'})}", file=sys.stderr)
        if result.preset == "slim":
            print(f"\n*** {SLIM_WARNING} ***", file=sys.stderr)
        for line in result.missing:
            print(f"NOT MADE: {line}", file=sys.stderr)
        if result.quality:
            print(quality_summary(result.quality, result.preset), file=sys.stderr)
        if result.preview_html:
            print(f"open {out / 'preview.html'} to see the pack", file=sys.stderr)
        return 0
    except UserFacingError as exc:
        print(explain(exc), file=sys.stderr)
        return 2
    finally:
        db.dispose()
