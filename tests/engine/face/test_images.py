"""Bounded image decoding: every bad input maps to its exact error class and key."""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from emoji3d.errors import FileTooLargeError, ImageTooLargeError, ImageTruncatedError, NotAnImageError, UnsupportedImageFormatError
from emoji3d.images import DecodeLimits, decode_image, read_image_file, sniff_format


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims width x height, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def photo(astronaut) -> np.ndarray:
    return astronaut[::2, ::2].copy()  # (256, 256, 3)


def test_jpeg_png_webp_roundtrip(photo):
    for fmt, tol in (("PNG", 0), ("JPEG", 12), ("WEBP", 12)):
        out = decode_image(_encode(Image.fromarray(photo), fmt))
        assert out.dtype == np.uint8 and out.shape == photo.shape and out.flags.c_contiguous
        assert np.abs(out.astype(int) - photo).mean() <= tol, fmt


def test_not_an_image():
    with pytest.raises(NotAnImageError) as e:
        decode_image(b"%PDF-1.7 this is not a photo" * 10)
    assert e.value.key == "not_an_image"
    with pytest.raises(NotAnImageError):
        decode_image(b"")


def test_heic_is_recognised_and_refused():
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert sniff_format(data) == "heic"
    with pytest.raises(UnsupportedImageFormatError) as e:
        decode_image(data)
    assert e.value.key == "unsupported_image" and e.value.params["detail"] == "HEIC"


def test_truncated_jpeg(photo):
    data = _encode(Image.fromarray(photo), "JPEG", quality=90)
    with pytest.raises(ImageTruncatedError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.key == "image_truncated"
    with pytest.raises(ImageTruncatedError):
        decode_image(data[:20])  # magic bytes, then nothing usable


def test_truncated_png(photo):
    data = _encode(Image.fromarray(photo), "PNG")
    with pytest.raises(ImageTruncatedError):
        decode_image(data[: len(data) // 3])


def test_bomb_header_refused_before_decoding():
    data = _png_header_only(20000, 20000)
    t = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as e:
        decode_image(data)
    assert time.perf_counter() - t < 0.5  # nothing was decoded
    assert e.value.key == "image_too_large"


def test_over_40_megapixels_refused_from_header():
    data = _png_header_only(7000, 6000)  # 42 MP: under Pillow's own bomb limit, over ours
    with pytest.raises(ImageTooLargeError) as e:
        decode_image(data)
    assert e.value.params["megapixels"] == 42.0 and e.value.params["limit"] == 40.0
    # the limit is configurable, and a real image over it is refused too
    with pytest.raises(ImageTooLargeError):
        decode_image(_encode(Image.new("RGB", (400, 300)), "PNG"), DecodeLimits(max_megapixels=0.1))
    assert decode_image(_encode(Image.new("RGB", (300, 300)), "PNG"), DecodeLimits(max_megapixels=0.1)).shape == (300, 300, 3)


def test_file_too_large():
    data = _encode(Image.new("RGB", (64, 64)), "PNG")
    with pytest.raises(FileTooLargeError) as e:
        decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    assert e.value.key == "file_too_large"


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = decode_image(buf.getvalue())
    assert out.shape == (24, 32, 3)
    assert tuple(out[5, 5]) == (255, 0, 0)


def test_cmyk_jpeg(photo):
    out = decode_image(_encode(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95))
    assert out.shape == photo.shape
    assert np.abs(out.astype(int) - photo).mean() < 8


def test_16bit_png():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    out = decode_image(_encode(Image.fromarray(ramp), "PNG"))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    expect = np.clip(np.rint(ramp / 257.0), 0, 255)
    assert np.abs(out[:, :, 0].astype(int) - expect).max() <= 1
    assert (out[:, :, 0] == out[:, :, 2]).all()


def test_rgba_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :5, 3] = 255  # left half opaque red, right half fully transparent
    rgba[0, 9, 3] = 128
    out = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(out[5, 2]) == (255, 0, 0)
    assert tuple(out[5, 7]) == (255, 255, 255)
    assert tuple(out[0, 9]) == (255, 127, 127)


def test_palette_with_transparency():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    img.info["transparency"] = 0
    out = decode_image(_encode(img, "PNG", transparency=0))
    assert tuple(out[0, 0]) == (255, 255, 255)


def test_exif_orientation_honoured():
    arr = np.zeros((20, 40, 3), np.uint8)  # landscape, marker at the top-left
    arr[:5, :5] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (40, 20, 3)  # displayed as portrait
    assert out[2, -3, 0] > 200 and out[2, 2, 0] < 60  # the marker is now top-right


def test_read_image_file(tmp_path, photo):
    p = tmp_path / "x.jpg"
    p.write_bytes(_encode(Image.fromarray(photo), "JPEG"))
    assert read_image_file(p).shape == photo.shape


def test_images_module_is_light():
    import subprocess
    import sys

    code = "import sys, emoji3d.images; print(int('torch' in sys.modules), int(any(m.startswith('engine') for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"]
