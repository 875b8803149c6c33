"""Every sentence a person reads, in one place.

Engine and storage code raise :class:`~emoji3d.errors.UserFacingError` with a
stable ``key``; front ends (the CLI, Telegram, Discord) turn it into words
with :func:`message`. Placeholders use ``str.format`` names that the error's
``params`` provide. A key without a text falls back to a generic apology,
and the test suite checks that every key the code raises has a text here.
"""
from __future__ import annotations

from .errors import UserFacingError

ERRORS: dict[str, str] = {
    # Image hygiene
    "not_an_image": "That file isn't an image I can read. Please send a JPEG, PNG or WebP photo.",
    "image_truncated": "That image looks cut off or damaged. Could you send it again?",
    "image_too_large": "That image is too big ({megapixels} megapixels). Please send one under {limit} megapixels.",
    "file_too_large": "That file is too big ({size_mb} MB). Please send one under {limit_mb} MB.",
    "unsupported_image": "I can't use this kind of image ({detail}). A regular photo works best.",
    # Face checks
    "no_face": "I couldn't find a face in that photo. A well-lit selfie looking at the camera works best.",
    "face_too_small": "The face is too small in that photo ({face_px} px across). Please move closer or crop the photo.",
    "head_turned_too_far": "Your head is turned too far ({angle:.0f}°). Please look towards the camera.",
    "eyes_closed": "Your eyes seem to be closed. Please send a photo with open eyes.",
    "face_occluded": "Part of your face seems covered. Please send a photo with your whole face visible.",
    "several_faces": "I found {count} faces and used the largest one.",
    # Styles and weights
    "style_not_found": "I don't know a style called “{name}”.",
    "style_name_taken": "There is already a style called “{name}” here.",
    "style_invalid": "That style can't be used: {detail}",
    "weights_invalid": "A model file is missing or damaged: {detail}",
    "stage_unavailable": "This part of the pipeline isn't available yet: {detail}",
    # Storage
    "blob_too_large": "That file is too large to store.",
    "user_not_found": "I have no data stored for you.",
    # Fallback
    "internal": "Something went wrong on my side. Please try again in a moment.",
}


def message(key: str, **params: object) -> str:
    """The text for ``key`` with ``params`` filled in; never raises."""
    template = ERRORS.get(key) or ERRORS["internal"]
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):
        return template.split("{")[0].rstrip(" (") + ("." if "{" in template else "")


def explain(err: UserFacingError) -> str:
    return message(err.key, **err.params)
