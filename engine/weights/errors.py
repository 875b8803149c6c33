"""The errors of the weights package, one class per thing an operator can act on.

Every class is a :class:`emoji3d.errors.WeightsError` (itself a
``UserFacingError``): ``key`` selects the text a chat user sees
(``emoji3d/texts.py``), and the message, for logs and the CLI, names the
file concerned. A problem with no more specific class (corrupt, truncated,
wrong layout, outdated folder) is a plain ``WeightsError`` (key
``weights_invalid``).
"""
from __future__ import annotations

from emoji3d.errors import WeightsError

__all__ = ["WeightsError", "WeightsMissing", "ChecksumMismatch", "LicenceNotAccepted", "DownloadFailed",
           "UnsafePickle"]


class WeightsMissing(WeightsError):
    """A needed weight file or converted folder is not installed."""

    key = "weights_missing"


class ChecksumMismatch(WeightsError):
    """A downloaded or installed file has the wrong size or sha256."""

    key = "weights_checksum"


class LicenceNotAccepted(WeightsError):
    """The user declined (or was not asked to accept) a file's licence."""

    key = "weights_licence_declined"


class DownloadFailed(WeightsError):
    """The network download failed (HTTP error, connection, HTML page instead of the file)."""

    key = "weights_download_failed"


class UnsafePickle(WeightsError):
    """A pickle asked for something outside the allowlist; nothing was executed."""

    key = "weights_unsafe_pickle"
