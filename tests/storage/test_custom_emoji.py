"""A pack's custom emoji rows and set name (migration 0005): crash-safe states, replacement, deletion."""
from __future__ import annotations

import pytest

from storage import custom_emoji
from storage import packs, users


def new_pack(db, key: str = "1") -> packs.Pack:
    user = users.get_or_create_user(db, "telegram", key)
    return packs.create_pack(db, user.id, None, None, 1.0, "0.1.0", platform="telegram")


def test_rows_move_local_uploaded_added_and_an_unchanged_put_keeps_the_state(db, blobs):
    pack = new_pack(db)
    d0, d1 = blobs.put_bytes(b"emoji-0"), blobs.put_bytes(b"emoji-1")
    first = custom_emoji.put_emoji(db, pack.id, 0, "😀", d0)
    custom_emoji.put_emoji(db, pack.id, 1, "😮", d1)
    custom_emoji.set_emoji_platform_state(db, first.id, "uploaded", "file-0")
    custom_emoji.set_emoji_platform_state(db, first.id, "added")
    again = custom_emoji.put_emoji(db, pack.id, 0, "😀", d0)  # a restart materialises the same result again
    assert (again.id, again.platform_state, again.platform_file_id) == (first.id, "added", "file-0")
    assert [e.idx for e in custom_emoji.list_emoji(db, pack.id)] == [0, 1]
    with pytest.raises(ValueError):
        custom_emoji.set_emoji_platform_state(db, first.id, "published")
    with pytest.raises(KeyError):
        custom_emoji.set_emoji_platform_state(db, 10_000, "added")


def test_a_new_file_resets_the_row_and_releases_the_old_blob(db, blobs):
    pack = new_pack(db)
    old, new = blobs.put_bytes(b"old emoji"), blobs.put_bytes(b"new emoji")
    row = custom_emoji.put_emoji(db, pack.id, 0, "😀", old)
    custom_emoji.set_emoji_platform_state(db, row.id, "added", "file-old")
    assert blobs.refcount(old) == 1
    fresh = custom_emoji.put_emoji(db, pack.id, 0, "😀", new)
    assert fresh.platform_state == "local" and fresh.platform_file_id is None
    assert blobs.refcount(old) == 0 and blobs.refcount(new) == 1


def test_the_set_name_is_recorded_once(db):
    pack = new_pack(db)
    assert custom_emoji.set_name(db, pack.id) is None
    assert custom_emoji.record_set_name(db, pack.id, "e3d1xabc_emoji_by_bot") == "e3d1xabc_emoji_by_bot"
    assert custom_emoji.record_set_name(db, pack.id, "other_by_bot") == "e3d1xabc_emoji_by_bot"  # a restart keeps the first
    custom_emoji.mark_set_published(db, pack.id)
    assert custom_emoji.set_names_of_user(db, pack.user_id) == ["e3d1xabc_emoji_by_bot"]


def test_deleting_the_user_removes_rows_names_and_emoji_blobs(db, blobs):
    pack = new_pack(db, "del")
    digest = blobs.put_bytes(b"only this user's emoji")
    custom_emoji.put_emoji(db, pack.id, 0, "😀", digest)
    custom_emoji.record_set_name(db, pack.id, "gone_by_bot")
    users.delete_user(db, blobs, pack.user_id)
    assert custom_emoji.list_emoji(db, pack.id) == [] and custom_emoji.set_name(db, pack.id) is None
    assert not blobs.exists(digest)


def test_trimming_drops_the_rows_past_the_count_and_frees_their_blobs(db, blobs):
    pack = new_pack(db, "trim")
    digests = [blobs.put_bytes(f"emoji-{i}".encode()) for i in range(3)]
    for i, d in enumerate(digests):
        custom_emoji.put_emoji(db, pack.id, i, "😀", d)
    assert custom_emoji.trim_emoji(db, pack.id, 1) == 2
    assert [e.idx for e in custom_emoji.list_emoji(db, pack.id)] == [0]
    assert [blobs.refcount(d) for d in digests] == [1, 0, 0]
    assert custom_emoji.trim_emoji(db, pack.id, 1) == 0
    with pytest.raises(ValueError):
        custom_emoji.trim_emoji(db, pack.id, -1)
