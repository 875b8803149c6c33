"""The style catalogue: global styles from ``styles/``, house styles added by admins.

A global style is a folder ``<styles_dir>/<name>/`` holding ``style.toml``
(name, title, description, exemplar file name) and the exemplar image. At
start-up (and on ``emoji3d styles sync``) every folder is mirrored into the
database: a new folder adds a style, a changed exemplar bumps the style's
version (so the scheduler can regenerate packs made with the old one).

Adding or changing a style enqueues its 2D finetune as a *batch* job, keyed by
style id and version, so the first user of a new style does not wait for it
and a style is tuned once per exemplar.
"""
from __future__ import annotations

import pathlib
import re
import sys
from dataclasses import dataclass

import sqlalchemy as sa

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from storage import jobs, styles as st
from storage.blobs import BlobStore, release_holder
from storage.db import Database

from emoji3d.errors import UserFacingError

STYLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
STYLE_TOML_KEYS = {"name", "title", "description", "exemplar"}


class InvalidStyle(UserFacingError):
    key = "style_invalid"


@dataclass(frozen=True)
class StyleFolder:
    name: str
    title: str
    description: str
    exemplar: pathlib.Path


def check_name(name: str) -> str:
    if not STYLE_NAME.match(name or ""):
        raise InvalidStyle(
            f"style name {name!r} must be 1-32 lowercase letters, digits, '-' or '_', starting with a letter or digit",
            name=name,
        )
    return name


def read_style_folder(folder: pathlib.Path) -> StyleFolder:
    path = folder / "style.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidStyle(f"{path}: {exc}", name=folder.name) from None
    unknown = sorted(set(data) - STYLE_TOML_KEYS)
    if unknown:
        raise InvalidStyle(f"{path}: unknown key {unknown[0]!r} (expected {sorted(STYLE_TOML_KEYS)})", name=folder.name)
    name = check_name(str(data.get("name", folder.name)))
    if name != folder.name:
        raise InvalidStyle(f"{path}: name {name!r} differs from its folder name {folder.name!r}", name=name)
    exemplar = folder / str(data.get("exemplar", "exemplar.png"))
    if not exemplar.is_file():
        raise InvalidStyle(f"{path}: exemplar file {exemplar.name} is missing", name=name)
    return StyleFolder(name, str(data.get("title", name)), str(data.get("description", "")), exemplar)


def enqueue_finetune(db: Database, style: st.Style) -> int:
    return jobs.enqueue(db, "style_finetune", {"style_id": style.id, "version": style.version},
                        st.finetune_job_key(style), priority="batch")


def _validated_exemplar(data: bytes, max_megapixels: float) -> None:
    from emoji3d.images import DecodeLimits, decode_image

    decode_image(data, DecodeLimits(max_megapixels=max_megapixels))


def sync_global_styles(db: Database, blobs: BlobStore, styles_dir: pathlib.Path,
                       max_megapixels: float = 40.0) -> list[tuple[st.Style, str]]:
    """Mirror ``styles_dir`` into the database. Returns (style, what happened)
    with what in {"added", "updated", "unchanged"}."""
    out = []
    if not styles_dir.is_dir():
        return out
    for folder in sorted(p for p in styles_dir.iterdir() if (p / "style.toml").is_file()):
        spec = read_style_folder(folder)
        data = spec.exemplar.read_bytes()
        _validated_exemplar(data, max_megapixels)
        digest = blobs.put_bytes(data)
        existing = st.find_style(db, spec.name)
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
                    added_by: int | None, max_megapixels: float = 40.0) -> st.Style:
    """An admin's new style (``community_id`` None = global). Validates the
    image, stores it, and enqueues its finetune at batch priority."""
    check_name(name)
    _validated_exemplar(image, max_megapixels)
    digest = blobs.put_bytes(image)
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
