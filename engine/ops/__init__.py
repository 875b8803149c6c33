"""Custom ops for the StyleGAN2 family: ``upfirdn2d``, ``bias_act``,
``conv2d_resample`` and ``modulated_conv``.

Every op has a readable pure-torch reference (``*_ref``) and a fused CUDA
kernel of our own under ``cuda/``, chosen by ``impl='ref'|'cuda'|'auto'``.
Kernels are compiled lazily on first CUDA use (``_build``), never at import;
``python -m engine.ops.prebuild`` compiles them ahead of time (Dockerfile).
"""
