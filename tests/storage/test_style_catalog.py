import io
import shutil

import numpy as np
import pytest
from PIL import Image

from emoji3d.errors import UserFacingError
from emoji3d.images import DecodeLimits
from emoji3d.texts import explain
from storage.style_catalog import InvalidStyle, add_house_style, remove_style, sync_global_styles
from storage import jobs, styles as st
from storage.blobs import BlobStore
from storage.communities import get_or_create_community

LIMITS = DecodeLimits()


@pytest.fixture()
def store(db, blob_location):
    return db, BlobStore(db, blob_location)


class CountingFaceCheck:
    """The engine's real face check (what the shell and the bots pass in), counting its calls."""

    def __init__(self, checker):
        self.checker, self.calls = checker, 0

    def __call__(self, rgb):
        self.calls += 1
        return self.checker(rgb)


@pytest.fixture(scope="module")
def real_face_check():
    from engine.face.analyze import FaceChecker

    with FaceChecker() as checker:
        yield checker


@pytest.fixture()
def face_check(real_face_check):
    return CountingFaceCheck(real_face_check)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_sync_adds_then_detects_a_changed_exemplar_and_queues_one_finetune_each(store, tmp_path, repo_root, face_check):
    db, blobs = store
    styles_dir = tmp_path / "styles"
    shutil.copytree(repo_root / "styles" / "toon", styles_dir / "toon")
    [(style, what)] = sync_global_styles(db, blobs, styles_dir, LIMITS, face_check=face_check)
    assert (what, style.version, style.scope) == ("added", 1, "global")
    assert face_check.calls == 1
    assert sync_global_styles(db, blobs, styles_dir, LIMITS, face_check=face_check)[0][1] == "unchanged"
    assert face_check.calls == 1  # an unchanged exemplar is not checked again
    # a folder's file is stored as it is: its digest versions the style
    assert blobs.read_bytes(style.exemplar_digest) == (styles_dir / "toon" / "exemplar.png").read_bytes()
    shutil.copy(repo_root / "samples" / "selfie.jpg", styles_dir / "toon" / "exemplar.png")
    [(style2, what2)] = sync_global_styles(db, blobs, styles_dir, LIMITS, face_check=face_check)
    assert (what2, style2.version) == ("updated", 2)
    queued = [j for j in jobs.list_jobs(db) if j.kind == "style_finetune"]
    assert sorted(j.payload["version"] for j in queued) == [1, 2]
    assert all(j.priority == "batch" for j in queued)


def test_house_style_belongs_to_its_community_and_can_be_removed(store, repo_root, face_check):
    db, blobs = store
    c = get_or_create_community(db, "discord", "42")
    image = (repo_root / "styles" / "toon" / "exemplar.png").read_bytes()
    style = add_house_style(db, blobs, "ours", image, community_id=c.id, added_by=None, limits=LIMITS,
                            face_check=face_check)
    assert [s.name for s in st.list_styles(db, community_id=c.id)] == ["ours"]
    assert st.list_styles(db) == []  # not global
    assert blobs.refcount(style.exemplar_digest) == 1
    remove_style(db, "ours", community_id=c.id)
    assert st.find_style(db, "ours", c.id) is None and blobs.refcount(style.exemplar_digest) == 0


def test_bad_style_inputs_are_refused_with_specific_errors(store, tmp_path, face_check):
    db, blobs = store
    with pytest.raises(InvalidStyle):
        add_house_style(db, blobs, "Bad Name!", b"", community_id=None, added_by=None, limits=LIMITS,
                        face_check=face_check)
    folder = tmp_path / "s" / "x"
    folder.mkdir(parents=True)
    (folder / "style.toml").write_text('name = "x"\ncolour = "red"\n')
    with pytest.raises(InvalidStyle, match="unknown key 'colour'"):
        sync_global_styles(db, blobs, tmp_path / "s", LIMITS, face_check=face_check)
    with pytest.raises(UserFacingError) as info:
        add_house_style(db, blobs, "notimg", b"hello world", community_id=None, added_by=None, limits=LIMITS,
                        face_check=face_check)
    assert info.value.key == "not_an_image"


def _style_folder(root, name: str, exemplar: bytes | None = None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "style.toml").write_text(f'name = "{name}"\nexemplar = "exemplar.png"\n')
    if exemplar is not None:
        (folder / "exemplar.png").write_bytes(exemplar)
    return folder


@pytest.mark.parametrize("case, key", [("no_face", "style_no_face"), ("one_pixel", "image_too_small")])
def test_every_path_that_adds_a_style_refuses_the_same_images(store, tmp_path, face_check, case, key):
    """`styles add` (add_house_style), the bots' house styles (the same function) and `styles sync`
    refuse a faceless image and a 1x1 image alike, and nothing is stored."""
    db, blobs = store
    rng = np.random.default_rng(0)
    image = _png(rng.integers(90, 110, (256, 256, 3), dtype=np.uint8) if case == "no_face"
                 else np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(UserFacingError) as added:
        add_house_style(db, blobs, "mine", image, community_id=None, added_by=None, limits=LIMITS,
                        face_check=face_check)
    assert added.value.key == key
    _style_folder(tmp_path / "styles", "folder", image)
    with pytest.raises(InvalidStyle) as synced:
        sync_global_styles(db, blobs, tmp_path / "styles", LIMITS, face_check=face_check)
    sentence = explain(synced.value)
    assert "folder/exemplar.png" in sentence and explain(added.value) in sentence  # names the file and the reason
    assert st.list_styles(db) == [] and jobs.list_jobs(db) == []
    assert face_check.calls == (2 if case == "no_face" else 0)  # a 1x1 image never reaches the face check


def test_sync_refuses_an_exemplar_that_is_a_device_or_a_folder(store, tmp_path, face_check):
    db, blobs = store
    folder = _style_folder(tmp_path / "styles", "zero")
    (folder / "exemplar.png").symlink_to("/dev/zero")
    with pytest.raises(InvalidStyle) as err:
        sync_global_styles(db, blobs, tmp_path / "styles", LIMITS, face_check=face_check)
    assert "is a device" in explain(err.value) and "zero" in explain(err.value)
    (folder / "exemplar.png").unlink()
    (folder / "exemplar.png").mkdir()
    with pytest.raises(InvalidStyle) as err:
        sync_global_styles(db, blobs, tmp_path / "styles", LIMITS, face_check=face_check)
    assert "is a folder, not an image file" in explain(err.value)
    (folder / "exemplar.png").rmdir()
    with pytest.raises(InvalidStyle) as err:
        sync_global_styles(db, blobs, tmp_path / "styles", LIMITS, face_check=face_check)
    assert explain(err.value).endswith("exemplar file exemplar.png is missing.")


def test_house_style_is_stored_as_pixels_only(store, repo_root, face_check):
    from PIL import Image as PilImage

    db, blobs = store
    img = PilImage.open(repo_root / "styles" / "toon" / "exemplar.png").convert("RGB")
    exif = PilImage.Exif()
    exif[0x010E] = "made by someone, somewhere"  # ImageDescription
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    style = add_house_style(db, blobs, "jpeg", buf.getvalue(), community_id=None, added_by=None, limits=LIMITS,
                            face_check=face_check)
    stored = blobs.read_bytes(style.exemplar_digest)
    assert stored.startswith(b"\x89PNG") and b"somewhere" not in stored and b"Exif" not in stored
