"""How a process sets up CUDA arithmetic before it runs the networks: once, process-wide.

* TF32 for float32 matrix multiplies and convolutions (about 3x faster on
  Ampere and Hopper, well inside the tolerance of GAN training and of our
  reference checks).
* ``cudnn_autotune`` (``[engine] cudnn_autotune``, off by default): cuDNN
  times the algorithms it has for each convolution shape the first time that
  shape runs and keeps the fastest (``torch.backends.cudnn.benchmark``);
  otherwise it picks by heuristics. The timing costs a few seconds once per
  process (the engine is long-lived and its shapes are fixed per stage), and
  the stages' warm-up steps run before any CUDA-graph capture, so it never
  happens inside a capture. On the H200 it made no step faster (within 1 %,
  bench/stage_timing.py --cudnn-autotune both) and cost 2.5-3.1 s and 0.5 GiB
  on the first job, hence off; other GPUs may differ.

Both are torch-global flags, so this is a function the process entry points
(the engine's resources, the GPU benches) call, not state of a network.
"""
from __future__ import annotations

import torch


def configure_cuda_math(cudnn_autotune: bool) -> None:
    """TF32 matmuls and convolutions, and cuDNN's autotuning on or off (see the module notes)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = bool(cudnn_autotune)
