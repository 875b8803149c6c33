"""Decode a sticker file and measure it: container, codec, size, timing, alpha.

Works on any bytes (files we did not make included) and never trusts the
container's own claims alone: frames are decoded and counted, timings come
from the per-frame timestamps.

Conventions
-----------
* Frames come back as RGBA ``uint8`` arrays of shape ``(H, W, 4)``.
* Times are seconds (``float``); delays are milliseconds (``float``).
* WEBM is demuxed with PyAV and VP9 is decoded with the *libvpx* decoder
  (``libvpx-vp9``), because FFmpeg's native ``vp9`` decoder ignores the alpha
  side data (Matroska BlockAdditional) and returns ``yuv420p``.
* Images (PNG, APNG, GIF, WEBP) are decoded with Pillow. ``loop`` follows the
  file's own field: ``0`` means "forever", ``None`` means the file has no loop
  field (a GIF without the NETSCAPE block plays once).
* Undecodable or oversized input raises :class:`ProbeError` (a ``ValueError``);
  :mod:`engine.stickers.verify` turns it into a ``decode_failed`` reason.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

import numpy as np

MAX_PIXELS = 4096 * 4096  # refuse to decode anything larger (decompression bombs)
MAX_FRAMES = 5000


class ProbeError(ValueError):
    """The bytes are not a decodable sticker file."""


@dataclass(frozen=True)
class MediaProps:
    """What a decoded file measured. Fields are None where they do not apply."""

    container: str  # webm | matroska | png | apng | gif | webp | unknown
    codec: str | None  # vp9, vp8, png, gif, webp ...
    width: int
    height: int
    n_frames: int  # decoded frames
    byte_size: int
    duration_s: float | None  # from frame timestamps + the last frame's duration
    container_duration_s: float | None  # what the container header claims (WEBM)
    fps_declared: float | None  # stream rate (WEBM) or frames / duration (images)
    fps_max: float | None  # 1 / the shortest frame delay
    min_delay_ms: float | None
    has_alpha_channel: bool  # the file carries an alpha plane / transparency
    alpha_used: bool  # some decoded pixel has alpha < 255
    pix_fmt: str | None
    video_streams: int = 1
    audio_streams: int = 0
    other_streams: int = 0
    loop: int | None = None  # 0 = forever
    alpha_mode: str | None = None  # WEBM track's AlphaMode as read back by the demuxer

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Decoded:
    props: MediaProps
    frames: list[np.ndarray] = field(default_factory=list)  # each (H, W, 4) uint8, empty unless asked


def sniff_container(data: bytes) -> str:
    """Identify the container from magic bytes (never from a file name)."""
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return _ebml_doctype(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "apng" if _png_has_actl(data) else "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "unknown"


def _ebml_doctype(data: bytes) -> str:
    head = data[:64]
    i = head.find(b"\x42\x82")  # EBML DocType element id
    if i < 0 or i + 3 > len(head):
        return "matroska"
    size_byte = head[i + 2]
    if size_byte & 0x80:  # 1-byte vint, the only form muxers use for a short string
        n = size_byte & 0x7F
        doctype = head[i + 3 : i + 3 + n].rstrip(b"\x00")
        if doctype == b"webm":
            return "webm"
    return "matroska"


def _png_has_actl(data: bytes) -> bool:
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        if ctype == b"acTL":
            return True
        if ctype in (b"IDAT", b"IEND"):
            return False
        pos += 12 + length
    return False


def probe(data: bytes, *, keep_frames: bool = False) -> Decoded:
    """Decode ``data`` fully and measure it. Set ``keep_frames`` to get the RGBA frames."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"probe expects bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ProbeError("empty file")
    container = sniff_container(data)
    if container in ("webm", "matroska"):
        return _probe_matroska(data, container, keep_frames)
    if container in ("png", "apng", "gif", "webp"):
        return _probe_image(data, container, keep_frames)
    raise ProbeError("unrecognised file type (not WEBM, PNG, APNG, GIF or WEBP)")


