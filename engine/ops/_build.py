"""Lazy, digest-keyed build of our fused CUDA kernels (never at import).

Each extension in ``EXTENSIONS`` is compiled on first use with ninja through
``torch.utils.cpp_extension.load`` into
``<cache>/<name>-<digest>/`` where ``digest`` hashes the source files, the
torch and CUDA versions and the target GPU architectures, so a changed kernel,
torch upgrade or another GPU never reuses a stale binary. ``<cache>`` is
``$EMOJI3D_OPS_CACHE`` or ``~/.cache/emoji3d/ops``.

This module only builds and imports: :func:`build` raises
:class:`OpsBuildError` (or the compiler's error) on failure. Choosing between a
kernel and the reference, the self-check and the fall-back live in
``engine.ops.dispatch``.

Target architectures: ``$TORCH_CUDA_ARCH_LIST`` when set (required on a
machine without a GPU, e.g. a Docker build), else the visible GPU's.

Reuse of prebuilt binaries: every successful build writes
``emoji3d-build.json`` (source digest without the arch, arch list, module
name, .so file). On a GPU machine a cached build whose sources match and whose
arch list covers the device (exactly, or through ``+PTX`` of an older arch) is
imported directly, so an image prebuilt for "8.0;8.6;8.9;9.0" needs no
compiler at run time.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import pathlib
import threading
import warnings
from types import ModuleType

import torch

SOURCE_DIR = pathlib.Path(__file__).resolve().parent / "cuda"

# extension name -> source files (relative to SOURCE_DIR)
EXTENSIONS: dict[str, list[str]] = {
    "upfirdn2d": ["upfirdn2d.cpp", "upfirdn2d.cu"],
    "bias_act": ["bias_act.cpp", "bias_act.cu"],
    "modconv": ["modconv.cpp", "modconv.cu"],
    "triplane": ["triplane.cpp", "triplane.cu"],
    "lpips_layer": ["lpips_layer.cpp", "lpips_layer.cu"],
}

_lock = threading.Lock()
_loaded: dict[str, ModuleType] = {}  # process-wide cache of compiled modules


class OpsBuildError(RuntimeError):
    """A fused kernel cannot be built or imported here."""


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("EMOJI3D_OPS_CACHE", pathlib.Path.home() / ".cache" / "emoji3d" / "ops"))


def target_arch() -> str:
    """The arch list the build targets (``TORCH_CUDA_ARCH_LIST`` or the GPU's)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return ""


def _cudart_link_dirs(cuda_home: str | None) -> list[str]:
    """Folders holding libcudart.so. torch derives CUDA_HOME from the nvcc on PATH,
    which may be a wrapper outside the toolkit (e.g. /usr/local/bin/nvcc), so
    also look next to the real nvcc and in /usr/local/cuda."""
    import shutil

    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cuda_home]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(pathlib.Path(nvcc).resolve().parent.parent))
    roots.append("/usr/local/cuda")
    found: list[str] = []
    for root in filter(None, roots):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            d = pathlib.Path(root) / sub
            if (d / "libcudart.so").exists() and str(d) not in found:
                found.append(str(d))
    return found


def source_digest(name: str, source_dir: pathlib.Path = SOURCE_DIR) -> str:
    """Hash of the sources (read from ``source_dir``) + torch/CUDA versions (arch-independent)."""
    if name not in EXTENSIONS:
        raise KeyError(f"unknown op extension {name!r}; known: {sorted(EXTENSIONS)}")
    h = hashlib.sha256()
    for src in EXTENSIONS[name]:
        h.update(src.encode())
        h.update((source_dir / src).read_bytes())
    h.update(f"torch={torch.__version__};cuda={torch.version.cuda}".encode())
    return h.hexdigest()[:16]


def digest(name: str, arch: str | None = None) -> str:
    """Hash of the sources + torch/CUDA versions + target arch (the build folder key)."""
    h = hashlib.sha256(source_digest(name).encode())
    h.update(f";arch={arch if arch is not None else target_arch()}".encode())
    return h.hexdigest()[:16]


