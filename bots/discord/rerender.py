"""The buttons and menu on a delivered pack that change it (``bots.pack_changes``).

* "Redo at <strength>" (``emoji3d:rr:<pack>:<preset>``): render it again from its
  stored avatar at another strength;
* a sticker menu (``emoji3d:pk:<pack>``, one option per ``[[pack.stickers]]`` entry,
  the pack's current ones preselected): render it again with the chosen stickers;
* "Try again with another seed" (``emoji3d:rt:<pack>:<seed>``): make it again from the
  same selfie and style; first in the view when the quality report flagged the pack.

Stateless like the other result buttons: the custom id carries everything, so
they keep working after a restart. Each queues one job and the notifier delivers
its result like any other.
"""
from __future__ import annotations

import re

import discord

from bots import core, pack_changes
from bots.discord.interactions import guarded
from emoji3d import orders
from emoji3d.texts import text
from storage import packs

PLATFORM = "discord"
MAX_OPTIONS = 25  # Discord's limit on a select menu's options


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


class RetryButton(discord.ui.DynamicItem[discord.ui.Button], template=r"emoji3d:rt:(?P<pack>\d+):(?P<seed>\d+)"):
    def __init__(self, pack_id: int, seed: int) -> None:
        super().__init__(discord.ui.Button(label=text("retry_button"), style=discord.ButtonStyle.primary,
                                           custom_id=f"emoji3d:rt:{int(pack_id)}:{int(seed)}"))
        self.pack_id, self.seed = int(pack_id), int(seed)

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str], /
                             ) -> "RetryButton":
        return cls(int(match["pack"]), int(match["seed"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, retry(interaction, self.pack_id, self.seed))


class StickerSelect(discord.ui.DynamicItem[discord.ui.Select], template=r"emoji3d:pk:(?P<pack>\d+)"):
    def __init__(self, pack_id: int, names: tuple[str, ...], chosen: tuple[str, ...] = ()) -> None:
        shown = names[:MAX_OPTIONS]
        super().__init__(discord.ui.Select(
            custom_id=f"emoji3d:pk:{int(pack_id)}", placeholder=text("stickers_placeholder"), min_values=1,
            max_values=len(shown),
            options=[discord.SelectOption(label=n, value=n, default=n in chosen) for n in shown]))
        self.pack_id = int(pack_id)

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str], /
                             ) -> "StickerSelect":
        res: core.BotResources = interaction.client.res  # type: ignore[attr-defined]
        return cls(int(match["pack"]), pack_changes.sticker_names(res.cfg))

    async def callback(self, interaction: discord.Interaction) -> None:
        chosen = tuple((interaction.data or {}).get("values", ()))  # type: ignore[union-attr]
        await guarded(interaction, choose_stickers(interaction, self.pack_id, chosen))


def _who(interaction: discord.Interaction):
    res: core.BotResources = interaction.client.res  # type: ignore[attr-defined]
    return res, core.ensure_user(res, PLATFORM, str(interaction.user.id))


def _watch(interaction: discord.Interaction, job_id: int, pack_id: int, user) -> None:
    interaction.client.notifier.watch(job_id, pack_id, user,  # type: ignore[attr-defined]
                                      chat_id=str(interaction.channel_id) if interaction.channel_id else None)


async def rerender(interaction: discord.Interaction, pack_id: int, preset: str) -> None:
    res, user = _who(interaction)
    job_id = pack_changes.order_rerender(res, user, pack_id, strength=core.strength_value(preset))
    await interaction.response.send_message(text("rerender_started", strength=text(f"strength_{preset}")),
                                            ephemeral=True)
    _watch(interaction, job_id, pack_id, user)


async def retry(interaction: discord.Interaction, pack_id: int, seed: int) -> None:
    res, user = _who(interaction)
    placed = pack_changes.order_retry(res, user, pack_id, seed)
    await interaction.response.send_message(text("retry_started"), ephemeral=True)
    _watch(interaction, placed.job_id, placed.pack.id, user)


async def choose_stickers(interaction: discord.Interaction, pack_id: int, chosen: tuple[str, ...]) -> None:
    res, user = _who(interaction)
    job_id = pack_changes.order_rerender(res, user, pack_id, stickers=chosen)
    await interaction.response.send_message(text("stickers_started", count=len(chosen)), ephemeral=True)
    _watch(interaction, job_id, pack_id, user)


def add_rerender_buttons(view: discord.ui.View | None, res: core.BotResources, pack: packs.Pack,
                         result: orders.PackResult) -> discord.ui.View | None:
    """``view`` with the items that change the pack: another strength and a sticker menu when the pack's
    avatar is stored, and a retry with another seed when its order is known (first when it came out weak)."""
    seed = pack_changes.retry_seed(res, pack)
    if not result.avatar and seed is None:
        return view
    view = view or discord.ui.View(timeout=None)
    weak = pack_changes.is_weak(result)
    if seed is not None and weak:
        view.add_item(RetryButton(pack.id, seed))
    if result.avatar:
        for name, value in core.STRENGTHS.items():
            if abs(value - pack.strength) > 1e-6:
                view.add_item(RerenderButton(pack.id, name))
        view.add_item(StickerSelect(pack.id, pack_changes.sticker_names(res.cfg),
                                    pack_changes.current_selection(res, pack)))
    if seed is not None and not weak:
        view.add_item(RetryButton(pack.id, seed))
    return view
