"""Errors that can reach a person.

Every error a chat user (or a CLI user) may see is a :class:`UserFacingError`
with a stable ``key``. The text shown to people lives in ``bots/texts.py`` and
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