def arch_covers(arch_list: str, capability: str) -> bool:
    """Does a TORCH_CUDA_ARCH_LIST value produce code that runs on ``capability`` ("9.0")?"""
    want = tuple(int(v) for v in capability.split("."))
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        try:
            have = tuple(int(v) for v in entry.removesuffix("+PTX").split("."))
        except ValueError:
            continue
        if have == want or (ptx and have <= want):
            return True
    return False


def _load_prebuilt(name: str, cap: str | None = None) -> ModuleType | None:
    """Import a cached build of ``name`` that fits the visible GPU (or capability ``cap``, "9.0"), if
    there is one. A build that does not load here (made against another CUDA runtime or C++ library,
    or damaged) is passed over with a warning, so that the caller builds one instead."""
    if cap is None:
        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability()
        cap = f"{major}.{minor}"
    src = source_digest(name)
    for folder in sorted(cache_root().glob(f"{name}-*")):
        try:
            info = json.loads((folder / "emoji3d-build.json").read_text())
        except (OSError, ValueError):
            continue
        so = folder / str(info.get("so_file", ""))
        if info.get("source_digest") != src or not arch_covers(str(info.get("arch", "")), cap) or not so.is_file():
            continue
        spec = importlib.util.spec_from_file_location(info["module"], so)
        if spec is None or spec.loader is None:
            continue
        try:  # the shared object is opened by module_from_spec
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except (ImportError, OSError) as exc:
            warnings.warn(f"emoji3d: the prebuilt {name} in {folder} does not load here ({exc}); building it "
                          "instead", RuntimeWarning)
            continue
        return module
    return None


def build(name: str, verbose: bool = False) -> ModuleType:
    """Compile (or reuse the cached build of) extension ``name``; raises on failure."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        prebuilt = _load_prebuilt(name)
        if prebuilt is not None:
            _loaded[name] = prebuilt
            return prebuilt
        from torch.utils import cpp_extension

        arch = target_arch()
        if not arch:
            raise OpsBuildError("no CUDA device visible and TORCH_CUDA_ARCH_LIST is not set: nothing to build for")
        if cpp_extension.CUDA_HOME is None:
            raise OpsBuildError("CUDA toolkit (nvcc) not found; set CUDA_HOME")
        dig = digest(name, arch)
        build_dir = cache_root() / f"{name}-{dig}"
        build_dir.mkdir(parents=True, exist_ok=True)
        old_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        # Our own advisory lock (released by the OS if the process dies): while we
        # hold it no other emoji3d process builds here, so a torch 'lock' baton
        # left by a killed build is stale and would otherwise block forever.
        lock_file = open(build_dir / ".emoji3d-build.lock", "w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            stale = build_dir / "lock"
            if stale.exists():
                stale.unlink()
            module_name = f"emoji3d_{name}_{dig}"
            module = cpp_extension.load(
                name=module_name,
                sources=[str(SOURCE_DIR / s) for s in EXTENSIONS[name]],
                build_directory=str(build_dir),
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                extra_ldflags=[f"-L{d}" for d in _cudart_link_dirs(cpp_extension.CUDA_HOME)],
                verbose=verbose,
            )
            so_file = pathlib.Path(module.__file__).name if getattr(module, "__file__", None) else f"{module_name}.so"
            try:  # the manifest only enables reuse on other GPUs; never fail a good build over it
                (build_dir / "emoji3d-build.json").write_text(json.dumps(
                    {"name": name, "module": module_name, "so_file": so_file, "source_digest": source_digest(name),
                     "arch": arch, "torch": torch.__version__, "cuda": torch.version.cuda}, indent=1))
            except OSError as exc:
                warnings.warn(f"emoji3d: could not record build manifest in {build_dir}: {exc}", RuntimeWarning)
        finally:
            lock_file.close()
            if old_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch
        _loaded[name] = module
        return module
