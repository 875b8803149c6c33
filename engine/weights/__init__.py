"""Pretrained weights: from the official files to the networks the engine runs.

One module per concern; import from them directly (this package re-exports nothing):

- :mod:`~engine.weights.manifest`: the list of official files (``manifest.toml``), their
  checksums and where each stands in a weights folder;
- :mod:`~engine.weights.fetch`: licence-first, resumable, verified downloads, each leaving a
  :mod:`~engine.weights.fetch_record` (size and sha256) beside the file;
- :mod:`~engine.weights.verify`: ``weights verify``: manifest checksum, fetch record, else a
  real parse of the file as its kind;
- :mod:`~engine.weights.tensor_files`: safe readers/writers (``torch.load(weights_only=True)``,
  safetensors);
- :mod:`~engine.weights.unpickle`: NVIDIA's network pickles read as data, nothing executed;
  :mod:`~engine.weights.pickled_tree` walks what it built, bounded and memoised (no
  "billion laughs", cycles or depth bombs);
- :mod:`~engine.weights.stylegan2_layouts`, :mod:`~engine.weights.progan_layout`: official key
  layouts -> our networks;
- :mod:`~engine.weights.convert`: official files -> pretrained folders (``emoji3d weights convert``);
- :mod:`~engine.weights.pretrained`: the pretrained folder format and the
  ``from_config`` / ``from_pretrained`` / ``save_pretrained`` mixin every network uses;
- :mod:`~engine.weights.errors`: what can go wrong, each a ``WeightsError`` naming the file.
"""
