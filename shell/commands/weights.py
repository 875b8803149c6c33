"""``emoji3d weights …``: list, fetch, verify and convert official weights; check reference fixtures.

Exit codes: 0 success; 1 a check failed, a download failed or a file to convert
is not installed; 2 bad arguments (argparse), or a file refused (corrupt,
truncated, unsafe, wrong layout: one line naming it). The weights folder and manifest come from config.toml
(``[weights] dir`` / ``manifest``) unless ``--dir`` / ``--manifest`` are given.
``convert`` writes each entry's pretrained folder ``<dir>/<name>/``
(:mod:`engine.weights.pretrained`); a folder that ``list`` shows as
``outdated`` was written by an older version and is rewritten by ``convert``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoji3d weights", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config.toml (default: $EMOJI3D_CONFIG or the repository's)")
    parser.add_argument("--dir", help="weights folder (default: [weights] dir of config.toml)")
    parser.add_argument("--manifest", help="manifest TOML (default: [weights] manifest, else the packaged one)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="manifest entries and what is installed")
    fetch_cmd = sub.add_parser("fetch", help="download (resumable), show licence first, verify")
    fetch_cmd.add_argument("names", nargs="*", help="entry names (default: every required entry)")
    fetch_cmd.add_argument("--all", action="store_true", help="also fetch the optional entries (attribute classifiers)")
    fetch_cmd.add_argument("--accept-licence", action="store_true", help="accept every shown licence without asking")
    fetch_cmd.add_argument("--no-progress", action="store_true")
    fetch_cmd.add_argument("--convert", action="store_true", help="convert each file after download")
    verify_cmd = sub.add_parser("verify", help="check installed files: manifest size/sha256, fetch record, "
                                               "else a real parse as their kind")
    verify_cmd.add_argument("names", nargs="*")
    verify_cmd.add_argument("--print-digests", action="store_true", help="also print each file's full sha256")
    verify_cmd.add_argument("--no-source-audit", action="store_true",
                            help="when a file is parsed (no checksum or fetch record), skip the static check of "
                                 "source embedded in NVIDIA pickles")
    convert_cmd = sub.add_parser("convert", help="official formats -> pretrained folders (config.json + model.safetensors)")
    convert_cmd.add_argument("names", nargs="*", help="entry names (default: every installed file)")
    convert_cmd.add_argument("--src", help="convert this file instead of a manifest entry (needs --kind and --out)")
    convert_cmd.add_argument("--kind", help="converter for --src")
    convert_cmd.add_argument("--out", help="output folder for --src")
    convert_cmd.add_argument(
        "--no-source-audit",
        action="store_true",
        help="skip the static check of source embedded in NVIDIA pickles (it is never executed either way)",
    )
    check_cmd = sub.add_parser("check-reference", help="rebuild a reference fixture's outputs and compare")
    check_cmd.add_argument("folders", nargs="+")
    return parser


def _paths(ns: argparse.Namespace) -> tuple[pathlib.Path, pathlib.Path | None]:
    if ns.dir and ns.manifest:
        return pathlib.Path(ns.dir), pathlib.Path(ns.manifest)
    from emoji3d.config import load_config

    cfg = load_config(ns.config)
    return pathlib.Path(ns.dir) if ns.dir else cfg.weights_dir, pathlib.Path(ns.manifest) if ns.manifest else cfg.weights_manifest


def _ask_licence(entry) -> bool:
    from engine.weights.fetch import licence_text

    print(licence_text(entry), file=sys.stderr)
    if not sys.stdin.isatty():
        print("  (not a terminal: pass --accept-licence to accept)", file=sys.stderr)
        return False
    return input("Accept this licence and download? [y/N] ").strip().lower() in ("y", "yes")


def _accept_shown(entry) -> bool:
    from engine.weights.fetch import licence_text

    print(licence_text(entry), file=sys.stderr)
    print("  accepted (--accept-licence)", file=sys.stderr)
    return True


def main(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    if ns.cmd == "check-reference":
        return _check_reference(ns.folders)
    from engine.weights import manifest as weights_manifest
    from engine.weights.convert import convert
    from engine.weights.errors import WeightsError
    from engine.weights.fetch import fetch
    from engine.weights.verify import verify_installed

    wdir, mpath = _paths(ns)
    manifest = weights_manifest.load_manifest(mpath)
    names = getattr(ns, "names", None) or []
    entries = [manifest.get(n) for n in names] if names else list(manifest.files)
    if ns.cmd == "fetch" and not names and not ns.all:
        skipped = [e.name for e in entries if e.optional]
        entries = [e for e in entries if not e.optional]
        if skipped:
            print(f"optional entries not fetched (name them or pass --all): {', '.join(skipped)}", file=sys.stderr)

    if ns.cmd == "list":
        state = dict((e.name, s) for e, s in weights_manifest.iter_status(manifest, wdir))
        print(f"weights folder: {wdir}")
        for e in entries:
            size = f"{e.size / 2**20:.1f} MiB" if e.size else "size ?"
            sha = ("sha256 prefix" if e.sha256_is_prefix else "sha256") if e.sha256 else "no checksum"
            extra = "  (optional)" if e.optional else ""
            print(f"{e.name:<18} {state[e.name]:<10} {e.filename:<38} {e.kind:<20} {size:>11}  {sha:<13}  "
                  f"{e.licence}{extra}")
        return 0

    if ns.cmd == "fetch":
        confirm = _accept_shown if ns.accept_licence else _ask_licence
        failed = 0
        for e in entries:
            try:
                path = fetch(e, wdir, progress=not ns.no_progress, confirm_licence=confirm)
                print(f"{e.name}: {path} ({verify_installed(e, path).detail})")
                if ns.convert:
                    print(f"{e.name}: converted to {convert(path, weights_manifest.converted_path(e, wdir), e.kind)}")
            except WeightsError as exc:
                failed += 1
                print(f"{e.name}: {exc}", file=sys.stderr)
        return 1 if failed else 0

    if ns.cmd == "verify":
        failed = 0
        for e in entries:
            path = weights_manifest.installed_path(e, wdir)
            if not path.is_file():
                print(f"{e.name:<16} missing   {path}")
                failed += bool(names)
                continue
            check = verify_installed(e, path, audit_source=not ns.no_source_audit)
            failed += not check.ok
            line = f"{e.name:<16} {'ok' if check.ok else 'FAILED':<9} {path}: {check.detail}"
            if ns.print_digests:
                line += f"\n{'':<16} sha256 {weights_manifest.sha256_file(path)}  size {path.stat().st_size}"
            print(line)
        return 1 if failed else 0

    if ns.cmd == "convert":
        if ns.src:
            if not (ns.kind and ns.out):
                print("convert --src needs --kind and --out", file=sys.stderr)
                return 2
            try:
                print(convert(ns.src, ns.out, ns.kind, audit_source=not ns.no_source_audit))
            except WeightsError as exc:
                print(str(exc), file=sys.stderr)
                return 2
            return 0
        failed = refused = done = 0
        for e in entries:
            path = weights_manifest.find_installed(e, wdir)
            if path is None:
                if names:
                    print(f"{e.name}: {weights_manifest.installed_path(e, wdir)} not installed; run "
                          f"`emoji3d weights fetch {e.name}`", file=sys.stderr)
                    failed += 1
                continue
            try:
                out = convert(path, weights_manifest.converted_path(e, wdir), e.kind,
                              audit_source=not ns.no_source_audit)
                print(f"{e.name}: {out} (from {path})")
                done += 1
            except WeightsError as exc:
                refused += 1
                print(f"{e.name}: {exc}", file=sys.stderr)
        if not done and not failed and not refused:
            print(f"nothing to convert in {wdir}", file=sys.stderr)
        return 2 if refused else 1 if failed else 0
    return 2  # pragma: no cover  (argparse requires a command)


def _check_reference(folders: list[str]) -> int:
    from engine.checks import UnknownFixture, check_folder, format_report
    from engine.weights.errors import WeightsError

    ok, refused = True, False
    for folder in folders:
        try:
            checks = check_folder(folder)
        except UnknownFixture as exc:
            print(str(exc), file=sys.stderr)
            ok = False
            continue
        except WeightsError as exc:  # a damaged or malicious fixture: one line naming the file
            print(str(exc), file=sys.stderr)
            refused = True
            continue
        print(f"== {folder}")
        print(format_report(checks))
        ok = ok and bool(checks) and all(c.passed for c in checks)
    return 2 if refused else 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
