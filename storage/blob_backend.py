"""What a blob backend is: the interface every place blob bytes can live implements.

Conventions
-----------
* Objects are named by the lowercase hex sha256 of their bytes (``check_digest``)
  and are immutable; the refcounted store (:mod:`storage.blobs`) decides what to
  write and delete, a backend only holds bytes. Backends: the local folder
  (:class:`storage.blobs.LocalBackend`) and S3 (:mod:`storage.blob_s3`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(Exception):
    """A digest has no row or no object (internal: callers pass digests they were given)."""


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


@dataclass(frozen=True)
class StaleObject:
    """Something a backend holds that is older than a GC cutoff: a blob's object
    (``digest`` set) or an unfinished write (``digest`` None, always garbage)."""

    name: str  # the backend's own name for it (path, key or upload id), for removal
    size: int
    digest: str | None


class BlobBackend(Protocol):
    """Where blob bytes live. Names are digests; every method is safe to call from
    several processes at once. Backends know nothing about rows or references."""

    def describe(self) -> str:
        """Human-readable location, for error messages."""

    def size(self, digest: str) -> int | None:
        """Size of the stored object, or None when there is none."""

    def open(self, digest: str) -> BinaryIO:
        """A readable file object (a context manager); BlobNotFound when absent."""

    def write(self, digest: str, source: bytes | Path) -> None:
        """Store ``source`` (bytes, or a file streamed from disk) atomically as
        ``digest``. A file whose bytes do not hash to ``digest`` raises OSError
        and leaves nothing visible."""

    def delete(self, digest: str) -> None:
        """Remove the object if present."""

    def stale(self, cutoff: float) -> Iterator[StaleObject]:
        """Objects and unfinished writes last modified before ``cutoff`` (epoch seconds)."""

    def discard(self, item: StaleObject) -> bool:
        """Remove what :meth:`stale` reported; False when it was gone already (another
        GC pass removed it), so concurrent passes count each removal once."""


