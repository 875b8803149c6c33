"""Test helper: files in NVIDIA's network-pickle format, made without NVIDIA's code.

``fake_nvidia_modules()`` puts throwaway modules named like the official ones
(``torch_utils.persistence``, ``dnnlib.util``) into ``sys.modules`` while a
pickle is written, so the file references them exactly as an official one
does; the reader under test never has them. ``persistent_network`` builds an
object that pickles as a ``torch_utils.persistence`` network holding a given
state dict (as a tree of plain ``torch.nn.Module``s), constructor kwargs and
plain attributes.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import sys
import types
from typing import Iterator, Mapping

import torch

NAMES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")


def network_source(*class_names: str) -> str:
    """Module source defining ``class_names`` as persistent networks (never run by the reader)."""
    lines = ['"""networks (test copy)"""', "import torch", "from torch_utils import persistence", ""]
    for name in class_names:
        lines += ["@persistence.persistent_class", f"class {name}(torch.nn.Module):",
                  "    def __init__(self, *args, **kwargs):", "        super().__init__()", ""]
    return "\n".join(lines)


class Reduce:
    """Pickles as ``fn(*args)``: how a malicious pickle asks to run a function."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@contextlib.contextmanager
def fake_nvidia_modules() -> Iterator[tuple[types.ModuleType, types.ModuleType]]:
    """(persistence, util) stand-ins, present only inside the ``with``."""
    saved = {n: sys.modules.get(n) for n in NAMES}
    top, persistence, dnnlib, util = (types.ModuleType(n) for n in NAMES)

    def _reconstruct_persistent_obj(meta):  # never called by the restricted loader
        raise AssertionError("the real reconstructor must never run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    top.persistence, dnnlib.util = persistence, util
    sys.modules.update(dict(zip(NAMES, (top, persistence, dnnlib, util))))
    try:
        yield persistence, util
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def persistent_class(persistence, easydict, name: str, source: str) -> type:
    """A ``torch.nn.Module`` class that pickles as NVIDIA's persistent class ``name``."""

    class Net(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            self._init_args = list(args)
            self._init_kwargs = easydict(kwargs)

        def __reduce__(self):
            meta = dict(type="class", version=6, module_src=source, class_name=name, state=self.__getstate__())
            return persistence._reconstruct_persistent_obj, (meta,)

    Net.__name__ = Net.__qualname__ = name
    return Net


def _plain(value, easydict):
    if isinstance(value, Mapping):
        return easydict({k: _plain(v, easydict) for k, v in value.items()})
    return value


def persistent_network(persistence, easydict, class_name: str, state_dict: Mapping[str, torch.Tensor],
                       init_kwargs: Mapping, attributes: Mapping | None = None) -> torch.nn.Module:
    """An object that pickles as NVIDIA's ``class_name`` holding ``state_dict`` (dotted keys become
    nested plain modules; tensors become buffers) and plain ``attributes``."""
    cls = persistent_class(persistence, easydict, class_name, network_source(class_name))
    net = cls(**{k: _plain(v, easydict) for k, v in init_kwargs.items()})
    for key, tensor in state_dict.items():
        *path, leaf = key.split(".")
        module = net
        for part in path:
            if part not in module._modules:
                module.add_module(part, torch.nn.Module())
            module = module._modules[part]
        module.register_buffer(leaf, tensor.detach().clone())
    for key, value in (attributes or {}).items():
        setattr(net, key, _plain(value, easydict))
    return net


def nvidia_pickle_bytes(networks: Mapping[str, object], **extras) -> bytes:
    """The pickle of ``{name: network, **extras}`` (write it inside ``fake_nvidia_modules``). Written
    by the pure-Python pickler, the same format: from Python 3.12 the C pickler recurses on the C
    stack, whose limit ``sys.setrecursionlimit`` no longer raises, and the pickle-bomb tests write
    objects nested thousands of levels deep."""
    buffer = io.BytesIO()
    pickle._Pickler(buffer, protocol=4).dump({**networks, **extras})
    return buffer.getvalue()
