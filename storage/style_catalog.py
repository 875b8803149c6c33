"""The style catalogue: global styles from ``styles/``, house styles added by admins.

A global style is a folder ``<styles_dir>/<name>/`` holding ``style.toml``
(name, title, description, exemplar file name) and the exemplar image. At
start-up (and on ``emoji3d styles sync``) every folder is mirrored into the
database: a new folder adds a style, a changed exemplar bumps the style's
version (so the scheduler can regenerate packs made with the old one).

Adding or changing a style enqueues its 2D finetune as a *batch* job, keyed by
style id and version, so the first user of a new style does not wait for it
and a style is tuned once per exemplar.

Every path that adds a style image (``styles/`` through
:func:`sync_global_styles`, ``emoji3d styles add`` and the bots' house styles
through :func:`add_house_style`, the bots' and ``emoji3d make``'s one-off
style images) runs one validation, :func:`validate_exemplar`: the size and
decoding bounds of ``emoji3d.images`` and a face. The face check needs
MediaPipe, so it is passed in as a function (``(H, W, 3) uint8 -> anything``,
raising the face front end's ``UserFacingError``; the shell and the bots give
``engine.face``'s); storage imports nothing from the engine.

Stored exemplars: an uploaded image (house styles) is stored as its pixels only
(``emoji3d.images.clean_image``: PNG, no metadata). A file of the ``styles/``
folder is stored as it is, so its digest, which versions the style, stays the
same across Pillow and zlib upgrades; it is validated only when new or changed.
"""
from __future__ import annotations

import hashlib
import pathlib
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import sqlalchemy as sa

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from storage import jobs, styles as st
from storage.blobs import BlobStore, release_holder
from storage.db import Database

from emoji3d.errors import NoFaceError, StyleHasNoFace, UserFacingError
from emoji3d.images import CleanImage, DecodeLimits, clean_image, read_file_bounded
from emoji3d.texts import explain

STYLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
STYLE_TOML_KEYS = {"name", "title", "description", "exemplar"}
STYLE_TOML_MAX_BYTES = 64 * 1024

FaceCheck = Callable[[np.ndarray], Any]  # (H, W, 3) uint8 RGB -> anything; raises UserFacingError (no_face, ...)


class InvalidStyle(UserFacingError):
    key = "style_invalid"


def _invalid(log: str, name: str, detail: str) -> InvalidStyle:
    err = InvalidStyle(log, name=name)
    err.params["detail"] = detail  # the text's {detail}; the constructor's own `detail` is the log message
    return err


@dataclass(frozen=True)
class StyleFolder:
    name: str
    title: str
    description: str
    exemplar: pathlib.Path


def check_name(name: str) -> str:
    if not STYLE_NAME.match(name or ""):
        rule = f"the name “{name}” must be 1-32 lowercase letters, digits, '-' or '_', starting with a letter or digit."
        raise _invalid(f"style name {name!r}: {rule}", name, rule)
    return name


