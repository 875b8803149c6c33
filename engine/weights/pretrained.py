"""Pretrained folders: the one way a network is saved and loaded.

Every network in ``engine.nets`` is an ``nn.Module`` built from one typed,
frozen config dataclass (a :class:`PretrainedConfig`) and mixes in
:class:`PretrainedMixin`, which gives it

- ``Net.from_config(config, seed=None)``: a new network of that architecture;
  with a seed, initialised deterministically (the slim presets) without
  touching the global RNG;
- ``net.save_pretrained(folder)`` and ``Net.from_pretrained(folder)``.

Folder format (``FORMAT_VERSION`` 2)
-------------------------------------
``<folder>/config.json``::

    {"format": "emoji3d.pretrained", "format_version": 2,
     "class": "<network class name, e.g. TriPlaneGenerator>",
     "config": {<the config's fields, see each config's to_json_dict>},
     "source": "<where the weights came from, free text>"}

``<folder>/model.safetensors``: the module's whole ``state_dict`` (every
parameter and persistent buffer) under the module's own key names and
dtypes; metadata ``{"format", "class"}``.

An entry whose official file holds several networks (a StyleGAN2 checkpoint:
generator and discriminator) is written as an *index* folder: ``config.json``
is ``{"format", "format_version", "networks": {"<subfolder>": "<class>"},
"source"}`` and each network is a pretrained folder in its subfolder.

Loading is strict: the class recorded must be the class asked for, the config
must have exactly the known fields, and the tensors must match the module
built from that config key for key, in shape and in dtype. Anything else is
a ``WeightsError`` naming the file and the first offending keys. Folders of
format 1 (``"converted_format": 1``, groups of official tensors; written by
earlier versions) are refused with a message to re-run ``emoji3d weights
convert``. Writers only ever produce the current format, config.json last,
so a folder with a config.json has all its weights.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
from typing import Any, ClassVar, Mapping, TypeVar

import torch

from engine.weights.errors import WeightsError, WeightsMissing
from engine.weights.tensor_files import load_safetensors, save_safetensors

FORMAT = "emoji3d.pretrained"
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CONVERT_HINT = "run `emoji3d weights convert` for it again"

ConfigT = TypeVar("ConfigT", bound="PretrainedConfig")
NetT = TypeVar("NetT", bound="PretrainedMixin")


# ---------------------------------------------------------------------------
# configs


def _jsonable(value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"config field {where} holds a {type(value).__name__}, which JSON cannot store")


class PretrainedConfig:
    """Mixin for the frozen config dataclasses of networks: a strict JSON round trip.

    ``from_json_dict(to_json_dict())`` equals the config. JSON turns tuples
    into lists and integer dict keys into strings, so each config normalises
    its fields in ``__post_init__``.
    """

    def to_json_dict(self) -> dict[str, Any]:
        return _jsonable(self, type(self).__name__)

    @classmethod
    def from_json_dict(cls: type[ConfigT], data: Any, source: str = "config") -> ConfigT:
        if not isinstance(data, Mapping):
            raise WeightsError(f"{source}: the {cls.__name__} must be a JSON object, got {type(data).__name__}",
                               file=source)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise WeightsError(f"{source}: unknown {cls.__name__} field(s) {', '.join(unknown)}", file=source)
        missing = [n for n in names if n not in data]  # writers store every field: a gap means another writer
        if missing:
            raise WeightsError(f"{source}: {cls.__name__} field(s) missing: {', '.join(missing)}", file=source)
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{source}: invalid {cls.__name__} ({exc})", file=source) from None


# ---------------------------------------------------------------------------
# reading and checking config.json


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise WeightsMissing(f"{path.parent}: no {CONFIG_FILE}, so nothing was converted there; run "
                             "`emoji3d weights convert`", file=str(path))
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise WeightsError(f"{path}: corrupt config.json ({exc})", file=str(path)) from None
    except RecursionError:
        raise WeightsError(f"{path}: corrupt config.json (nested too deeply)", file=str(path)) from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: corrupt config.json (not a JSON object)", file=str(path))
    return data


def read_header(folder: str | os.PathLike) -> dict:
    """``config.json`` of a pretrained or index folder, after checking its format and version."""
    path = pathlib.Path(folder) / CONFIG_FILE
    data = _read_json(path)
    if "converted_format" in data:
        raise WeightsError(f"{path}: written by an older emoji3d (converted format {data['converted_format']}), "
                           f"which this version no longer reads; {CONVERT_HINT}", file=str(path))
    if data.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a pretrained folder (format {data.get('format')!r}, expected {FORMAT!r}); "
                           f"{CONVERT_HINT}", file=str(path))
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        what = "a newer emoji3d; update this installation" if newer else f"an older emoji3d; {CONVERT_HINT}"
        raise WeightsError(f"{path}: format version {version!r}, this version reads {FORMAT_VERSION}: written by "
                           f"{what}", file=str(path))
    return data


def folder_state(folder: str | os.PathLike) -> str:
    """``current`` (readable by this version), ``outdated`` (an older or newer format),
    ``invalid`` (config.json unreadable or not ours) or ``missing`` (no config.json)."""
    path = pathlib.Path(folder) / CONFIG_FILE
    if not path.is_file():
        return "missing"
    try:
        read_header(folder)
    except WeightsError:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            return "invalid"
        known = isinstance(data, dict) and ("converted_format" in data or data.get("format") == FORMAT)
        return "outdated" if known else "invalid"
    return "current"


def read_index(folder: str | os.PathLike) -> dict[str, str]:
    """{subfolder: class name} of an index folder."""
    header = read_header(folder)
    networks = header.get("networks")
    if not isinstance(networks, dict) or not networks:
        raise WeightsError(f"{pathlib.Path(folder) / CONFIG_FILE}: not an index of networks (holds a "
                           f"{header.get('class', '?')})", file=str(pathlib.Path(folder) / CONFIG_FILE))
    return dict(networks)


def _write_json(path: pathlib.Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def write_index(folder: str | os.PathLike, networks: Mapping[str, "PretrainedMixin"], source: str = "") -> pathlib.Path:
    """Save each network into ``folder/<name>/`` and then the index ``folder/config.json``."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, net in networks.items():
        net.save_pretrained(folder / name, source=source)
    _write_json(folder / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                       "networks": {name: net.pretrained_name() for name, net in networks.items()},
                                       "source": source})
    return folder


