"""Bounded, safe image decoding shared by the bots, the shell and the engine.

Conventions
- Input: the raw bytes of an upload. Output: ``numpy.uint8`` array of shape
  (H, W, 3), RGB (sRGB), row 0 at the top, C-contiguous.
- The format is sniffed from magic bytes, never from a file name or a MIME type
  the client chose. Accepted: JPEG, PNG, GIF, WebP, BMP, TIFF, and AVIF when
  the installed Pillow has its AVIF plugin (``PIL.features.check_module("avif")``). HEIC/HEIF
  are recognised and refused with ``unsupported_image`` (no decoder here).
- Size limits are checked on the header *before* any pixel is decoded
  (``Image.open`` is lazy and reads only the header): at most
  ``max_megapixels`` (default 40 MP, 1 MP = 1e6 pixels), at least
  ``min_side_px`` (8) on each side. Pillow's own decompression-bomb guard
  (``Image.MAX_IMAGE_PIXELS``, left at its default; this module never changes
  that process-wide setting) is mapped to the same error, so a header claiming
  20000x20000 is refused without decoding.
- **Reduced decoding.** An image whose long side exceeds ``max_side_px``
  (default 2048, ``[limits] decode_max_side_px``) is decoded reduced to that
  long side: JPEG through libjpeg's DCT scaling (``Image.draft``, 1/2 to 1/8,
  so the full-size pixels are never allocated), other formats decoded then
  reduced at once (``reduce`` + Lanczos) before any colour conversion. 2048
  is what the face front end uses: MediaPipe looks at the photo at 128-256 px,
  the EG3D crop samples a 512 output from a window about 2.3 face widths wide,
  the FFHQ crop a 1024 output from a square about 2 face widths wide; a selfie
  whose face spans a third of the photo's short side keeps every pixel of the
  1024 crop (smaller faces are enlarged, as they would be from any 3 MP photo).
  The short side is never reduced below ``min_side_px``.
- **Concurrency.** Pixel decoding holds a slot of the process-wide
  :data:`DECODE_GATE`: at most ``DecodeLimits.concurrent`` decodes run at once
  in a process (``[limits] concurrent_decodes``, default 2); more wait. Every
  caller in a process builds its limits from the same config, so the size is
  the same for all (the gate uses the size of the caller that waits).
- Animated images (GIF, WebP, APNG, AVIF sequences, multi-page TIFF): the first frame.
- EXIF orientation is applied (the array is what a person sees). A broken EXIF
  block is ignored (the pixels are kept as stored).
- Colour: an embedded ICC profile other than sRGB (Display P3 from phones,
  Adobe RGB, CMYK press profiles...) is converted to sRGB with LittleCMS
  (perceptual intent); a damaged profile is ignored. Without a profile the
  pixels are taken as sRGB; CMYK without a profile goes through Pillow's plain
  conversion. 16-bit greyscale is scaled to 8 bit (value / 257, rounded);
  palette images go through RGBA; any alpha is composited **over white** (a
  sticker-friendly, documented choice: a transparent selfie background becomes
  white).
- :func:`clean_image` is the intake step of every path that stores a user's
  image (bots, ``emoji3d make``, ``emoji3d styles add``): the decoded pixels
  re-encoded as PNG with nothing else (no EXIF, GPS, XMP, ICC or text chunks).
- :func:`read_file_bounded` is how a path is read: regular files only, size
  checked before reading, at most ``max_bytes + 1`` bytes read.
- Errors are :class:`emoji3d.errors.UserFacingError` subclasses with stable keys:
  ``not_an_image``, ``unsupported_image``, ``image_truncated``,
  ``image_too_large``, ``image_too_small``, ``file_too_large`` (more than
  ``max_bytes``); for paths ``file_missing``, ``not_a_file``, ``file_unreadable``.

This module must not import torch or ``engine`` (the bots use it).
"""
from __future__ import annotations

import io
import os
import re
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from emoji3d.errors import (
    FileMissingError,
    FileTooLargeError,
    FileUnreadableError,
    ImageTooLargeError,
    ImageTooSmallError,
    ImageTruncatedError,
    NotAFileError,
    NotAnImageError,
    UnsupportedImageFormatError,
)

DEFAULT_MAX_MEGAPIXELS = 40.0
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_SIDE_PX = 2048
DEFAULT_MIN_SIDE_PX = 8
DEFAULT_CONCURRENT_DECODES = 2
MIB = 1024 * 1024

_HAS_AVIF = bool(features.check_module("avif")) if "avif" in features.modules else False

