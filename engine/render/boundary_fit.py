"""Fitting a whole boundary file on a base EG3D: which expressions, which scorer, sample, fit.

Shared by ``emoji3d boundaries fit`` (:mod:`shell.commands.boundaries`), the
engine's automatic fit (:mod:`engine.boundary_job`) and ``emoji3d setup``.

Conventions
-----------
* ``kind`` is the generator's preset: ``"pretrained"`` renders faces and is
  scored with MediaPipe face-mesh geometry (:func:`engine.render.scorers.face_scorer`);
  ``"slim"`` renders none, so proxy image statistics stand in and the file is
  marked ``for_tests_only`` (meaningless, it exercises the code paths).
* The geometry expressions are always fitted; every installed attribute
  classifier is added unless ``names`` restricts the set (naming one that is
  not installed is an error).
* Randomness: latents come from ``torch.Generator().manual_seed(seed)``, the
  SVM splits from ``numpy.random.default_rng(seed)``: one seed, one file.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from emoji3d.errors import UserFacingError
from engine.render import edits, expressions
from engine.render.scorers import CLASSIFIER_SCORER, combined_scorer, face_scorer, proxy_scores

PROXY_SCORER = "proxy-image-stats"
GEOMETRY_SCORER = "mediapipe-geometry"


class BoundaryFitError(UserFacingError):
    """Boundaries could not be fitted (no faces rendered, a constant scorer, a classifier missing)."""

    key = "boundaries_fit_failed"


@dataclass(frozen=True)
class FitPlan:
    """What to fit: geometry expressions and installed classifiers, in the order asked for."""

    names: list[str]
    geometry: list[str]
    classifiers: dict[str, expressions.ImageScorer] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # classifier attribute -> why it is not fitted


def plan_fit(weights_dir: pathlib.Path, names: Sequence[str] | None = None) -> FitPlan:
    """The expressions to fit. ``names=None``: every geometry expression and installed classifier.

    Raises ValueError for an unknown name, :class:`BoundaryFitError` for a named classifier that
    is not installed."""
    known = expressions.GEOMETRY_EXPRESSIONS + expressions.CLASSIFIER_ATTRIBUTES
    unknown = set(names or ()) - set(known)
    if unknown:
        raise ValueError(f"unknown expressions {sorted(unknown)}; known: {', '.join(known)}")
    installed, missing = expressions.classifier_scorers(weights_dir)
    chosen = list(names) if names is not None else list(expressions.GEOMETRY_EXPRESSIONS) + list(installed)
    wanted_missing = {n: missing[n] for n in chosen if n in missing}
    if wanted_missing:
        raise BoundaryFitError("; ".join(f"cannot fit {n}: {why}" for n, why in wanted_missing.items()))
    return FitPlan(names=chosen, geometry=[n for n in chosen if n in expressions.GEOMETRY_EXPRESSIONS],
                   classifiers={n: installed[n] for n in chosen if n in installed},
                   skipped={} if names is not None else dict(missing))


def fit_boundary_set(generator: torch.nn.Module, kind: str, plan: FitPlan, sample_cfg: edits.SampleConfig,
                     fit_cfg: edits.FitConfig, seed: int, *, detector=None,
                     layers: Mapping[str, tuple[int, int]] | None = None, min_face_fraction: float = 0.5,
                     progress: Callable[[int, int], None] = lambda done, total: None) -> edits.BoundarySet:
    """Sample, render, score and fit ``plan`` on ``generator`` (a ``kind`` preset); the boundary set
    tied to the generator's digest. ``detector`` (a ``LandmarkDetector``, owned by the caller) is
    needed for ``kind="pretrained"``. ``progress(done, total)`` is called after each batch and may
    raise to stop the fit."""
    rng = torch.Generator().manual_seed(seed)
    if kind == "slim":
        scorer, scorer_name = combined_scorer(proxy_scores, plan.geometry, plan.classifiers), PROXY_SCORER
    else:
        if detector is None:
            raise ValueError("a pretrained generator is scored with face-mesh landmarks: pass detector=")
        scorer, scorer_name = face_scorer(detector, plan.geometry, plan.classifiers), GEOMETRY_SCORER
    latents, scores = edits.sample_and_score(generator, scorer, plan.names, sample_cfg, rng, progress)
    if kind != "slim":
        found = float(np.isfinite(scores[plan.names[0]]).mean())
        if found < min_face_fraction:
            raise BoundaryFitError(f"faces were found in only {found:.1%} of the renders (< {min_face_fraction:.0%}); "
                                   "the generator does not render usable faces (check the EG3D weights with "
                                   "`emoji3d weights verify eg3d_ffhq`)")
    fit_rng = np.random.default_rng(seed)
    try:
        fitted = edits.fit_boundaries(latents, {n: scores[n] for n in plan.geometry}, fit_rng, fit_cfg,
                                      scorer=scorer_name, layers=layers)
        fitted.update(edits.fit_boundaries(latents, {n: scores[n] for n in plan.classifiers}, fit_rng, fit_cfg,
                                           scorer=CLASSIFIER_SCORER, layers=layers))
    except ValueError as exc:
        raise BoundaryFitError(str(exc)) from exc
    return edits.BoundarySet(generator_digest=edits.generator_digest(generator), generator_preset=kind,
                             boundaries={n: fitted[n] for n in plan.names}, for_tests_only=kind == "slim")
