"""``emoji3d doctor``: is this install ready to make packs? One line per check, each with a fix hint.

Checks, in order (each a function returning :class:`Check` lines):

- runtime: Python, torch and CUDA versions, GPU name and memory; a config
  that asks for CUDA on a machine without it fails;
- weights: every required manifest entry present (converted, or downloaded
  and convertible) and every installed official file matching its recorded
  size and sha256; on the slim preset weights are not needed;
- ops: each fused op built and self-checked on the engine's device
  (:func:`engine.ops.implementations`);
- boundaries: the expression boundary file loads and was fitted for the
  generator this install would load (same logic as the engine's start);
- database: reachable, and migrated to the newest schema;
- blobs: the blob store takes a write and a delete, and has free space;
- tokens: the enabled front ends have their tokens (never printed);
- compile: with ``[pipeline] compile`` on, a small pass compiles with that
  backend on the engine's device (inductor needs a C++ compiler on the CPU,
  and Triton, a C compiler and the Python headers on CUDA); without it the
  engine runs the generator passes eagerly, so this only warns;
- config: the keys that differ from the defaults.

Levels: ``ok``; ``warn`` (works, but something is off, e.g. the slim
preset's missing boundary file: expressions are then not made); ``FAIL``
(a broken piece). The exit status is 0 only when no check failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import secrets
import shutil
import sys
from dataclasses import dataclass

from emoji3d.config import Config, load_config

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_FREE_BYTES = 2 << 30  # below this a local blob folder gets a warning (a pack with its avatar is ~100 MB)


@dataclass(frozen=True)
class Check:
    name: str     # which check: "runtime", "weights", ...
    level: str    # OK, WARN or FAIL
    text: str     # what was found
    hint: str = ""  # how to fix it (empty when nothing to fix)

    def line(self) -> str:
        hint = f"  -> {self.hint}" if self.hint and self.level != OK else ""
        return f"[{self.level:>4}] {self.name:<10} {self.text}{hint}"


def engine_device(cfg: Config) -> str:
    import torch

    if cfg.engine.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.engine.device


def slim_preset(cfg: Config) -> bool:
    from engine.avatar.networks import pretrained_available

    return cfg.engine.preset == "slim" or (cfg.engine.preset == "auto" and not pretrained_available(cfg.weights_dir))


# ----------------------------------------------------------------------------- checks

def check_runtime(cfg: Config) -> list[Check]:
    import torch

    text = f"Python {platform.python_version()}, torch {torch.__version__}"
    if not torch.cuda.is_available():
        cuda = f"CUDA build {torch.version.cuda}" if torch.version.cuda else "CPU-only torch build"
        if cfg.engine.device == "cuda":
            return [Check("runtime", FAIL, f"{text}, {cuda}, no CUDA device visible but engine.device = \"cuda\"",
                          "install the NVIDIA driver / a CUDA build of torch, or set engine.device = \"auto\"")]
        return [Check("runtime", WARN, f"{text}, {cuda}, no GPU: the engine runs on the CPU (slow)",
                      "run the engine on a machine with an NVIDIA GPU for real use")]
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(f"{props.name} {props.total_memory / 2**30:.0f} GiB")
    return [Check("runtime", OK, f"{text}, CUDA {torch.version.cuda}, GPU {', '.join(gpus)}")]


def check_weights(cfg: Config) -> list[Check]:
    from engine.weights.manifest import find_installed, iter_status, load_manifest, verify_file
    from engine.weights.errors import WeightsError

    try:
        manifest = load_manifest(cfg.weights_manifest)
    except WeightsError as exc:
        return [Check("weights", FAIL, str(exc), "restore engine/weights/manifest.toml or fix [weights] manifest")]
    out: list[Check] = []
    slim = slim_preset(cfg)
    missing = []
    for entry, state in iter_status(manifest, cfg.weights_dir):
        official = find_installed(entry, cfg.weights_dir)
        if official is not None:
            verdict = verify_file(entry, official)
            if not verdict.ok:
                out.append(Check("weights", FAIL, f"{entry.name}: {official} does not match the manifest "
                                 f"({verdict.detail})", f"delete it and run `emoji3d weights fetch {entry.name}`"))
                continue
        if state == "outdated":
            out.append(Check("weights", FAIL, f"{entry.name}: converted by an older converter",
                             f"run `emoji3d weights convert {entry.name}`"))
        elif state == "downloaded":
            out.append(Check("weights", WARN if slim else FAIL, f"{entry.name}: downloaded, not converted",
                             f"run `emoji3d weights convert {entry.name}`"))
        elif state in ("missing", "partial") and not entry.optional:
            missing.append(entry.name)
    if missing:
        text = f"not installed: {', '.join(missing)}"
        hint = "run `emoji3d weights fetch` then `emoji3d weights convert`"
        if slim:
            out.append(Check("weights", WARN, f"{text}; the slim preset runs on random weights (no real avatars)",
                             hint))
        else:
            out.append(Check("weights", FAIL, text, hint))
    if not out:
        out.append(Check("weights", OK, f"all {len(manifest.files)} manifest entries present and matching"
                         if not slim else "slim preset (random test weights); installed files match the manifest"))
    return out


def check_ops(cfg: Config) -> list[Check]:
    import torch

    from engine import ops

    device = engine_device(cfg)
    if device == "cuda" and not torch.cuda.is_available():
        return [Check("ops", FAIL, "cannot build the fused ops: no CUDA device",
                      "run on a GPU machine or set engine.device = \"auto\"")]
    out = []
    for name, how in ops.implementations(device).items():
        if device == "cuda" and "reference" in how:
            out.append(Check("ops", FAIL, f"{name}: {how}", "check the CUDA toolkit (nvcc) and run "
                             "`python -m engine.ops.prebuild`; the reference works but is slow"))
        else:
            out.append(Check("ops", OK, f"{name}: {how}"))
    return out


def check_boundaries(cfg: Config) -> list[Check]:
    from engine.resources import load_installed_boundaries
    from shell.commands.boundaries import load_base_generator

    from emoji3d.errors import UserFacingError

    slim = slim_preset(cfg)
    try:
        generator, kind = load_base_generator("slim" if slim else "pretrained", cfg.weights_dir, cfg.engine.seed,
                                              "cpu")
    except UserFacingError as exc:
        return [Check("boundaries", FAIL, f"cannot load the generator to match the file against: {exc}",
                      "install the EG3D weights (see the weights line)")]
    boundaries, problem = load_installed_boundaries(cfg, generator)
    hint = "run `emoji3d boundaries fit --out " + str(cfg.boundaries_path) + "`"
    if boundaries is None:
        if not cfg.boundaries_path.is_file() and slim:
            return [Check("boundaries", WARN, f"{problem}; expression stickers are not made",
                          hint + " (slim: a meaningless file, for tests; `make demo` fits one)")]
        return [Check("boundaries", FAIL, problem,
                      hint if slim else f"run `emoji3d setup` (or {hint[4:]}); a started engine also fits them "
                      "as a batch job (`emoji3d jobs list`)")]
    label = " (slim: FOR TESTS ONLY, not real expressions)" if boundaries.for_tests_only else ""
    return [Check("boundaries", OK, f"{', '.join(boundaries.names())} for the {kind} generator{label}")]


def check_database(cfg: Config) -> list[Check]:
    import sqlalchemy as sa

    from storage.db import DatabaseError, load_migrations, open_database

    url = sa.engine.make_url(cfg.database_url) if "://" in cfg.database_url else None
    shown = url.render_as_string(hide_password=True) if url is not None else cfg.database_url
    if url is not None and url.get_backend_name() == "sqlite" and url.database \
            and not pathlib.Path(url.database).is_file():
        return [Check("database", WARN, f"{shown} does not exist yet (created and migrated on first use)",
                      "run `emoji3d jobs list` to create it now")]
    try:
        db = open_database(cfg.database_url, migrate=False)
    except DatabaseError as exc:
        return [Check("database", FAIL, str(exc), "start the database server or fix [database] url")]
    try:
        newest = max(m.version for m in load_migrations())
        try:
            current = db.schema_version()
        except sa.exc.DBAPIError:
            current = 0
    finally:
        db.dispose()
    if current < newest:
        return [Check("database", FAIL, f"{shown} is at schema {current}, this build needs {newest}",
                      "run `emoji3d jobs list` (it applies the migrations), with the bots and engine stopped")]
    return [Check("database", OK, f"{shown} reachable, schema {current}")]


def check_blobs(cfg: Config) -> list[Check]:
    import hashlib

    from storage.blobs import open_backend

    probe = secrets.token_bytes(32)
    digest = hashlib.sha256(probe).hexdigest()
    try:
        if cfg.blobs.backend == "local":
            cfg.blob_dir.mkdir(parents=True, exist_ok=True)
        backend = open_backend(cfg.blob_location)
        backend.write(digest, probe)
        stored = backend.size(digest)
        backend.delete(digest)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding, reported in one line
        return [Check("blobs", FAIL, f"{cfg.blob_location} is not writable: {type(exc).__name__}: {exc}",
                      "fix the folder's permissions or [blobs] settings / object-store credentials")]
    if stored != len(probe):
        return [Check("blobs", FAIL, f"{cfg.blob_location}: a probe write read back as {stored} bytes",
                      "check the blob store")]
    if cfg.blobs.backend != "local":
        return [Check("blobs", OK, f"{backend.describe()} takes writes and deletes")]
    free = shutil.disk_usage(cfg.blob_dir).free
    text = f"{cfg.blob_dir} writable, {free / 2**30:.1f} GiB free"
    if free < cfg.blobs.max_blob_mb << 20:
        return [Check("blobs", FAIL, text, "free disk space (or `emoji3d jobs gc`-style cleanup)")]
    if free < MIN_FREE_BYTES:
        return [Check("blobs", WARN, text, f"keep at least {MIN_FREE_BYTES >> 30} GiB free for packs")]
    return [Check("blobs", OK, text)]


def check_tokens(cfg: Config) -> list[Check]:
    out = []
    for name, section, token, var in (("telegram", cfg.telegram, cfg.telegram_token, "TELEGRAM_BOT_TOKEN"),
                                      ("discord", cfg.discord, cfg.discord_token, "DISCORD_BOT_TOKEN")):
        if not section.enabled:
            out.append(Check("tokens", OK, f"{name}: disabled in config.toml"))
        elif token:
            out.append(Check("tokens", OK, f"{name}: {var} is set"))
        else:
            out.append(Check("tokens", WARN, f"{name}: enabled but {var} is not set (the bot will not start)",
                             f"export {var}=... or set [{name}] enabled = false"))
    if cfg.telegram.enabled and cfg.telegram.mode == "webhook" and not cfg.telegram_webhook_secret:
        out.append(Check("tokens", FAIL, "telegram: webhook mode but TELEGRAM_WEBHOOK_SECRET is not set",
                         "export TELEGRAM_WEBHOOK_SECRET (1-256 of A-Z a-z 0-9 _ -)"))
    return out


def check_compile(cfg: Config) -> list[Check]:
    backend = cfg.pipeline.compile
    if backend == "off":
        return [Check("compile", OK, "off: the generator passes run eagerly")]
    from engine.avatar.compiled import probe

    device = engine_device(cfg)
    failure, seconds = probe(backend, device)
    if failure is not None:
        return [Check("compile", WARN, f"{backend} cannot compile on {device} here ({failure}); the engine will run "
                      "the generator passes eagerly",
                      "install what the compiler needs on this host (on CUDA: Triton, which PyTorch's CUDA wheels "
                      "bring, a C compiler and the Python headers, e.g. apt install gcc python3-dev; on the CPU: "
                      "a C++ compiler), or set [pipeline] compile = \"off\"")]
    return [Check("compile", OK, f"{backend} compiles on {device} ({seconds:.1f} s for a probe); the engine "
                  "compiles its generator passes before its first job")]


def changed_keys(value, default, prefix: str = "") -> list[str]:
    """``key = value`` for every config key whose value differs from its default (secrets and paths' root skipped)."""
    out = []
    for f in dataclasses.fields(value):
        if f.metadata.get("internal"):
            continue
        mine, theirs = getattr(value, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(mine) and not isinstance(mine, type):
            out += changed_keys(mine, theirs, f"{prefix}{f.name}.")
        elif mine != theirs:
            shown = f"[{len(mine)} entries]" if isinstance(mine, tuple) else repr(mine)
            out.append(f"{prefix}{f.name} = {shown}")
    return out


def check_config(cfg: Config, path: str | None) -> list[Check]:
    changed = changed_keys(cfg, Config())
    where = path or os.environ.get("EMOJI3D_CONFIG") or "config.toml"
    return [Check("config", OK, f"{where}: " + ("; ".join(changed) if changed else "all keys at their defaults"))]


def run_checks(cfg: Config, config_path: str | None = None) -> list[Check]:
    out: list[Check] = []
    for check in (check_runtime, check_weights, check_ops, check_boundaries, check_database, check_blobs,
                  check_tokens, check_compile):
        try:
            out += check(cfg)
        except Exception as exc:  # noqa: BLE001 - one check's crash is that check's finding
            name = check.__name__.removeprefix("check_")
            out.append(Check(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}",
                             "run with -v for the details"))
    return out + check_config(cfg, config_path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="emoji3d doctor", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="path to config.toml")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    checks = run_checks(cfg, args.config)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if c.level == FAIL]
    warned = [c for c in checks if c.level == WARN]
    print(f"{len(failed)} failed, {len(warned)} warnings, {len(checks) - len(failed) - len(warned)} ok",
          file=sys.stderr)
    return 1 if failed else 0
