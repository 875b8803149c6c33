"""Pretrained weights: manifest, download, verification, conversion, safe loading.

Conventions
- The manifest (``engine/weights/manifest.toml``, or the file named by
  ``[weights] manifest`` in config.toml) lists every official file a real run
  needs. Each entry is a :class:`WeightFile`. ``sha256`` is either the full
  64-hex digest or a shorter *prefix* (torchvision publishes the first 8 hex
  digits in its file names); ``None`` means unknown and only the size (if known)
  is checked. ``size`` is in bytes.
- Original files live in the weights folder (``[weights] dir``, default
  ``<data_dir>/weights``) under their official file names. :func:`convert`
  writes ``<weights dir>/<entry name>/config.json`` plus ``*.safetensors``; at
  run time only those safetensors are read (:func:`load_converted`).
- ``torch.load`` is only ever called with ``weights_only=True``. NVIDIA network
  pickles (EG3D, stylegan2-ada) embed Python source through
  ``torch_utils.persistence``; :class:`RestrictedUnpickler` reads them as plain
  data (state dicts + constructor kwargs) and never imports or executes
  anything from the file. NVIDIA's older TensorFlow pickles
  (``dnnlib.tflib.network.Network``, e.g. the CelebA-HQ attribute classifiers)
  hold their variables as numpy arrays beside the source of their build
  function; :func:`load_tf_network_pickle` reads the arrays and never runs the
  source.
- Every problem with a file (missing, truncated, corrupt, wrong checksum, wrong
  layout, unsafe pickle) is a :class:`emoji3d.errors.WeightsError` (or subclass)
  whose message names the file.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import pickle
import re
import sys
import tomllib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch

from emoji3d.errors import WeightsError

# ---------------------------------------------------------------------------
# errors


class WeightsMissing(WeightsError):
    """A needed weight file is not installed."""

    key = "weights_missing"


class ChecksumMismatch(WeightsError):
    """A downloaded or installed file has the wrong size or sha256."""

    key = "weights_checksum"


class LicenceNotAccepted(WeightsError):
    """The user declined (or was not asked to accept) a file's licence."""

    key = "weights_licence_declined"


class DownloadFailed(WeightsError):
    """The network download failed (HTTP error, connection, HTML page instead of the file)."""

    key = "weights_download_failed"


class UnsafePickle(WeightsError):
    """A pickle asked for something outside the allowlist; nothing was executed."""

    key = "weights_unsafe_pickle"


# ---------------------------------------------------------------------------
# manifest

KINDS = ("eg3d_pickle", "stylegan2_ada_pickle", "stylegan2_rosinality", "e4e", "arcface", "torchvision",
         "tf_network_pickle")
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
            s = self.sha256.lower()
            if not _HEX.match(s) or not (8 <= len(s) <= 64):
                raise WeightsError(f"weights manifest [{self.name}]: sha256 must be 8..64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", s)
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
        """Parse ``{"files": {name: {filename, url, size, sha256, licence, kind, ...}}}``.

        ``size = 0`` and ``sha256 = ""`` mean unknown (TOML has no null).
        """
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
            kw = dict(raw)
            kw["size"] = int(kw["size"]) if kw.get("size") else None
            kw["sha256"] = kw.get("sha256") or None
            out.append(WeightFile(name=name, **kw))
        names = [f.name for f in out]
        if len(set(names)) != len(names):
            raise WeightsError("weights manifest: duplicate entry names")
        return cls(tuple(out))

    def get(self, name: str) -> WeightFile:
        for f in self.files:
            if f.name == name or f.filename == name:
                return f
        raise WeightsError(f"weights manifest has no entry {name!r} (known: {', '.join(f.name for f in self.files)})")


