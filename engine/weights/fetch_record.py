"""What ``weights fetch`` saw: size and SHA-256 of each file it downloaded, kept beside the file.

Most official files have no published checksum (NGC and Google Drive publish
none), so the manifest cannot say what a correct file is. The fetch record
can say what *this* download was: ``<dir>/<filename>.emoji3d-fetch.json``,
written atomically (a ``.tmp`` renamed over it) once the download finished
and passed every check the manifest allows. ``weights verify`` compares the
installed file with it, so a file swapped, truncated or damaged after the
download is caught even when the manifest knows nothing.

Only a download writes a record. A file copied in by hand gets none: what it
should be is unknown, and ``weights verify`` then parses it instead
(:mod:`engine.weights.verify`).

Record fields: ``format`` (1), ``filename``, ``url``, ``size`` (bytes),
``sha256`` (64 hex digits), ``fetched_at`` (UTC, ISO 8601).
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
from dataclasses import dataclass

from engine.weights.errors import WeightsError

SUFFIX = ".emoji3d-fetch.json"
FORMAT = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FetchRecord:
    filename: str
    url: str
    size: int
    sha256: str
    fetched_at: str


def record_path(file: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(file)
    return path.with_name(path.name + SUFFIX)


def write_record(file: str | os.PathLike, url: str, size: int, sha256: str) -> pathlib.Path:
    """Record ``file`` (named by its final name) as downloaded from ``url``; atomic."""
    target = record_path(file)
    data = {"format": FORMAT, "filename": pathlib.Path(file).name, "url": url, "size": int(size),
            "sha256": sha256.lower(),
            "fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, target)
    return target


def read_record(file: str | os.PathLike) -> FetchRecord | None:
    """The record of ``file``, None when there is none; a damaged record is a ``WeightsError``
    naming it (it is not silently ignored: that would turn a checked file into an unchecked one)."""
    path = record_path(file)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise WeightsError(f"{path}: unreadable fetch record ({type(exc).__name__}); fetch the file again",
                           file=str(path)) from None
    ok = (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("size"), int)
          and not isinstance(data.get("size"), bool) and data["size"] >= 0
          and isinstance(data.get("sha256"), str) and _SHA256.match(data["sha256"])
          and data.get("filename") == pathlib.Path(file).name)
    if not ok:
        raise WeightsError(f"{path}: malformed fetch record (expected format {FORMAT} with filename, size and "
                           "sha256); fetch the file again", file=str(path))
    return FetchRecord(data["filename"], str(data.get("url", "")), data["size"], data["sha256"],
                       str(data.get("fetched_at", "")))
