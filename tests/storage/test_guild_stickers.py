"""The record of a pack's Discord server stickers (migration 0006): added, replacing, forgotten, and gone
with the pack's user."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from storage import guild_stickers, packs, users
from storage.blobs import BlobStore
from storage.guild_stickers import ADDED, REPLACING


def test_server_stickers_are_recorded_per_guild_replaced_in_two_steps_and_go_with_their_user(db, blob_location):
    user = users.get_or_create_user(db, "discord", "7")
    pack = packs.create_pack(db, user.id, None, None, 1.0, "0.1.0", platform="discord")
    guild_stickers.record_added(db, pack.id, 111, 0, 9001, "a" * 64)
    guild_stickers.record_added(db, pack.id, 111, 1, 9002, "b" * 64)
    guild_stickers.record_added(db, pack.id, "222", 0, 9101, "a" * 64)
    got = guild_stickers.for_pack(db, pack.id)
    assert sorted(got) == ["111", "222"]
    assert [(g.idx, g.sticker_id, g.state) for g in got["111"]] == [(0, "9001", ADDED), (1, "9002", ADDED)]
    guild_stickers.mark_replacing(db, pack.id, 111, 1, 9003)
    (one,) = [g for g in guild_stickers.for_pack(db, pack.id)["111"] if g.idx == 1]
    assert (one.state, one.sticker_id, one.blob_digest) == (REPLACING, "9003", "b" * 64)
    guild_stickers.record_added(db, pack.id, 111, 1, 9004, "c" * 64)  # the replacement: one row again
    (one,) = [g for g in guild_stickers.for_pack(db, pack.id)["111"] if g.idx == 1]
    assert (one.state, one.sticker_id, one.blob_digest) == (ADDED, "9004", "c" * 64)
    guild_stickers.forget(db, pack.id, 111, 0)
    assert [g.idx for g in guild_stickers.for_pack(db, pack.id)["111"]] == [1]
    guild_stickers.forget(db, pack.id, "222")
    assert sorted(guild_stickers.for_pack(db, pack.id)) == ["111"]
    with pytest.raises(sa.exc.IntegrityError):  # only the two states
        with db.write() as conn:
            conn.execute(sa.text("UPDATE guild_stickers SET state = 'gone'"))
    users.delete_user(db, BlobStore(db, blob_location), user.id)
    assert guild_stickers.for_pack(db, pack.id) == {}