DEFAULT_MANIFEST = pathlib.Path(__file__).resolve().parent / "manifest.toml"


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    p = pathlib.Path(path) if path else DEFAULT_MANIFEST
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise WeightsError(f"weights manifest {p} not found", file=str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise WeightsError(f"weights manifest {p}: invalid TOML ({exc})", file=str(p)) from None
    return Manifest.from_dict(data)


# ---------------------------------------------------------------------------
# verification


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class Verification:
    path: pathlib.Path
    ok: bool
    detail: str  # "size ok, sha256 ok" / what is wrong


def verify_file(entry: WeightFile, path: str | os.PathLike) -> Verification:
    """Check an installed/downloaded file against its manifest size and sha256."""
    p = pathlib.Path(path)
    if not p.is_file():
        return Verification(p, False, "missing")
    size = p.stat().st_size
    notes = []
    if entry.size is not None:
        if size != entry.size:
            return Verification(p, False, f"size {size} bytes, expected {entry.size}")
        notes.append("size ok")
    if entry.sha256 is not None:
        digest = sha256_file(p)
        if not digest.startswith(entry.sha256):
            what = "sha256 prefix" if entry.sha256_is_prefix else "sha256"
            return Verification(p, False, f"{what} {digest[:len(entry.sha256)]}, expected {entry.sha256}")
        notes.append("sha256 prefix ok" if entry.sha256_is_prefix else "sha256 ok")
    if not notes:
        notes.append("present (no size or checksum known)")
    return Verification(p, True, ", ".join(notes))


# ---------------------------------------------------------------------------
# download


def licence_text(entry: WeightFile) -> str:
    lines = [f"{entry.filename}: licence {entry.licence}"]
    if entry.licence_url:
        lines.append(f"  terms: {entry.licence_url}")
    if entry.note:
        lines.append(f"  note: {entry.note}")
    return "\n".join(lines)


def fetch(
    entry: WeightFile,
    dest_dir: str | os.PathLike,
    progress: bool = True,
    confirm_licence: Callable[[WeightFile], bool] | None = None,
    timeout: float = 60.0,
    chunk: int = 1 << 20,
) -> pathlib.Path:
    """Download ``entry`` into ``dest_dir`` and return the verified path.

    - An installed file that verifies is returned untouched.
    - ``confirm_licence(entry)`` is called before any byte is downloaded; it must
      return True (the CLI shows :func:`licence_text` and asks, or passes
      ``--accept-licence``). ``None`` counts as "not accepted".
    - Partial downloads are kept in ``<filename>.part`` and resumed with an HTTP
      ``Range`` request; a server that ignores Range makes us start over.
    - A finished file that fails its size/sha256 check is deleted and
      :class:`ChecksumMismatch` is raised.
    """
    dest = pathlib.Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / entry.filename
    if final.exists():
        v = verify_file(entry, final)
        if v.ok:
            return final
        raise ChecksumMismatch(
            f"{final}: already present but fails its check ({v.detail}); delete it and fetch again", file=str(final)
        )
    if confirm_licence is None or not confirm_licence(entry):
        raise LicenceNotAccepted(f"{entry.filename}: licence {entry.licence} not accepted; nothing downloaded", file=entry.filename)
    part = dest / (entry.filename + ".part")
    _download_resumable(entry, part, progress=progress, timeout=timeout, chunk=chunk)
    v = verify_file(entry, part)
    if not v.ok:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{entry.filename}: downloaded file refused ({v.detail}); it was deleted", file=entry.filename)
    os.replace(part, final)
    return final


def _download_resumable(entry: WeightFile, part: pathlib.Path, progress: bool, timeout: float, chunk: int) -> None:
    have = part.stat().st_size if part.exists() else 0
    if entry.size is not None and have > entry.size:
        part.unlink()
        have = 0
    if entry.size is not None and have == entry.size:
        return  # complete, verification follows
    headers = {"User-Agent": "emoji3d-weights/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(entry.url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return  # nothing left to send: verification decides
        raise DownloadFailed(f"{entry.filename}: HTTP {exc.code} from {entry.url}", file=entry.filename) from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadFailed(f"{entry.filename}: cannot reach {entry.url} ({exc})", file=entry.filename) from None
    with resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/html"):
            raise DownloadFailed(
                f"{entry.filename}: {entry.url} answered with a web page, not the file "
                "(Google Drive asks for confirmation on large files); download it in a browser "
                f"and place it at {part.parent / entry.filename}",
                file=entry.filename,
            )
        status = getattr(resp, "status", 200)
        if have and status != 206:
            have = 0  # server ignored Range: start over
        mode = "ab" if have else "wb"
        length = resp.headers.get("Content-Length")
        total = (have + int(length)) if length and length.isdigit() else entry.size
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=entry.filename, file=sys.stderr)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        b = resp.read(chunk)
                    except (OSError, ConnectionError) as exc:
                        raise DownloadFailed(
                            f"{entry.filename}: connection lost ({exc}); run fetch again to resume", file=entry.filename
                        ) from None
                    if not b:
                        break
                    f.write(b)
                    if bar is not None:
                        bar.update(len(b))
        finally:
            if bar is not None:
                bar.close()


# ---------------------------------------------------------------------------
# safe readers for torch checkpoints and safetensors


def load_torch_checkpoint(path: str | os.PathLike, allow_namespace: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file.

    ``allow_namespace`` lets ``argparse.Namespace`` through (e4e stores its
    training options that way); it is a plain attribute bag.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise WeightsMissing(f"{p}: file not found", file=str(p))
    if p.stat().st_size == 0:
        raise WeightsError(f"{p}: file is empty", file=str(p))
    import argparse

    extra = [argparse.Namespace] if allow_namespace else []
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Weights only load failed" in str(exc):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            what = found.group(1) if found else "a non-tensor object"
            raise UnsafePickle(f"{p}: refuses to load {what} (only tensors and plain containers are allowed)", file=str(p)) from None
        raise WeightsError(f"{p}: corrupt checkpoint ({msg})", file=str(p)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"{p}: corrupt or truncated checkpoint ({first})", file=str(p)) from None


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = pathlib.Path(path)
    if not p.is_file():
        raise WeightsMissing(f"{p}: file not found", file=str(p))
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{p}: corrupt or truncated safetensors file ({exc})", file=str(p)) from None


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Atomic write; tensors are copied to contiguous CPU memory (no shared storage)."""
    from safetensors.torch import save_file

    p = pathlib.Path(path)
    clean = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    tmp = p.with_name(p.name + ".tmp")
    save_file(clean, str(tmp), metadata=dict(metadata or {}))
    os.replace(tmp, p)


def load_module_state(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Strict ``load_state_dict`` whose error names the file and the first offending keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {'; '.join(shapes[:3])}")
    if problems:
        raise WeightsError(f"{source}: wrong layout for {type(module).__name__}: " + "; ".join(problems), file=source)
    sd = {k: v.to(own[k].dtype) if v.dtype != own[k].dtype and v.is_floating_point() else v for k, v in state_dict.items()}
    module.load_state_dict(sd, strict=True, assign=assign)


# ---------------------------------------------------------------------------
# restricted unpickler for NVIDIA network pickles


@dataclass
class PersistentObject:
    """A ``torch_utils.persistence`` object, as data. ``module_src`` is kept as text, never run."""

    class_name: str
    module_src: str
    state: dict


class OpaqueObject:
    """Placeholder for an allowlisted class that is never imported (torch.nn modules,
    ``training.*`` helpers). It records constructor args and pickled state only."""

    qualname = "?"

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname} (not imported)>"


class PlainDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


def _opaque_class(module: str, name: str) -> type:
    return type(name, (OpaqueObject,), {"qualname": f"{module}.{name}", "__module__": "engine.weights.core.opaque"})


_AUDIT_FORBIDDEN_CALLS = {"exec", "eval", "compile", "__import__", "open", "system", "popen", "execfile", "spawnv", "spawnl", "Popen", "call", "check_output", "run", "remove", "unlink", "rmtree", "getattr", "setattr", "globals", "locals", "vars", "breakpoint", "input", "urlopen"}
_AUDIT_TOPLEVEL_OK = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.If, ast.Try, ast.Pass)


def _is_main_guard(node: ast.stmt) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(t, ast.Compare)
        and isinstance(t.left, ast.Name)
        and t.left.id == "__name__"
        and len(t.comparators) == 1
        and isinstance(t.comparators[0], ast.Constant)
        and t.comparators[0].value == "__main__"
    )


def audit_module_src(src: str, class_name: str, source: str, defines: str = "class") -> None:
    """Static check (``ast`` only, nothing runs) that embedded source looks like a
    network definition: statements that run on import are only imports,
    definitions and assignments; no dangerous call outside function bodies; and
    ``class_name`` is defined (a class, or with ``defines="function"`` a
    function). The real protection is that the source is never executed; this
    check refuses files that are obviously crafted."""
    try:
        tree = ast.parse(src.lstrip("\ufeff"))
    except SyntaxError as exc:
        raise UnsafePickle(f"{source}: embedded module source for {class_name} does not parse ({exc.msg})", file=source) from None

    def check_body(body: list[ast.stmt], where: str) -> None:
        for node in body:
            if _is_main_guard(node):
                continue  # `if __name__ == "__main__":` does not run on import
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # docstring
            if not isinstance(node, _AUDIT_TOPLEVEL_OK):
                raise UnsafePickle(
                    f"{source}: embedded source for {class_name} runs a {type(node).__name__} statement at {where} "
                    f"(line {node.lineno}); refused",
                    file=source,
                )
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for deco in node.decorator_list:
                    check_calls(deco, where)
                continue
            if isinstance(node, ast.ClassDef):
                for deco in node.decorator_list + node.bases:
                    check_calls(deco, where)
                check_body(node.body, f"class {node.name}")
                continue
            if isinstance(node, (ast.If, ast.Try)):
                check_calls(node.test, where) if isinstance(node, ast.If) else None
                for sub in ("body", "orelse", "finalbody"):
                    check_body(getattr(node, sub, []) or [], where)
                for h in getattr(node, "handlers", []) or []:
                    check_body(h.body, where)
                continue
            check_calls(node, where)

    def check_calls(node: ast.AST, where: str) -> None:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                fn = sub.func
                name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
                if name in _AUDIT_FORBIDDEN_CALLS:
                    raise UnsafePickle(
                        f"{source}: embedded source for {class_name} calls {name}() at {where} (line {sub.lineno}); refused",
                        file=source,
                    )

    check_body(tree.body, "module level")
    wanted = ast.ClassDef if defines == "class" else (ast.FunctionDef, ast.AsyncFunctionDef)
    if not any(isinstance(n, wanted) and n.name == class_name for n in tree.body):
        raise UnsafePickle(f"{source}: embedded source does not define {defines} {class_name}; refused", file=source)


_TORCH_DTYPES = {n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}
_NUMPY_SAFE = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
# Modules whose classes stand in as opaque data records (never imported).
_OPAQUE_PREFIXES = ("torch.nn.modules.", "training.", "torch_utils.", "dnnlib.", "metrics.", "camera_utils")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for NVIDIA network pickles that executes nothing from the file.

    ``find_class`` answers only from an explicit allowlist:
    tensor/storage rebuilders (mapped to safe functions), containers,
    torch dtypes/Size, numpy array reconstruction, ``EasyDict`` (as a dict),
    ``torch_utils.persistence._reconstruct_persistent_obj`` (turned into a
    :class:`PersistentObject` without running ``module_src``), and classes of
    ``torch.nn.modules.*`` / ``training.*`` / ``torch_utils.*`` (as
    :class:`OpaqueObject` placeholders that are never imported). Anything else
    (``os.system``, ``builtins.eval`` …) raises :class:`UnsafePickle`.
    """

    def __init__(self, file: io.BufferedIOBase, source: str, audit_source: bool = True, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source
        self.audit_source = audit_source
        self._opaque: dict[tuple[str, str], type] = {}

    # -- safe stand-ins -------------------------------------------------
    def _load_from_bytes(self, b: bytes) -> Any:
        if not isinstance(b, (bytes, bytearray)):
            raise UnsafePickle(f"{self.source}: storage payload is not bytes", file=self.source)
        return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)

    @staticmethod
    def _no_hooks(hooks: Any, source: str) -> None:
        if hooks:
            raise UnsafePickle(f"{source}: tensor carries backward hooks; refused", file=source)

    def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
        self._no_hooks(backward_hooks, self.source)
        if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
            raise UnsafePickle(f"{self.source}: tensor built from a non-storage object; refused", file=self.source)
        return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), bool(requires_grad), collections.OrderedDict())

    def _rebuild_parameter(self, data, requires_grad, backward_hooks, state=None):
        self._no_hooks(backward_hooks, self.source)
        if not isinstance(data, torch.Tensor):
            raise UnsafePickle(f"{self.source}: parameter built from a non-tensor; refused", file=self.source)
        return torch.nn.Parameter(data, requires_grad=bool(requires_grad))

    def _reconstructor(self, cls, base, state):
        if not (isinstance(cls, type) and issubclass(cls, (OpaqueObject, PlainDict))) or base is not object:
            raise UnsafePickle(f"{self.source}: copyreg._reconstructor on {cls!r}; refused", file=self.source)
        return cls.__new__(cls)

    def _persistent(self, meta: Any) -> PersistentObject:
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise UnsafePickle(f"{self.source}: malformed persistence record; refused", file=self.source)
        src, cname, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
        if not isinstance(src, str) or not isinstance(cname, str) or not isinstance(state, dict):
            raise UnsafePickle(f"{self.source}: malformed persistence record; refused", file=self.source)
        if self.audit_source:
            audit_module_src(src, cname, self.source)
        return PersistentObject(cname, src, dict(state))

    @staticmethod
    def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
            raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
        return obj.encode("latin1")

    # -- the allowlist --------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        key = (module, name)
        simple = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("builtins", "slice"): slice,
            ("builtins", "complex"): complex,
            ("builtins", "bytearray"): bytearray,
            ("torch", "Size"): torch.Size,
            ("torch", "device"): torch.device,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter,
            ("torch.storage", "_load_from_bytes"): self._load_from_bytes,
            ("copyreg", "_reconstructor"): self._reconstructor,
            ("_codecs", "encode"): self._codecs_encode,
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): self._persistent,
            ("dnnlib.util", "EasyDict"): PlainDict,
            ("dnnlib", "EasyDict"): PlainDict,
        }
        if key in simple:
            return simple[key]
        if module == "torch" and name in _TORCH_DTYPES:
            return getattr(torch, name)
        if key in _NUMPY_SAFE:
            import numpy as np

            mod = np._core.multiarray if module.startswith("numpy._core") and hasattr(np, "_core") else np.core.multiarray
            return {"_reconstruct": getattr(mod, "_reconstruct", None), "scalar": getattr(mod, "scalar", None), "ndarray": np.ndarray, "dtype": np.dtype}[name]
        if module.startswith(_OPAQUE_PREFIXES) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) and name[0].isupper():
            if key not in self._opaque:
                self._opaque[key] = _opaque_class(module, name)
            return self._opaque[key]
        raise UnsafePickle(
            f"{self.source}: refuses to load {module}.{name}: not on the allowlist for network pickles "
            "(nothing from the file was executed)",
            file=self.source,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle(f"{self.source}: unexpected persistent id in pickle; refused", file=self.source)


def restricted_load(data: bytes | io.BufferedIOBase, source: str, audit_source: bool = True,
                    encoding: str = "ASCII") -> Any:
    """Unpickle with :class:`RestrictedUnpickler`; corrupt input → ``WeightsError`` naming ``source``.

    ``audit_source=False`` skips the static check of embedded module source
    (for an official file it wrongly refuses); the source is never executed either way.
    ``encoding`` applies to Python 2 strings only ("latin1", as NVIDIA's TF loader)."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return RestrictedUnpickler(f, source, audit_source, encoding).load()
    except WeightsError:
        raise
    except EOFError:
        raise WeightsError(f"{source}: pickle ends early (truncated file)", file=source) from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, MemoryError, UnicodeDecodeError) as exc:
        if "truncated" in str(exc):
            raise WeightsError(f"{source}: pickle ends early (truncated file)", file=source) from None
        raise WeightsError(f"{source}: corrupt pickle ({type(exc).__name__}: {exc})", file=source) from None


@dataclass
class PickledNetwork:
    """One network of an NVIDIA pickle, as data."""

    class_name: str
    init_args: list
    init_kwargs: dict
    state_dict: dict[str, torch.Tensor]
    module_src: str = ""


@dataclass
class NvidiaPickle:
    networks: dict[str, PickledNetwork]  # e.g. "G", "D", "G_ema"
    extras: dict[str, Any] = field(default_factory=dict)  # other top-level entries, as plain data


def _module_state(obj: Any) -> dict | None:
    if isinstance(obj, PersistentObject):
        return obj.state
    if isinstance(obj, OpaqueObject) and isinstance(obj.state, dict):
        return obj.state
    return None


def tree_state_dict(obj: Any, prefix: str = "", out: dict | None = None) -> dict[str, torch.Tensor]:
    """Dotted-key state dict of a pickled module tree, in ``nn.Module.state_dict`` order
    (parameters, persistent buffers, then children)."""
    out = {} if out is None else out
    st = _module_state(obj)
    if st is None:
        return out
    nonpersistent = st.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for k, v in (st.get(group) or {}).items():
            if v is None or (group == "_buffers" and k in nonpersistent):
                continue
            if not isinstance(v, torch.Tensor):
                raise WeightsError(f"{prefix + k}: expected a tensor in {group}, found {type(v).__name__}")
            out[prefix + k] = v.detach()
    for k, child in (st.get("_modules") or {}).items():
        if child is not None:
            tree_state_dict(child, prefix + k + ".", out)
    return out


def to_plain(obj: Any, depth: int = 0) -> Any:
    """Turn pickled data into JSON-able values (dicts, lists, numbers, strings).
    Small tensors become nested lists; modules become ``{"__class__": name}``."""
    if depth > 50:
        return "<too deep>"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): to_plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v, depth + 1) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist() if obj.numel() <= 64 else {"__tensor__": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, PersistentObject):
        return {"__class__": obj.class_name}
    if isinstance(obj, OpaqueObject):
        return {"__class__": obj.qualname}
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return repr(obj)


def load_nvidia_pickle(path: str | os.PathLike, audit_source: bool = True) -> NvidiaPickle:
    """Read an NVIDIA (EG3D / stylegan2-ada / stylegan3) network pickle as data.

    Each top-level persistent network becomes a :class:`PickledNetwork` with its
    dotted state dict and ``init_kwargs``; nothing in the file is executed.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise WeightsMissing(f"{p}: file not found", file=str(p))
    with open(p, "rb") as f:
        data = restricted_load(f, str(p), audit_source)
    if isinstance(data, PersistentObject):
        data = {"G": data}
    if not isinstance(data, dict):
        raise WeightsError(f"{p}: expected a dict of networks at the top of the pickle, found {type(data).__name__}", file=str(p))
    nets, extras = {}, {}
    for k, v in data.items():
        if isinstance(v, PersistentObject):
            st = v.state
            nets[str(k)] = PickledNetwork(
                class_name=v.class_name,
                init_args=to_plain(list(st.get("_init_args") or [])),
                init_kwargs=to_plain(dict(st.get("_init_kwargs") or {})),
                state_dict=tree_state_dict(v),
                module_src=v.module_src,
            )
        else:
            extras[str(k)] = to_plain(v)
    if not nets:
        raise WeightsError(f"{p}: no networks found in the pickle", file=str(p))
    return NvidiaPickle(nets, extras)


@dataclass
class TFNetwork:
    """A ``dnnlib.tflib.network.Network`` pickle (NVIDIA's TensorFlow releases), as data."""

    name: str
    build_func_name: str
    static_kwargs: dict
    variables: dict[str, torch.Tensor]  # TensorFlow variable names ("4x4/Dense0/weight"), stored order
    build_module_src: str = ""


def _tf_variable(name: Any, value: Any, source: str) -> tuple[str, torch.Tensor]:
    import numpy as np

    if not isinstance(name, str):
        raise WeightsError(f"{source}: variable name {name!r} is not a string", file=source)
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "fiub":
        return name, torch.from_numpy(np.array(value, dtype=value.dtype.newbyteorder("="), copy=True))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return name, torch.tensor(value, dtype=torch.float32)
    raise WeightsError(f"{source}: variable {name!r} is a {type(value).__name__}"
                       f"{' of dtype ' + str(value.dtype) if hasattr(value, 'dtype') else ''}, not a numeric array",
                       file=source)


def load_tf_network_pickle(path: str | os.PathLike, audit_source: bool = True) -> TFNetwork:
    """Read an NVIDIA TensorFlow network pickle as data: variables, ``static_kwargs``, build
    function name. The embedded build source (which NVIDIA's loader ``exec``s) is kept as
    text and never run; with ``audit_source`` it must also pass :func:`audit_module_src`."""
    p = pathlib.Path(path)
    source = str(p)
    if not p.is_file():
        raise WeightsMissing(f"{p}: file not found", file=source)
    with open(p, "rb") as f:
        obj = restricted_load(f, source, audit_source=audit_source, encoding="latin1")
    qualname = getattr(obj, "qualname", "")
    if (not isinstance(obj, OpaqueObject) or qualname != "dnnlib.tflib.network.Network"
            or not isinstance(obj.state, dict)):
        raise WeightsError(f"{source}: not a TensorFlow network pickle (top object is "
                           f"{qualname or type(obj).__name__}, expected dnnlib.tflib.network.Network)", file=source)
    st = obj.state
    if st.get("version") not in (2, 3, 4):
        raise WeightsError(f"{source}: unknown TensorFlow network pickle version {st.get('version')!r}", file=source)
    if st.get("components"):
        raise WeightsError(f"{source}: network has sub-networks ({', '.join(map(str, st['components']))}); only "
                           "single networks such as the attribute classifiers are supported", file=source)
    src, func = st.get("build_module_src"), st.get("build_func_name")
    if not isinstance(src, str) or not isinstance(func, str) or not isinstance(st.get("variables"), (list, tuple)):
        raise WeightsError(f"{source}: malformed TensorFlow network pickle (build source, function or variables "
                           "missing)", file=source)
    if audit_source:
        audit_module_src(src, func, source, defines="function")
    variables = {}
    for item in st["variables"]:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise WeightsError(f"{source}: malformed variable entry {to_plain(item)!r}", file=source)
        name, tensor = _tf_variable(item[0], item[1], source)
        variables[name] = tensor
    return TFNetwork(name=str(st.get("name", "")), build_func_name=func,
                     static_kwargs=to_plain(dict(st.get("static_kwargs") or {})), variables=variables,
                     build_module_src=src)


# ---------------------------------------------------------------------------
# conversion to config.json + safetensors

CONVERTED_FORMAT = 1


def _write_converted(out_dir: pathlib.Path, config: dict, groups: Mapping[str, Mapping[str, torch.Tensor]]) -> pathlib.Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for g, sd in groups.items():
        fname = f"{g}.safetensors"
        save_safetensors(sd, out_dir / fname, metadata={"group": g})
        files[g] = fname
    config = {"converted_format": CONVERTED_FORMAT, **config, "files": files}
    tmp = out_dir / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=False))
    os.replace(tmp, out_dir / "config.json")
    return out_dir


