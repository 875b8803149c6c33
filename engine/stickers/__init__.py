"""Sticker files for Telegram and Discord: limits, encoder, verifier, previews.

Modules: ``targets`` (the limits table), ``frames`` (fit/retime input),
``palette`` and ``codecs`` (single-shot writers), ``encode`` (size-fitting
search), ``probe`` (decode + measure any file), ``verify`` (rules), ``preview``
(contact sheet + HTML page), ``cli``. No torch anywhere in this package.
Importing the package itself is cheap (PyAV is imported only when a WEBM is
written or read).
"""
from engine.stickers.targets import TARGETS, FormatRule, Target, get_target

__all__ = ["TARGETS", "FormatRule", "Target", "get_target"]