def _probe_matroska(data: bytes, container: str, keep_frames: bool) -> Decoded:
    import av  # local import: keeps `import engine.stickers.targets` light for the bots

    try:
        box = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as e:
        raise ProbeError(f"cannot open the WEBM container: {e}") from e
    with box:
        videos = list(box.streams.video)
        audios = list(box.streams.audio)
        others = len(box.streams) - len(videos) - len(audios)
        if not videos:
            raise ProbeError("the file has no video stream")
        vs = videos[0]
        codec = vs.codec_context.name
        width, height = int(vs.codec_context.width), int(vs.codec_context.height)
        if width * height > MAX_PIXELS:
            raise ProbeError(f"frame size {width}x{height} is too large to decode")
        rate = vs.average_rate or vs.guessed_rate
        fps_declared = float(rate) if rate else None
        alpha_mode = vs.metadata.get("alpha_mode") or vs.metadata.get("ALPHA_MODE")
        container_duration = box.duration / 1e6 if box.duration else None
        tb = float(vs.time_base) if vs.time_base else 1e-3
        decoder_name = {"vp9": "libvpx-vp9", "vp8": "libvpx"}.get(codec)
        try:
            dec = av.CodecContext.create(decoder_name, "r") if decoder_name else None
        except (av.FFmpegError, ValueError):
            dec = None  # no libvpx decoder in this build: fall back to the stream's own
        frames: list[np.ndarray] = []
        pts: list[float] = []
        durs: list[float] = []
        n = 0
        pix_fmt = None
        alpha_used = False
        try:
            for pkt in box.demux(vs):
                if pkt.size == 0 and pkt.pts is None:
                    decoded = dec.decode(None) if dec is not None else vs.decode(None)
                else:
                    if pkt.pts is not None:
                        pts.append(pkt.pts * tb)
                        durs.append((pkt.duration or 0) * tb)
                    decoded = dec.decode(pkt) if dec is not None else vs.decode(pkt)
                for fr in decoded:
                    n += 1
                    if n > MAX_FRAMES:
                        raise ProbeError(f"more than {MAX_FRAMES} frames")
                    pix_fmt = fr.format.name
                    has_a = pix_fmt.startswith("yuva") or pix_fmt in ("gbrap", "rgba", "bgra", "argb", "abgr")
                    if has_a or keep_frames:
                        rgba = frame_to_rgba(fr, has_a)  # (H, W, 4) uint8
                        alpha_used = alpha_used or bool((rgba[..., 3] < 255).any())
                        if keep_frames:
                            frames.append(rgba)
        except av.FFmpegError as e:
            raise ProbeError(f"VP9/WEBM decoding failed: {e}") from e
    if n == 0:
        raise ProbeError("the video stream has no decodable frames")
    has_alpha = bool(pix_fmt and pix_fmt.startswith("yuva"))
    duration, fps_max, min_delay = _timing_from_pts(pts, durs, fps_declared)
    return Decoded(
        MediaProps(
            container=container,
            codec=codec,
            width=width,
            height=height,
            n_frames=n,
            byte_size=len(data),
            duration_s=duration,
            container_duration_s=container_duration,
            fps_declared=fps_declared,
            fps_max=fps_max,
            min_delay_ms=min_delay,
            has_alpha_channel=has_alpha,
            alpha_used=alpha_used,
            pix_fmt=pix_fmt,
            video_streams=len(videos),
            audio_streams=len(audios),
            other_streams=others,
            loop=None,
            alpha_mode=alpha_mode,
        ),
        frames,
    )


def _plane(fr, i: int) -> np.ndarray:
    pl = fr.planes[i]
    return np.frombuffer(pl, np.uint8).reshape(-1, pl.line_size)[: fr.height, : fr.width]


