"""``emoji3d boundaries fit|verify|demo|refit``: fit expression boundaries on the base EG3D, check a boundary file.

fit
    Loads the base EG3D (the converted pretrained weights when installed,
    else the slim preset the pipeline uses, with a loud warning), draws
    ``--n`` latents, renders each frontally, scores smile / surprise / anger /
    blink from MediaPipe face-mesh geometry and glasses / gender / age with the
    installed CelebA-HQ attribute classifiers (:mod:`engine.render.expressions`),
    fits one linear SVM per attribute (:mod:`engine.render.edits`), computes the
    precomputed coefficient ``d`` and writes the versioned boundary file tied
    to the generator's digest. By default every geometry expression and every
    installed classifier attribute is fitted; naming a classifier attribute
    that is not installed is an error.

    Slim random weights render no faces, so MediaPipe scores nothing; on the
    slim preset the geometry expressions fall back to *proxy image
    statistics* (brightness and contrast of face regions, see
    :func:`engine.render.scorers.proxy_scores`) and the file is marked ``for_tests_only``. Such a
    file exercises the code paths only; it is not an expression edit.

verify
    Loads a file (format, version, unit normals, finite coefficients), checks
    its digest against the generator that would use it, and with
    ``--rescore K`` renders K fresh latents before and after each edit and
    reports how often the expression score went up. ``--sheet PNG`` writes a
    contact sheet (per boundary, a few latents at -d, 0, +d) for a look: a
    score cannot reveal a direction that is inverted as a whole, a picture can.

demo
    For ``make demo``: on the slim preset, when no usable boundary file is
    installed, fits a quick slim one (a few dozen latents at a 16 px neural
    rendering) where the engine looks for it, so the demo makes every
    sticker. It is labelled FOR TESTS ONLY like any slim file: meaningless.

refit
    The engines' own fit (``engine.boundary_job``) of a generator whose last
    attempt failed or was cancelled waits ``[pack] boundary_fit_retry_hours``;
    this queues a new attempt at once, for a running engine to take.

Exit status: 0 success, 1 a check failed or the fit could not be made, 2 usage.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import torch

from emoji3d.errors import UserFacingError
from engine.render import boundary_fit, edits, expressions
from engine.render.scorers import combined_scorer, face_scorer, proxy_scores

SLIM_BANNER = ("*** SLIM RANDOM WEIGHTS: this boundary file is FOR TESTS ONLY. The slim generator renders no "
               "faces, so proxy image statistics replaced the expression scorers. Install the pretrained EG3D "
               "(`emoji3d weights fetch` / `convert`) to fit real boundaries. ***")


# ----------------------------------------------------------------------------- generator

def load_base_generator(preset: str, weights_dir: pathlib.Path, seed: int, device: str) -> tuple[torch.nn.Module, str]:
    """The base EG3D the pipeline would load: (generator, "pretrained" | "slim")."""
    from engine.nets import eg3d
    from engine.avatar.networks import SLIM_3D_PRESET

    folder = weights_dir / "eg3d_ffhq"  # the manifest name, as the pipeline loads it
    if preset == "pretrained" or (preset == "auto" and (folder / "config.json").is_file()):
        return eg3d.TriPlaneGenerator.from_pretrained(folder, device=device), "pretrained"
    # Same construction as engine.avatar.networks.slim_networks, so the digest matches the pipeline's g3d.
    return eg3d.slim_generator(SLIM_3D_PRESET, seed=seed + 20, device=device), "slim"


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _settings(ns: argparse.Namespace) -> tuple[pathlib.Path, int, str]:
    from emoji3d.config import load_config

    cfg = load_config(ns.config)
    weights_dir = pathlib.Path(ns.weights_dir) if ns.weights_dir else cfg.weights_dir
    seed = cfg.engine.seed if ns.engine_seed is None else ns.engine_seed
    device = _device(ns.device or cfg.engine.device)
    return weights_dir, seed, device


def _parse_layers(items: Sequence[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for it in items:
        try:
            name, rng = it.split("=", 1)
            a, b = rng.split(":", 1)
            out[name] = (int(a), int(b))
        except ValueError:
            raise ValueError(f"--layers expects NAME=START:STOP, got {it!r}") from None
    return out


# ----------------------------------------------------------------------------- commands

def cmd_fit(ns: argparse.Namespace) -> int:
    weights_dir, seed, device = _settings(ns)
    G, kind = load_base_generator(ns.preset, weights_dir, seed, device)
    names = [n.strip() for n in ns.expressions.split(",") if n.strip()] if ns.expressions else None
    try:
        plan = boundary_fit.plan_fit(weights_dir, names)
        layers = _parse_layers(ns.layers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, why in plan.skipped.items():
        print(f"note: not fitting {name}: {why}", file=sys.stderr)
    if kind == "slim":
        print(SLIM_BANNER, file=sys.stderr)
    sample_cfg = edits.SampleConfig(n=ns.n, batch=ns.batch, truncation_psi=ns.psi,
                                    neural_rendering_resolution=ns.neural_rendering_resolution)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) < sample_cfg.batch:
            print(f"rendered and scored {done}/{total}", file=sys.stderr)

    fit_cfg = edits.FitConfig(fraction=ns.fraction)
    try:
        if kind == "slim":
            bset = boundary_fit.fit_boundary_set(G, kind, plan, sample_cfg, fit_cfg, ns.seed, layers=layers,
                                                 progress=progress)
        else:
            from engine.face.landmarks import LandmarkDetector

            with LandmarkDetector(max_faces=1) as det:
                bset = boundary_fit.fit_boundary_set(G, kind, plan, sample_cfg, fit_cfg, ns.seed, detector=det,
                                                     layers=layers, min_face_fraction=ns.min_face_fraction,
                                                     progress=progress)
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = pathlib.Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    edits.save_boundaries(bset, out)
    print(json.dumps(_summary(bset), indent=1))
    print(f"wrote {out}", file=sys.stderr)
    if kind == "slim":
        print(SLIM_BANNER, file=sys.stderr)
    return 0


def _summary(bset: edits.BoundarySet) -> dict:
    return {"generator_digest": bset.generator_digest, "generator_preset": bset.generator_preset,
            "for_tests_only": bset.for_tests_only,
            "boundaries": {n: {"d": round(b.d, 4), "accuracy": round(b.accuracy, 4), "n_samples": b.n_samples,
                               "layers": b.layers, "scorer": b.scorer} for n, b in bset.boundaries.items()}}


def cmd_verify(ns: argparse.Namespace) -> int:
    weights_dir, seed, device = _settings(ns)
    try:
        bset = edits.load_boundaries(ns.path)
    except UserFacingError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(_summary(bset), indent=1))
    problems = []
    if bset.for_tests_only:
        print("warning: this file was fitted on slim random weights and is for tests only", file=sys.stderr)
    G = None
    if not ns.no_generator:
        preset = ns.preset if ns.preset != "auto" else ("slim" if bset.generator_preset == "slim" else "auto")
        G, kind = load_base_generator(preset, weights_dir, seed, device)
        digest = edits.generator_digest(G)
        if digest != bset.generator_digest:
            problems.append(f"generator digest mismatch: file {bset.generator_digest[:12]}, {kind} generator {digest[:12]}")
    if ns.rescore and G is not None and not problems:
        names = bset.names()
        geo_names = [n for n in names if n in expressions.GEOMETRY_EXPRESSIONS]
        installed, missing = expressions.classifier_scorers(weights_dir)
        for n in names:
            if n in expressions.CLASSIFIER_ATTRIBUTES and n not in installed:
                problems.append(f"{n}: cannot re-score: {missing[n]}")
        classifiers = {n: installed[n] for n in names if n in installed}
        rng = torch.Generator().manual_seed(ns.seed)
        if problems:
            report = {}
        elif bset.for_tests_only:
            report = edits.rescore_edits(G, bset, combined_scorer(proxy_scores, geo_names, classifiers), ns.rescore, rng)
        else:
            from engine.face.landmarks import LandmarkDetector

            with LandmarkDetector(max_faces=1) as det:
                report = edits.rescore_edits(G, bset, face_scorer(det, geo_names, classifiers), ns.rescore, rng)
        print(json.dumps({"rescore": report}, indent=1))
        for name, r in report.items():
            if not r["scored"]:
                problems.append(f"{name}: no rendered face could be scored")
            elif not r["after"] > r["before"]:
                problems.append(f"{name}: the edit did not raise the mean score ({r['before']:.4f} -> {r['after']:.4f})")
    if ns.sheet and G is not None and not problems:
        from PIL import Image

        sheet, labels = edits.edit_sheet(G, bset, ns.sheet_latents, torch.Generator().manual_seed(ns.seed))
        Image.fromarray(sheet).save(ns.sheet)
        print(f"wrote {ns.sheet}: columns -d, 0, +d; rows {', '.join(labels)}", file=sys.stderr)
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if not problems:
        print("OK", file=sys.stderr)
    return 1 if problems else 0


DEMO_FIT = dict(n=48, batch=8, psi=0.7, fraction=0.25, neural_rendering_resolution=16)  # seconds on a CPU


def cmd_demo(ns: argparse.Namespace) -> int:
    """For ``make demo``: on the slim preset, fit a quick slim boundary file where the engine looks for one,
    unless a usable one is there, so the demo makes every sticker. The file is meaningless (FOR TESTS ONLY)."""
    from emoji3d.config import load_config
    from engine.avatar.networks import pretrained_available
    from engine.resources import load_installed_boundaries

    cfg = load_config(ns.config)
    if cfg.engine.preset == "pretrained" or (cfg.engine.preset == "auto" and pretrained_available(cfg.weights_dir)):
        print("pretrained weights: the engine fits real boundaries itself (a batch job), or run `emoji3d setup`",
              file=sys.stderr)
        return 0
    out = cfg.boundaries_path
    if out.is_file():
        generator, _ = load_base_generator("slim", cfg.weights_dir, cfg.engine.seed, "cpu")
        usable, _ = load_installed_boundaries(cfg, generator)
        if usable is not None:
            print(f"{out}: a slim boundary file for this generator is installed", file=sys.stderr)
            return 0
        try:
            if not edits.load_boundaries(out).for_tests_only:
                print(f"{out} holds real boundaries for another generator; not replacing it", file=sys.stderr)
                return 1
        except UserFacingError:
            pass  # damaged: replaced below
    print(f"fitting a quick slim boundary file at {out}: MEANINGLESS, it only lets the demo make every sticker",
          file=sys.stderr)
    fit = argparse.Namespace(config=ns.config, weights_dir=None, preset="slim", device="cpu", engine_seed=None,
                             seed=0, out=str(out), expressions=None, layers=[], min_face_fraction=0.5, **DEMO_FIT)
    return cmd_fit(fit)


def cmd_refit(ns: argparse.Namespace) -> int:
    from emoji3d.config import load_config
    from engine import boundary_job
    from storage.connect import open_storage

    db, _ = open_storage(load_config(ns.config))
    try:
        ids = boundary_job.refit(db)
    finally:
        db.dispose()
    print(f"queued the boundary fit again: job {', '.join(map(str, ids))}" if ids
          else "no failed or cancelled boundary fit to try again")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emoji3d boundaries", description="expression boundaries of the base EG3D")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="config.toml (default: $EMOJI3D_CONFIG or the repository's)")
        sp.add_argument("--weights-dir", help="converted weights folder (default: from config)")
        sp.add_argument("--preset", choices=("auto", "pretrained", "slim"), default="auto")
        sp.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
        sp.add_argument("--engine-seed", type=int, default=None, help="seed of the slim networks (default: [engine] seed)")
        sp.add_argument("--seed", type=int, default=0, help="sampling seed")

    f = sub.add_parser("fit", help="sample, render, score and fit boundaries; write the file")
    common(f)
    f.add_argument("--out", required=True, help="boundary file to write (.safetensors)")
    f.add_argument("--n", type=int, default=5000, help="latents to sample (several thousand on a GPU)")
    f.add_argument("--batch", type=int, default=8)
    f.add_argument("--psi", type=float, default=0.7, help="truncation psi for sampling")
    f.add_argument("--fraction", type=float, default=0.1, help="top/bottom fraction used as SVM classes")
    f.add_argument("--expressions", default=None,
                   help="comma-separated: smile,surprise,anger,blink,glasses,gender,age (default: the geometry "
                        "expressions and every installed attribute classifier)")
    f.add_argument("--layers", nargs="*", default=[], help="NAME=START:STOP: restrict an edit to ws [START, STOP)")
    f.add_argument("--min-face-fraction", type=float, default=0.5)
    f.add_argument("--neural-rendering-resolution", type=int, default=None)
    f.set_defaults(func=cmd_fit)

    d = sub.add_parser("demo", help="slim preset: fit a quick, meaningless boundary file for the demo if none")
    d.add_argument("--config", help="config.toml (default: $EMOJI3D_CONFIG or the repository's)")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("refit", help="queue the engines' boundary fit again now after it failed (no back-off)")
    r.add_argument("--config", help="config.toml (default: $EMOJI3D_CONFIG or the repository's)")
    r.set_defaults(func=cmd_refit)

    v = sub.add_parser("verify", help="check a boundary file (and optionally re-score edits)")
    common(v)
    v.add_argument("path")
    v.add_argument("--rescore", type=int, default=0, metavar="K", help="re-render K latents before/after each edit")
    v.add_argument("--no-generator", action="store_true", help="check the file only, not its generator digest")
    v.add_argument("--sheet", metavar="PNG", help="write a contact sheet of every edit at -d, 0, +d")
    v.add_argument("--sheet-latents", type=int, default=3, metavar="N", help="latents per boundary on the sheet")
    v.set_defaults(func=cmd_verify)
    return p


def main(argv: list[str]) -> int:
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    return int(ns.func(ns))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
