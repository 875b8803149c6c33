"""Golden-reference checks: rebuild every output a fixture folder lists and
compare it with the official implementation's output.

A fixture folder holds ``config.json``, weights (or a recipe for them) and
``io.safetensors``. Each checker module in this package exposes

    def matches(config: dict, folder: pathlib.Path) -> bool
    def run(folder: pathlib.Path) -> list[TensorCheck]

and is listed in ``CHECKERS``. ``check_folder`` picks the first checker whose
``matches`` accepts the folder. Tolerance everywhere is
``max|ours - ref| <= rel * max(1, max|ref|)`` with ``rel = 1e-3`` unless a
checker needs a domain-specific measure (pixels, dB), which it states in
``TensorCheck.rule``.

Fixture files are untrusted input: every read goes through the safe readers of
:mod:`engine.weights.tensor_files` (``read_json``, ``load_safetensors``,
``torch.load(weights_only=True)``), and a damaged or malicious fixture (a
truncated file, invalid JSON, a pickle that asks to run code, a missing key or
a tensor of the wrong shape) is a ``WeightsError`` naming the file or folder,
never a traceback.
"""
from __future__ import annotations

import importlib
import pathlib
from dataclasses import dataclass

REL_TOL = 1e-3

# Module names (inside engine.checks) tried in order.
CHECKERS = ["stylegan2_rosinality", "eg3d", "e4e_arcface", "face_geometry"]


@dataclass(frozen=True)
class TensorCheck:
    name: str
    error: float  # the measured error (max|Δ| unless ``rule`` says otherwise)
    tolerance: float
    rule: str = "max|Δ|"
    higher_is_better: bool = False  # e.g. PSNR

    @property
    def passed(self) -> bool:
        if self.error != self.error:  # NaN never passes
            return False
        if self.higher_is_better:
            return self.error >= self.tolerance
        return self.error <= self.tolerance


def max_abs_check(name: str, ours, ref, rel: float = REL_TOL) -> TensorCheck:
    """Compare two tensors/arrays with the fixture tolerance."""
    import numpy as np

    a = np.asarray(ours.detach().cpu().double() if hasattr(ours, "detach") else ours, dtype=np.float64)
    b = np.asarray(ref.detach().cpu().double() if hasattr(ref, "detach") else ref, dtype=np.float64)
    if a.shape != b.shape:
        return TensorCheck(f"{name} (shape {a.shape} != {b.shape})", float("nan"), 0.0)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    tol = rel * max(1.0, float(np.max(np.abs(b))) if b.size else 0.0)
    return TensorCheck(name, err, tol)


class UnknownFixture(Exception):
    pass


def check_folder(folder: str | pathlib.Path, kinds: list[str] | None = None) -> list[TensorCheck]:
    folder = pathlib.Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UnknownFixture(f"{folder}: no config.json, so this is not a reference fixture folder")
    from engine.weights.errors import WeightsError
    from engine.weights.tensor_files import read_json

    config = read_json(cfg_path)
    for name in kinds or CHECKERS:
        try:
            mod = importlib.import_module(f"engine.checks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"engine.checks.{name}":
                continue
            raise
        if mod.matches(config, folder):
            try:
                return mod.run(folder)
            except WeightsError:
                raise
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
                # The checkers trust the fixture's structure; a fixture that breaks it is damaged.
                first = (str(exc).strip().splitlines() or [""])[0]
                raise WeightsError(f"{folder}: damaged {name} fixture ({type(exc).__name__}: {first})",
                                   file=str(folder)) from None
    raise UnknownFixture(f"{folder}: no checker recognises this fixture (tried {', '.join(kinds or CHECKERS)})")


def format_report(checks: list[TensorCheck]) -> str:
    width = max([len(c.name) for c in checks] + [6])
    lines = [f"{'tensor':<{width}}  {'rule':<8} {'error':>12} {'tolerance':>12}  result"]
    for c in checks:
        cmp = ">=" if c.higher_is_better else "<="
        lines.append(
            f"{c.name:<{width}}  {c.rule:<8} {c.error:>12.3e} {cmp}{c.tolerance:>10.3e}  {'ok' if c.passed else 'FAIL'}"
        )
    n_fail = sum(not c.passed for c in checks)
    lines.append(f"{len(checks) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)
