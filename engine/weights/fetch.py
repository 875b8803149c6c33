"""Downloading official weight files: licence first, resumable, refused unless they verify.

Conventions
- Nothing is downloaded before ``confirm_licence(entry)`` returns True (the
  CLI shows :func:`licence_text` and asks, or passes ``--accept-licence``).
- A download in progress is kept as ``<dest>/<filename>.part`` and resumed
  with an HTTP ``Range`` request; a server that ignores Range makes us start
  over. The finished file is renamed to ``<filename>`` only after it matches
  the manifest's size and sha256 (:func:`engine.weights.manifest.verify_file`);
  otherwise it is deleted and :class:`ChecksumMismatch` raised. Its size and
  full sha256 are then kept in a fetch record beside it
  (:mod:`engine.weights.fetch_record`), which ``weights verify`` checks.
- A web page instead of the file (Google Drive's "large file" confirmation)
  is refused with a message saying to download it in a browser.
"""
from __future__ import annotations

import os
import pathlib
import sys
import urllib.error
import urllib.request
from typing import Callable

from engine.weights.errors import ChecksumMismatch, DownloadFailed, LicenceNotAccepted
from engine.weights.fetch_record import read_record, write_record
from engine.weights.manifest import Verification, WeightFile, sha256_file, verify_file


def licence_text(entry: WeightFile) -> str:
    lines = [f"{entry.filename}: licence {entry.licence}"]
    if entry.licence_url:
        lines.append(f"  terms: {entry.licence_url}")
    if entry.note:
        lines.append(f"  note: {entry.note}")
    return "\n".join(lines)


def fetch(
    entry: WeightFile,
    dest_dir: str | os.PathLike,
    progress: bool = True,
    confirm_licence: Callable[[WeightFile], bool] | None = None,
    timeout: float = 60.0,
    chunk: int = 1 << 20,
) -> pathlib.Path:
    """Download ``entry`` into ``dest_dir`` and return the verified path.

    An installed file that verifies is returned untouched (no licence question,
    no request); one that fails its check raises :class:`ChecksumMismatch`.
    ``confirm_licence=None`` counts as "not accepted".
    """
    dest = pathlib.Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / entry.filename
    if final.exists():
        check = verify_file(entry, final)
        record = read_record(final)
        if check.ok and record is not None and (final.stat().st_size != record.size
                                                or sha256_file(final) != record.sha256):
            check = Verification(final, False, "differs from its fetch record")
        if check.ok:
            return final
        raise ChecksumMismatch(
            f"{final}: already present but fails its check ({check.detail}); delete it and fetch again", file=str(final))
    if confirm_licence is None or not confirm_licence(entry):
        raise LicenceNotAccepted(f"{entry.filename}: licence {entry.licence} not accepted; nothing downloaded",
                                 file=entry.filename)
    part = dest / (entry.filename + ".part")
    _download_resumable(entry, part, progress=progress, timeout=timeout, chunk=chunk)
    digest = sha256_file(part)
    check = verify_file(entry, part, digest=digest)
    if not check.ok:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{entry.filename}: downloaded file refused ({check.detail}); it was deleted",
                               file=entry.filename)
    # The record first: a crash between the two leaves a record without its file (the next fetch
    # downloads again and rewrites it), never a file that looks hand-placed.
    write_record(final, entry.url, part.stat().st_size, digest)
    os.replace(part, final)
    return final


def _download_resumable(entry: WeightFile, part: pathlib.Path, progress: bool, timeout: float, chunk: int) -> None:
    have = part.stat().st_size if part.exists() else 0
    if entry.size is not None and have > entry.size:
        part.unlink()
        have = 0
    if entry.size is not None and have == entry.size:
        return  # complete, verification follows
    headers = {"User-Agent": "emoji3d-weights/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(entry.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return  # nothing left to send: verification decides
        raise DownloadFailed(f"{entry.filename}: HTTP {exc.code} from {entry.url}", file=entry.filename) from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadFailed(f"{entry.filename}: cannot reach {entry.url} ({exc})", file=entry.filename) from None
    with response:
        if response.headers.get("Content-Type", "").startswith("text/html"):
            raise DownloadFailed(
                f"{entry.filename}: {entry.url} answered with a web page, not the file "
                "(Google Drive asks for confirmation on large files); download it in a browser "
                f"and place it at {part.parent / entry.filename}",
                file=entry.filename,
            )
        if have and getattr(response, "status", 200) != 206:
            have = 0  # the server ignored Range: start over
        length = response.headers.get("Content-Length")
        total = (have + int(length)) if length and length.isdigit() else entry.size
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=entry.filename, file=sys.stderr)
        try:
            with open(part, "ab" if have else "wb") as f:
                while True:
                    try:
                        block = response.read(chunk)
                    except (OSError, ConnectionError) as exc:
                        raise DownloadFailed(
                            f"{entry.filename}: connection lost ({exc}); run fetch again to resume", file=entry.filename
                        ) from None
                    if not block:
                        break
                    f.write(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
