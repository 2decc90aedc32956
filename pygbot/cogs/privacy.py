"""`/forget-me`: any member can have every message they wrote to the character forgotten.

It works everywhere (servers and DMs, every channel at once) and needs no permission: a
member's own words are theirs to withdraw. The character's replies stay in memory (a
channel's admins clear those with `/reset`); the messages on Discord are the member's to
delete there.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from pygbot.store import Store

log = logging.getLogger(__name__)

FORGOTTEN = ("Done: I forgot {count} message(s) you wrote to me, in every server and DM, and "
             "the copies waiting to be answered. My own replies stay until a server admin "
             "uses `/reset` in that channel.")


class PrivacyCog(commands.Cog):
    def __init__(self, store: Store) -> None:
        self.store = store

    @app_commands.command(name="forget-me")
    async def forget_me(self, interaction: discord.Interaction) -> None:
        """Make the character forget every message you wrote to it, everywhere."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        count = await self.store.forget_author(interaction.user.id)
        log.info("forgot %d turns of a member at their request", count)  # no id: privacy
        await interaction.followup.send(FORGOTTEN.format(count=count), ephemeral=True)
