"""A real ICC v2 RGB display profile built from its parts, for colour-management tests.

No ICC file ships with this system, and Pillow can only create sRGB, LAB and
XYZ profiles, so the tests build a matrix/TRC profile (the kind phones and
cameras embed: Display P3, Adobe RGB) with chosen colorants. LittleCMS reads
it like any other profile.
"""
from __future__ import annotations

import struct

D50 = (0.9642, 1.0, 0.8249)
# sRGB's colorants adapted to D50, as ICC profiles store them
SRGB_RED = (0.4361, 0.2225, 0.0139)
SRGB_GREEN = (0.3851, 0.7169, 0.0971)
SRGB_BLUE = (0.1431, 0.0606, 0.7141)


def _s15fixed16(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _xyz(v: tuple[float, float, float]) -> bytes:
    return b"XYZ " + b"\0" * 4 + b"".join(_s15fixed16(c) for c in v)


def _curve(gamma: float) -> bytes:
    return b"curv" + b"\0" * 4 + struct.pack(">IH", 1, int(round(gamma * 256))) + b"\0\0"


def _description(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return (b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0) + b"\0" * 67)


def rgb_profile(red: tuple, green: tuple, blue: tuple, gamma: float = 2.2, name: str = "test RGB") -> bytes:
    """An ICC v2 monitor profile (RGB -> XYZ) with these D50 colorants and one gamma for all channels."""
    tags = [(b"desc", _description(name)), (b"wtpt", _xyz(D50)),
            (b"rXYZ", _xyz(red)), (b"gXYZ", _xyz(green)), (b"bXYZ", _xyz(blue)),
            (b"rTRC", _curve(gamma)), (b"gTRC", _curve(gamma)), (b"bTRC", _curve(gamma)),
            (b"cprt", b"text" + b"\0" * 4 + b"none\0\0\0\0")]
    table_len = 4 + 12 * len(tags)
    first = 128 + table_len
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", first + len(data), len(body))
        data += body
    size = first + len(data)
    header = (struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + b"".join(_s15fixed16(c) for c in D50) + b"\0" * 48)
    assert len(header) == 128
    return header + table + data
