"""Permission checks done in the handler itself.

Discord's `default_member_permissions` only hides commands, and a server admin can override
it per role or channel in the integration settings, so a handler that changes things checks
the member's own permissions (computed by Discord for this channel) before acting.
"""

from __future__ import annotations

import discord

MANAGE_SERVER_REFUSAL = "You need the **Manage Server** permission to do that."


async def refuse_unless_manager(interaction: discord.Interaction) -> bool:
    """Answer ephemerally and return True when the member may not manage the server."""
    if interaction.guild_id is not None and interaction.permissions.manage_guild:
        return False
    await interaction.response.send_message(MANAGE_SERVER_REFUSAL, ephemeral=True)
    return True
