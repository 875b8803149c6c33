"""The record of a pack's Discord server expressions, over both tables (``guild_stickers``, migration 0006,
and ``guild_emoji``, migration 0007, which also keeps a name): added, replacing, forgotten, and gone with
the pack's user. Each table is read through its own module's names, as the bots read it."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from storage import guild_emoji, guild_stickers, packs, users
from storage.blobs import BlobStore
from storage.guild_expressions import ADDED, REPLACING

# (module, the row attribute holding the Discord id, names to record: None where the table keeps none)
TABLES = {
    "guild_stickers": (guild_stickers, "sticker_id", [None] * 4),
    "guild_emoji": (guild_emoji, "emoji_id", ["e3d1_0_turn", "e3d1_1_smile", "e3d1_0_turn", "e3d1_1_wink"]),
}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_server_expressions_are_recorded_per_guild_replaced_in_two_steps_and_go_with_their_user(
        db, blob_location, table):
    module, id_attr, (turn, smile, turn_222, wink) = TABLES[table]
    user = users.get_or_create_user(db, "discord", "7")
    pack = packs.create_pack(db, user.id, None, None, 1.0, "0.1.0", platform="discord")
    module.record_added(db, pack.id, 111, 0, 9001, "a" * 64, name=turn)
    module.record_added(db, pack.id, 111, 1, 9002, "b" * 64, name=smile)
    module.record_added(db, pack.id, "222", 0, 9101, "a" * 64, name=turn_222)
    got = module.for_pack(db, pack.id)
    assert sorted(got) == ["111", "222"]
    assert [(g.idx, getattr(g, id_attr), g.name, g.state) for g in got["111"]] == [
        (0, "9001", turn, ADDED), (1, "9002", smile, ADDED)]
    module.mark_replacing(db, pack.id, 111, 1, 9003)
    (one,) = [g for g in module.for_pack(db, pack.id)["111"] if g.idx == 1]
    assert (one.state, getattr(one, id_attr), one.name, one.blob_digest) == (REPLACING, "9003", smile, "b" * 64)
    module.record_added(db, pack.id, 111, 1, 9004, "c" * 64, name=wink)  # the replacement: one row again
    (one,) = [g for g in module.for_pack(db, pack.id)["111"] if g.idx == 1]
    assert (one.state, getattr(one, id_attr), one.name, one.blob_digest) == (ADDED, "9004", wink, "c" * 64)
    module.forget(db, pack.id, 111, 0)
    assert [g.idx for g in module.for_pack(db, pack.id)["111"]] == [1]
    module.forget(db, pack.id, "222")
    assert sorted(module.for_pack(db, pack.id)) == ["111"]
    with pytest.raises(sa.exc.IntegrityError), db.write() as conn:  # only the two states
        conn.execute(sa.text(f"UPDATE {table} SET state = 'gone'"))
    users.delete_user(db, BlobStore(db, blob_location), user.id)
    assert module.for_pack(db, pack.id) == {}


def test_a_name_goes_with_the_table_that_keeps_one(db):
    user = users.get_or_create_user(db, "discord", "7")
    pack = packs.create_pack(db, user.id, None, None, 1.0, "0.1.0", platform="discord")
    with pytest.raises(ValueError):
        guild_emoji.record_added(db, pack.id, 111, 0, 9001, "a" * 64)  # an emoji without its name
    with pytest.raises(ValueError):
        guild_stickers.record_added(db, pack.id, 111, 0, 9001, "a" * 64, name="kept nowhere")
    assert guild_emoji.for_pack(db, pack.id) == {} == guild_stickers.for_pack(db, pack.id)
