import shutil

import pytest

from storage.style_catalog import InvalidStyle, add_house_style, remove_style, sync_global_styles
from storage import jobs, styles as st
from storage.blobs import BlobStore
from storage.communities import get_or_create_community


@pytest.fixture()
def store(db, blob_location):
    return db, BlobStore(db, blob_location)


def test_sync_adds_then_detects_a_changed_exemplar_and_queues_one_finetune_each(store, tmp_path, repo_root):
    db, blobs = store
    styles_dir = tmp_path / "styles"
    shutil.copytree(repo_root / "styles" / "toon", styles_dir / "toon")
    [(style, what)] = sync_global_styles(db, blobs, styles_dir)
    assert (what, style.version, style.scope) == ("added", 1, "global")
    assert sync_global_styles(db, blobs, styles_dir)[0][1] == "unchanged"
    shutil.copy(repo_root / "samples" / "selfie.jpg", styles_dir / "toon" / "exemplar.png")
    [(style2, what2)] = sync_global_styles(db, blobs, styles_dir)
    assert (what2, style2.version) == ("updated", 2)
    queued = [j for j in jobs.list_jobs(db) if j.kind == "style_finetune"]
    assert sorted(j.payload["version"] for j in queued) == [1, 2]
    assert all(j.priority == "batch" for j in queued)


def test_house_style_belongs_to_its_community_and_can_be_removed(store, repo_root):
    db, blobs = store
    c = get_or_create_community(db, "discord", "42")
    image = (repo_root / "styles" / "toon" / "exemplar.png").read_bytes()
    style = add_house_style(db, blobs, "ours", image, community_id=c.id, added_by=None)
    assert [s.name for s in st.list_styles(db, community_id=c.id)] == ["ours"]
    assert st.list_styles(db) == []  # not global
    assert blobs.refcount(style.exemplar_digest) == 1
    remove_style(db, "ours", community_id=c.id)
    assert st.find_style(db, "ours", c.id) is None and blobs.refcount(style.exemplar_digest) == 0


def test_bad_style_inputs_are_refused_with_specific_errors(store, tmp_path):
    db, blobs = store
    with pytest.raises(InvalidStyle):
        add_house_style(db, blobs, "Bad Name!", b"", community_id=None, added_by=None)
    folder = tmp_path / "s" / "x"
    folder.mkdir(parents=True)
    (folder / "style.toml").write_text('name = "x"\ncolour = "red"\n')
    with pytest.raises(InvalidStyle, match="unknown key 'colour'"):
        sync_global_styles(db, blobs, tmp_path / "s")
    from emoji3d.errors import UserFacingError

    with pytest.raises(UserFacingError) as info:
        add_house_style(db, blobs, "notimg", b"hello world", community_id=None, added_by=None)
    assert info.value.key == "not_an_image"
