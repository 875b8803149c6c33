"""The ``emoji3d`` command: a thin dispatcher over the packages.

Each subcommand group is a module in ``shell/commands/`` exposing
``main(argv) -> int``; this module only routes argv, passes the global
``--config`` on (as ``$EMOJI3D_CONFIG``), and turns errors into one line and an
exit code, with no traceback unless ``-v`` is given:

- 0 success, 1 a failure in the work itself, 2 bad input or bad config.

Heavy modules (torch, mediapipe) are imported only by the subcommand that
needs them, so ``emoji3d --help`` and config errors are instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pathlib
import sys

from emoji3d import __version__
from emoji3d.errors import ConfigError, UserFacingError
from storage.db import DatabaseError

# group name -> (module, help). The module's main(argv) parses the rest.
GROUPS = {
    "make": ("shell.commands.make", "make a sticker pack from a selfie and a style, locally"),
    "serve": ("shell.commands.serve", "run the enabled chat front ends and a supervised engine"),
    "engine": ("shell.commands.engine", "run the GPU engine: one job at a time, models loaded once"),
    "jobs": ("shell.commands.jobs", "list, show or cancel queued jobs"),
    "styles": ("shell.commands.styles", "list, add or remove global and house styles"),
    "weights": ("shell.commands.weights", "list, fetch, verify, convert official weights; check reference fixtures"),
    "face": ("shell.commands.face", "find, align, crop and pose a face; check face reference fixtures"),
    "stickers": ("shell.commands.stickers", "encode frames into platform stickers; verify sticker files"),
    "boundaries": ("shell.commands.boundaries", "fit or verify the expression boundaries (smile, surprise, anger...)"),
    "setup": ("shell.commands.setup", "guided install: licences, fetch, convert, verify weights; boundaries; doctor"),
    "doctor": ("shell.commands.doctor", "check this install: runtime, weights, ops, boundaries, storage, tokens, config"),
}

# Groups whose main() takes the database URL from config.toml when not given.
_NEEDS_DB = {"jobs"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emoji3d",
        description="Personal 3D emoji sticker packs from one selfie and one style image.",
        epilog="Run `emoji3d GROUP --help` for a group's own options.",
    )
    p.add_argument("--version", action="version", version=f"emoji3d {__version__}")
    p.add_argument("--config", help="path to config.toml (default: $EMOJI3D_CONFIG or the repository's config.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("group", choices=sorted(GROUPS), metavar="GROUP", help=", ".join(sorted(GROUPS)))
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def configure_logging(verbose: bool) -> None:
    """The one logging set-up of every ``emoji3d`` command: INFO to stderr (DEBUG
    with -v); every record any logger makes is scrubbed of the secrets in the
    environment (bot tokens, webhook secret) and of token-shaped URL parts
    (``bots.redaction``), and per-request HTTP client
    logging is kept at WARNING unless -v."""
    from bots import redaction

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redaction.install(os.environ.get(var, "").strip() for var in redaction.SECRET_ENV_VARS)
    redaction.quiet_libraries(verbose)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _parser().print_help()
        return 0
    ns = _parser().parse_args(argv)
    configure_logging(ns.verbose)
    rest = list(ns.args)
    if ns.config:
        # Every load_config() reads $EMOJI3D_CONFIG when not given a path: one way for the global
        # option to reach every group, and the processes they start (serve's engine).
        os.environ["EMOJI3D_CONFIG"] = str(pathlib.Path(ns.config).resolve())
    try:
        if ns.config or ns.group in _NEEDS_DB:
            from emoji3d.config import load_config

            cfg = load_config(ns.config)
            if ns.group in _NEEDS_DB and "--db" not in rest:
                rest = ["--db", cfg.database_url, *rest]
        module_name, _ = GROUPS[ns.group]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                print(f"emoji3d {ns.group}: not available in this build ({module_name} is missing)", file=sys.stderr)
                return 1
            raise
        return int(module.main(rest) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except UserFacingError as exc:
        from emoji3d.errors import WeightsError
        from emoji3d.texts import explain

        sentence = explain(exc)
        # A chat user is spared which model file is missing or damaged; an operator needs it.
        if isinstance(exc, WeightsError) and exc.detail and exc.detail not in sentence:
            sentence = f"{sentence} ({exc.detail})"
        print(sentence, file=sys.stderr)
        return 2
    except DatabaseError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a one-line report; the traceback only with -v
        if ns.verbose:
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"emoji3d {ns.group}: unexpected error: {type(exc).__name__}: {first} (run with -v for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