# sniffed name -> Pillow format name (None: recognised but not decodable here)
_PIL_FORMATS: dict[str, str | None] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "avif": "AVIF" if _HAS_AVIF else None,
    "heic": None,
}

_AVIF_BRANDS = (b"avif", b"avis")
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")

# EXIF orientation -> the transpose that shows the image as a person sees it (as ImageOps.exif_transpose)
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class DecodeLimits:
    """Limits applied before decoding. ``max_megapixels`` counts 1e6 pixels;
    ``max_side_px`` is the long side images are decoded reduced to;
    ``concurrent`` the size of the process-wide :data:`DECODE_GATE`."""

    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_side_px: int = DEFAULT_MAX_SIDE_PX
    min_side_px: int = DEFAULT_MIN_SIDE_PX
    concurrent: int = DEFAULT_CONCURRENT_DECODES

    def __post_init__(self) -> None:
        if not self.max_megapixels > 0:
            raise ValueError(f"max_megapixels must be > 0, got {self.max_megapixels}")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {self.max_bytes}")
        if not 1 <= self.min_side_px <= self.max_side_px:
            raise ValueError(f"need 1 <= min_side_px <= max_side_px, got {self.min_side_px}, {self.max_side_px}")
        if self.concurrent < 1:
            raise ValueError(f"concurrent must be >= 1, got {self.concurrent}")

    @classmethod
    def from_config(cls, limits) -> "DecodeLimits":
        """From ``emoji3d.config.LimitsConfig`` (``max_upload_mb`` is MiB)."""
        return cls(
            max_megapixels=float(limits.max_image_megapixels),
            max_bytes=int(limits.max_upload_mb) * MIB,
            max_side_px=int(limits.decode_max_side_px),
            concurrent=int(limits.concurrent_decodes),
        )


class DecodeGate:
    """At most ``size`` holders at once in this process (a condition variable,
    so callers with another size are served by their own bound). ``high_water``
    is the most holders seen at once since the gate was made."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self.high_water = 0

    @property
    def active(self) -> int:
        return self._active

    @contextmanager
    def slot(self, size: int) -> Iterator[None]:
        with self._cond:
            while self._active >= size:
                self._cond.wait()
            self._active += 1
            self.high_water = max(self.high_water, self._active)
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()


DECODE_GATE = DecodeGate()


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
        # ISO base media file: major brand, minor version, then compatible brands up to the box's end.
        box_end = min(int.from_bytes(head[:4], "big"), 256, len(data))
        brands = [bytes(data[8:12])] + [bytes(data[i : i + 4]) for i in range(16, box_end - 3, 4)]
        if any(b in _AVIF_BRANDS for b in brands):
            return "avif"
        if any(b in _HEIF_BRANDS for b in brands):
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
            size_mb=round(len(data) / MIB, 1),
            limit_mb=round(limits.max_bytes / MIB, 1),
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImageError("the data does not start with the signature of any image format")
    pil_format = _PIL_FORMATS[fmt]
    if pil_format is None:
        err = UnsupportedImageFormatError(f"{fmt} images cannot be decoded here")
        err.params["detail"] = fmt.upper()  # the text's {detail}; the constructor's own `detail` is the log message
        raise err
    with DECODE_GATE.slot(limits.concurrent):
        return _decode(data, fmt, pil_format, limits)


def _decode(data: bytes, fmt: str, pil_format: str, limits: DecodeLimits) -> np.ndarray:
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
    if min(w, h) < limits.min_side_px:
        raise ImageTooSmallError(f"{w}x{h} has a side under {limits.min_side_px} px",
                                 width=w, height=h, min_side=limits.min_side_px)

    try:
        orientation = _exif_orientation(img)
        icc = img.info.get("icc_profile")
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        target = reduced_size((w, h), limits)
        if target != (w, h) and pil_format == "JPEG":
            img.draft(None, target)  # DCT scaling: decodes at >= target, never at full size
        img.load()
        img = _reduce(img, target)
        if orientation in _ORIENTATION:
            img = img.transpose(_ORIENTATION[orientation])
        return _to_rgb_uint8(img, icc)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc), megapixels=round(megapixels, 1), limit=limits.max_megapixels) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageTruncatedError(f"{fmt} data is cut off or damaged: {exc}") from exc


def reduced_size(size: tuple[int, int], limits: DecodeLimits = DecodeLimits()) -> tuple[int, int]:
    """The (w, h) an image of ``size`` is decoded to: long side at most
    ``max_side_px``, short side not below ``min_side_px``, aspect kept."""
    w, h = size
    scale = min(1.0, max(limits.max_side_px / max(w, h), limits.min_side_px / min(w, h)))
    if scale >= 1.0:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def _reduce(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    if img.size == target:
        return img
    if img.mode in ("P", "PA", "1"):  # filters need real colours (Pillow resizes palettes with NEAREST)
        img = img.convert("RGBA" if _has_alpha(img) else "L" if img.mode == "1" else "RGB")
    return img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _claimed_megapixels(exc: Exception) -> float | str:
    """The pixel count Pillow's bomb guard quotes ("Image size (N pixels) exceeds ..."), in MP."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    return round(int(m.group(1)) / 1e6, 1) if m else "too many"


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or when the EXIF block is broken."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(value) if isinstance(value, int) else 1
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, AttributeError):
        return 1


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


