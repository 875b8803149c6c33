"""emoji3d.images at intake: metadata stripped, reduced decoding, tiny images, AVIF, ICC colour,
the decode gate, and bounded reads of paths (devices, folders, pipes, missing files)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image, features

from emoji3d.errors import (FileMissingError, FileTooLargeError, ImageTooSmallError, NotAFileError,
                            UnsupportedImageFormatError)
from emoji3d.images import (DECODE_GATE, DecodeLimits, clean_image, decode_image, read_file_bounded,
                            read_image_file, reduced_size, sniff_format)
from emoji3d.texts import explain
from tests.emoji3d.icc_profiles import SRGB_BLUE, SRGB_GREEN, SRGB_RED, rgb_profile

GPS_IFD = 0x8825
ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skdata.astronaut())  # (512, 512, 3)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def png_chunks(data: bytes) -> list[bytes]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    out, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return out


def gps_jpeg(rgb: np.ndarray, orientation: int = 1) -> bytes:
    """A camera-like JPEG: GPS position, camera make, orientation, an XMP packet and an ICC profile."""
    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[ORIENTATION] = orientation
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description photoshop:City="Paris"/></x:xmpmeta>'
    srgb = rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE, name="sRGB-like camera profile")
    return _encode(img, "JPEG", quality=95, exif=exif.tobytes(), xmp=xmp, icc_profile=srgb)


def test_clean_image_keeps_the_oriented_pixels_and_nothing_else(astronaut):
    # stored sideways with "rotate 90 CW to display" (orientation 6), as phones do
    original = gps_jpeg(np.ascontiguousarray(np.rot90(astronaut, 1)), orientation=6)
    assert b"PhoneMaker" in original and b"Paris" in original  # the metadata really is there
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(GPS_IFD)
    clean = clean_image(original)
    assert np.array_equal(clean.rgb, decode_image(original))
    assert psnr(clean.rgb, astronaut) > 30  # upright again: EXIF orientation applied
    chunks = png_chunks(clean.png)
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and set(chunks) == {b"IHDR", b"IDAT", b"IEND"}  # no eXIf, iTXt, iCCP...
    for marker in (b"Exif", b"PhoneMaker", b"Paris", b"xmpmeta", b"sRGB-like"):
        assert marker not in clean.png
    again = Image.open(io.BytesIO(clean.png))
    assert not again.getexif() and "icc_profile" not in again.info and "xmp" not in again.info
    assert np.array_equal(np.asarray(again), clean.rgb)  # lossless


def test_large_images_are_decoded_reduced(astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((6000, 4000), Image.BICUBIC))
    data = _encode(Image.fromarray(big), "JPEG", quality=90)
    out = decode_image(data)
    assert out.shape == (1365, 2048, 3)
    full_then_resized = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((2048, 1365), Image.LANCZOS))
    assert psnr(out, full_then_resized) > 35  # DCT scaling + Lanczos: the same picture
    png = _encode(Image.fromarray(big[:1000, :3000]), "PNG")
    assert decode_image(png, DecodeLimits(max_side_px=1000)).shape == (333, 1000, 3)
    # orientation after reduction: a tall photo stored sideways stays tall
    sideways = Image.fromarray(big).copy()
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    assert decode_image(_encode(sideways, "JPEG", exif=exif.tobytes())).shape == (2048, 1365, 3)


def test_reduction_keeps_the_short_side_usable():
    assert reduced_size((6000, 4000)) == (2048, 1365)
    assert reduced_size((2048, 100)) == (2048, 100)
    assert reduced_size((10000, 8)) == (10000, 8)  # never below 8 px a side
    assert reduced_size((40000, 100)) == (3200, 8)  # the short side decides: 8 / 100
    assert decode_image(_encode(Image.new("RGB", (4000, 9), (10, 20, 30)), "PNG")).shape[0] >= 8


@pytest.mark.parametrize("name", ["grey_39mp.png", "eoi_36mp.jpg"])
def test_small_files_of_huge_images_are_cheap(tmp_path, name):
    """The issue's two files: a 50 KB grey PNG of 39 MP, and a 2 KB JPEG whose header says 36 MP
    (its data cut short by an early end-of-image marker, which libjpeg fills with grey). Decoded
    reduced, in a fresh process, the peak memory grows by a fraction of what the full decode took."""
    path = tmp_path / name
    if name.endswith(".png"):
        Image.new("L", (7200, 5400), 128).save(path, "PNG", optimize=True)
    else:
        full = _encode(Image.new("RGB", (6000, 6000), (128, 128, 128)), "JPEG", quality=50)
        path.write_bytes(full[:2046] + b"\xff\xd9")
    code = (
        "import resource, sys, numpy, PIL.Image, emoji3d.images as images\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = images.decode_image(data)\n"
        "print(out.shape[0], out.shape[1], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    h, w, grew_mb = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                   check=True, env=env).stdout.split()
    assert path.stat().st_size < 60_000 and max(int(h), int(w)) == 2048
    # measured here: 53 MB (PNG) and 76 MB (JPEG); the full-size decode before took 410 and 346 MB
    assert float(grew_mb) < 150, grew_mb


def test_sides_under_8_px_are_refused_from_the_header():
    for size in ((7, 100), (100, 7), (1, 1)):
        with pytest.raises(ImageTooSmallError) as err:
            decode_image(_encode(Image.new("RGB", size), "PNG"))
        assert err.value.key == "image_too_small"
        assert explain(err.value) == (f"That image is only {size[0]}×{size[1]} pixels. "
                                      "Please send a photo at least 8 pixels on each side.")
    assert decode_image(_encode(Image.new("RGB", (8, 8)), "PNG")).shape == (8, 8, 3)


@pytest.mark.skipif(not features.check_module("avif"), reason="this Pillow has no AVIF codec")
def test_avif_is_accepted(astronaut):
    data = _encode(Image.fromarray(astronaut), "AVIF", quality=90)
    assert sniff_format(data) == "avif"
    out = decode_image(data)
    assert out.shape == astronaut.shape and psnr(out, astronaut) > 30


def test_heif_brands_still_refused():
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert sniff_format(heic) == "heic"
    with pytest.raises(UnsupportedImageFormatError):
        decode_image(heic)
    # a mif1 file whose compatible brands say AVIF is AVIF
    assert sniff_format(b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf" + b"\x00" * 16) == "avif"


def test_icc_profile_is_converted_to_srgb():
    # a display whose "red" channel is sRGB's blue: pure red pixels are blue to a person
    swapped = rgb_profile(SRGB_BLUE, SRGB_GREEN, SRGB_RED, name="swapped display")
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255
    out = decode_image(_encode(Image.fromarray(rgb), "PNG", icc_profile=swapped))
    assert np.abs(out[4, 4].astype(int) - (0, 0, 255)).max() <= 2
    # an sRGB-described profile leaves the pixels as stored; a damaged profile is ignored
    srgb_like = rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE, name="sRGB IEC61966-2.1")
    assert tuple(decode_image(_encode(Image.fromarray(rgb), "PNG", icc_profile=srgb_like))[0, 0]) == (255, 0, 0)
    assert tuple(decode_image(_encode(Image.fromarray(rgb), "PNG", icc_profile=b"garbage" * 20))[0, 0]) == (255, 0, 0)


def test_decodes_wait_for_a_slot_of_the_process_gate(astronaut):
    limits = DecodeLimits(concurrent=2)
    data = _encode(Image.fromarray(astronaut), "PNG")
    done = threading.Event()
    with DECODE_GATE.slot(2), DECODE_GATE.slot(2):  # two decodes are running
        worker = threading.Thread(target=lambda: (decode_image(data, limits), done.set()))
        worker.start()
        time.sleep(0.3)
        assert not done.is_set()  # the third waits
    worker.join(timeout=10)
    assert done.is_set()


def test_many_threads_never_exceed_the_gate():
    data = _encode(Image.new("L", (4000, 3000), 90), "PNG")
    limits = DecodeLimits(concurrent=2)
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(DECODE_GATE.active)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=decode_image, args=(data, limits)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert max(seen) <= 2 and max(seen) >= 1


def test_read_file_bounded_refuses_what_is_not_a_regular_file(tmp_path):
    with pytest.raises(NotAFileError) as err:
        read_file_bounded("/dev/zero", 1000)
    assert explain(err.value) == "/dev/zero is a device, not an image file."
    with pytest.raises(NotAFileError) as err:
        read_file_bounded(tmp_path, 1000)
    assert explain(err.value) == f"{tmp_path} is a folder, not an image file."
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotAFileError) as err:  # never blocks waiting for a writer
        read_file_bounded(fifo, 1000)
    assert err.value.params["kind"] == "a pipe"
    with pytest.raises(FileMissingError) as err:
        read_file_bounded(tmp_path / "nope.jpg", 1000)
    assert explain(err.value) == f"There is no file at {tmp_path / 'nope.jpg'}."
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1001)
    with pytest.raises(FileTooLargeError):
        read_file_bounded(big, 1000)
    assert read_file_bounded(big, 1001) == b"x" * 1001
    (tmp_path / "link").symlink_to("/dev/zero")
    with pytest.raises(NotAFileError):
        read_image_file(tmp_path / "link")
