"""Errors of the sticker package that may reach a person (keys are stable)."""
from __future__ import annotations

from emoji3d.errors import UserFacingError


class StickerInputError(UserFacingError):
    """The frames handed to the encoder are unusable (empty, wrong dtype/shape, bad fps)."""

    key = "sticker_input_invalid"


class StickerEncodeError(UserFacingError):
    """No setting produced a file that passes the target's rules. ``detail`` names the last reason."""

    key = "sticker_encode_failed"
