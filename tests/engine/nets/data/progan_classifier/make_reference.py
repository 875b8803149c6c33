"""Regenerate ``reference.json`` + ``reference.npz`` with NVIDIA's own ``D_paper``.

The reference outputs in this folder come from the official ProGAN discriminator
(StyleGAN repository, ``training/networks_progan.py``) run in TensorFlow, for
random weights made by the recipe below. They are not made by our code.

Usage (needs TensorFlow >= 2 and numpy; nothing of this runs in the test suite)::

    python make_reference.py /path/to/stylegan/training/networks_progan.py

The official module is imported from that path as is, with ``tensorflow``
bound to ``tensorflow.compat.v1`` in graph mode, because it is TF1 code.

Recipe (shared with the tests): ``rng = numpy.random.default_rng(seed)``; for
each variable in the order of ``variables`` (the order TensorFlow created
them): ``t = rng.standard_normal(shape, dtype=float32)``; biases are ``0.1 * t``,
weights are ``t`` (N(0, 1), as equalised learning rate stores them), ``lod``
is the case's value. Inputs: ``numpy.tanh(default_rng(seed + 1).standard_normal(
[N, C, R, R], float32))``.
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import numpy as np

CASES = {
    # name: (D_paper kwargs, lod, seed, batch)
    "fused_mbstd4_32px": (dict(num_channels=3, resolution=32, fmap_base=256, fmap_max=64, mbstd_group_size=4,
                               fused_scale=True), 0.0, 11, 8),
    "separate_mbstd2_lod06_16px": (dict(num_channels=3, resolution=16, fmap_base=128, fmap_max=32,
                                        mbstd_group_size=2, fused_scale=False), 0.6, 12, 4),
    "no_mbstd_8px": (dict(num_channels=3, resolution=8, fmap_base=64, fmap_max=16, mbstd_group_size=0,
                          fused_scale=True), 0.0, 13, 3),
    # The released celebahq-classifier-*.pkl architecture (D_paper defaults at 256 px).
    "celebahq_256": (dict(num_channels=3, resolution=256, mbstd_group_size=4, fused_scale=True), 0.0, 14, 4),
}


def recipe_value(name: str, shape: list[int], rng: np.random.Generator, lod: float) -> np.ndarray:
    if name == "lod":
        return np.float32(lod)
    t = rng.standard_normal(shape, dtype=np.float32)
    return 0.1 * t if name.endswith("/bias") else t


def recipe_input(seed: int, shape: list[int]) -> np.ndarray:
    return np.tanh(np.random.default_rng(seed + 1).standard_normal(shape, dtype=np.float32))


def main(networks_progan: str) -> None:
    import tensorflow.compat.v1 as tf

    tf.disable_v2_behavior()
    sys.modules["tensorflow"] = tf  # the official module does `import tensorflow as tf`
    spec = importlib.util.spec_from_file_location("networks_progan", networks_progan)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    here = pathlib.Path(__file__).resolve().parent
    meta, arrays = {}, {}
    for case, (kwargs, lod, seed, batch) in CASES.items():
        graph = tf.Graph()
        with graph.as_default(), tf.Session() as sess:
            res = kwargs["resolution"]
            images = tf.placeholder(tf.float32, [None, kwargs["num_channels"], res, res])
            labels = tf.placeholder(tf.float32, [None, 0])
            # As dnnlib's Network: a template graph (linear structure) creates the variables, then the
            # evaluated graph (structure=None, i.e. recursive) reuses them.
            with tf.variable_scope("D"):
                linear = mod.D_paper(images, labels, is_template_graph=True, **kwargs)
            with tf.variable_scope("D", reuse=tf.AUTO_REUSE):
                scores = mod.D_paper(images, labels, **kwargs)
            variables = tf.global_variables()
            rng = np.random.default_rng(seed)
            names = [v.name[len("D/"):].split(":")[0] for v in variables]
            values = [recipe_value(n, v.shape.as_list(), rng, lod) for n, v in zip(names, variables)]
            for v, val in zip(variables, values):
                v.load(val, sess)
            x = recipe_input(seed, [batch, kwargs["num_channels"], res, res])
            out, out_linear = sess.run([scores, linear], {images: x, labels: np.zeros([batch, 0], np.float32)})
            assert np.allclose(out, out_linear, atol=1e-5), (case, out, out_linear)
        meta[case] = {"static_kwargs": kwargs, "lod": lod, "seed": seed, "batch": batch,
                      "variables": [[n, v.shape.as_list()] for n, v in zip(names, variables)],
                      "parameters": int(sum(np.prod(v.shape.as_list()) for v in variables))}
        arrays[f"{case}__scores"] = out.astype(np.float32)
        print(case, out.ravel()[:4], meta[case]["parameters"])
    (here / "reference.json").write_text(json.dumps({"tensorflow": tf.__version__, "cases": meta}, indent=1) + "\n")
    np.savez(here / "reference.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