def _tensor_dict(obj: Any, what: str, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{source}: {what} is not a dict of tensors", file=source)
    return dict(obj)


def convert(src: str | os.PathLike, out_dir: str | os.PathLike, kind: str, audit_source: bool = True) -> pathlib.Path:
    """Convert one official file into ``out_dir/config.json`` + ``*.safetensors``.

    kinds and outputs (groups are safetensors files):
    - ``eg3d_pickle`` / ``stylegan2_ada_pickle``: one group per network (``G_ema``,
      ``G``, ``D``…) with official dotted keys; config holds each network's
      ``class_name``, ``init_args``, ``init_kwargs`` and other top-level data.
    - ``stylegan2_rosinality``: groups ``g_ema`` (and ``d``, ``g`` when present),
      ``latent_avg`` (key ``latent_avg``) when present.
    - ``e4e``: groups ``encoder`` and ``decoder`` (prefixes removed), ``latent_avg``;
      config holds ``opts``.
    - ``arcface`` / ``torchvision``: one group ``state`` (the plain state dict).
    - ``tf_network_pickle``: one group ``variables`` (TensorFlow names and layouts);
      config holds the network's ``name``, ``build_func_name`` and ``static_kwargs``.
    """
    src_p, out = pathlib.Path(src), pathlib.Path(out_dir)
    source = str(src_p)
    base = {"kind": kind, "source": src_p.name}
    if kind in ("eg3d_pickle", "stylegan2_ada_pickle"):
        pk = load_nvidia_pickle(src_p, audit_source)
        nets = {
            name: {"class_name": n.class_name, "init_args": n.init_args, "init_kwargs": n.init_kwargs}
            for name, n in pk.networks.items()
        }
        return _write_converted(out, {**base, "networks": nets, "extras": pk.extras}, {k: n.state_dict for k, n in pk.networks.items()})
    if kind == "stylegan2_rosinality":
        ck = load_torch_checkpoint(src_p, allow_namespace=True)
        if not isinstance(ck, Mapping) or "g_ema" not in ck:
            raise WeightsError(f"{source}: not a rosinality StyleGAN2 checkpoint (no 'g_ema')", file=source)
        groups = {g: _tensor_dict(ck[g], g, source) for g in ("g_ema", "g", "d") if g in ck}
        if isinstance(ck.get("latent_avg"), torch.Tensor):
            groups["latent_avg"] = {"latent_avg": ck["latent_avg"]}
        return _write_converted(out, base, groups)
    if kind == "e4e":
        ck = load_torch_checkpoint(src_p, allow_namespace=True)
        from engine.nets.e4e import split_checkpoint

        enc, latent_avg = split_checkpoint(ck, source)
        sd = ck["state_dict"]
        dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
        groups = {"encoder": enc, "latent_avg": {"latent_avg": latent_avg}}
        if dec:
            groups["decoder"] = dec
        opts = ck.get("opts")
        opts = vars(opts) if hasattr(opts, "__dict__") else opts
        return _write_converted(out, {**base, "opts": to_plain(opts)}, groups)
    if kind == "tf_network_pickle":
        net = load_tf_network_pickle(src_p, audit_source)
        meta = {"name": net.name, "build_func_name": net.build_func_name, "static_kwargs": net.static_kwargs}
        return _write_converted(out, {**base, "network": meta}, {"variables": net.variables})
    if kind in ("arcface", "torchvision"):
        ck = load_torch_checkpoint(src_p)
        return _write_converted(out, base, {"state": _tensor_dict(ck, "the checkpoint", source)})
    raise WeightsError(f"convert: unknown kind {kind!r} (known: {', '.join(KINDS)})")


def load_converted(folder: str | os.PathLike) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Read a converted folder: (config, {group: state dict}). Only safetensors are read."""
    d = pathlib.Path(folder)
    cfg_p = d / "config.json"
    if not cfg_p.is_file():
        raise WeightsMissing(f"{d}: no config.json (run `emoji3d weights convert`)", file=str(cfg_p))
    try:
        cfg = json.loads(cfg_p.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{cfg_p}: corrupt config.json ({exc})", file=str(cfg_p)) from None
    files = cfg.get("files")
    if not isinstance(files, dict):
        raise WeightsError(f"{cfg_p}: no 'files' table", file=str(cfg_p))
    return cfg, {g: load_safetensors(d / f) for g, f in files.items()}


# ---------------------------------------------------------------------------
# where files are


def installed_path(entry: WeightFile, weights_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(weights_dir) / entry.filename


def converted_path(entry: WeightFile, weights_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(weights_dir) / entry.name


def require(entry: WeightFile, weights_dir: str | os.PathLike) -> pathlib.Path:
    """The converted folder of ``entry``; ``WeightsMissing`` naming the fetch command if absent."""
    d = converted_path(entry, weights_dir)
    if (d / "config.json").is_file():
        return d
    orig = installed_path(entry, weights_dir)
    if orig.is_file():
        raise WeightsMissing(
            f"{entry.filename} is downloaded but not converted; run `emoji3d weights convert {entry.name}`", file=entry.filename
        )
    raise WeightsMissing(
        f"{entry.filename} is not installed in {weights_dir}; run `emoji3d weights fetch {entry.name}` "
        f"then `emoji3d weights convert {entry.name}`",
        file=entry.filename,
    )


def iter_status(manifest: Manifest, weights_dir: str | os.PathLike) -> Iterable[tuple[WeightFile, str]]:
    """(entry, one-word state): converted / downloaded / partial / missing."""
    for e in manifest.files:
        if (converted_path(e, weights_dir) / "config.json").is_file():
            yield e, "converted"
        elif installed_path(e, weights_dir).is_file():
            yield e, "downloaded"
        elif (pathlib.Path(weights_dir) / (e.filename + ".part")).is_file():
            yield e, "partial"
        else:
            yield e, "missing"
