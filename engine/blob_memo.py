"""Shared artifacts' bytes kept in the engine process between jobs, by blob digest.

A house style's finetune (the ``style_2d`` artifact, 114 MB at full size) is the same for every
user of that style, and every job of the style read it again from the blob store: over S3, a
transfer of that size on the path of every pack. :class:`BlobMemo` keeps the most recently used
ones in memory.

* Only shared artifacts go in: those without an owner (``storage.artifacts``: ``owner_user_id``
  None), never anything made from a user's photo or upload, so nothing here outlives a
  ``/delete`` or a retention limit.
* Entries are keyed by the blob's digest, its sha256: a given digest always names the same bytes,
  so an entry can never be stale. Evicting one only costs a read.
* Bounded by total bytes, least recently used out first; 0 keeps nothing. Entries are bytes, and
  each use unpacks them into fresh tensors: a job cannot change what the next one reads.
"""
from __future__ import annotations

import threading
from collections import OrderedDict


class BlobMemo:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # a job's storing threads may read and write it at once

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._entries.get(digest)
            if data is not None:
                self._entries.move_to_end(digest)
            return data

    def put(self, digest: str, data: bytes) -> None:
        """Keep ``data`` (the bytes whose sha256 is ``digest``); anything larger than the whole
        budget is not kept."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(digest, None)
            self._bytes -= len(old) if old is not None else 0
            self._entries[digest] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes
