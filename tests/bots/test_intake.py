"""Bot intake through bots.core, on a real database, blob folder and face checker: what is
stored on disk (pixels only), refusals by key (tiny, huge, not a face), AVIF, rotated selfies,
and the per-user upload rate limit."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, features

from bots import core
from bots.upload_limit import UploadRateLimited
from emoji3d.errors import UserFacingError
from emoji3d.texts import explain, message
from storage import selfies, users
from storage import styles as st
from storage.communities import get_or_create_community
from tests.bots.conftest import make_resources
from tests.emoji3d.test_images import GPS_IFD, gps_jpeg, png_chunks, psnr


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skdata.astronaut())


def consented(res, pid: str = "1") -> users.User:
    user = core.ensure_user(res, "telegram", pid)
    core.give_consent(res, user)
    return users.get_user(res.db, user.id)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_stored_selfie_has_no_exif_and_the_oriented_pixels(res, astronaut):
    """A phone JPEG with GPS, camera make, XMP and an ICC profile, stored sideways with an EXIF
    orientation: the blob file on disk is a PNG of the upright pixels and nothing else."""
    upload = gps_jpeg(np.ascontiguousarray(np.rot90(astronaut, 1)), orientation=6)
    assert Image.open(io.BytesIO(upload)).getexif().get_ifd(GPS_IFD)[2] == (48.0, 51.0, 29.0)
    accepted = core.accept_selfie(res, consented(res), upload)
    on_disk = res.blobs.read_bytes(accepted.selfie.blob_digest)
    assert set(png_chunks(on_disk)) == {b"IHDR", b"IDAT", b"IEND"}
    for marker in (b"Exif", b"GPS", b"PhoneMaker", b"Paris", b"xmpmeta", b"sRGB-like", bytes([48, 0, 0, 0, 1, 0, 0, 0])):
        assert marker not in on_disk, marker
    stored = np.asarray(Image.open(io.BytesIO(on_disk)))
    # the pixels a person sees (orientation applied), exactly as decoded
    from emoji3d.images import decode_image

    assert np.array_equal(stored, decode_image(upload, res.decode_limits))
    assert psnr(stored, astronaut) > 30


def test_style_images_and_house_styles_are_stored_as_pixels_only(res, astronaut):
    upload = gps_jpeg(astronaut)
    user = consented(res)
    digest = core.accept_style_image(res, user, upload)
    community = get_or_create_community(res.db, "telegram", "-100").id
    style = core.house_style_add(res, community, True, "ours", upload, user)
    for stored in (res.blobs.read_bytes(digest), res.blobs.read_bytes(style.exemplar_digest)):
        assert set(png_chunks(stored)) == {b"IHDR", b"IDAT", b"IEND"} and b"Paris" not in stored


def test_tiny_images_are_refused_by_key_in_every_intake(res):
    tiny = _encode(Image.new("RGB", (7, 300), (200, 180, 160)), "PNG")
    user = consented(res)
    community = get_or_create_community(res.db, "discord", "9").id
    for call in (lambda: core.accept_selfie(res, user, tiny), lambda: core.accept_style_image(res, user, tiny),
                 lambda: core.house_style_add(res, community, True, "tiny", tiny, user)):
        with pytest.raises(UserFacingError) as err:
            call()
        assert err.value.key == "image_too_small"
        assert explain(err.value) == "That image is only 7×300 pixels. Please send a photo at least 8 pixels on each side."
    assert selfies.latest_selfie(res.db, user.id) is None and st.list_styles(res.db, community_id=community) == []


def test_house_style_and_style_image_need_a_face(res, faceless_png):
    user = consented(res)
    community = get_or_create_community(res.db, "telegram", "-7").id
    for call in (lambda: core.accept_style_image(res, user, faceless_png),
                 lambda: core.house_style_add(res, community, True, "blank", faceless_png, user)):
        with pytest.raises(UserFacingError) as err:
            call()
        assert err.value.key == "style_no_face"


def test_huge_grey_png_is_refused_quickly_as_no_face(res):
    """The issue's 50 KB grey PNG of 39 MP: decoded reduced, so the face search is over a 2048 px image."""
    buf = io.BytesIO()
    Image.new("L", (7200, 5400), 128).save(buf, "PNG", optimize=True)
    with pytest.raises(UserFacingError) as err:
        core.accept_selfie(res, consented(res), buf.getvalue())
    assert err.value.key == "no_face"


@pytest.mark.skipif(not features.check_module("avif"), reason="this Pillow has no AVIF codec")
def test_avif_selfie_is_accepted(res, astronaut):
    accepted = core.accept_selfie(res, consented(res), _encode(Image.fromarray(astronaut), "AVIF", quality=90))
    assert accepted.warnings == ()
    assert psnr(np.asarray(Image.open(io.BytesIO(res.blobs.read_bytes(accepted.selfie.blob_digest)))), astronaut) > 30


def test_upside_down_selfie_is_accepted(res, astronaut):
    upside_down = _encode(Image.fromarray(np.ascontiguousarray(astronaut[::-1, ::-1])), "PNG")
    accepted = core.accept_selfie(res, consented(res), upside_down)
    stored = np.asarray(Image.open(io.BytesIO(res.blobs.read_bytes(accepted.selfie.blob_digest))))
    assert np.array_equal(stored, astronaut[::-1, ::-1])  # stored as sent: there is no EXIF to apply


def test_uploads_are_rate_limited_per_user(tmp_path, face_check, selfie_png):
    now = [1_000_000.0]
    res = make_resources(tmp_path, face_check, uploads_per_user_per_minute=2)
    res = core.BotResources(res.cfg, res.db, res.blobs, face_check, clock=lambda: now[0])
    user, other = consented(res, "1"), consented(res, "2")
    core.accept_selfie(res, user, selfie_png)
    with pytest.raises(UserFacingError):  # a refused upload counts too
        core.accept_selfie(res, user, b"not an image at all")
    now[0] += 20
    with pytest.raises(UploadRateLimited) as err:
        core.accept_style_image(res, user, selfie_png)
    assert err.value.key == "upload_rate_limited" and err.value.params == {"seconds": 40}
    assert explain(err.value) == message("upload_rate_limited", seconds=40)
    assert "wait 40 seconds" in explain(err.value)
    community = get_or_create_community(res.db, "telegram", "-5").id
    with pytest.raises(UploadRateLimited):  # house styles count against the admin who adds them
        core.house_style_add(res, community, True, "ours", selfie_png, user)
    core.accept_selfie(res, other, selfie_png)  # another user is not affected
    now[0] += 41  # the first upload left the window
    core.accept_style_image(res, user, selfie_png)
