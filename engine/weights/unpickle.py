"""Reading NVIDIA's network pickles as data, executing nothing from the file.

Two formats:
- PyTorch network pickles (EG3D, stylegan2-ada, stylegan3) embed each
  network's Python source through ``torch_utils.persistence``.
  :func:`load_nvidia_pickle` returns every network as a
  :class:`PickledNetwork`: its dotted state dict (``nn.Module.state_dict``
  order), constructor ``init_args``/``init_kwargs`` and plain attributes
  (e.g. EG3D's ``neural_rendering_resolution``), as JSON-able values.
- TensorFlow network pickles (``dnnlib.tflib.network.Network``, e.g. the
  CelebA-HQ attribute classifiers) hold numpy variables beside the source of
  their build function; :func:`load_tf_network_pickle` returns the variables
  as tensors under their TensorFlow names.

Safety: :class:`RestrictedUnpickler` answers ``find_class`` from an explicit
allowlist only, so ``os.system``, ``builtins.eval`` and the like are refused
(:class:`UnsafePickle`) before anything runs. Embedded source is kept as
text and never executed; :func:`audit_module_src` additionally refuses
source that is obviously crafted (``audit_source=False`` skips that static
check for an official file it wrongly refuses). Truncated or corrupt input is
a ``WeightsError`` naming the file.

Size: unpickling builds at most what the file holds (shared references stay
one object); the stand-ins refuse the few ways a number could ask for more
(``bytearray(n)``, a tensor view wider than its storage). Everything after
the load walks the result through :mod:`engine.weights.pickled_tree`, which
visits each object once and refuses cycles, nesting deeper than 100 and
expansions past its limits.
"""
from __future__ import annotations

import ast
import collections
import io
import os
import pathlib
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.weights.errors import UnsafePickle, WeightsError, WeightsMissing
from engine.weights.pickled_tree import PlainWalk, tree_state_dict


# ---------------------------------------------------------------------------
# stand-ins for what a pickle may name, and the static source audit


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
    return type(name, (OpaqueObject,), {"qualname": f"{module}.{name}", "__module__": "engine.weights.unpickle.opaque"})


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


# ---------------------------------------------------------------------------
# the restricted unpickler

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
        tensor = torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), bool(requires_grad),
                                                 collections.OrderedDict())
        # A view wider than its storage (stride 0 over a huge size) is a few bytes in the file and
        # gigabytes once anything copies it: no saved parameter looks like that.
        if tensor.numel() > tensor.untyped_storage().nbytes() // max(1, tensor.element_size()):
            raise UnsafePickle(f"{self.source}: a tensor of shape {list(tensor.shape)} repeats the same memory "
                               f"({tensor.untyped_storage().nbytes()} bytes of storage); refused", file=self.source)
        return tensor

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

    def _bytearray(self, data: Any = b"", encoding: str | None = None) -> bytearray:
        # Only the forms pickle itself writes (bytes; a latin-1 str for protocols < 3): never
        # bytearray(n), which would allocate n bytes from a number in the file.
        if isinstance(data, (bytes, bytearray)) and encoding is None:
            return bytearray(data)
        if isinstance(data, str) and encoding in ("latin1", "latin-1"):
            return bytearray(data, encoding)
        raise UnsafePickle(f"{self.source}: bytearray built from a {type(data).__name__}; refused", file=self.source)

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
            ("builtins", "bytearray"): self._bytearray,
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
    except RecursionError:
        raise WeightsError(f"{source}: pickle nests data too deeply to read; refused", file=source) from None
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, MemoryError, UnicodeDecodeError) as exc:
        if "truncated" in str(exc):
            raise WeightsError(f"{source}: pickle ends early (truncated file)", file=source) from None
        raise WeightsError(f"{source}: corrupt pickle ({type(exc).__name__}: {exc})", file=source) from None


# ---------------------------------------------------------------------------
# PyTorch network pickles (torch_utils.persistence)


@dataclass
class PickledNetwork:
    """One network of an NVIDIA pickle, as data."""

    class_name: str
    init_args: list
    init_kwargs: dict
    state_dict: dict[str, torch.Tensor]
    module_src: str = ""
    # Plain attributes the object carried besides its modules and tensors (``nn.Module``
    # internals, which start with "_", excluded). EG3D keeps run-time settings there that
    # its constructor arguments do not hold, e.g. ``neural_rendering_resolution``.
    attributes: dict = field(default_factory=dict)


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


def _module_name(obj: Any) -> str | None:
    if isinstance(obj, PersistentObject):
        return obj.class_name
    if isinstance(obj, OpaqueObject):
        return obj.qualname
    return None


def plain_walk(source: str) -> PlainWalk:
    """One file's walk from pickled data to JSON-able values (bounded, memoised:
    :mod:`engine.weights.pickled_tree`)."""
    return PlainWalk(source, _module_name)


def to_plain(obj: Any, source: str = "pickled data") -> Any:
    """Turn pickled data into JSON-able values (dicts, lists, numbers, strings).
    Small tensors become nested lists; modules become ``{"__class__": name}``.
    Shared references stay shared; cycles, deep nesting and huge expansions are refused."""
    return plain_walk(source)(obj)


def _plain_attributes(state: dict, walk: PlainWalk) -> dict:
    """The public, non-module, non-tensor entries of a pickled module's ``__dict__``."""
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if isinstance(value, (PersistentObject, OpaqueObject, torch.Tensor)):
            continue
        out[key] = walk(value)
    return out


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
    walk = plain_walk(str(p))
    for k, v in data.items():
        if isinstance(v, PersistentObject):
            st = v.state
            nets[str(k)] = PickledNetwork(
                class_name=v.class_name,
                init_args=walk(list(st.get("_init_args") or [])),
                init_kwargs=walk(dict(st.get("_init_kwargs") or {})),
                state_dict=tree_state_dict(v, _module_state, str(p)),
                module_src=v.module_src,
                attributes=_plain_attributes(st, walk),
            )
        else:
            extras[str(k)] = walk(v)
    if not nets:
        raise WeightsError(f"{p}: no networks found in the pickle", file=str(p))
    return NvidiaPickle(nets, extras)


# ---------------------------------------------------------------------------
# TensorFlow network pickles (dnnlib.tflib.network.Network)


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
    walk = plain_walk(source)
    for item in st["variables"]:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise WeightsError(f"{source}: malformed variable entry {str(walk(item))[:200]}", file=source)
        name, tensor = _tf_variable(item[0], item[1], source)
        variables[name] = tensor
    return TFNetwork(name=str(st.get("name", "")), build_func_name=func,
                     static_kwargs=walk(dict(st.get("static_kwargs") or {})), variables=variables,
                     build_module_src=src)


