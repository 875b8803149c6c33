"""No secret reaches a log record in a whole Discord run at DEBUG: create,
progress, delivery through the interaction webhook and "Add to server" against
the fake REST API, with the project's logging set-up
(``shell.cli.configure_logging``); every record captured (ours and discord.py's,
whose DEBUG lines carry webhook and interaction URLs) and searched for the bot
token and the interaction tokens."""
from __future__ import annotations

import pytest

from tests.bots.conftest import DISCORD_TOKEN, leaks
from tests.bots.discord.conftest import bot_on_fake, run
from tests.bots.discord.test_discord_flow import create_and_deliver, custom_ids, global_style
from tests.fakes.discord_api import ServerConfig

pytestmark = pytest.mark.timeout(180)


def test_a_whole_discord_run_at_debug_logs_no_token(project_logging, res, selfie_png, discord_files):
    style = global_style(res, "toon", selfie_png)
    tokens: list[str] = []

    async def scenario() -> None:
        async with bot_on_fake(res, config=ServerConfig(bot_token=DISCORD_TOKEN)) as (h, w, bot):
            payload, fu = await create_and_deliver(h, w, res, selfie_png, discord_files, style)
            click = h.click(custom_ids(fu)[0], w.moderator, message=fu)
            await h.deliver(click)
            assert len(h.server.stickers(w.guild_id)) == 3
            tokens.extend([payload["token"], click["token"]])

    run(scenario())
    capture = project_logging
    assert any(r.name.startswith("discord.webhook") or r.name == "discord.http" for r in capture.records), \
        "discord.py did not log its requests at DEBUG: nothing was checked"
    assert leaks(capture, [DISCORD_TOKEN, *tokens]) == []
