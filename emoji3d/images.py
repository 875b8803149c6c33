"""Bounded, safe image decoding shared by the bots and the engine.

Conventions
- Input: the raw bytes of an upload. Output: ``numpy.uint8`` array of shape
  (H, W, 3), RGB, row 0 at the top, C-contiguous.
- The format is sniffed from magic bytes, never from a file name or a MIME type
  the client chose. Only formats Pillow decodes here are accepted: JPEG, PNG,
  GIF, WebP, BMP, TIFF. HEIC/HEIF/AVIF are recognised and refused with
  ``unsupported_image`` (Pillow has no decoder for them here).
- Size limits are checked on the header *before* any pixel is decoded
  (``Image.open`` is lazy and reads only the header). The pixel limit is
  ``max_megapixels`` (default 40 MP, 1 MP = 1e6 pixels). Pillow's own
  decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, left at its default;
  this module never changes that process-wide setting) is mapped to the same
  error, so a header claiming 20000x20000 is refused without decoding.
- Animated images (GIF, WebP, APNG, multi-page TIFF): the first frame.
- EXIF orientation is applied (the array is what a person sees).
- Colour: CMYK → RGB through Pillow's conversion (no ICC colour management);
  16-bit greyscale is scaled to 8 bit (value / 257, rounded); palette images
  go through RGBA; any alpha is composited **over white** (a sticker-friendly,
  documented choice: a transparent selfie background becomes white).
- Errors are :class:`emoji3d.errors.UserFacingError` subclasses with stable keys:
  ``not_an_image``, ``unsupported_image``, ``image_truncated``,
  ``image_too_large``, ``file_too_large`` (more than ``max_bytes``).

This module must not import torch or ``engine`` (the bots use it).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from emoji3d.errors import FileTooLargeError, ImageTooLargeError, ImageTruncatedError, NotAnImageError, UnsupportedImageFormatError

DEFAULT_MAX_MEGAPIXELS = 40.0
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

# sniffed name -> Pillow format name (None: recognised but not decodable here)
_PIL_FORMATS: dict[str, str | None] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "heic": None,
    "avif": None,
}


@dataclass(frozen=True)
class DecodeLimits:
    """Limits applied before decoding. ``max_megapixels`` counts 1e6 pixels."""

    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if not self.max_megapixels > 0:
            raise ValueError(f"max_megapixels must be > 0, got {self.max_megapixels}")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {self.max_bytes}")


def sniff_format(data: bytes) -> str | None:
    """Name of the image format the magic bytes announce, or None."""
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "heic"
    return None


def decode_image(data: bytes | bytearray | memoryview, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Decode upload bytes to an RGB uint8 array (H, W, 3); see the module docstring."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise FileTooLargeError(
            f"file is {len(data)} bytes, limit {limits.max_bytes}",
            size_mb=round(len(data) / 2**20, 1),
            limit_mb=round(limits.max_bytes / 2**20, 1),
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImageError("the data does not start with the signature of any image format")
    pil_format = _PIL_FORMATS[fmt]
    if pil_format is None:
        err = UnsupportedImageFormatError(f"{fmt} images cannot be decoded here")
        err.params["detail"] = fmt.upper()  # the text's {detail}; the constructor's own `detail` is the log message
        raise err

    try:
        img = Image.open(io.BytesIO(data), formats=[pil_format])  # lazy: header only
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"header claims too many pixels ({exc})", megapixels=_claimed_megapixels(exc), limit=limits.max_megapixels
        ) from exc
    except (UnidentifiedImageError, SyntaxError, OSError, ValueError, EOFError) as exc:
        raise ImageTruncatedError(f"{fmt} header is damaged or cut off: {exc}") from exc

    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageTruncatedError(f"{fmt} header gives an empty size {w}x{h}")
    megapixels = w * h / 1e6
    if megapixels > limits.max_megapixels:
        raise ImageTooLargeError(
            f"{w}x{h} is {megapixels:.1f} MP, limit {limits.max_megapixels:g} MP",
            megapixels=round(megapixels, 1),
            limit=limits.max_megapixels,
        )

    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
        img = _apply_exif_orientation(img)
        return _to_rgb_uint8(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc), megapixels=round(megapixels, 1), limit=limits.max_megapixels) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageTruncatedError(f"{fmt} data is cut off or damaged: {exc}") from exc


def _claimed_megapixels(exc: Exception) -> float | str:
    """The pixel count Pillow's bomb guard quotes ("Image size (N pixels) exceeds ..."), in MP."""
    import re

    m = re.search(r"\((\d+) pixels\)", str(exc))
    return round(int(m.group(1)) / 1e6, 1) if m else "too many"


def read_image_file(path: str | os.PathLike, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Thin IO wrapper: read at most ``limits.max_bytes + 1`` bytes and decode them."""
    with open(path, "rb") as f:
        data = f.read(limits.max_bytes + 1)
    return decode_image(data, limits)


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip by the EXIF orientation tag. A broken EXIF block is ignored
    (the pixels are kept as stored) rather than refusing the photo."""
    try:
        return ImageOps.exif_transpose(img)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError):
        return img


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)  # (H, W)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0  # 16-bit full range -> 8-bit full range
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)  # (H, W, 4)
        alpha = rgba[:, :, 3:4] / 255.0
        rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)  # over white
        return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    if mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageTruncatedError(f"decoded to an unexpected shape {arr.shape} from mode {mode}")
    return np.ascontiguousarray(arr)
