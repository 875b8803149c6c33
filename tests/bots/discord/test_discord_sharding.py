"""Discord sharding (issue 16 item 10): ``[discord] shard_count`` / ``shard_ids``
choose the bot class and its shards, an auto-sharded bot runs the whole flow
against the fake (one READY per shard, guilds on their shard), and a process
that runs another shard than the pack's server still adds the stickers when
"Add to server" is clicked in a DM (Discord sends DM interactions to shard 0)."""
from __future__ import annotations

import dataclasses

import pytest

from bots.discord.app import EmojiBot, ShardedEmojiBot, make_bot
from emoji3d.config import DiscordConfig
from emoji3d.errors import ConfigError
from emoji3d.texts import text
from storage import packs
from tests.bots.discord.conftest import FAST, run
from tests.bots.discord.test_discord_flow import create_and_deliver, custom_ids, global_style, only_job
from tests.fakes.discord_api import FakeDiscord, ServerConfig
from tests.fakes.discord_harness import DiscordHarness, build_world

pytestmark = pytest.mark.timeout(120)


def _with(res, **discord_keys):
    cfg = dataclasses.replace(res.cfg, discord=DiscordConfig(**discord_keys))
    return dataclasses.replace(res, cfg=cfg)


@pytest.mark.parametrize("keys, cls, shard_count, shard_ids", [
    ({}, EmojiBot, None, None),                                         # one connection
    ({"shard_count": 0}, ShardedEmojiBot, None, None),                  # as many as Discord recommends
    ({"shard_count": 4}, ShardedEmojiBot, 4, None),                     # all four here
    ({"shard_count": 4, "shard_ids": (2,)}, EmojiBot, 4, None),         # one shard of four in this process
    ({"shard_count": 4, "shard_ids": (0, 3)}, ShardedEmojiBot, 4, [0, 3]),
])
def test_config_chooses_the_bot_and_its_shards(res, keys, cls, shard_count, shard_ids):
    bot = make_bot(_with(res, **keys), FAST)
    assert type(bot) is cls
    assert bot.shard_count == shard_count
    if cls is ShardedEmojiBot:
        assert bot.shard_ids == shard_ids
    elif keys.get("shard_ids"):
        assert bot.shard_id == keys["shard_ids"][0]


@pytest.mark.parametrize("keys, fragment", [
    ({"shard_count": 2, "shard_ids": (2,)}, "shard_ids must each be < shard_count"),
    ({"shard_count": 0, "shard_ids": (0,)}, "fixed shard_count"),
    ({"shard_count": 3, "shard_ids": (1, 1)}, "must not repeat"),
])
def test_bad_shard_settings_are_refused(tmp_path, keys, fragment):
    from emoji3d.config import load_config

    ids = ", ".join(str(i) for i in keys["shard_ids"])
    path = tmp_path / "config.toml"
    path.write_text(f"[discord]\nshard_count = {keys['shard_count']}\nshard_ids = [{ids}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=fragment):
        load_config(path, env={})


def test_an_auto_sharded_bot_runs_the_whole_flow(res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)
    sharded = _with(res, shard_count=0)

    async def scenario() -> None:
        async with FakeDiscord(config=ServerConfig(recommended_shards=2)) as server:
            w = build_world(server)
            bot = make_bot(sharded, FAST)
            async with DiscordHarness(bot, server) as h:
                assert bot.shard_count == 2 and sorted(bot.shards) == [0, 1]
                guild = bot.get_guild(int(w.guild_id))
                assert guild is not None and guild.shard_id == (int(w.guild_id) >> 22) % 2
                _, fu = await create_and_deliver(h, w, sharded, selfie_png, discord_files, style)
                await h.deliver(h.click(custom_ids(fu)[0], w.moderator, message=fu))
                h.assert_no_errors()
                assert len(server.stickers(w.guild_id)) == 3

    run(scenario())


def test_add_to_server_from_a_dm_on_another_shards_process(res, selfie_png, discord_files):
    """This process runs shard 1 of 2; the pack's server lives on shard 0 (another
    process), so it is not in this process's cache. The click still works, over REST."""
    style = global_style(res, "toon", selfie_png)
    one_shard = _with(res, shard_count=2, shard_ids=(1,))

    async def scenario() -> None:
        async with FakeDiscord() as server:
            w = build_world(server)
            bot = make_bot(one_shard, FAST)
            async with DiscordHarness(bot, server) as h:
                _, fu = await create_and_deliver(h, w, one_shard, selfie_png, discord_files, style)
                bot._connection._remove_guild(bot.get_guild(int(w.guild_id)))  # it belongs to shard 0's process
                assert bot.get_guild(int(w.guild_id)) is None
                # the same button, clicked in a DM (e.g. the DM delivery after the token window)
                dm_click = h.click(custom_ids(fu)[0], w.moderator["user"], message=fu)
                await h.deliver(dm_click)
                h.assert_no_errors()
                assert len(server.stickers(w.guild_id)) == 3
                (done,) = server.followups(dm_click["token"])
                assert done["content"] == text("discord_added", added=3, existing=0)
                pack = packs.list_packs(res.db, only_job(res).user_id)[0]
                assert {r.platform_state for r in packs.list_stickers(res.db, pack.id)} == {"added"}

    run(scenario())