# ---------------------------------------------------------------------------
# strict state-dict loading


def _first(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_state_strict(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str, *,
                      assign: bool = False, cast: bool = False, may_be_missing=None) -> None:
    """Copy ``tensors`` into ``module``; refuse with a ``WeightsError`` naming ``source`` and the first
    missing, unexpected, mis-shaped and (unless ``cast``) wrong-dtype keys.

    ``cast`` converts floating tensors to the module's dtype (converters reading official files
    use it; pretrained folders must match exactly). ``may_be_missing(key)`` exempts keys the
    module derives itself (converters only). ``assign`` takes the tensors instead of copying
    them (for modules built on the meta device).
    """
    own = module.state_dict()
    exempt = may_be_missing or (lambda key: False)
    missing = [k for k in own if k not in tensors and not exempt(k)]
    unexpected = [k for k in tensors if k not in own]
    shapes = [f"{k}: file {tuple(tensors[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    dtypes = [] if cast else [f"{k}: file {tensors[k].dtype}, model {own[k].dtype}"
                              for k in own if k in tensors and tensors[k].dtype != own[k].dtype]
    problems = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes),
                        ("dtype mismatches", dtypes)):
        if items:
            problems.append(f"{len(items)} {what}: {_first(items)}")
    if problems:
        raise WeightsError(f"{source}: does not fit {type(module).__name__}: " + "; ".join(problems), file=source)
    full = {}
    for key, target in own.items():
        if key not in tensors:
            full[key] = target  # exempted: the module's own value
            continue
        value = tensors[key]
        if value.dtype != target.dtype and value.is_floating_point() and target.is_floating_point():
            value = value.to(target.dtype)
        full[key] = value
    with torch.no_grad():
        module.load_state_dict(full, strict=True, assign=assign)


# ---------------------------------------------------------------------------
# the mixin


