"""The "Redo at <strength>" buttons on a delivered pack: render it again from its stored avatar.

Stateless like the other result buttons: the custom id carries the pack id and
the strength preset (``emoji3d:rr:<pack>:<preset>``), so a button keeps working
after a restart. Pressing one queues a ``rerender_pack`` job
(:func:`bots.core.order_rerender`; no optimisation) and the notifier delivers
the re-rendered pack like any other.
"""
from __future__ import annotations

import re

import discord

from bots import core
from bots.discord.interactions import guarded
from emoji3d import orders
from emoji3d.texts import text
from storage import packs

PLATFORM = "discord"


class RerenderButton(discord.ui.DynamicItem[discord.ui.Button], template=r"emoji3d:rr:(?P<pack>\d+):(?P<preset>[a-z]+)"):
    def __init__(self, pack_id: int, preset: str) -> None:
        super().__init__(discord.ui.Button(label=text("rerender_button", strength=text(f"strength_{preset}")),
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=f"emoji3d:rr:{int(pack_id)}:{preset}"))
        self.pack_id, self.preset = int(pack_id), preset

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str], /
                             ) -> "RerenderButton":
        return cls(int(match["pack"]), match["preset"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, rerender(interaction, self.pack_id, self.preset))


async def rerender(interaction: discord.Interaction, pack_id: int, preset: str) -> None:
    client = interaction.client
    res: core.BotResources = client.res  # type: ignore[attr-defined]
    user = core.ensure_user(res, PLATFORM, str(interaction.user.id))
    job_id = core.order_rerender(res, user, pack_id, strength=core.strength_value(preset))
    await interaction.response.send_message(text("rerender_started", strength=text(f"strength_{preset}")),
                                            ephemeral=True)
    client.notifier.watch(job_id, pack_id, user,  # type: ignore[attr-defined]
                          chat_id=str(interaction.channel_id) if interaction.channel_id else None)


def add_rerender_buttons(view: discord.ui.View | None, pack: packs.Pack,
                         result: orders.PackResult) -> discord.ui.View | None:
    """``view`` with a button per other strength preset, when the pack's avatar is stored."""
    if not result.avatar:
        return view
    view = view or discord.ui.View(timeout=None)
    for name, value in core.STRENGTHS.items():
        if abs(value - pack.strength) > 1e-6:
            view.add_item(RerenderButton(pack.id, name))
    return view
