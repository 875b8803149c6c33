"""Attribute boundaries in EG3D's W space (paper §2.3): fitting, editing, files.

Conventions
-----------
* Latents: EG3D W+ ``ws`` [B, L, D] (L = 14, D = 512 for FFHQ-512). The
  mapping network writes the same w into every layer; boundaries are fitted on
  that single w [N, D] (layer 0 of the sampled ws) of the **base** generator,
  conditioned on the frontal camera. They are applied to any avatar's
  ``w_3d``, including one whose generator weights were tuned per user (PTI +
  dual-branch training keep the mapping and the latent space).
* A boundary is a unit normal ``n`` [D] (float32) of a linear SVM separating
  the latents with the highest scores from those with the lowest, oriented so
  that moving along ``+n`` raises the score. An edit is ``w + d * n``
  (:func:`apply_edit`), on all layers or on a half-open layer range
  ``[start, stop)``.
* The precomputed coefficient ``d`` of an expression is the distance, along
  ``n``, from the mean latent to the ``1 - fraction`` quantile of ``w . n``
  over the samples: it moves an average face to where clearly positive
  samples of the base generator lie, i.e. a clear change that stays inside the
  data distribution (identity-preserving). ``d`` is in W units (not the
  SVM's margin units).
* Boundary file (:func:`save_boundaries`): a safetensors file. Tensors:
  ``normal.<name>`` [D] float32 per attribute. Metadata (all strings):
  ``format`` = ``emoji3d.boundaries``, ``version`` = ``1``, ``generator_digest``
  (:func:`generator_digest` of the base EG3D), ``generator_preset``,
  ``for_tests_only`` (``"true"`` when fitted on slim random weights) and
  ``boundaries``: JSON ``{name: {"d", "layers", "accuracy", "intercept",
  "n_samples", "fraction", "scorer", "mean_projection", "std_projection"}}``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from emoji3d.errors import UserFacingError

FORMAT = "emoji3d.boundaries"
VERSION = 1
UNIT_TOLERANCE = 1e-4


class BoundaryFileError(UserFacingError):
    """A boundary file is missing, unreadable, of an unknown version, or has a non-unit normal."""

    key = "boundaries_invalid"


class BoundaryMismatchError(UserFacingError):
    """The boundary file was fitted on a different base generator. ``params``: ``expected``, ``found``."""

    key = "boundaries_generator_mismatch"


class ExpressionUnavailableError(UserFacingError):
    """An expression edit was asked for but no boundary for it is installed. ``params``: ``expression``."""

    key = "expression_unavailable"


@dataclass(frozen=True)
class FitConfig:
    """How a boundary is fitted (InterFaceGAN-style)."""

    fraction: float = 0.1          # top and bottom fraction of the samples used as positives / negatives
    val_fraction: float = 0.3      # of the chosen samples, held out to report accuracy
    svm_c: float = 0.01            # LinearSVC regularisation (on standardised latents)
    max_iter: int = 20000

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 0.5:
            raise ValueError(f"fraction must be in (0, 0.5], got {self.fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class Boundary:
    """One attribute boundary. ``normal`` [D] float32, unit length."""

    name: str
    normal: torch.Tensor
    d: float                                  # precomputed edit distance (W units)
    layers: tuple[int, int] | None = None     # [start, stop) of the ws it edits; None = all
    accuracy: float = float("nan")            # held-out SVM accuracy (nan when nothing was held out)
    intercept: float = 0.0                    # SVM intercept after normalising the normal (w . n + b = 0)
    n_samples: int = 0
    fraction: float = 0.0
    scorer: str = ""
    mean_projection: float = 0.0              # mean of w . n over the samples
    std_projection: float = 0.0

    def meta(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("name", "normal")}
        out["layers"] = list(self.layers) if self.layers is not None else None
        return out


@dataclass(frozen=True)
class BoundarySet:
    """Boundaries for one base generator."""

    generator_digest: str
    generator_preset: str
    boundaries: dict[str, Boundary] = field(default_factory=dict)
    for_tests_only: bool = False
    version: int = VERSION

    def get(self, name: str) -> Boundary:
        if name not in self.boundaries:
            raise ExpressionUnavailableError(f"no boundary for {name!r}; available: {', '.join(sorted(self.boundaries)) or 'none'}",
                                             expression=name)
        return self.boundaries[name]

    def names(self) -> list[str]:
        return sorted(self.boundaries)


# ----------------------------------------------------------------------------- fitting

def fit_boundary(latents: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, rng: np.random.Generator,
                 config: FitConfig = FitConfig(), *, name: str = "attribute", scorer: str = "",
                 layers: tuple[int, int] | None = None) -> Boundary:
    """Fit a linear SVM between the top and bottom ``fraction`` of ``latents`` [N, D] by ``scores`` [N].

    Samples with a non-finite score (no face found) are dropped first. The
    returned normal is unit length and oriented towards higher scores.
    """
    from sklearn.svm import LinearSVC

    x = np.asarray(latents.detach().cpu().numpy() if isinstance(latents, torch.Tensor) else latents, dtype=np.float64)
    s = np.asarray(scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if x.ndim != 2 or s.ndim != 1 or x.shape[0] != s.shape[0]:
        raise ValueError(f"latents must be [N, D] and scores [N], got {x.shape} and {s.shape}")
    keep = np.isfinite(s)
    x, s = x[keep], s[keep]
    n = x.shape[0]
    k = int(math.floor(n * config.fraction))
    if k < 2:
        raise ValueError(f"{n} scored samples give {k} per class at fraction {config.fraction}; need at least 2")
    order = np.argsort(s, kind="stable")
    neg, pos = order[:k], order[-k:]
    if s[pos].min() <= s[neg].max():
        raise ValueError(f"boundary {name!r}: the top and bottom {k} scores overlap (the scorer is constant?)")
    # Held-out split, the same size from each class.
    n_val = int(round(k * config.val_fraction))
    pos, neg = rng.permutation(pos), rng.permutation(neg)
    train = np.concatenate([pos[n_val:], neg[n_val:]])
    labels_train = np.concatenate([np.ones(k - n_val), np.zeros(k - n_val)])
    # Centre and scale with the samples' statistics so the SVM is well conditioned; map back afterwards.
    mu, sd = x.mean(0), x.std(0) + 1e-8
    svm = LinearSVC(C=config.svm_c, max_iter=config.max_iter, dual="auto")
    svm.fit((x[train] - mu) / sd, labels_train)
    coef = svm.coef_.reshape(-1) / sd                      # normal in W (unnormalised)
    intercept = float(svm.intercept_[0] - np.dot(svm.coef_.reshape(-1), mu / sd))
    norm = float(np.linalg.norm(coef))
    if not norm > 0:
        raise ValueError(f"boundary {name!r}: the SVM returned a zero normal")
    normal = coef / norm
    intercept /= norm
    accuracy = float("nan")
    if n_val > 0:
        val = np.concatenate([pos[:n_val], neg[:n_val]])
        truth = np.concatenate([np.ones(n_val), np.zeros(n_val)])
        accuracy = float(np.mean(((x[val] @ normal + intercept) > 0) == truth))
    proj = x @ normal
    d = float(np.quantile(proj, 1.0 - config.fraction) - proj.mean())
    return Boundary(name=name, normal=torch.from_numpy(normal.astype(np.float32)), d=d, layers=layers,
                    accuracy=accuracy, intercept=intercept, n_samples=n, fraction=config.fraction, scorer=scorer,
                    mean_projection=float(proj.mean()), std_projection=float(proj.std()))


# ----------------------------------------------------------------------------- editing

def apply_edit(ws: torch.Tensor, normal: torch.Tensor, distance: float | Sequence[float] | torch.Tensor,
               layers: tuple[int, int] | None = None) -> torch.Tensor:
    """``ws + distance * normal`` on layers ``[start, stop)`` (all when None).

    ws [B, L, D] or [L, D]; normal [D]; distance a float (result has ws'
    shape) or a 1-d sequence [F] (ws must then be one latent, [1, L, D] or
    [L, D]; the result is [F, L, D], one edited latent per distance).
    """
    if ws.ndim == 2:
        ws = ws.unsqueeze(0)
    if ws.ndim != 3:
        raise ValueError(f"ws must be [B, L, D] or [L, D], got {tuple(ws.shape)}")
    b, n_layers, dim = ws.shape
    if normal.shape != (dim,):
        raise ValueError(f"normal must be [{dim}] to match ws, got {tuple(normal.shape)}")
    mask = torch.zeros(n_layers, 1, dtype=ws.dtype, device=ws.device)  # [L, 1]
    if layers is None:
        mask[:] = 1
    else:
        start, stop = int(layers[0]), int(layers[1])
        if not 0 <= start < stop <= n_layers:
            raise ValueError(f"layer range [{start}, {stop}) is outside the {n_layers} ws")
        mask[start:stop] = 1
    direction = mask * normal.to(ws.device, ws.dtype).reshape(1, dim)  # [L, D]
    if isinstance(distance, (int, float)):
        return ws + float(distance) * direction
    dist = torch.as_tensor(distance, dtype=ws.dtype, device=ws.device).reshape(-1)  # [F]
    if b != 1:
        raise ValueError(f"a sequence of distances needs a single latent, got a batch of {b}")
    return ws + dist.reshape(-1, 1, 1) * direction  # [F, L, D]


def edit_expression(ws: torch.Tensor, boundaries: BoundarySet, name: str, strength: float = 1.0) -> torch.Tensor:
    """``ws`` moved by ``strength`` times the precomputed coefficient of expression ``name``."""
    b = boundaries.get(name)
    return apply_edit(ws, b.normal, strength * b.d, b.layers)


# ----------------------------------------------------------------------------- digests and files

def generator_digest(generator: torch.nn.Module) -> str:
    """sha256 (hex) of a generator's config (when it has one) and every tensor of its state dict, by name."""
    h = hashlib.sha256()
    cfg = getattr(generator, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_dict"):
        h.update(json.dumps(cfg.to_json_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(generator.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_boundaries(bset: BoundarySet, path: str | os.PathLike) -> None:
    """Write ``bset`` atomically (a temporary file renamed over ``path``)."""
    from safetensors.torch import save_file

    check_unit(bset)
    tensors = {f"normal.{n}": b.normal.detach().cpu().float().contiguous() for n, b in bset.boundaries.items()}
    meta = {"format": FORMAT, "version": str(bset.version), "generator_digest": bset.generator_digest,
            "generator_preset": bset.generator_preset, "for_tests_only": "true" if bset.for_tests_only else "false",
            "boundaries": json.dumps({n: b.meta() for n, b in bset.boundaries.items()}, sort_keys=True)}
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def load_boundaries(path: str | os.PathLike, expected_digest: str | None = None) -> BoundarySet:
    """Read a boundary file; checks format, version, unit normals and (when given) the generator digest."""
    from safetensors import SafetensorError, safe_open

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise BoundaryFileError(f"boundary file {p} does not exist", file=p)
    try:
        with safe_open(p, framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BoundaryFileError(f"{p} is not a readable safetensors file: {exc}", file=p) from exc
    if meta.get("format") != FORMAT:
        raise BoundaryFileError(f"{p}: format is {meta.get('format')!r}, expected {FORMAT!r}", file=p)
    if meta.get("version") != str(VERSION):
        raise BoundaryFileError(f"{p}: version {meta.get('version')!r} is not supported (this engine reads {VERSION})",
                                file=p)
    try:
        info = json.loads(meta["boundaries"])
        digest = meta["generator_digest"]
    except (KeyError, json.JSONDecodeError) as exc:
        raise BoundaryFileError(f"{p}: metadata is incomplete or not JSON: {exc}", file=p) from exc
    if expected_digest is not None and digest != expected_digest:
        raise BoundaryMismatchError(f"{p} was fitted on generator {digest[:12]}, this generator is {expected_digest[:12]}",
                                    expected=expected_digest, found=digest, file=p)
    boundaries: dict[str, Boundary] = {}
    for name, m in info.items():
        key = f"normal.{name}"
        if key not in tensors:
            raise BoundaryFileError(f"{p}: metadata names {name!r} but the file has no tensor {key!r}", file=p)
        normal = tensors[key].float()
        if normal.ndim != 1:
            raise BoundaryFileError(f"{p}: {key} has shape {tuple(normal.shape)}, expected [D]", file=p)
        layers = tuple(m["layers"]) if m.get("layers") is not None else None
        fields = {k: m[k] for k in ("d", "accuracy", "intercept", "n_samples", "fraction", "scorer", "mean_projection",
                                    "std_projection") if k in m}
        if "d" not in fields or not math.isfinite(float(fields["d"])):
            raise BoundaryFileError(f"{p}: boundary {name!r} has no finite coefficient d", file=p)
        boundaries[name] = Boundary(name=name, normal=normal, layers=layers, **fields)
    bset = BoundarySet(generator_digest=digest, generator_preset=meta.get("generator_preset", ""),
                       boundaries=boundaries, for_tests_only=meta.get("for_tests_only") == "true", version=VERSION)
    check_unit(bset, source=p)
    return bset


def check_unit(bset: BoundarySet, source: str = "boundaries") -> None:
    for name, b in bset.boundaries.items():
        norm = float(torch.linalg.vector_norm(b.normal.double()))
        if not abs(norm - 1.0) <= UNIT_TOLERANCE:
            raise BoundaryFileError(f"{source}: normal of {name!r} has length {norm:.6f}, expected 1", file=source)


def projections(latents: torch.Tensor, bset: BoundarySet) -> dict[str, torch.Tensor]:
    """Signed distances ``w . n + intercept`` [N] of latents [N, D] to every boundary."""
    return {n: latents.float() @ b.normal.float() + b.intercept for n, b in bset.boundaries.items()}


def boundaries_from_mapping(items: Mapping[str, Boundary], generator_digest_hex: str, preset: str,
                            for_tests_only: bool) -> BoundarySet:
    return BoundarySet(generator_digest=generator_digest_hex, generator_preset=preset, boundaries=dict(items),
                       for_tests_only=for_tests_only)


# ----------------------------------------------------------------------------- fitting on a generator

FrameScorer = Callable[[torch.Tensor], dict[str, np.ndarray]]  # images [B,3,H,W] in [-1,1] -> {name: scores [B]}


@dataclass(frozen=True)
class SampleConfig:
    """How latents of the base generator are drawn and rendered for fitting."""

    n: int = 5000                  # latents (several thousand on a GPU)
    batch: int = 8                 # latents per forward pass
    truncation_psi: float = 0.7    # EG3D's usual sampling truncation: cleaner faces, steadier landmarks
    neural_rendering_resolution: int | None = None

    def __post_init__(self) -> None:
        if self.n < 4 or self.batch < 1:
            raise ValueError(f"need n >= 4 and batch >= 1, got n={self.n}, batch={self.batch}")


@torch.no_grad()
def sample_and_score(generator: torch.nn.Module, scorer: FrameScorer, names: Sequence[str], config: SampleConfig,
                     rng: torch.Generator, progress: Callable[[int, int], None] = lambda done, total: None
                     ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Draw ``config.n`` latents of the base generator, render each frontally and score it.

    Returns w [N, D] (layer 0 of ws, after truncation, conditioned on the
    frontal camera) and {name: scores [N]} (NaN where the scorer found no face).
    ``rng`` is a CPU torch.Generator; z ~ N(0, I).
    """
    from engine.nets import camera

    dev = next(generator.parameters()).device
    ws_all, scores = [], {n: [] for n in names}
    done = 0
    while done < config.n:
        b = min(config.batch, config.n - done)
        z = torch.randn(b, generator.z_dim, generator=rng).to(dev)  # [B, z_dim]
        c = camera.conditioning_label(b, device=dev)  # [B, 25] frontal
        ws = generator.mapping(z, c, truncation_psi=config.truncation_psi)  # [B, L, D]
        out = generator.synthesis(ws, c, neural_rendering_resolution=config.neural_rendering_resolution)
        s = scorer(out["image"])
        for n in names:
            if n not in s or len(s[n]) != b:
                raise ValueError(f"scorer returned no {b} scores for {n!r}")
            scores[n].append(np.asarray(s[n], dtype=np.float64))
        ws_all.append(ws[:, 0].float().cpu())
        done += b
        progress(done, config.n)
    return torch.cat(ws_all), {n: np.concatenate(v) for n, v in scores.items()}


def fit_boundaries(latents: torch.Tensor, scores: Mapping[str, np.ndarray], rng: np.random.Generator,
                   config: FitConfig = FitConfig(), *, scorer: str = "",
                   layers: Mapping[str, tuple[int, int] | None] | None = None) -> dict[str, Boundary]:
    """One boundary per scored attribute (see :func:`fit_boundary`)."""
    layers = layers or {}
    return {n: fit_boundary(latents, s, rng, config, name=n, scorer=scorer, layers=layers.get(n))
            for n, s in scores.items()}


@torch.no_grad()
def edit_sheet(generator: torch.nn.Module, bset: BoundarySet, n: int, rng: torch.Generator,
               truncation_psi: float = 0.7, neural_rendering_resolution: int | None = None,
               tile: int = 128) -> tuple[np.ndarray, list[str]]:
    """A contact sheet for looking at a boundary file: for each boundary, ``n`` fresh latents
    (rows) rendered frontally at ``-d``, ``0`` and ``+d`` along it (columns).

    Returns (RGB uint8 [rows*tile, 3*tile, 3], one label per row, e.g. "glasses #1"). A score
    cannot show an inverted direction (fit and rescore share the scorer); a picture can.
    """
    from engine.nets import camera

    dev = next(generator.parameters()).device
    z = torch.randn(n, generator.z_dim, generator=rng).to(dev)  # [n, z_dim]
    c = camera.conditioning_label(n, device=dev)  # [n, 25] frontal
    ws = generator.mapping(z, c, truncation_psi=truncation_psi)  # [n, L, D]
    rows, labels = [], []
    for name, b in bset.boundaries.items():
        cols = []
        for d in (-b.d, 0.0, b.d):
            img = generator.synthesis(apply_edit(ws, b.normal, d, b.layers), c,
                                      neural_rendering_resolution=neural_rendering_resolution)["image"]
            img = torch.nn.functional.interpolate(img.float(), size=(tile, tile), mode="bilinear",
                                                  align_corners=False, antialias=img.shape[-1] > tile)
            cols.append(img)  # [n, 3, tile, tile]
        rows.append(torch.cat(cols, dim=-1))  # [n, 3, tile, 3*tile]
        labels += [f"{name} #{i + 1}" for i in range(n)]
    sheet = torch.cat(rows, dim=0)  # [B*n, 3, tile, 3*tile]
    sheet = torch.cat(list(sheet), dim=-2)  # [3, B*n*tile, 3*tile]
    return ((sheet.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy(), labels


def rescore_edits(generator: torch.nn.Module, bset: BoundarySet, scorer: FrameScorer, n: int, rng: torch.Generator,
                  truncation_psi: float = 0.7, neural_rendering_resolution: int | None = None) -> dict[str, dict[str, float]]:
    """For ``n`` fresh latents, the score before and after each boundary's precomputed edit.

    Returns {name: {"before", "after" (means over faces found in both), "raised" (fraction
    of latents whose score went up), "scored" (how many had a face both times)}}.
    """
    from engine.nets import camera

    dev = next(generator.parameters()).device
    with torch.no_grad():
        z = torch.randn(n, generator.z_dim, generator=rng).to(dev)
        c = camera.conditioning_label(n, device=dev)
        ws = generator.mapping(z, c, truncation_psi=truncation_psi)
        base = scorer(generator.synthesis(ws, c, neural_rendering_resolution=neural_rendering_resolution)["image"])
        report = {}
        for name, b in bset.boundaries.items():
            edited = apply_edit(ws, b.normal, b.d, b.layers)
            after = scorer(generator.synthesis(edited, c, neural_rendering_resolution=neural_rendering_resolution)["image"])
            s0, s1 = np.asarray(base[name], float), np.asarray(after[name], float)
            ok = np.isfinite(s0) & np.isfinite(s1)
            report[name] = {"before": float(s0[ok].mean()) if ok.any() else float("nan"),
                            "after": float(s1[ok].mean()) if ok.any() else float("nan"),
                            "raised": float((s1[ok] > s0[ok]).mean()) if ok.any() else float("nan"),
                            "scored": int(ok.sum())}
    return report
