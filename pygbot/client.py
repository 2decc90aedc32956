"""The discord.py bot: intents, cogs, the persistent reply buttons and command sync."""

from __future__ import annotations

import logging
from typing import Any

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from pygbot.app import Services, StartupError
from pygbot.cogs.access import AccessPolicy
from pygbot.cogs.admin import AdminCog, ModelInfo
from pygbot.cogs.chat import ChatCog
from pygbot.cogs.persona import PersonaCog
from pygbot.cogs.reply_view import ReplyControls
from pygbot.config import Settings

log = logging.getLogger(__name__)

# The model's text may ping no one; only the member being answered is notified.
ALLOWED_MENTIONS = discord.AllowedMentions(everyone=False, users=False, roles=False,
                                           replied_user=True)


def bot_intents() -> discord.Intents:
    """Default intents plus MESSAGE_CONTENT (privileged: enable it in the Developer Portal).

    The members and presences intents are not needed: display names come with each message.
    """
    intents = discord.Intents.default()
    intents.message_content = True
    return intents


class PygBot(commands.Bot):
    def __init__(self, services: Services, **options: Any) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=bot_intents(),
                         allowed_mentions=ALLOWED_MENTIONS, help_command=None, **options)
        self.services = services

    async def setup_hook(self) -> None:
        services = self.services
        access = AccessPolicy(services.store, services.settings.allow_dms)
        engine = services.engine
        await self.add_cog(ChatCog(self, services.chat, access))
        await self.add_cog(PersonaCog(services.chat, access))
        await self.add_cog(AdminCog(services.chat, services.store, services.worker, access,
                                    ModelInfo(engine.model_name, engine.device, engine.dtype)))
        self.add_view(ReplyControls(services.chat))  # buttons on replies from earlier runs
        await self._sync_commands()

    async def on_message(self, message: discord.Message, /) -> None:
        """No prefix commands: conversation is the ChatCog's, commands are slash commands."""

    async def on_ready(self) -> None:
        log.info("connected as %s to %d server(s)", self.user, len(self.guilds))

    async def _sync_commands(self) -> None:
        guild_id = self.services.settings.dev_guild_id
        if guild_id is None:
            synced = await self.tree.sync()
            log.info("synced %d slash commands globally (may take up to an hour to appear)",
                     len(synced))
            return
        guild = discord.Object(guild_id)
        self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        log.info("synced %d slash commands to server %s", len(synced), guild_id)


def use_discord_endpoints(settings: Settings) -> None:
    """Point discord.py at a Discord-compatible server when the settings name one.

    discord.py has exactly these two knobs: the REST base and the gateway a plain Client
    connects to (it never asks `GET /gateway/bot`).
    """
    if settings.discord_api_url:
        discord.http.Route.BASE = settings.discord_api_url
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def run_discord(services: Services) -> None:
    """Connect and serve until interrupted; setup problems become one-line StartupErrors."""
    use_discord_endpoints(services.settings)
    async with PygBot(services) as bot:
        try:
            await bot.start(services.settings.discord_token)
        except discord.LoginFailure:
            raise StartupError("Discord rejected DISCORD_TOKEN; copy the token again from "
                               "the Developer Portal (Bot → Reset Token)") from None
        except discord.PrivilegedIntentsRequired:
            raise StartupError("enable MESSAGE CONTENT INTENT for the bot in the Developer "
                               "Portal (Bot → Privileged Gateway Intents)") from None
