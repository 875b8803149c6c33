"""The record of a pack's Discord server custom emoji (migration 0007): added, replacing, forgotten, and
gone with the pack's user."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from storage import guild_emoji, packs, users
from storage.blobs import BlobStore
from storage.guild_emoji import ADDED, REPLACING


def test_server_emoji_are_recorded_per_guild_replaced_in_two_steps_and_go_with_their_user(db, blob_location):
    user = users.get_or_create_user(db, "discord", "7")
    pack = packs.create_pack(db, user.id, None, None, 1.0, "0.1.0", platform="discord")
    guild_emoji.record_added(db, pack.id, 111, 0, 9001, "e3d1_0_turn", "a" * 64)
    guild_emoji.record_added(db, pack.id, 111, 1, 9002, "e3d1_1_smile", "b" * 64)
    guild_emoji.record_added(db, pack.id, "222", 0, 9101, "e3d1_0_turn", "a" * 64)
    got = guild_emoji.for_pack(db, pack.id)
    assert sorted(got) == ["111", "222"]
    assert [(g.idx, g.emoji_id, g.name, g.state) for g in got["111"]] == [
        (0, "9001", "e3d1_0_turn", ADDED), (1, "9002", "e3d1_1_smile", ADDED)]
    guild_emoji.mark_replacing(db, pack.id, 111, 1, 9003)
    (one,) = [g for g in guild_emoji.for_pack(db, pack.id)["111"] if g.idx == 1]
    assert (one.state, one.emoji_id, one.name, one.blob_digest) == (REPLACING, "9003", "e3d1_1_smile", "b" * 64)
    guild_emoji.record_added(db, pack.id, 111, 1, 9004, "e3d1_1_wink", "c" * 64)  # the replacement: one row again
    (one,) = [g for g in guild_emoji.for_pack(db, pack.id)["111"] if g.idx == 1]
    assert (one.state, one.emoji_id, one.name, one.blob_digest) == (ADDED, "9004", "e3d1_1_wink", "c" * 64)
    guild_emoji.forget(db, pack.id, 111, 0)
    assert [g.idx for g in guild_emoji.for_pack(db, pack.id)["111"]] == [1]
    guild_emoji.forget(db, pack.id, "222")
    assert sorted(guild_emoji.for_pack(db, pack.id)) == ["111"]
    with pytest.raises(sa.exc.IntegrityError):  # only the two states
        with db.write() as conn:
            conn.execute(sa.text("UPDATE guild_emoji SET state = 'gone'"))
    users.delete_user(db, BlobStore(db, blob_location), user.id)
    assert guild_emoji.for_pack(db, pack.id) == {}