def read_style_folder(folder: pathlib.Path) -> StyleFolder:
    path = folder / "style.toml"
    try:
        data = tomllib.loads(read_file_bounded(path, STYLE_TOML_MAX_BYTES).decode("utf-8"))
    except UserFacingError as exc:
        raise _invalid(f"{path}: {exc}", folder.name, f"{path}: {explain(exc)}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _invalid(f"{path}: {exc}", folder.name, f"{path} is not valid TOML ({exc}).") from None
    unknown = sorted(set(data) - STYLE_TOML_KEYS)
    if unknown:
        why = f"{path}: unknown key {unknown[0]!r} (expected {sorted(STYLE_TOML_KEYS)})"
        raise _invalid(why, folder.name, why + ".")
    name = check_name(str(data.get("name", folder.name)))
    if name != folder.name:
        why = f"{path}: name {name!r} differs from its folder name {folder.name!r}"
        raise _invalid(why, name, why + ".")
    exemplar = folder / str(data.get("exemplar", "exemplar.png"))
    if not exemplar.exists() and not exemplar.is_symlink():
        why = f"{path}: exemplar file {exemplar.name} is missing"
        raise _invalid(why, name, why + ".")
    return StyleFolder(name, str(data.get("title", name)), str(data.get("description", "")), exemplar)


def enqueue_finetune(db: Database, style: st.Style) -> int:
    return jobs.enqueue(db, "style_finetune", {"style_id": style.id, "version": style.version},
                        st.finetune_job_key(style), priority="batch")


def validate_exemplar(data: bytes, limits: DecodeLimits, face_check: FaceCheck) -> CleanImage:
    """The one validation of a style image: size and decoding (``emoji3d.images``: bytes,
    megapixels, sides of at least 8 px, a format we read), then a face. Returns the image
    reduced to its pixels. No face raises :class:`StyleHasNoFace` (``style_no_face``); the
    face check's other refusals (too small, turned too far...) pass through."""
    clean = clean_image(data, limits)
    check_exemplar_face(clean.rgb, face_check)
    return clean


def check_exemplar_face(rgb: np.ndarray, face_check: FaceCheck) -> None:
    """The face part of :func:`validate_exemplar`, for a caller that decoded the image already."""
    try:
        face_check(rgb)
    except NoFaceError:
        raise StyleHasNoFace("no face found in the style image") from None


def sync_global_styles(db: Database, blobs: BlobStore, styles_dir: pathlib.Path, limits: DecodeLimits, *,
                       face_check: FaceCheck) -> list[tuple[st.Style, str]]:
    """Mirror ``styles_dir`` into the database. Returns (style, what happened)
    with what in {"added", "updated", "unchanged"}. A new or changed exemplar is
    validated first (:func:`validate_exemplar`); a refusal names the folder."""
    out = []
    if not styles_dir.is_dir():
        return out
    for folder in sorted(p for p in styles_dir.iterdir() if (p / "style.toml").is_file()):
        spec = read_style_folder(folder)
        try:
            data = read_file_bounded(spec.exemplar, limits.max_bytes)
            existing = st.find_style(db, spec.name)
            if existing is None or existing.exemplar_digest != hashlib.sha256(data).hexdigest():
                validate_exemplar(data, limits, face_check)
        except UserFacingError as exc:
            raise _invalid(f"{spec.exemplar}: {exc}", spec.name, f"{spec.exemplar}: {explain(exc)}") from None
        digest = blobs.put_bytes(data)
        if existing is None:
            style, what = st.add_style(db, spec.name, digest), "added"
        elif existing.exemplar_digest != digest:
            style, what = st.set_exemplar(db, existing.id, digest), "updated"
        else:
            style, what = existing, "unchanged"
        if what != "unchanged":
            enqueue_finetune(db, style)
        out.append((style, what))
    return out


def add_house_style(db: Database, blobs: BlobStore, name: str, image: bytes, *, community_id: int | None,
                    added_by: int | None, limits: DecodeLimits, face_check: FaceCheck) -> st.Style:
    """An admin's new style (``community_id`` None = global). Validates the
    image (:func:`validate_exemplar`), stores its pixels only, and enqueues
    its finetune at batch priority."""
    check_name(name)
    clean = validate_exemplar(image, limits, face_check)
    digest = blobs.put_bytes(clean.png)
    style = st.add_style(db, name, digest, community_id=community_id, added_by=added_by)
    enqueue_finetune(db, style)
    return style


def remove_style(db: Database, name: str, *, community_id: int | None) -> st.Style:
    """Delete a style row and release its exemplar. Packs made with it keep
    their stickers (their style_id becomes NULL)."""
    style = st.find_style(db, name, community_id)
    if style is None:
        raise st.StyleNotFound(f"no style named {name!r}", name=name)
    with db.write() as conn:
        release_holder(conn, f"style:{style.id}")
        conn.execute(sa.text("DELETE FROM styles WHERE id = :id"), {"id": style.id})
    return style
