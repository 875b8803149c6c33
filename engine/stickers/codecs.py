"""Single-shot writers: one set of settings in, file bytes out. No searching here.

* ``write_webm_vp9``: PyAV (in-process FFmpeg) with the ``libvpx-vp9`` encoder,
  ``pix_fmt yuva420p``. Why PyAV and not the imageio-ffmpeg binary: the PyAV
  wheel here carries libvpx-vp9 for both encoding and decoding, it needs no
  temporary files or subprocess, and FFmpeg's Matroska muxer writes the track's
  ``AlphaMode = 1`` element by itself whenever the stream's pixel format is
  ``yuva420p`` (read back by the demuxer as stream metadata ``alpha_mode=1``);
  the alpha plane travels as BlockAdditional data, which only the libvpx
  decoder reads. Constant-quality mode: ``crf`` with ``b=0``. Frames get
  ``pts = k`` in a ``1/fps`` time base; WEBM stores milliseconds.
* ``write_apng`` / ``write_png``: Pillow, either full RGBA or an indexed image
  with one palette shared by every frame (``palette_rgba`` (K, 4) + indices).
* ``write_gif``: Pillow, indexed frames, 1-bit transparency (one palette
  index), ``disposal=2`` so pixels that turn transparent are cleared.
* ``write_webp``: Pillow/libwebp, lossy with alpha (``quality``) or lossless.
All animated writers loop forever. Delays are integer milliseconds spread so
that their sum equals ``n / fps`` as closely as integers allow.

A writer given ``stop`` (a callable) raises :class:`Abandoned` once it returns
true: the VP9 writer checks it before each frame, the APNG and GIF writers at
each write of their file, the WEBP writer before it starts. A search uses it to
call off a speculative candidate it no longer needs.
"""
from __future__ import annotations

import io
from fractions import Fraction
from typing import Callable

import numpy as np
from PIL import Image


def frame_delays_ms(n: int, fps: float, quantum: int = 1) -> list[int]:
    """Integer delays (multiples of ``quantum`` ms) whose running sum tracks ``k * 1000 / fps``."""
    edges = [round(k * 1000.0 / fps / quantum) * quantum for k in range(n + 1)]
    return [max(quantum, edges[k + 1] - edges[k]) for k in range(n)]


class OverBudget(Exception):
    """A writer stopped early because its output already exceeded ``max_bytes``."""

    def __init__(self, bytes_so_far: int, frames_done: int | None) -> None:
        super().__init__(f"output passed {bytes_so_far} bytes" + (f" after {frames_done} frame(s)"
                                                                  if frames_done is not None else ""))
        self.bytes_so_far = bytes_so_far
        self.frames_done = frames_done  # None: the writer does not say


class Abandoned(Exception):
    """A writer stopped because its caller no longer needs the file (its ``stop()`` turned true)."""


Stop = Callable[[], bool] | None


def _check(stop: Stop) -> None:
    if stop is not None and stop():
        raise Abandoned("the candidate is no longer needed")


class _CappedBuffer(io.BytesIO):
    """A file that raises :class:`OverBudget` from the write that takes it past ``max_bytes``
    (None: no cap), and :class:`Abandoned` from a write once ``stop()`` is true. Pillow's APNG and
    GIF writers compress and write frame by frame, so a candidate that cannot fit stops there
    instead of being finished and then refused."""

    def __init__(self, max_bytes: int | None, stop: Stop = None) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.stop = stop

    def write(self, data) -> int:  # type: ignore[override]
        _check(self.stop)
        n = super().write(data)
        if self.max_bytes is not None and self.tell() > self.max_bytes:
            raise OverBudget(self.tell(), None)
        return n


def write_webm_vp9(frames: list[np.ndarray], fps: float, crf: int, *, cpu_used: int = 4,
                   deadline: str = "good", threads: int = 1, max_bytes: int | None = None, stop: Stop = None) -> bytes:
    """Encode RGBA frames (each (H, W, 4) uint8, even H and W) to WEBM VP9 with alpha.

    With ``max_bytes``, raises :class:`OverBudget` as soon as the encoded packets
    alone exceed it (saves encoding the rest of a hopeless candidate).
    """
    import av

    h, w = frames[0].shape[:2]
    rate = Fraction(fps).limit_denominator(1001)
    buf = io.BytesIO()
    # bitexact: no random track/segment UIDs and no version string, so equal input gives equal bytes
    with av.open(buf, mode="w", format="webm", options={"fflags": "+bitexact"}) as box:
        st = box.add_stream("libvpx-vp9", rate=rate)
        st.width, st.height = w, h
        st.pix_fmt = "yuva420p"
        st.codec_context.time_base = 1 / rate
        st.options = {
            "crf": str(int(crf)),
            "b": "0",
            "deadline": deadline,
            "cpu-used": str(int(cpu_used)),
            "row-mt": "1",
            "threads": str(int(threads)),
            "lag-in-frames": "16",
            "auto-alt-ref": "1",
        }
        total = 0
        for k, f in enumerate(frames):
            _check(stop)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgba")
            vf.pts = k
            vf.time_base = 1 / rate
            for pkt in st.encode(vf):
                total += pkt.size
                box.mux(pkt)
            if max_bytes is not None and total > max_bytes:
                raise OverBudget(total, k + 1)
        for pkt in st.encode(None):
            total += pkt.size
            if max_bytes is not None and total > max_bytes:
                raise OverBudget(total, len(frames))
            box.mux(pkt)
    return buf.getvalue()


