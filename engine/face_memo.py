"""Shared styles' analysed faces kept in the engine process between jobs, by image digest.

Every pack of a house or global style analysed the style image again: decode,
two MediaPipe face-mesh passes, the pose fit and the FFHQ and EG3D crops
(``engine.face.analyze.analyze_face``), on the path of every pack before the
GPU starts. The analysis of given bytes with given limits is always the same,
so :class:`FaceMemo` keeps the most recently used results.

* Only shared styles' images go in (a style row's exemplar), never a user's own
  style upload or a selfie, so nothing personal outlives a ``/delete`` or a
  retention limit (as :mod:`engine.blob_memo`).
* Entries are keyed by the image's sha256 (its blob digest) and the process's
  face limits never change, so an entry can never be stale.
* At most ``capacity`` faces (about 4 MB each: the 1024 and 512 px crops), least
  recently used out first; 0 keeps nothing.
* A kept result's arrays are read-only, so a job cannot change what the next one
  reads (``engine.avatar.portrait.portrait_inputs`` copies them into tensors).
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

from engine.face.analyze import FaceResult

# Shared styles' faces kept: a deployment has a handful of house and global styles in use.
DEFAULT_CAPACITY = 16


def _freeze(value: object) -> None:
    """Make every numpy array inside ``value`` (dataclasses, tuples, lists) read-only."""
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _freeze(getattr(value, f.name))
    elif isinstance(value, (tuple, list)):
        for item in value:
            _freeze(item)


class FaceMemo:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._entries: OrderedDict[str, FaceResult] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_analyse(self, digest: str, analyse: Callable[[], FaceResult]) -> FaceResult:
        """The kept analysis of the image ``digest`` names, else ``analyse()``'s, kept. An error
        from ``analyse`` (no face in the image) is raised and nothing is kept."""
        with self._lock:
            face = self._entries.get(digest)
            if face is not None:
                self._entries.move_to_end(digest)
                return face
        face = analyse()
        if self.capacity == 0:
            return face
        _freeze(face)
        with self._lock:
            self._entries[digest] = face
            self._entries.move_to_end(digest)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return face

    def __len__(self) -> int:
        return len(self._entries)
