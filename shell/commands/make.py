"""``emoji3d make``: one sticker pack from a selfie and a style, on this machine.

It runs the real job path on the embedded defaults: the selfie and style go
into the SQLite database and blob folder, a ``make_pack`` job is queued, an
in-process engine worker runs it (with a progress bar fed by the job's
recorded stage and fraction), and the result's files are copied to ``--out``.
Whatever the build cannot do yet is printed plainly, and slim random weights
are announced loudly: nothing is ever faked.

The selfie and a style image given as a path are checked first, as the bots
check theirs: read with ``emoji3d.images.read_file_bounded`` (a missing path, a
folder or ``/dev/zero`` is refused in one sentence, exit 2), decoded with the
configured bounds, the face checked (the style through the style catalogue's
``validate_exemplar``), and stored as pixels only (``clean_image``: no EXIF, GPS
or other metadata). ``--style`` is a path when something exists there or when it
is not a valid style name; otherwise it names a global style.
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

from emoji3d.config import Config, load_config, prepare_data_dir
from emoji3d.errors import UserFacingError
from emoji3d.images import CleanImage, DecodeLimits, clean_image, read_file_bounded
from storage.connect import open_storage
from emoji3d.texts import explain, message, quality_summary


def _is_style_path(value: str) -> bool:
    from storage.style_catalog import STYLE_NAME

    return os.path.lexists(value) or not STYLE_NAME.match(value)


def _read_inputs(cfg: Config, args, face_check) -> tuple[CleanImage, CleanImage | None]:
    """The selfie and (when ``--style`` is a path) the style image, checked as the bots check theirs
    (``storage.style_catalog.validate_exemplar`` for the style): both files are read and decoded
    before the face detector is loaded, so a bad file is refused without it."""
    from storage.style_catalog import check_exemplar_face

    limits = DecodeLimits.from_config(cfg.limits)
    selfie = clean_image(read_file_bounded(args.selfie, limits.max_bytes), limits)
    style = None
    if _is_style_path(args.style):
        style = clean_image(read_file_bounded(args.style, limits.max_bytes), limits)
    face_check(selfie.rgb)
    if style is not None:
        check_exemplar_face(style.rgb, face_check)
    return selfie, style


def _prepare(cfg: Config, args, selfie: CleanImage, style_image: CleanImage | None, face_check):
    from storage import selfies, styles as st, users

    from emoji3d.orders import PackOrder
    from storage.packs import order_pack
    from storage.style_catalog import sync_global_styles

    db, blobs = open_storage(cfg)
    user = users.get_or_create_user(db, "local", getpass.getuser() or "local")
    users.record_consent(db, user.id)
    selfie_digest = blobs.put_bytes(selfie.png)
    ttl = cfg.privacy.selfie_retention_hours * 3600  # 0: kept only until the pack is made (storage.selfies)
    selfies.add_selfie(db, user.id, selfie_digest, ttl_seconds=ttl)

    if style_image is not None:
        exemplar, style_id, style_version = blobs.put_bytes(style_image.png), None, None
    else:
        sync_global_styles(db, blobs, cfg.styles_dir, DecodeLimits.from_config(cfg.limits), face_check=face_check)
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
    # Only this run's job: other users' queued jobs are not this command's business.
    worker = Worker(db, blobs, build_handlers(cfg), f"make:{os.getpid()}", float(cfg.engine.lease_seconds),
                    poll_interval=0.2, only_jobs=[job_id])
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


SEED_MAX = 2**31 - 1  # the order's seed plus [engine] seed seeds torch generators; keep well inside int64


def _bad_option(args) -> str | None:
    """One sentence for an option value the command cannot use, or None."""
    if not 0.0 <= args.strength <= 1.0:
        return f"--strength must be within [0, 1], got {args.strength}"
    if args.steps is not None and args.steps < 0:
        return f"--steps must be 0 or more, got {args.steps}"
    if not 0 <= args.seed <= SEED_MAX:
        return f"--seed must be within [0, {SEED_MAX}], got {args.seed}"
    return None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="emoji3d make", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="path to config.toml")
    p.add_argument("--selfie", required=True, type=pathlib.Path, help="a photo of one face")
    p.add_argument("--style", required=True, help="a global style name (see `emoji3d styles list`) or an image path")
    p.add_argument("--strength", type=float, default=1.0, help="0 = photo-real, 1 = fully stylized (default 1)")
    p.add_argument("--out", type=pathlib.Path, help="output folder (default: config's out_dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="cut every optimisation stage to this many steps (quick CPU runs)")
    p.add_argument("--preset", choices=("auto", "pretrained", "slim", "full"),
                   help="networks, overriding [engine] preset: 'full' = official sizes with random weights "
                        "(cost measurement, not an avatar)")
    p.add_argument("--mesh", action="store_true", help="also export the avatar as a GLB mesh (avatar.glb)")
    args = p.parse_args(argv)
    problem = _bad_option(args)
    if problem:
        print(f"emoji3d make: {problem}", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, pipeline=cfg.pipeline.reduced(args.steps))
    if args.preset is not None:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, preset=args.preset))
    out = args.out or cfg.out_dir

    from engine.face.analyze import FaceChecker, FaceConfig

    with FaceChecker(FaceConfig.from_limits(cfg.limits)) as face_check:
        try:
            selfie, style_image = _read_inputs(cfg, args, face_check)
        except UserFacingError as exc:
            print(explain(exc), file=sys.stderr)
            return 2
        prepare_data_dir(cfg)

        from engine.avatar.networks import FULL_WARNING, SLIM_WARNING, pretrained_available
        from storage import jobs

        from storage.packs import result_of

        slim = cfg.engine.preset == "slim" or (cfg.engine.preset == "auto" and not pretrained_available(cfg.weights_dir))
        if slim or cfg.engine.preset == "full":
            print(f"\n*** {FULL_WARNING if cfg.engine.preset == 'full' else SLIM_WARNING} ***\n", file=sys.stderr)
        db, blobs, pack, job_id = _prepare(cfg, args, selfie, style_image, face_check)
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
        if result.preset in ("slim", "full"):
            print(f"\n*** {FULL_WARNING if result.preset == 'full' else SLIM_WARNING} ***", file=sys.stderr)
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
