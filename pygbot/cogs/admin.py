"""`/reset` and `/pygbot status | allow-channels | webhook`: memory and server settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from pygbot.chat import ChatService
from pygbot.cogs.access import Access, AccessPolicy
from pygbot.cogs.character_webhooks import CharacterWebhooks
from pygbot.cogs.checks import refuse_unless_manager
from pygbot.cogs.posting import DiscordPoster
from pygbot.store import Store
from pygbot.worker import Worker


@dataclass(frozen=True)
class ModelInfo:
    """The local engine, for /pygbot status."""

    name: str
    device: str
    dtype: str

    def status_lines(self) -> list[str]:
        return [f"**Model:** {self.name}", f"**Device:** {self.device} ({self.dtype})"]


EngineLines = Callable[[], list[str]]  # the engine's own lines, asked at each /pygbot status


class AdminCog(commands.Cog):
    pygbot = app_commands.Group(name="pygbot", description="Bot status and server settings",
                                guild_only=True)

    def __init__(self, chat: ChatService, store: Store, worker: Worker, access: AccessPolicy,
                 engine_lines: EngineLines, *, poster: DiscordPoster,
                 webhooks: CharacterWebhooks) -> None:
        self.chat = chat
        self.store = store
        self.worker = worker
        self.access = access
        self.engine_lines = engine_lines
        self.poster = poster
        self.webhooks = webhooks

    @app_commands.command()
    @app_commands.guild_only()
    async def reset(self, interaction: discord.Interaction) -> None:
        """Make the character forget this channel's conversation (Manage Server)."""
        if await refuse_unless_manager(interaction):
            return
        channel = interaction.channel
        # Discord wants an answer within 3 seconds; the reset waits for any reply being
        # generated in this channel, so acknowledge first.
        await interaction.response.defer()
        previous = await self.chat.latest_reply(interaction.channel_id or 0)
        greeting = await self.chat.reset(interaction.channel_id or 0, interaction.guild_id or 0,
                                         interaction.user.display_name)
        await interaction.followup.send("Memory of this channel cleared.")
        await self.poster.retire(interaction.channel_id or 0, previous)  # buttons of nothing
        if isinstance(channel, discord.abc.Messageable) and \
                await self.access.check(channel) is Access.ALLOWED:
            await self.poster.greeting(interaction.channel_id or 0, greeting)

    @pygbot.command()
    async def status(self, interaction: discord.Interaction) -> None:
        """Show the engine, model, queue and speed."""
        stats = self.worker.stats()
        roster = await self.chat.roster.roster(interaction.guild_id or 0,
                                               interaction.channel_id or 0)
        settings = await self.store.guild_settings(interaction.guild_id or 0)
        lines = [
            *self.engine_lines(),
            f"**Character:** {roster.main.name}" + (
                f" (with {', '.join(p.name for p in roster.joined)})" if roster.joined else ""),
            f"**Queue:** {self.worker.depth} waiting or generating",
            f"**Speed:** {stats.tokens_per_second:.1f} tokens/s over {stats.requests} replies",
            "**Channels:** " + ("all channels" if settings.allow_all_channels
                                else "age-restricted channels only"),
            "**Posting here:** " + ("as the character (webhook)"
                                    if await self.webhooks.is_on(interaction.channel_id or 0)
                                    else "from the bot's account"),
        ]
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @pygbot.command(name="allow-channels")
    async def allow_channels(self, interaction: discord.Interaction) -> None:
        """Toggle whether the bot talks outside age-restricted channels (Manage Server)."""
        if await refuse_unless_manager(interaction):
            return
        guild_id = interaction.guild_id or 0
        allowed = not (await self.store.guild_settings(guild_id)).allow_all_channels
        await self.store.set_allow_all_channels(guild_id, allowed)
        message = ("I will now talk in every channel of this server. Note: the model can write "
                   "adult content." if allowed else
                   "I will only talk in age-restricted channels from now on.")
        await interaction.response.send_message(message)

    @pygbot.command()
    @app_commands.describe(state="on: post as the character in this channel and its threads")
    async def webhook(self, interaction: discord.Interaction,
                      state: Literal["on", "off"]) -> None:
        """Post replies here under the character's name and picture (Manage Server)."""
        if await refuse_unless_manager(interaction):
            return
        channel = interaction.channel
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        if not isinstance(parent, discord.TextChannel):
            await interaction.response.send_message(WEBHOOK_CHANNELS_ONLY, ephemeral=True)
            return
        guild_id = interaction.guild_id or 0
        if state == "off":
            await self.webhooks.disable(parent.id, guild_id)
            # Several characters need their own names and faces: only the main one stays.
            await self.chat.roster.clear(parent.id)
            await interaction.response.send_message(
                f"The character replies from my own account in {parent.mention} again"
                " (characters added with `/persona add` left; the main one stays).")
            return
        # Told here, to the admin, rather than once more in the channel later.
        missing = not interaction.app_permissions.manage_webhooks
        await self.webhooks.enable(parent.id, guild_id, told_missing=missing)
        if missing:
            await interaction.response.send_message(WEBHOOK_PERMISSION_MISSING, ephemeral=True)
            return
        await interaction.response.send_message(
            f"The character now posts under its own name and picture in {parent.mention} "
            "and its threads.")


WEBHOOK_CHANNELS_ONLY = "Posting as the character works in text channels and their threads."
WEBHOOK_PERMISSION_MISSING = (
    "Turned on, but I need the **Manage Webhooks** permission in this channel to post as the "
    "character. Until I get it, I reply from my own account.")