_SRGB_PROFILE = None


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert by the embedded ICC profile to sRGB ("RGB"/"RGBA"); unchanged without a
    usable profile, for an sRGB one, or when the profile does not fit the pixel mode."""
    global _SRGB_PROFILE
    if not icc or img.mode not in ("L", "RGB", "RGBA", "CMYK"):
        return img
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in (ImageCms.getProfileDescription(source) or "").lower().replace(" ", ""):
            return img
        if _SRGB_PROFILE is None:
            _SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(img, source, _SRGB_PROFILE, renderingIntent=ImageCms.Intent.PERCEPTUAL,
                                         outputMode=out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return img


def _to_rgb_uint8(img: Image.Image, icc: bytes | None = None) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)  # (H, W)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0  # 16-bit full range -> 8-bit full range
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if _has_alpha(img) and img.mode != "RGBA":
        img = img.convert("RGBA")
    elif img.mode not in ("L", "RGB", "RGBA", "CMYK"):
        img = img.convert("RGB")
    img = _to_srgb(img, icc)
    if img.mode == "RGBA":
        rgba = np.asarray(img, dtype=np.float32)  # (H, W, 4)
        alpha = rgba[:, :, 3:4] / 255.0
        rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)  # over white
        return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageTruncatedError(f"decoded to an unexpected shape {arr.shape} from mode {mode}")
    return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------- intake


@dataclass(frozen=True)
class CleanImage:
    """An upload reduced to its pixels: ``rgb`` (H, W, 3) uint8 as decoded, and
    ``png``, those pixels losslessly encoded with no metadata at all."""

    rgb: np.ndarray
    png: bytes


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG of an RGB uint8 array (H, W, 3) holding only IHDR, IDAT and IEND."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_png expects an RGB uint8 array (H, W, 3), got {getattr(rgb, 'shape', rgb)}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def clean_image(data: bytes | bytearray | memoryview, limits: DecodeLimits = DecodeLimits()) -> CleanImage:
    """The intake step of every stored image: decode (bounded, reduced, EXIF
    orientation applied, sRGB) and re-encode the pixels alone as PNG."""
    rgb = decode_image(data, limits)
    return CleanImage(rgb, encode_png(rgb))


# ----------------------------------------------------------------------------- paths


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_file_bounded(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``, refused (with a user-facing
    error) when missing, not a regular file (a folder, ``/dev/zero``, a pipe),
    unreadable, or over ``max_bytes``. The size is checked before reading and
    at most ``max_bytes + 1`` bytes are ever read (a file growing meanwhile is
    still bounded). Opening never blocks: a pipe is opened non-blocking and refused."""
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise FileMissingError(f"no file at {name}", path=name) from None
    except IsADirectoryError:
        raise NotAFileError(f"{name} is a folder", path=name, kind="a folder") from None
    except PermissionError:
        raise FileUnreadableError(f"no permission to read {name}", path=name, reason="permission denied") from None
    except OSError as exc:
        raise FileUnreadableError(f"{name}: {exc}", path=name, reason=exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _file_kind(info.st_mode)
            raise NotAFileError(f"{name} is {kind}", path=name, kind=kind)
        if info.st_size > max_bytes:
            raise _too_large(name, info.st_size, max_bytes)
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(max_bytes + 1 - total, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise _too_large(name, total, max_bytes)
        return b"".join(chunks)
    except OSError as exc:
        raise FileUnreadableError(f"{name}: {exc}", path=name, reason=exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


def _too_large(name: str, size: int, max_bytes: int) -> FileTooLargeError:
    return FileTooLargeError(f"{name} has {size} bytes, limit {max_bytes}",
                             size_mb=round(size / MIB, 1), limit_mb=round(max_bytes / MIB, 1))


def read_image_file(path: str | os.PathLike, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Thin IO wrapper: :func:`read_file_bounded` (at most ``limits.max_bytes``), then decode."""
    return decode_image(read_file_bounded(path, limits.max_bytes), limits)
