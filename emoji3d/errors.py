"""Errors that can reach a person.

Every error a chat user (or a CLI user) may see is a :class:`UserFacingError`
with a stable ``key``. The text shown to people lives in ``emoji3d/texts.py`` and
is looked up by that key, so wording changes never touch engine code and tests
assert on keys, not on sentences. ``params`` fill the placeholders of the text
(e.g. ``{megapixels}``). ``str(err)`` is a plain English fallback for logs and
the CLI.
"""
from __future__ import annotations


class UserFacingError(Exception):
    """Base class: a problem a person can act on. ``key`` selects the text."""

    key: str = "internal"

    def __init__(self, detail: str = "", **params: object) -> None:
        self.params = dict(params)
        self.detail = detail or self.key.replace("_", " ")
        super().__init__(self.detail)


class ConfigError(Exception):
    """config.toml is wrong. The message is one line naming the key."""


class WeightsError(UserFacingError):
    """A weight file is missing, corrupt, truncated or of the wrong layout."""

    key = "weights_invalid"


# --- Image decoding and face front end (emoji3d.images, engine.face.analyze*) -------


class NotAnImageError(UserFacingError):
    """The bytes are not an image in any format we read (sniffed by magic bytes)."""

    key = "not_an_image"


class UnsupportedImageFormatError(UserFacingError):
    """A real image format we cannot decode here (e.g. HEIC). ``params``: ``detail``."""

    key = "unsupported_image"


class ImageTruncatedError(UserFacingError):
    """The file starts like an image but is cut off or damaged."""

    key = "image_truncated"


class ImageTooLargeError(UserFacingError):
    """More pixels than allowed (or a decompression bomb); refused before decoding.
    ``params``: ``megapixels`` (what the header claims), ``limit`` (megapixels)."""

    key = "image_too_large"


class FileTooLargeError(UserFacingError):
    """More bytes than allowed. ``params``: ``size_mb``, ``limit_mb``."""

    key = "file_too_large"


class ImageTooSmallError(UserFacingError):
    """A side is shorter than the decoder's minimum (refused from the header).
    ``params``: ``width``, ``height``, ``min_side`` (pixels)."""

    key = "image_too_small"


# --- Files named on a command line (emoji3d.images.read_file_bounded) ------------


class FileMissingError(UserFacingError):
    """Nothing exists at the path. ``params``: ``path``."""

    key = "file_missing"


class NotAFileError(UserFacingError):
    """The path is a folder, a device, a pipe or a socket, not a regular file.
    ``params``: ``path``, ``kind`` (e.g. "a folder")."""

    key = "not_a_file"


class FileUnreadableError(UserFacingError):
    """The file exists but cannot be opened or read (e.g. no permission).
    ``params``: ``path``, ``reason``."""

    key = "file_unreadable"


class NoFaceError(UserFacingError):
    """No face was found in the photo."""

    key = "no_face"


class FaceTooSmallError(UserFacingError):
    """The face is too small to use. ``params``: ``face_px``, ``min_face_px``."""

    key = "face_too_small"


class HeadTurnedTooFarError(UserFacingError):
    """The head is turned or tilted beyond the configured limits.
    ``params``: ``angle`` (the offending angle, degrees, absolute), ``yaw_degrees``,
    ``pitch_degrees``, ``max_yaw_degrees``, ``max_pitch_degrees``."""

    key = "head_turned_too_far"


class EyesClosedError(UserFacingError):
    """Both eyes look closed (eye aspect ratio from the face mesh below the threshold)."""

    key = "eyes_closed"


# --- Orders the engine cannot make (engine.tasks) ------------------------------


class StyleHasNoFace(UserFacingError):
    """The style image shows no face, so it cannot guide a face's style."""

    key = "style_no_face"


class SelfieGone(UserFacingError):
    """A regeneration needs the selfie, which was deleted under the retention policy.
    ``params``: ``hours`` (the retention)."""

    key = "selfie_expired"


class AvatarGone(UserFacingError):
    """A re-render needs the pack's stored avatar, which retention deleted (or the pack never finished)."""

    key = "avatar_expired"


class StyleGone(UserFacingError):
    """The pack's style was removed."""

    key = "style_removed"
