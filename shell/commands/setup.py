"""``emoji3d setup``: the guided install: licences, fetch, convert, verify, storage, boundaries, doctor.

Steps, in order; each says what it did or why it was skipped, so running
``setup`` again is cheap and finishes what an earlier run left undone:

1. licences: every manifest entry that must be downloaded (its converted
   folder is not current and its official file is not in the weights
   folder) shows its licence; each must be accepted (``y``), or all at once
   with ``--yes``. One refusal stops before anything is downloaded. Without
   a terminal and without ``--yes`` it stops with exit status 2.
2. fetch: the accepted files, resumable, with progress, each checked against
   the manifest's size and sha256 (:func:`engine.weights.fetch.fetch`).
3. convert: every official file whose pretrained folder is not current.
4. verify: the files this run fetched or converted match the manifest, and
   every required entry's pretrained folder is current.
5. storage: the data folder and the database, migrated.
6. boundaries: with the pretrained weights, the expression boundaries of the
   base EG3D, fitted in this process when no file for this generator is
   installed (``--samples``, default ``[pack] boundary_fit_samples``); the
   same fit the engine runs as a job (:mod:`engine.boundary_job`).
7. doctor: every check of ``emoji3d doctor``.

Optional manifest entries (attribute classifiers) are included with
``--all``; installed before step 6, they add their attributes to the fit.
A failure prints ``setup stopped at <step>: <what>`` and ``fix: <what to do>``.
Exit status: 0 ready, 1 a step failed, 2 usage or licences not accepted
without a terminal.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from dataclasses import dataclass, field

from emoji3d.config import Config, load_config, prepare_data_dir
from emoji3d.errors import ConfigError, UserFacingError

STEPS = ("licences", "fetch", "convert", "verify", "storage", "boundaries", "doctor")


class StepFailed(Exception):
    def __init__(self, step: str, problem: str, fix: str, exit_code: int = 1) -> None:
        super().__init__(f"{step}: {problem}")
        self.step, self.problem, self.fix, self.exit_code = step, problem, fix, exit_code


@dataclass
class Run:
    """One setup run: its settings and what it changed (later steps check what earlier ones touched)."""

    cfg: Config
    config_path: str | None
    accept_all: bool
    progress: bool
    samples: int
    include_optional: bool
    fetched: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)


def say(step: str, text: str) -> None:
    print(f"[{step}] {text}", file=sys.stderr)


def _entries(run: Run):
    from engine.weights.errors import WeightsError
    from engine.weights.manifest import load_manifest

    try:
        manifest = load_manifest(run.cfg.weights_manifest)
    except WeightsError as exc:
        raise StepFailed("licences", str(exc), "restore engine/weights/manifest.toml or fix [weights] manifest") from None
    return [e for e in manifest.files if run.include_optional or not e.optional]


def _converted(entry, weights_dir: pathlib.Path) -> bool:
    from engine.weights.manifest import converted_path
    from engine.weights.pretrained import folder_state

    return folder_state(converted_path(entry, weights_dir)) == "current"


def to_download(run: Run, entries) -> list:
    """Entries with neither a current pretrained folder nor their official file."""
    from engine.weights.manifest import find_installed

    wdir = run.cfg.weights_dir
    return [e for e in entries if not _converted(e, wdir) and find_installed(e, wdir) is None]


# ----------------------------------------------------------------------------- steps

def step_licences(run: Run, needed) -> None:
    from engine.weights.fetch import licence_text

    if not needed:
        say("licences", "nothing to download: skipped")
        return
    interactive = sys.stdin.isatty()
    for entry in needed:
        print(licence_text(entry), file=sys.stderr)
        if run.accept_all:
            say("licences", f"{entry.name}: accepted (--yes)")
            continue
        if not interactive:
            raise StepFailed("licences", "not a terminal, so the licences above cannot be asked; nothing was "
                             "downloaded", "read them and run `emoji3d setup --yes` to accept them", exit_code=2)
        if input(f"Accept the licence of {entry.name} ({entry.licence})? [y/N] ").strip().lower() not in ("y", "yes"):
            raise StepFailed("licences", f"{entry.name}: licence {entry.licence} not accepted; nothing was downloaded",
                             f"accept it to install {entry.name}, or place the file yourself in {run.cfg.weights_dir} "
                             "and run `emoji3d setup` again")


def step_fetch(run: Run, needed) -> None:
    from engine.weights.errors import ChecksumMismatch, DownloadFailed, WeightsError
    from engine.weights.fetch import fetch

    if not needed:
        say("fetch", "every file is downloaded or converted: skipped")
        return
    for entry in needed:
        try:
            path = fetch(entry, run.cfg.weights_dir, progress=run.progress, confirm_licence=lambda _: True)
        except ChecksumMismatch as exc:
            raise StepFailed("fetch", str(exc), "run `emoji3d setup` again to download it afresh; if it fails again "
                             f"the server sends another file than the manifest names ({entry.url})") from None
        except DownloadFailed as exc:
            if "web page" in str(exc):  # a host that wants a browser (Google Drive's large-file page)
                raise StepFailed("fetch", str(exc), "download it in a browser, put it where the message says, then "
                                 "run `emoji3d setup` again") from None
            raise StepFailed("fetch", str(exc), "check the network and the URL, then run `emoji3d setup` again: the "
                             "download resumes where it stopped") from None
        except WeightsError as exc:
            raise StepFailed("fetch", str(exc), "run `emoji3d setup` again") from None
        run.fetched.append(entry.name)
        say("fetch", f"{entry.name}: {path}")


def step_convert(run: Run, entries) -> None:
    from engine.weights.convert import convert
    from engine.weights.errors import WeightsError
    from engine.weights.manifest import converted_path, find_installed

    wdir = run.cfg.weights_dir
    for entry in entries:
        if _converted(entry, wdir):
            continue
        path = find_installed(entry, wdir)
        if path is None:
            raise StepFailed("convert", f"{entry.name}: {entry.filename} is not installed",
                             "run `emoji3d setup` again to download it")
        try:
            convert(path, converted_path(entry, wdir), entry.kind)
        except WeightsError as exc:
            raise StepFailed("convert", str(exc), f"delete {path} and run `emoji3d setup` again to download it "
                             "afresh") from None
        run.converted.append(entry.name)
        say("convert", f"{entry.name}: {converted_path(entry, wdir)}")
    if not run.converted:
        say("convert", "every pretrained folder is current: skipped")


def step_verify(run: Run, entries) -> None:
    from engine.weights.manifest import find_installed
    from engine.weights.verify import verify_installed

    wdir = run.cfg.weights_dir
    touched = set(run.fetched) | set(run.converted)
    for entry in entries:
        path = find_installed(entry, wdir)
        if entry.name in touched and path is not None:
            check = verify_installed(entry, path)
            if not check.ok:
                raise StepFailed("verify", f"{entry.name}: {path}: {check.detail}",
                                 f"delete {path} and run `emoji3d setup` again")
        if not _converted(entry, wdir):
            raise StepFailed("verify", f"{entry.name}: its pretrained folder is not current",
                             f"run `emoji3d weights convert {entry.name}`, then `emoji3d setup` again")
    say("verify", f"{len(entries)} entries installed and converted"
        + (f"; checked {', '.join(sorted(touched))} against the manifest" if touched else ""))


def step_storage(run: Run) -> None:
    from storage.db import DatabaseError, open_database

    try:
        prepare_data_dir(run.cfg)
        open_database(run.cfg.database_url).dispose()  # creates and migrates it
    except (ConfigError, DatabaseError) as exc:
        raise StepFailed("storage", str(exc), "fix [paths] data_dir or [database] url in config.toml") from None
    say("storage", f"data in {run.cfg.data_dir}; database ready")


def step_boundaries(run: Run) -> None:
    from engine.boundary_job import SAMPLE_BATCH, install_boundaries
    from engine.render import boundary_fit, edits
    from engine.resources import load_installed_boundaries
    from shell.commands.boundaries import load_base_generator
    from shell.commands.doctor import engine_device, slim_preset

    cfg = run.cfg
    if slim_preset(cfg):
        say("boundaries", "the slim preset is configured ([engine] preset): skipped (its files are meaningless)")
        return
    device = engine_device(cfg)
    try:
        generator, kind = load_base_generator("pretrained", cfg.weights_dir, cfg.engine.seed, device)
    except UserFacingError as exc:
        raise StepFailed("boundaries", f"cannot load the EG3D generator: {exc}",
                         "run `emoji3d weights verify eg3d_ffhq` and `emoji3d setup` again") from None
    usable, problem = load_installed_boundaries(cfg, generator)
    if usable is not None:
        say("boundaries", f"{cfg.boundaries_path} fits this generator ({', '.join(usable.names())}): skipped")
        return
    say("boundaries", f"{problem}; fitting on {run.samples} renders (a few minutes on a GPU)")
    if device == "cpu":
        say("boundaries", "no GPU: this takes long on a CPU (`--samples` lowers it, for noisier boundaries)")
    bar = None
    if run.progress:
        from tqdm import tqdm

        bar = tqdm(total=run.samples, unit="render", desc="boundaries", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    from engine.face.landmarks import LandmarkDetector

    try:
        plan = boundary_fit.plan_fit(cfg.weights_dir)
        with LandmarkDetector(max_faces=1) as detector:
            bset = boundary_fit.fit_boundary_set(generator, kind, plan,
                                                 edits.SampleConfig(n=run.samples, batch=SAMPLE_BATCH),
                                                 edits.FitConfig(), cfg.engine.seed, detector=detector,
                                                 progress=progress)
    except UserFacingError as exc:
        raise StepFailed("boundaries", str(exc), "fix what it names, then `emoji3d setup` again (or fit by hand: "
                         f"`emoji3d boundaries fit --out {cfg.boundaries_path}`)") from None
    finally:
        if bar is not None:
            bar.close()
    aside = install_boundaries(bset, cfg.boundaries_path)
    if aside is not None:
        say("boundaries", f"the previous file is kept as {aside}")
    say("boundaries", f"{', '.join(bset.names())} -> {cfg.boundaries_path}")


def step_doctor(run: Run) -> None:
    from shell.commands import doctor

    checks = doctor.run_checks(run.cfg, run.config_path)
    for check in checks:
        print(check.line(), file=sys.stderr)
    failed = [c for c in checks if c.level == doctor.FAIL]
    if failed:
        raise StepFailed("doctor", f"{len(failed)} check(s) failed: {', '.join(sorted({c.name for c in failed}))}",
                         "follow the hints (->) above, then run `emoji3d setup` again")


NEXT_STEP = ("ready. Next: `emoji3d make --selfie samples/selfie.jpg --style toon` makes a pack here; "
             "`emoji3d serve` runs the bots with the engine (tokens in the environment, see README)")


def run_setup(run: Run) -> None:
    entries = _entries(run)
    needed = to_download(run, entries)
    step_licences(run, needed)
    step_fetch(run, needed)
    step_convert(run, entries)
    step_verify(run, entries)
    step_storage(run)
    step_boundaries(run)
    step_doctor(run)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="emoji3d setup", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="path to config.toml")
    p.add_argument("--yes", "--accept-licences", dest="yes", action="store_true",
                   help="accept every shown licence without asking (for scripts)")
    p.add_argument("--all", action="store_true", help="also install the optional entries (attribute classifiers)")
    p.add_argument("--samples", type=int, default=None,
                   help="renders for the boundary fit (default: [pack] boundary_fit_samples)")
    p.add_argument("--no-progress", action="store_true")
    ns = p.parse_args(argv)
    cfg = load_config(ns.config)
    samples = cfg.pack.boundary_fit_samples if ns.samples is None else ns.samples
    if samples < 8:
        print("error: --samples must be at least 8", file=sys.stderr)
        return 2
    if cfg.engine.preset == "slim":
        print("note: [engine] preset is \"slim\": the engine will not use the weights installed here until it is "
              "\"auto\" or \"pretrained\"", file=sys.stderr)
    run = Run(cfg, ns.config, ns.yes, not ns.no_progress, samples, ns.all)
    try:
        run_setup(run)
    except StepFailed as exc:
        print(f"setup stopped at {exc.step}: {exc.problem}", file=sys.stderr)
        print(f"  fix: {exc.fix}", file=sys.stderr)
        return exc.exit_code
    print(NEXT_STEP)
    return 0
