"""``emoji3d weights verify``: is each installed official file the one it should be?

What is checked, strongest first, every check that applies:

1. the manifest's size and sha256 (or published sha256 prefix), when it has them;
2. the fetch record written when ``weights fetch`` downloaded the file
   (:mod:`engine.weights.fetch_record`): same size and full sha256 as then;
3. when neither a manifest checksum nor a record says what the file should
   be (a file copied in by hand), the file is read as its ``kind`` and built
   into our network, exactly as ``weights convert`` would, without writing
   anything: a real parse (the restricted unpickler for NVIDIA pickles,
   ``torch.load(weights_only=True)`` for ``.pt``/``.pth``) plus the strict
   key and shape match. A truncated, damaged or wrong-format file fails here.

"ok" therefore always means something was checked; the detail says what.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping

from engine.weights.errors import WeightsError
from engine.weights.fetch_record import read_record
from engine.weights.manifest import Verification, WeightFile, sha256_file, verify_file


def _without_path(message: str, path: pathlib.Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def describe_loaded(entry: WeightFile, path: str | os.PathLike, audit_source: bool = True) -> str:
    """Parse ``path`` as ``entry.kind`` into our network(s); what loaded, in words.
    A file that does not load is the converter's ``WeightsError`` naming it."""
    from engine.weights.convert import read_official

    networks = read_official(path, entry.kind, audit_source)
    parts = networks.items() if isinstance(networks, Mapping) else [("", networks)]
    described = []
    for name, network in parts:
        count = sum(p.numel() for p in network.parameters()) + sum(b.numel() for b in network.buffers())
        described.append(f"{(name + ': ') if name else ''}{type(network).__name__} {count / 1e6:.2f} M values")
    return f"loads as {entry.kind} with the expected keys and shapes ({'; '.join(described)})"


def verify_installed(entry: WeightFile, path: str | os.PathLike, audit_source: bool = True) -> Verification:
    """Every check of the module docstring that applies to ``path``; the first failure wins."""
    file_path = pathlib.Path(path)
    if not file_path.is_file():
        return Verification(file_path, False, "missing")
    try:
        record = read_record(file_path)
    except WeightsError as exc:
        return Verification(file_path, False, str(exc))
    digest = sha256_file(file_path) if (entry.sha256 is not None or record is not None) else None
    by_manifest = verify_file(entry, file_path, digest=digest)
    if not by_manifest.ok:
        return by_manifest
    notes = [by_manifest.detail] if (entry.size is not None or entry.sha256 is not None) else []
    if record is not None:
        size = file_path.stat().st_size
        if size != record.size:
            return Verification(file_path, False, f"size {size} bytes, but {record.size} when fetched "
                                                  f"{record.fetched_at}: changed since download; fetch it again")
        if digest != record.sha256:
            return Verification(file_path, False, f"sha256 {digest}, but {record.sha256} when fetched "
                                                  f"{record.fetched_at}: changed since download; fetch it again")
        notes.append("matches its fetch record (size, sha256)")
    elif entry.sha256 is None:
        try:
            notes.append(f"no checksum or fetch record; {describe_loaded(entry, file_path, audit_source)}")
        except WeightsError as exc:
            return Verification(file_path, False, f"no checksum or fetch record, and it does not load: "
                                                  f"{_without_path(str(exc), file_path)}")
    return Verification(file_path, True, ", ".join(notes))
