"""Compile every fused CUDA op ahead of time: ``python -m engine.ops.prebuild``.

For the Dockerfile: set ``TORCH_CUDA_ARCH_LIST`` (e.g. "8.0;8.6;9.0") because
the build machine usually has no GPU, and ``EMOJI3D_OPS_CACHE`` to a path that
ships in the image. Without a GPU and without ``TORCH_CUDA_ARCH_LIST`` there is
nothing to target: it says so and exits 0. A failed build exits 1. When a
GPU is visible, every built kernel is also self-checked against its reference
(float32, float16 and bfloat16 where the kernel takes it, ``engine.ops.dispatch``) and a
failed self-check exits 1 too.
"""
from __future__ import annotations

import argparse
import sys

import torch

from engine.ops import FUSED_OPS, _build, dispatch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.ops.prebuild", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="*", default=sorted(_build.EXTENSIONS), help="which ops to build (default: all)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    arch = _build.target_arch()
    if not arch:
        print("engine.ops.prebuild: no CUDA GPU visible and TORCH_CUDA_ARCH_LIST is not set; nothing to build "
              "(the ops will use their pure-torch references, or build on first use on a GPU machine)")
        return 0
    print(f"engine.ops.prebuild: torch {torch.__version__}, CUDA {torch.version.cuda}, arch {arch}, "
          f"cache {_build.cache_root()}")
    failed = []
    for name in args.ops:
        if name not in _build.EXTENSIONS:
            print(f"  {name}: unknown op (known: {', '.join(sorted(_build.EXTENSIONS))})")
            failed.append(name)
            continue
        try:
            _build.build(name, verbose=args.verbose)
            print(f"  {name}: ok ({_build.cache_root() / (name + '-' + _build.digest(name, arch))})")
        except Exception as exc:  # noqa: BLE001 - report every failure, then exit 1
            print(f"  {name}: FAILED: {exc}")
            failed.append(name)
    if torch.cuda.is_available():
        device = dispatch.concrete_device("cuda")
        print(f"engine.ops.prebuild: self-check on {torch.cuda.get_device_name(device)}")
        for op in FUSED_OPS:
            if op.extension not in args.ops or op.extension in failed:
                continue
            for dtype in (d for d in (torch.float32, torch.float16, torch.bfloat16) if d in op.dtypes):
                decision = dispatch.decide(op, device, dtype)
                print(f"  {op.name} {dispatch.dtype_name(dtype)}: {decision.description}")
                if decision.kernel is None:
                    failed.append(f"{op.name} {dispatch.dtype_name(dtype)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
