"""make_pack_files on the slim EG3D: sticker files, the thumbnail and the preview encoded on a thread
pool while the next sticker renders are byte-identical to the serial path, in the same order; without
the preview page no preview is encoded and the rest is unchanged; a cancel stops the encoders, also
the files being encoded while the pack waits for them."""
from __future__ import annotations

import dataclasses
import threading
import time
from unittest import mock

import pytest
import torch

from emoji3d.config import PackConfig, StickerEntry
from engine.nets import camera, eg3d
from engine.render import pack as pack_module
from engine.render.frames import StickerFrames
from engine.render.pack import AvatarPose, StickerEncoder, make_pack_files
from engine.stickers.codecs import Abandoned
from tests.engine.stickers.content import portrait

PACK = PackConfig(fps=4.0, size=64, views_per_pass=4, stickers=(
    StickerEntry("turn", "😎", motion="orbit", seconds=1.0), StickerEntry("nod", "🙂", motion="nod", seconds=1.0),
    StickerEntry("wide turn", "😐", motion="orbit", yaw_degrees=50.0, seconds=1.0)))
TARGETS = ("telegram_video", "discord_emoji")


@pytest.fixture(scope="module")
def avatar():
    G = eg3d.slim_generator("slim128", seed=3).eval()
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(5)), camera.conditioning_label(1))
    return G, AvatarPose(None, ws, None)


def _files(G, pose, workers, seen):
    return make_pack_files(G, pose, PACK, TARGETS, thumbnail_target="telegram_thumb", boundaries=None,
                           progress=lambda *a: seen.append(a), encode_workers=workers)


def test_parallel_encoding_gives_the_serial_bytes_in_the_same_order(avatar):
    G, pose = avatar
    serial_seen, parallel_seen = [], []
    serial = _files(G, pose, 1, serial_seen)
    parallel = _files(G, pose, 3, parallel_seen)
    assert [s.name for s in parallel.stickers] == ["turn", "nod", "wide turn"]
    for a, b in zip(serial.stickers, parallel.stickers):
        assert list(a.files) == list(b.files) == list(TARGETS)
        assert a.files == b.files
    assert serial.stills == parallel.stills and serial.preview_png == parallel.preview_png
    assert serial.preview_html == parallel.preview_html and b"wide turn" in parallel.preview_html
    assert list(parallel.thumbnail) == ["telegram_thumb"] and serial.thumbnail == parallel.thumbnail
    # the same progress reports, in the same order (the parallel path repeats the last one while it waits)
    assert _distinct(serial_seen) == _distinct(parallel_seen)


def _distinct(reports: list) -> list:
    return [r for n, r in enumerate(reports) if n == 0 or r != reports[n - 1]]



@pytest.mark.parametrize("workers", [1, 3])
def test_without_the_preview_page_no_preview_is_encoded_and_the_rest_is_the_same(avatar, workers):
    """The bots' packs skip the preview page: no sticker gets its animated ``preview`` encode (the
    costliest per sticker), the page is empty, and the sticker files, thumbnail, stills and contact
    sheet are the bytes a pack with the page gets."""
    G, pose = avatar
    with_page = _files(G, pose, workers, [])
    with mock.patch.object(pack_module, "_preview_encode", side_effect=AssertionError("a preview was encoded")):
        without = make_pack_files(G, pose, PACK, TARGETS, thumbnail_target="telegram_thumb", boundaries=None,
                                  progress=lambda *a: None, encode_workers=workers, preview_page=False)
    assert without.preview_html == b"" and b"wide turn" in with_page.preview_html
    assert [a.files for a in without.stickers] == [b.files for b in with_page.stickers]
    assert without.thumbnail == with_page.thumbnail and without.stills == with_page.stills
    assert without.preview_png == with_page.preview_png and without.preview_png.startswith(b"\x89PNG")

def test_a_cancel_while_encoding_stops_the_pool_and_propagates(avatar):
    G, pose = avatar

    class Cancelled(Exception):
        pass

    def progress(stage, done, total):
        if stage == "encode":
            raise Cancelled

    with pytest.raises(Cancelled):
        make_pack_files(G, pose, PACK, TARGETS, thumbnail_target=None, boundaries=None, progress=progress,
                        encode_workers=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("sticker-encode")]