def frame_to_rgba(fr, has_alpha: bool) -> np.ndarray:
    """A decoded PyAV frame -> RGBA uint8 ``(H, W, 4)``.

    Goes through the planar ``gbrap``/``gbrp`` formats and stacks the planes
    here: swscale's packed ``rgba``/``rgb24`` output of ``yuva420p`` corrupts
    the last columns when the width is not a multiple of 8 (measured: a 100 px
    wide VP9 frame came back with alpha 16-255 in columns 96-99 where the
    decoded alpha plane holds 0).
    """
    g = fr.reformat(format="gbrap" if has_alpha else "gbrp")
    r, gg, b = _plane(g, 2), _plane(g, 0), _plane(g, 1)
    a = _plane(g, 3) if has_alpha else np.full_like(r, 255)
    return np.stack([r, gg, b, a], axis=-1)  # copies out of the frame's buffers


def _timing_from_pts(pts: list[float], durs: list[float], fps_declared: float | None):
    """Duration (s), max instantaneous fps and the shortest delay (ms) from packet times."""
    if not pts:
        return None, None, None
    order = sorted(pts)
    deltas = np.diff(np.asarray(order)) if len(order) > 1 else np.zeros(0)
    deltas = deltas[deltas > 0]
    if durs and durs[int(np.argmax(pts))] > 0:
        last = durs[int(np.argmax(pts))]
    elif deltas.size:
        last = float(np.median(deltas))
    elif fps_declared:
        last = 1.0 / fps_declared
    else:
        last = 0.0
    duration = order[-1] - order[0] + last
    min_delay = float(deltas.min()) if deltas.size else (last or None)
    fps_max = (1.0 / min_delay) if min_delay else None
    return float(duration), fps_max, (min_delay * 1000.0 if min_delay else None)


def _probe_image(data: bytes, container: str, keep_frames: bool) -> Decoded:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ProbeError(f"cannot read the {container.upper()} image: {e}") from e
    with im:
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise ProbeError(f"image size {width}x{height} is too large to decode")
        n_declared = getattr(im, "n_frames", 1)
        if n_declared > MAX_FRAMES:
            raise ProbeError(f"more than {MAX_FRAMES} frames")
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
        loop = im.info.get("loop")
        frames: list[np.ndarray] = []
        delays: list[float] = []
        alpha_used = False
        n = 0
        try:
            for fr in ImageSequence.Iterator(im):
                n += 1
                has_alpha = has_alpha or fr.mode in ("RGBA", "LA", "PA") or "transparency" in fr.info
                rgba = np.asarray(fr.convert("RGBA"))  # (H, W, 4) uint8; loads the frame (WEBP sets its duration then)
                delays.append(float(fr.info.get("duration", 0) or 0))
                alpha_used = alpha_used or bool((rgba[..., 3] < 255).any())
                if keep_frames:
                    frames.append(rgba.copy())
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ProbeError(f"{container.upper()} decoding failed at frame {n}: {e}") from e
        if container == "png" and n > 1:
            container = "apng"
        codec = {"apng": "png"}.get(container, container)
        pix_fmt = im.mode
    animated = n > 1
    if animated:
        total_ms = sum(delays)
        duration = total_ms / 1000.0 if total_ms > 0 else None
        positive = [d for d in delays if d > 0]
        min_delay = min(positive) if positive else None
        fps_declared = (n / duration) if duration else None
        fps_max = (1000.0 / min_delay) if min_delay else None
    else:
        duration = min_delay = fps_declared = fps_max = None
    return Decoded(
        MediaProps(
            container=container,
            codec=codec,
            width=width,
            height=height,
            n_frames=n,
            byte_size=len(data),
            duration_s=duration,
            container_duration_s=None,
            fps_declared=fps_declared,
            fps_max=fps_max,
            min_delay_ms=min_delay,
            has_alpha_channel=bool(has_alpha),
            alpha_used=alpha_used,
            pix_fmt=pix_fmt,
            video_streams=1,
            audio_streams=0,
            other_streams=0,
            loop=loop if animated else None,
        ),
        frames,
    )