class PretrainedMixin:
    """``from_config`` / ``from_pretrained`` / ``save_pretrained`` for an ``nn.Module`` whose
    constructor takes exactly one argument, its config (an instance of ``config_class``).

    Networks come out ready for inference: eval mode, parameters frozen
    (``requires_grad`` False). Call ``.train()`` / ``.requires_grad_()`` to tune one.
    """

    config_class: ClassVar[type[PretrainedConfig]]
    # Build on the meta device when loading (no random init of weights about to be
    # replaced). A class whose constructor computes values from tensors opts out.
    build_on_meta: ClassVar[bool] = True
    config: Any

    @classmethod
    def pretrained_name(cls) -> str:
        """The name recorded as ``class`` in config.json."""
        return cls.__name__

    @classmethod
    def _check_config(cls, config: Any) -> None:
        if not isinstance(config, cls.config_class):
            raise TypeError(f"{cls.__name__} is built from a {cls.config_class.__name__}, got {type(config).__name__}")

    @classmethod
    def from_config(cls: type[NetT], config: PretrainedConfig, seed: int | None = None) -> NetT:
        """A new network. With ``seed``: the constructor's initialisation drawn from
        ``torch.manual_seed(seed)`` inside ``fork_rng`` (the caller's RNG is untouched), then
        :meth:`init_from_seed` with a generator seeded ``seed + 1``; same (config, seed), same weights."""
        cls._check_config(config)
        if seed is None:
            net = cls(config)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = cls(config)
            with torch.no_grad():
                net.init_from_seed(torch.Generator().manual_seed(seed + 1))
        return net.eval().requires_grad_(False)

    def init_from_seed(self, generator: torch.Generator) -> None:
        """Hook for :meth:`from_config`: values the constructor leaves at zero that a random
        network should still exercise (noise strengths, average latents). Default: nothing."""

    def save_pretrained(self, folder: str | os.PathLike, source: str = "") -> pathlib.Path:
        """Write ``folder/model.safetensors`` then ``folder/config.json`` (see the module docstring)."""
        module: torch.nn.Module = self  # type: ignore[assignment]
        folder = pathlib.Path(folder)
        tensors = module.state_dict()
        meta = [k for k, v in tensors.items() if v.is_meta]
        if meta:
            raise ValueError(f"{type(self).__name__}: cannot save tensors on the meta device ({_first(meta)})")
        folder.mkdir(parents=True, exist_ok=True)
        name = self.pretrained_name()
        save_safetensors(tensors, folder / WEIGHTS_FILE, metadata={"format": FORMAT, "class": name})
        _write_json(folder / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION, "class": name,
                                           "config": self.config.to_json_dict(), "source": source})
        return folder

    @classmethod
    def read_config(cls, folder: str | os.PathLike) -> PretrainedConfig:
        """The typed config stored in ``folder`` (after checking format, version and class)."""
        path = pathlib.Path(folder) / CONFIG_FILE
        header = read_header(folder)
        recorded = header.get("class")
        if recorded != cls.pretrained_name():
            what = f"an index of {', '.join(header['networks'])}" if "networks" in header else f"a {recorded}"
            raise WeightsError(f"{path}: holds {what}, not a {cls.pretrained_name()}", file=str(path))
        return cls.config_class.from_json_dict(header.get("config"), source=str(path))

    @classmethod
    def from_pretrained(cls: type[NetT], folder: str | os.PathLike, device: str | torch.device = "cpu") -> NetT:
        """The network saved in ``folder`` by :meth:`save_pretrained`; strict (see the module docstring)."""
        folder = pathlib.Path(folder)
        config = cls.read_config(folder)
        weights = folder / WEIGHTS_FILE
        tensors = load_safetensors(weights)
        if cls.build_on_meta:
            with torch.device("meta"):
                net = cls(config)
        else:
            net = cls(config)
        load_state_strict(net, tensors, str(weights), assign=cls.build_on_meta)
        left = [n for n, t in itertools.chain(net.named_parameters(), net.named_buffers()) if t.is_meta]
        if left:  # a tensor outside the state dict (non-persistent buffer): a bug in the class, not the file
            raise RuntimeError(f"{cls.__name__}: {_first(left)} not restored from {weights}; set build_on_meta = False")
        return net.to(device).eval().requires_grad_(False)
