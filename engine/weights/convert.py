"""Official weight files -> pretrained folders (``emoji3d weights convert``).

This is the only place that reads the official formats; everything else
reads the pretrained folders they become (:mod:`engine.weights.pretrained`).
Per manifest ``kind`` (:data:`engine.weights.manifest.KINDS`), the folder
written is:

- ``eg3d_pickle``: a ``TriPlaneGenerator`` from the pickle's ``G_ema`` (else
  ``G``). Its constructor arguments come from ``init_kwargs``; the
  ``rendering_kwargs`` and ``neural_rendering_resolution`` the official
  forward pass reads are the object's own attributes (the training loop sets
  them; ``ffhqrebalanced512-128`` renders at 128), with the constructor's
  values as the fallback.
- ``stylegan2_rosinality`` / ``stylegan2_ada_pickle``: an index folder with
  ``generator/`` (``StyleGAN2Generator``; rosinality's ``latent_avg`` is its
  ``mapping.w_avg``) and, when the file has one, ``discriminator/``.
- ``e4e``: an ``E4EModel`` (the encoder and ``latent_avg``; the embedded
  StyleGAN2 decoder is not kept).
- ``arcface``: an ``ArcFaceBackbone``.
- ``torchvision``: an ``LPIPSNetwork`` whose trunk is the file's
  ``features.*`` (VGG16 or AlexNet, told apart by the first kernel) and whose
  linear layers are the calibration shipped in the ``lpips`` package.
- ``tf_network_pickle``: a ``ProGANClassifier`` (:mod:`engine.weights.progan_layout`).

Architectures are inferred from tensor shapes; every official tensor must
land somewhere and every network tensor must be provided (except constants a
module derives from its config, e.g. StyleGAN2 resampling filters), or a
``WeightsError`` names the file and the keys. A folder being replaced is
removed only if it holds nothing but what a conversion writes.
"""
from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any, Mapping

import torch

from engine.weights.errors import WeightsError
from engine.weights.manifest import KINDS
from engine.weights.pretrained import CONFIG_FILE, load_state_strict, write_index
from engine.weights.tensor_files import load_torch_checkpoint

GENERATOR, DISCRIMINATOR = "generator", "discriminator"  # subfolders of a StyleGAN2 index folder
EG3D_CONSTRUCTOR_NEURAL_RESOLUTION = 64  # what TriPlaneGenerator.__init__ sets before training changes it


