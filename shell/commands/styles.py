"""``emoji3d styles``: list, sync, add or remove global and house styles.

Every image that becomes a style passes ``storage.style_catalog.validate_exemplar``
(size, decoding, a face; the face check is ``engine.face``'s, with the
configured limits, loaded only when an image is actually checked). The image
of ``styles add`` is read with ``emoji3d.images.read_file_bounded``: a missing
path, a folder or a device is refused in one sentence (exit 2, through the
``emoji3d`` command) before anything else happens.
"""
from __future__ import annotations

import argparse
import pathlib

from emoji3d.config import load_config
from emoji3d.images import DecodeLimits, read_file_bounded
from storage.connect import open_storage


def _community(db, spec: str | None) -> int | None:
    if not spec:
        return None
    platform, sep, platform_id = spec.partition(":")
    if not sep or platform not in ("telegram", "discord") or not platform_id:
        raise SystemExit(f"emoji3d styles: --community must look like telegram:<chat id> or discord:<guild id>, got {spec!r}")
    from storage.communities import get_or_create_community

    return get_or_create_community(db, platform, platform_id).id


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="emoji3d styles", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="path to config.toml")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list styles (global, or one community's with --community)")
    ls.add_argument("--community", metavar="PLATFORM:ID", help="e.g. telegram:-100123 or discord:4567")
    sub.add_parser("sync", help="mirror the styles folder into the database (enqueues finetunes for changes)")
    add = sub.add_parser("add", help="add a style from an image (global unless --community)")
    add.add_argument("name")
    add.add_argument("image", type=pathlib.Path)
    add.add_argument("--community", metavar="PLATFORM:ID", help="owner community (default: a global style)")
    rm = sub.add_parser("remove", help="remove a style")
    rm.add_argument("name")
    rm.add_argument("--community", metavar="PLATFORM:ID")
    args = p.parse_args(argv)

    from engine.face.analyze import FaceChecker, FaceConfig
    from storage import styles as st
    from storage.style_catalog import add_house_style, remove_style, sync_global_styles

    cfg = load_config(args.config)
    limits = DecodeLimits.from_config(cfg.limits)
    image = read_file_bounded(args.image, limits.max_bytes) if args.cmd == "add" else None
    db, blobs = open_storage(cfg)
    try:
        with FaceChecker(FaceConfig.from_limits(cfg.limits)) as face_check:
            community_id = _community(db, getattr(args, "community", None))
            if args.cmd == "sync":
                for style, what in sync_global_styles(db, blobs, cfg.styles_dir, limits, face_check=face_check):
                    print(f"{style.name:<24} v{style.version:<3} {what}")
            elif args.cmd == "list":
                sync_global_styles(db, blobs, cfg.styles_dir, limits, face_check=face_check)
                rows = st.list_styles(db, community_id=community_id)
                print(f"{'name':<24} {'scope':<16} {'version':>7}  status")
                for s in rows:
                    print(f"{s.name:<24} {s.scope:<16} {s.version:>7}  {s.status}")
            elif args.cmd == "add":
                style = add_house_style(db, blobs, args.name, image, community_id=community_id, added_by=None,
                                        limits=limits, face_check=face_check)
                print(f"added {style.name} ({style.scope}); its finetune is queued at batch priority")
            elif args.cmd == "remove":
                style = remove_style(db, args.name, community_id=community_id)
                print(f"removed {style.name} ({style.scope})")
    finally:
        db.dispose()
    return 0
