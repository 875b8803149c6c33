"""Walking what the restricted unpickler built: bounded, memoised, safe against cycles.

A pickle's memo lets a few hundred bytes describe an enormous structure: a
list holding the previous list ten times, thirty levels deep ("billion
laughs"), an object that contains itself, or nesting thousands of levels
deep. Unpickling builds such data in memory proportional to the file (every
shared reference stays one object); what explodes is a walk that copies each
path separately. So every walk here:

- visits each object once, memoised by ``id()``: shared references stay
  shared in the result, and a walk costs the number of distinct objects and
  references, not the number of paths;
- refuses, with a :class:`WeightsError` naming the file, nesting deeper than
  :data:`MAX_DEPTH`, an object that contains itself, a plain result whose
  expanded size (what JSON would write, counted without expanding it) is over
  :data:`MAX_PLAIN_NODES`, and a state dict of more than
  :data:`MAX_STATE_ENTRIES` keys.

Official files are far inside these limits (an EG3D generator: about 700 state
dict entries, constructor arguments of about 100 values, nesting under 20).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from engine.weights.errors import WeightsError

MAX_DEPTH = 100  # nested containers or modules
MAX_PLAIN_NODES = 100_000  # values in one plain (JSON-able) result, counted as if expanded
MAX_STATE_ENTRIES = 100_000  # dotted keys of one network's state dict
SMALL_ARRAY = 64  # tensors/arrays up to this many elements become lists; larger ones a shape summary


class PlainWalk:
    """Turns pickled data into JSON-able values, one memo per file.

    ``module_name(obj)`` names a pickled module (returns None for anything else);
    modules become ``{"__class__": name}``. ``source`` names the file in refusals.
    """

    def __init__(self, source: str, module_name: Callable[[Any], str | None] = lambda obj: None) -> None:
        self.source = source
        self.module_name = module_name
        self._done: dict[int, tuple[Any, int]] = {}  # id(obj) -> (plain value, expanded node count)
        self._active: set[int] = set()  # ids on the current path: seeing one again is a cycle
        self._alive: list[Any] = []  # keeps walked objects alive so their ids are not reused

    def __call__(self, obj: Any) -> Any:
        return self._walk(obj, 0)[0]

    def _refuse(self, what: str) -> WeightsError:
        return WeightsError(f"{self.source}: {what}; refused (nothing from the file was executed)", file=self.source)

    def _walk(self, obj: Any, depth: int) -> tuple[Any, int]:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj, 1
        key = id(obj)
        if key in self._done:
            return self._done[key]
        if key in self._active:
            raise self._refuse(f"pickled data contains itself (a {type(obj).__name__} inside its own contents)")
        if depth >= MAX_DEPTH:
            raise self._refuse(f"pickled data is nested more than {MAX_DEPTH} levels deep")
        self._active.add(key)
        try:
            value, size = self._convert(obj, depth)
        finally:
            self._active.discard(key)
        if size > MAX_PLAIN_NODES:
            raise self._refuse(f"pickled data expands to more than {MAX_PLAIN_NODES:,} values "
                               "(shared references repeated over and over)")
        self._done[key] = (value, size)
        self._alive.append(obj)
        return value, size

    def _convert(self, obj: Any, depth: int) -> tuple[Any, int]:
        if isinstance(obj, dict):
            out, size = {}, 1
            for k, v in obj.items():
                name = k if isinstance(k, str) else str(self._walk(k, depth + 1)[0])
                out[name], child = self._walk(v, depth + 1)
                size += child
                if size > MAX_PLAIN_NODES:
                    break  # refused by the caller; stop adding
            return out, size
        if isinstance(obj, (list, tuple, set, frozenset)):
            out_list, size = [], 1
            for v in obj:
                value, child = self._walk(v, depth + 1)
                out_list.append(value)
                size += child
                if size > MAX_PLAIN_NODES:
                    break
            return out_list, size
        if isinstance(obj, torch.Tensor):
            if obj.numel() <= SMALL_ARRAY:
                return obj.tolist(), obj.numel() + 1
            return {"__tensor__": list(obj.shape), "dtype": str(obj.dtype)}, 3
        if isinstance(obj, torch.dtype):
            return str(obj), 1
        name = self.module_name(obj)
        if name is not None:
            return {"__class__": name}, 2
        if hasattr(obj, "tolist") and hasattr(obj, "shape"):  # numpy arrays and scalars
            if int(getattr(obj, "size", 0)) <= SMALL_ARRAY:
                return obj.tolist(), int(getattr(obj, "size", 1)) + 1
            return {"__array__": list(obj.shape), "dtype": str(getattr(obj, "dtype", "?"))}, 3
        if isinstance(obj, (bytes, bytearray)):
            return f"<{len(obj)} bytes>", 1
        return repr(obj), 1


def tree_state_dict(root: Any, module_state: Callable[[Any], dict | None], source: str) -> dict[str, torch.Tensor]:
    """Dotted-key state dict of a pickled module tree, in ``nn.Module.state_dict`` order
    (parameters, persistent buffers, then children). ``module_state(obj)`` gives a module's
    ``__dict__`` (None for anything else).

    A module shared by two parents is listed under both names, as ``nn.Module.state_dict``
    does, with the same tensors (no copies). The number of entries is counted first, each
    module once, so a tree whose sharing would list too many is refused before anything is
    built; a module inside itself is refused too.
    """

    def refuse(what: str) -> WeightsError:
        return WeightsError(f"{source}: {what}; refused (nothing from the file was executed)", file=source)

    own: dict[int, list[tuple[str, torch.Tensor]]] = {}  # id(module) -> its own tensors
    children: dict[int, list[tuple[str, Any]]] = {}  # id(module) -> its child modules
    expanded: dict[int, int] = {}  # id(module) -> entries under it, counting every path
    active: set[int] = set()

    def count(module: Any, where: str, depth: int) -> int:
        key = id(module)
        if key in expanded:
            return expanded[key]
        if key in active:
            raise refuse(f"module {where or '(top)'} contains itself")
        if depth >= MAX_DEPTH:
            raise refuse(f"modules are nested more than {MAX_DEPTH} levels deep")
        state = module_state(module)
        tensors: list[tuple[str, torch.Tensor]] = []
        kids: list[tuple[str, Any]] = []
        if state is not None:
            nonpersistent = state.get("_non_persistent_buffers_set") or set()
            for group in ("_parameters", "_buffers"):
                entries = state.get(group) or {}
                if not isinstance(entries, dict):
                    raise refuse(f"{where + group}: expected a dict, found {type(entries).__name__}")
                for name, value in entries.items():
                    if value is None or (group == "_buffers" and name in nonpersistent):
                        continue
                    if not isinstance(value, torch.Tensor):
                        raise refuse(f"{where}{name}: expected a tensor in {group}, found {type(value).__name__}")
                    tensors.append((str(name), value))
            submodules = state.get("_modules") or {}
            if not isinstance(submodules, dict):
                raise refuse(f"{where}_modules: expected a dict, found {type(submodules).__name__}")
            kids = [(str(name), child) for name, child in submodules.items()
                    if child is not None and module_state(child) is not None]
        active.add(key)
        try:
            total = len(tensors)
            for name, child in kids:
                total += count(child, f"{where}{name}.", depth + 1)
                if total > MAX_STATE_ENTRIES:
                    raise refuse(f"the state dict would have more than {MAX_STATE_ENTRIES:,} entries "
                                 "(modules shared over and over)")
        finally:
            active.discard(key)
        own[key], children[key], expanded[key] = tensors, kids, total
        return total

    count(root, "", 0)
    out: dict[str, torch.Tensor] = {}

    def build(module: Any, prefix: str) -> None:
        for name, tensor in own[id(module)]:
            out[prefix + name] = tensor.detach()
        for name, child in children[id(module)]:
            build(child, f"{prefix}{name}.")

    build(root, "")
    return out
