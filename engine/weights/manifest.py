"""The weights manifest: which official files a real run needs, and where each one stands.

Conventions
- The manifest (``engine/weights/manifest.toml``, or the file named by
  ``[weights] manifest`` in config.toml) has one ``[files.<name>]`` table per
  file; each becomes a :class:`WeightFile`. ``sha256`` is the full 64-hex
  digest or a shorter *prefix* (torchvision publishes the first 8 hex digits
  in its file names); ``None`` means unknown and only the size (if known) is
  checked. ``size`` is in bytes. TOML has no null: ``size = 0`` and
  ``sha256 = ""`` mean unknown.
- ``kind`` names the converter (:mod:`engine.weights.convert`) that turns the
  official file into pretrained folders.
- In the weights folder (``[weights] dir``), an original file sits under its
  official file name (``<dir>/<filename>``, a download in progress as
  ``<filename>.part``) and its converted form in ``<dir>/<entry name>/``
  (:mod:`engine.weights.pretrained` describes that folder). torchvision
  files are also found in torch hub's cache, where torchvision itself puts
  them.
- :func:`verify_file` checks the manifest's size and digest only; ``weights
  verify`` uses :func:`engine.weights.verify.verify_installed`, which adds the
  fetch record and, where nothing is known, a real parse.
- :func:`iter_status` says per entry: ``converted`` (a current pretrained
  folder), ``outdated`` (converted by an older version: run ``emoji3d weights
  convert`` again), ``downloaded``, ``partial`` or ``missing``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from engine.weights.errors import WeightsError, WeightsMissing

KINDS = ("eg3d_pickle", "stylegan2_ada_pickle", "stylegan2_rosinality", "e4e", "arcface", "torchvision",
         "tf_network_pickle")
DEFAULT_MANIFEST = pathlib.Path(__file__).resolve().parent / "manifest.toml"
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class WeightFile:
    name: str  # short id, e.g. "eg3d_ffhq"; also the folder of the converted files
    filename: str  # official file name, e.g. "ffhqrebalanced512-128.pkl"
    url: str
    size: int | None  # bytes, None if unknown
    sha256: str | None  # full digest or a prefix (>= 8 hex digits); None if unknown
    licence: str  # licence identifier/summary shown before download
    kind: str  # one of KINDS: selects the converter
    licence_url: str = ""
    note: str = ""
    optional: bool = False  # an add-on (e.g. attribute classifiers): fetched only when named or with --all

    def __post_init__(self) -> None:
        if not self.name or not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise WeightsError(f"weights manifest: bad entry name {self.name!r}")
        if not self.filename or "/" in self.filename or "\\" in self.filename or self.filename.startswith("."):
            raise WeightsError(f"weights manifest [{self.name}]: filename must be a plain file name, got {self.filename!r}")
        if self.kind not in KINDS:
            raise WeightsError(f"weights manifest [{self.name}]: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.size is not None and (not isinstance(self.size, int) or self.size <= 0):
            raise WeightsError(f"weights manifest [{self.name}]: size must be a positive integer, got {self.size!r}")
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if not _HEX.match(digest) or not (8 <= len(digest) <= 64):
                raise WeightsError(f"weights manifest [{self.name}]: sha256 must be 8..64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", digest)
        if not isinstance(self.optional, bool):
            raise WeightsError(f"weights manifest [{self.name}]: optional must be true or false, got {self.optional!r}")
        if not self.url.startswith(("https://", "http://")):
            raise WeightsError(f"weights manifest [{self.name}]: url must be http(s), got {self.url!r}")

    @property
    def sha256_is_prefix(self) -> bool:
        return self.sha256 is not None and len(self.sha256) < 64


@dataclass(frozen=True)
class Manifest:
    files: tuple[WeightFile, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        """Parse ``{"files": {name: {filename, url, size, sha256, licence, kind, ...}}}``."""
        files = data.get("files", data)
        if not isinstance(files, Mapping) or not files:
            raise WeightsError("weights manifest: expected a [files.<name>] table per weight file")
        allowed = {f.name for f in dataclasses.fields(WeightFile)} - {"name"}
        out = []
        for name, raw in files.items():
            if not isinstance(raw, Mapping):
                raise WeightsError(f"weights manifest [{name}]: expected a table")
            unknown = set(raw) - allowed
            if unknown:
                raise WeightsError(f"weights manifest [{name}]: unknown key(s) {', '.join(sorted(unknown))}")
            missing = {"filename", "url", "licence", "kind"} - set(raw)
            if missing:
                raise WeightsError(f"weights manifest [{name}]: missing key(s) {', '.join(sorted(missing))}")
            fields = dict(raw)
            fields["size"] = int(fields["size"]) if fields.get("size") else None
            fields["sha256"] = fields.get("sha256") or None
            out.append(WeightFile(name=name, **fields))
        names = [f.name for f in out]
        if len(set(names)) != len(names):
            raise WeightsError("weights manifest: duplicate entry names")
        return cls(tuple(out))

    def get(self, name: str) -> WeightFile:
        for entry in self.files:
            if entry.name == name or entry.filename == name:
                return entry
        raise WeightsError(f"weights manifest has no entry {name!r} (known: {', '.join(f.name for f in self.files)})")


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    manifest_path = pathlib.Path(path) if path else DEFAULT_MANIFEST
    try:
        data = tomllib.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"weights manifest {manifest_path} not found", file=str(manifest_path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise WeightsError(f"weights manifest {manifest_path}: invalid TOML ({exc})", file=str(manifest_path)) from None
    return Manifest.from_dict(data)


# ---------------------------------------------------------------------------
# verification against the manifest's size and digest


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Verification:
    path: pathlib.Path
    ok: bool
    detail: str  # "size ok, sha256 ok" / what is wrong


def verify_file(entry: WeightFile, path: str | os.PathLike, digest: str | None = None) -> Verification:
    """Check an installed/downloaded file against its manifest size and sha256 (``digest``: the
    file's sha256 when already computed). Only the manifest: :mod:`engine.weights.verify` adds
    the fetch record and, where nothing is known, a real parse."""
    file_path = pathlib.Path(path)
    if not file_path.is_file():
        return Verification(file_path, False, "missing")
    size = file_path.stat().st_size
    notes = []
    if entry.size is not None:
        if size != entry.size:
            return Verification(file_path, False, f"size {size} bytes, expected {entry.size}")
        notes.append("size ok")
    if entry.sha256 is not None:
        digest = digest or sha256_file(file_path)
        if not digest.startswith(entry.sha256):
            what = "sha256 prefix" if entry.sha256_is_prefix else "sha256"
            return Verification(file_path, False, f"{what} {digest[:len(entry.sha256)]}, expected {entry.sha256}")
        notes.append("sha256 prefix ok" if entry.sha256_is_prefix else "sha256 ok")
    if not notes:
        notes.append("present (no size or checksum known)")
    return Verification(file_path, True, ", ".join(notes))


# ---------------------------------------------------------------------------
# where files are, and what state each entry is in


def installed_path(entry: WeightFile, weights_dir: str | os.PathLike) -> pathlib.Path:
    """Where ``weights fetch`` puts the official file."""
    return pathlib.Path(weights_dir) / entry.filename


def converted_path(entry: WeightFile, weights_dir: str | os.PathLike) -> pathlib.Path:
    """Where ``weights convert`` writes the entry's pretrained folder."""
    return pathlib.Path(weights_dir) / entry.name


def find_installed(entry: WeightFile, weights_dir: str | os.PathLike) -> pathlib.Path | None:
    """The official file: in the weights folder, or (torchvision files) in torch hub's cache, where
    torchvision puts what it downloads ($TORCH_HOME honoured). None when neither has it."""
    candidates = [installed_path(entry, weights_dir)]
    if entry.kind == "torchvision":
        import torch

        candidates.append(pathlib.Path(torch.hub.get_dir()) / "checkpoints" / entry.filename)
    return next((c for c in candidates if c.is_file()), None)


def require(entry: WeightFile, weights_dir: str | os.PathLike) -> pathlib.Path:
    """The current pretrained folder of ``entry``; otherwise an error naming the command that makes it."""
    from engine.weights.pretrained import folder_state

    folder = converted_path(entry, weights_dir)
    state = folder_state(folder)
    if state == "current":
        return folder
    if state in ("outdated", "invalid"):
        raise WeightsError(f"{folder} was not written by this version's converter; run "
                           f"`emoji3d weights convert {entry.name}` again", file=str(folder))
    if find_installed(entry, weights_dir) is not None:
        raise WeightsMissing(
            f"{entry.filename} is downloaded but not converted; run `emoji3d weights convert {entry.name}`",
            file=entry.filename)
    raise WeightsMissing(
        f"{entry.filename} is not installed in {weights_dir}; run `emoji3d weights fetch {entry.name}` "
        f"then `emoji3d weights convert {entry.name}`", file=entry.filename)


def iter_status(manifest: Manifest, weights_dir: str | os.PathLike) -> Iterable[tuple[WeightFile, str]]:
    """(entry, one-word state): converted / outdated / downloaded / partial / missing."""
    from engine.weights.pretrained import folder_state

    for entry in manifest.files:
        state = folder_state(converted_path(entry, weights_dir))
        if state == "current":
            yield entry, "converted"
        elif state in ("outdated", "invalid"):
            yield entry, "outdated"
        elif find_installed(entry, weights_dir) is not None:
            yield entry, "downloaded"
        elif (pathlib.Path(weights_dir) / (entry.filename + ".part")).is_file():
            yield entry, "partial"
        else:
            yield entry, "missing"