def test_a_cancel_while_waiting_for_files_stops_the_encodes_being_made():
    """The engine's cancel (or shutdown) reaches a pack waiting for its last files: ``results`` calls
    its check while a file is being encoded, and closing with ``cancel`` stops the running encodes at
    their next frame instead of waiting for them. Each of these files takes seconds here (a
    photographed head at 512 px, several candidates); the check raises on its first call."""
    head = StickerFrames("turn", "😎", portrait(30, 512, 512), 30.0)
    encoder = StickerEncoder(2)
    encoder.submit(0, head, "telegram_video")
    encoder.submit(0, head, "discord_sticker")
    checks = []

    class Cancelled(Exception):
        pass

    def cancelled() -> None:
        checks.append(time.monotonic())
        raise Cancelled

    started = time.monotonic()
    with pytest.raises(Cancelled):
        encoder.results(lambda i: pytest.fail("no file can be done yet"), cancelled)
    encoder.close(cancel=True)
    stopped = time.monotonic()
    assert len(checks) == 1 and checks[0] - started < 10 * pack_module.WAIT_POLL_S
    for _index, target, future in encoder.pending:
        assert isinstance(future.exception(), Abandoned), target  # stopped, not finished
    assert not [t for t in threading.enumerate() if t.name.startswith(("sticker-encode", "sticker-spare"))]
    # Told between frames: the one frame (or palette) in hand when the cancel came is all that is waited for.
    assert stopped - checks[0] < 5.0


def test_an_encode_told_to_stop_gives_up_before_writing_and_a_search_ahead_does_too():
    """``encode(stop=...)``: a file no longer wanted raises ``Abandoned`` rather than being made, for an
    animation (its writer checks before each frame) and a still (checked before its search), with and
    without lanes to search ahead on."""
    from engine.stickers.encode import encode
    from engine.stickers.lanes import SpareLanes

    head = portrait(4, 128, 128)
    lanes = SpareLanes(3)
    try:
        for frames, target in ((head, "telegram_video"), (head, "discord_sticker"), (head[:1], "telegram_static")):
            for share in (None, lanes):
                with pytest.raises(Abandoned):
                    encode(frames, 30.0, target, lanes=share, stop=lambda: True)
                assert encode(frames, 30.0, target, lanes=share, stop=lambda: False).data
    finally:
        lanes.close()
    assert lanes.free() == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_a_job_on_the_encoder_gives_its_value_or_its_error_through_its_future(workers):
    encoder = StickerEncoder(workers)
    try:
        assert encoder.later(sum, [1, 2, 3]).result() == 6
        with pytest.raises(ZeroDivisionError):
            encoder.later(divmod, 1, 0).result()
    finally:
        encoder.close(cancel=False)


def test_encoder_workers_must_be_positive():
    with pytest.raises(ValueError, match="encode workers must be >= 1"):
        StickerEncoder(0)


def test_encode_threads_reach_every_file_of_the_pack(avatar):
    """``[pack] encode_threads``: every file of the pack is encoded with that many libvpx threads
    (passed to the VP9 writer's ``threads``; a GIF's writer has none), and the files verify."""
    from engine.stickers.verify import verify

    G, pose = avatar
    configs = []
    real = pack_module._encoded_bytes

    def spy(frames, target, config=None, lanes=None, stop=None):
        configs.append((target, config.threads))
        return real(frames, target, config, lanes, stop)

    with mock.patch.object(pack_module, "_encoded_bytes", spy):
        two = make_pack_files(G, pose, dataclasses.replace(PACK, encode_threads=2), TARGETS,
                              thumbnail_target="telegram_thumb", boundaries=None, progress=lambda *a: None,
                              encode_workers=1)
    assert sorted(set(configs)) == [("discord_emoji", 2), ("telegram_thumb", 2), ("telegram_video", 2)]
    assert all(verify(s.files["telegram_video"], "telegram_video").ok for s in two.stickers)
    assert verify(two.thumbnail["telegram_thumb"], "telegram_thumb").ok