def _indexed_images(indices: list[np.ndarray], palette_rgba: np.ndarray, *, gif: bool) -> list[Image.Image]:
    pal = np.zeros((256, 4), np.uint8)
    pal[: len(palette_rgba)] = palette_rgba
    ims = []
    for idx in indices:
        im = Image.fromarray(idx, "P")
        im.putpalette(pal[:, :3].tobytes(), "RGB")
        if not gif:
            im.info["transparency"] = pal[: len(palette_rgba), 3].tobytes()
        ims.append(im)
    return ims


def write_apng(frames_rgba: list[np.ndarray] | None, fps: float, *, indices: list[np.ndarray] | None = None,
               palette_rgba: np.ndarray | None = None, max_bytes: int | None = None, stop: Stop = None) -> bytes:
    """Animated PNG, looping forever. Give RGBA frames, or ``indices`` + ``palette_rgba``. With
    ``max_bytes``, raises :class:`OverBudget` as soon as the file written so far exceeds it."""
    if indices is not None:
        ims = _indexed_images(indices, palette_rgba, gif=False)
        extra = {"transparency": ims[0].info["transparency"], "compress_level": 9}
    else:
        ims = [Image.fromarray(f, "RGBA") for f in frames_rgba]
        extra = {"compress_level": 6}  # level 9 is ~13x slower on RGBA for ~10% fewer bytes (measured)
    buf = _CappedBuffer(max_bytes, stop)
    delays = frame_delays_ms(len(ims), fps)
    ims[0].save(buf, format="PNG", save_all=True, append_images=ims[1:], duration=delays, loop=0,
                disposal=0, blend=0, **extra)
    return buf.getvalue()


def write_png(frame_rgba: np.ndarray | None, *, indices: np.ndarray | None = None,
              palette_rgba: np.ndarray | None = None) -> bytes:
    """Still PNG: full RGBA, or indexed with per-entry alpha (tRNS)."""
    if indices is not None:
        im = _indexed_images([indices], palette_rgba, gif=False)[0]
        extra = {"transparency": im.info["transparency"]}
    else:
        im = Image.fromarray(frame_rgba, "RGBA")
        extra = {}
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True, **extra)
    return buf.getvalue()


def write_gif(indices: list[np.ndarray], palette_rgb: np.ndarray, transparent_index: int, fps: float, *,
              max_bytes: int | None = None, stop: Stop = None) -> bytes:
    """Animated GIF looping forever; delays in 10 ms units (the GIF clock). ``max_bytes`` as for
    :func:`write_apng`."""
    pal = np.concatenate([palette_rgb, np.zeros((256 - len(palette_rgb), 3), np.uint8)]) if len(palette_rgb) < 256 else palette_rgb
    ims = []
    for idx in indices:
        im = Image.fromarray(idx, "P")
        im.putpalette(pal[:256].astype(np.uint8).tobytes(), "RGB")
        ims.append(im)
    buf = _CappedBuffer(max_bytes, stop)
    delays = frame_delays_ms(len(ims), fps, quantum=10)
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=delays, loop=0,
                disposal=2, transparency=int(transparent_index), optimize=False)
    return buf.getvalue()


def write_webp(frames_rgba: list[np.ndarray], fps: float, *, quality: int, lossless: bool = False,
               alpha_quality: int = 100, stop: Stop = None) -> bytes:
    """WEBP with alpha; animated (looping forever) when more than one frame. ``alpha_quality`` < 100
    compresses the alpha plane lossily too (libwebp's own alpha quality, 0..100)."""
    _check(stop)
    ims = [Image.fromarray(f, "RGBA") for f in frames_rgba]
    buf = io.BytesIO()
    if len(ims) == 1:
        ims[0].save(buf, format="WEBP", quality=int(quality), lossless=lossless, method=4, exact=False,
                    alpha_quality=int(alpha_quality))
    else:
        ims[0].save(buf, format="WEBP", save_all=True, append_images=ims[1:], duration=frame_delays_ms(len(ims), fps),
                    loop=0, quality=int(quality), lossless=lossless, method=4, allow_mixed=False,
                    alpha_quality=int(alpha_quality))
    return buf.getvalue()