def _tensor_dict(obj: Any, what: str, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{source}: {what} is not a dict of tensors", file=source)
    return dict(obj)


# ----------------------------------------------------------------------------- EG3D


def is_official_eg3d_config(data: Mapping[str, Any]) -> bool:
    """A config.json in the official vocabulary (``class_name`` ending in TriPlaneGenerator + ``init_kwargs``),
    as the reference fixtures have."""
    return str(data.get("class_name", "")).rsplit(".", 1)[-1] == "TriPlaneGenerator" and "init_kwargs" in data


def eg3d_from_official(state_dict: Mapping[str, torch.Tensor], init_kwargs: Mapping[str, Any],
                       neural_rendering_resolution: int, source: str):
    """A ``TriPlaneGenerator`` from an official-key state dict and the official constructor arguments."""
    from engine.nets.eg3d import EG3DConfig, TriPlaneGenerator

    try:
        config = EG3DConfig.from_init_kwargs(init_kwargs, int(neural_rendering_resolution))
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{source}: EG3D constructor arguments not understood ({exc})", file=source) from None
    generator = TriPlaneGenerator(config)
    load_state_strict(generator, state_dict, source, cast=True)
    return generator.eval().requires_grad_(False)


def eg3d_from_pickle(path: pathlib.Path, audit_source: bool = True):
    from engine.weights.unpickle import load_nvidia_pickle

    pickled = load_nvidia_pickle(path, audit_source)
    name = next((n for n in ("G_ema", "G") if n in pickled.networks), None)
    if name is None:
        raise WeightsError(f"{path}: no generator (G_ema or G) in this pickle (networks: "
                           f"{', '.join(pickled.networks)})", file=str(path))
    network = pickled.networks[name]
    if network.class_name != "TriPlaneGenerator":
        raise WeightsError(f"{path}: {name} is a {network.class_name}, not an EG3D TriPlaneGenerator", file=str(path))
    init_kwargs = dict(network.init_kwargs)
    if isinstance(network.attributes.get("rendering_kwargs"), dict):
        init_kwargs["rendering_kwargs"] = network.attributes["rendering_kwargs"]
    resolution = network.attributes.get("neural_rendering_resolution", EG3D_CONSTRUCTOR_NEURAL_RESOLUTION)
    return eg3d_from_official(network.state_dict, init_kwargs, resolution, f"{path} ({name})")


# ----------------------------------------------------------------------------- StyleGAN2


def stylegan2_from_ada_pickle(path: pathlib.Path, audit_source: bool = True) -> dict:
    from engine.weights.stylegan2_layouts import networks_from_checkpoint
    from engine.weights.unpickle import load_nvidia_pickle

    pickled = load_nvidia_pickle(path, audit_source)
    checkpoint = {name: (net.state_dict, net.init_kwargs) for name, net in pickled.networks.items()
                  if name in ("G_ema", "G", "D")}
    return _stylegan2_index(*networks_from_checkpoint(checkpoint, str(path)))


def stylegan2_from_rosinality(path: pathlib.Path) -> dict:
    from engine.weights.stylegan2_layouts import networks_from_checkpoint

    checkpoint = load_torch_checkpoint(path, allow_namespace=True)
    if not isinstance(checkpoint, Mapping) or "g_ema" not in checkpoint:
        raise WeightsError(f"{path}: not a rosinality StyleGAN2 checkpoint (no 'g_ema')", file=str(path))
    return _stylegan2_index(*networks_from_checkpoint(checkpoint, str(path)))


def _stylegan2_index(generator, discriminator) -> dict:
    return {GENERATOR: generator} | ({DISCRIMINATOR: discriminator} if discriminator is not None else {})


# ----------------------------------------------------------------------------- IR-SE networks: e4e, ArcFace


def _irse_body(state_dict: Mapping[str, torch.Tensor], source: str) -> tuple[int, str]:
    """(num_layers, mode) of an IR(-SE) body from its ``body.<i>`` units and SE layers."""
    from engine.nets.irse import STAGE_UNITS

    units = {int(k.split(".")[1]) for k in state_dict if k.startswith("body.")}
    depth = next((n for n, stages in STAGE_UNITS.items() if sum(stages) == len(units)), None)
    if depth is None or units != set(range(len(units))):
        raise WeightsError(f"{source}: {len(units)} residual units in body.*, which is no IR-SE depth "
                           f"({', '.join(map(str, STAGE_UNITS))})", file=source)
    mode = "ir_se" if any(".res_layer.5.fc1." in k for k in state_dict) else "ir"
    return depth, mode


def e4e_model(encoder: Mapping[str, torch.Tensor], latent_avg: torch.Tensor, source: str):
    """An ``E4EModel`` from the encoder's official state dict (no prefix) and ``latent_avg``
    ([n_styles, 512], or [512] for every style)."""
    from engine.nets.e4e import E4EConfig, E4EModel

    heads = {k.split(".")[1] for k in encoder if k.startswith("styles.")}
    if len(heads) < 2 or len(heads) % 2:
        raise WeightsError(f"{source}: found {len(heads)} style heads, expected an even number >= 2", file=source)
    num_layers, mode = _irse_body(encoder, source)
    config = E4EConfig(num_layers=num_layers, mode=mode, stylegan_size=2 ** ((len(heads) + 2) // 2))
    if latent_avg.numel() == 512:
        latent_avg = latent_avg.reshape(1, 512).expand(config.n_styles, 512)
    tensors = {f"encoder.{k}": v for k, v in encoder.items()} | {"latent_avg": latent_avg.contiguous()}
    with torch.device("meta"):  # 267 M parameters: take the file's tensors instead of initialising new ones
        model = E4EModel(config)
    load_state_strict(model, tensors, source, assign=True, cast=True)
    return model.eval().requires_grad_(False)


def e4e_from_checkpoint(checkpoint: Any, source: str):
    """``e4e_ffhq_encode.pt``: ``state_dict`` with ``encoder.*`` (and ``decoder.*``) keys, ``latent_avg``
    beside it, ``opts`` (an argparse Namespace) whose ``stylegan_size`` must agree."""
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{source}: no 'state_dict' dict inside, so this is not an e4e checkpoint", file=source)
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder:
        raise WeightsError(f"{source}: 'state_dict' has no 'encoder.*' keys", file=source)
    latent_avg = checkpoint.get("latent_avg")
    if not isinstance(latent_avg, torch.Tensor):
        raise WeightsError(f"{source}: 'latent_avg' tensor is missing", file=source)
    model = e4e_model(encoder, latent_avg, source)
    size = getattr(checkpoint.get("opts"), "stylegan_size", None)
    if size is not None and int(size) != model.config.stylegan_size:
        raise WeightsError(f"{source}: opts.stylegan_size is {size} but the encoder has "
                           f"{model.config.n_styles} style heads", file=source)
    return model


def arcface_from_state_dict(state_dict: Mapping[str, torch.Tensor], source: str):
    """An ``ArcFaceBackbone`` from ``model_ir_se50.pth``'s keys; input size (112/224) from
    ``output_layer.3.weight``, the affine last BatchNorm from ``output_layer.4.weight``."""
    from engine.nets.arcface import ArcFaceBackbone, ArcFaceConfig

    state_dict = _tensor_dict(state_dict, "the checkpoint", source)
    weight = state_dict.get("output_layer.3.weight")
    size = 224 if (weight is not None and weight.ndim == 2 and weight.shape[1] == 512 * 14 * 14) else 112
    num_layers, mode = _irse_body(state_dict, source)
    config = ArcFaceConfig(input_size=size, num_layers=num_layers, mode=mode,
                           affine="output_layer.4.weight" in state_dict)
    with torch.device("meta"):
        model = ArcFaceBackbone(config)
    load_state_strict(model, state_dict, source, assign=True, cast=True)
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- LPIPS


def lpips_linear_path(net: str, version: str = "0.1") -> pathlib.Path:
    """The calibrated linear layers shipped inside the ``lpips`` package."""
    import lpips

    return pathlib.Path(lpips.__file__).resolve().parent / "weights" / f"v{version}" / f"{net}.pth"


def lpips_from_trunk(trunk: Mapping[str, torch.Tensor], source: str):
    """An ``LPIPSNetwork`` from a torchvision VGG16 / AlexNet state dict (only ``features.*`` is used)
    and the package's calibration."""
    from engine.nets.perceptual import LPIPSConfig, LPIPSNetwork

    trunk = _tensor_dict(trunk, "the checkpoint", source)
    first = trunk.get("features.0.weight")
    if first is None or first.ndim != 4:
        raise WeightsError(f"{source}: no features.0.weight; not a torchvision VGG16 or AlexNet file", file=source)
    net = {3: "vgg", 11: "alex"}.get(int(first.shape[-1]))
    if net is None:
        raise WeightsError(f"{source}: first kernel {first.shape[-1]}x{first.shape[-1]} is neither VGG16's (3) "
                           "nor AlexNet's (11)", file=source)
    model = LPIPSNetwork(LPIPSConfig(net=net))
    # lpips' trunk slices keep torchvision's layer indices: model.net.slice<k>.<i>.* <- features.<i>.*
    names = {}
    for key in model.model.net.state_dict():
        _, index, name = key.split(".", 2)
        names[f"model.net.{key}"] = f"features.{index}.{name}"
    absent = [official for official in names.values() if official not in trunk]
    if absent:
        raise WeightsError(f"{source}: {', '.join(absent[:3])} missing; is this the torchvision {net} file?",
                           file=source)
    tensors = {ours: trunk[official] for ours, official in names.items()}
    lin_path = lpips_linear_path(net, model.config.version)
    linear = _tensor_dict(load_torch_checkpoint(lin_path), "the LPIPS calibration", str(lin_path))
    for key, value in linear.items():  # "lin<k>.model.1.weight", which the model also lists as lins.<k>
        tensors[f"model.{key}"] = value
        if key.startswith("lin") and key[3].isdigit():
            tensors[f"model.lins.{key[3:]}"] = value
    load_state_strict(model, tensors, f"{source} + {lin_path}", cast=True,
                      may_be_missing=lambda key: key.startswith("model.scaling_layer."))
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- ProGAN classifier


def classifier_from_pickle(path: pathlib.Path, audit_source: bool = True):
    from engine.weights.progan_layout import from_variables
    from engine.weights.unpickle import load_tf_network_pickle

    network = load_tf_network_pickle(path, audit_source)
    if network.build_func_name != "D_paper":
        raise WeightsError(f"{path}: built by {network.build_func_name!r}, not ProGAN's D_paper", file=str(path))
    return from_variables(network.variables, network.static_kwargs, source=str(path))


# ----------------------------------------------------------------------------- files and folders


def read_official(src: str | os.PathLike, kind: str, audit_source: bool = True):
    """The network (or {subfolder: network} for an index) that ``kind``'s file holds."""
    path = pathlib.Path(src)
    source = str(path)
    if kind == "eg3d_pickle":
        return eg3d_from_pickle(path, audit_source)
    if kind == "stylegan2_ada_pickle":
        return stylegan2_from_ada_pickle(path, audit_source)
    if kind == "stylegan2_rosinality":
        return stylegan2_from_rosinality(path)
    if kind == "e4e":
        return e4e_from_checkpoint(load_torch_checkpoint(path, allow_namespace=True), source)
    if kind == "arcface":
        return arcface_from_state_dict(load_torch_checkpoint(path), source)
    if kind == "torchvision":
        return lpips_from_trunk(load_torch_checkpoint(path), source)
    if kind == "tf_network_pickle":
        return classifier_from_pickle(path, audit_source)
    raise WeightsError(f"convert: unknown kind {kind!r} (known: {', '.join(KINDS)})")


def _removable(folder: pathlib.Path) -> bool:
    """Only what a conversion writes (of any format version): config.json, *.safetensors,
    leftover *.tmp, and subfolders of the same."""
    for item in folder.iterdir():
        if item.is_dir() and not item.is_symlink():
            if not _removable(item):
                return False
        elif not (item.name == CONFIG_FILE or item.suffix in (".safetensors", ".tmp")):
            return False
    return True


def write_converted(out_dir: str | os.PathLike, networks, source: str = "") -> pathlib.Path:
    """Write ``networks`` (one network, or {subfolder: network}) as ``out_dir``, replacing an
    earlier conversion there. The folder is assembled beside it and swapped in at the end."""
    out = pathlib.Path(out_dir)
    if out.exists() and (not out.is_dir() or not _removable(out)):
        raise WeightsError(f"{out}: exists and holds files a conversion does not write; not replacing it",
                           file=str(out))
    staging = out.with_name(out.name + ".converting")
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted conversion
    if isinstance(networks, Mapping):
        write_index(staging, networks, source=source)
    else:
        networks.save_pretrained(staging, source=source)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


def convert(src: str | os.PathLike, out_dir: str | os.PathLike, kind: str, audit_source: bool = True) -> pathlib.Path:
    """Convert one official file into the pretrained folder ``out_dir`` (see the module docstring)."""
    networks = read_official(src, kind, audit_source)
    return write_converted(out_dir, networks, source=pathlib.Path(src).name)
