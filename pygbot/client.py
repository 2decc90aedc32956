"""The discord.py bot: intents, cogs, the persistent reply buttons and command sync."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from pygbot.app import Services
from pygbot.cogs.access import AccessPolicy
from pygbot.cogs.admin import AdminCog, EngineLines, ModelInfo
from pygbot.cogs.character_webhooks import CharacterWebhooks
from pygbot.cogs.chat import ChatCog
from pygbot.cogs.persona import PersonaCog
from pygbot.cogs.posting import DiscordPoster
from pygbot.cogs.privacy import PrivacyCog
from pygbot.cogs.reply_view import ReplyControls
from pygbot.config import Settings
from pygbot.engine import Engine
from pygbot.intake import Intake, IntakeConfig
from pygbot.ratelimit import MemberRateLimiter
from pygbot.remote import RemoteEngine
from pygbot.sharding import guild_owner
from pygbot.startup import StartupError
from pygbot.store import StoreClosedError

log = logging.getLogger(__name__)

LOGIN_TIMEOUT_S = 30.0  # aiohttp's own default would let a silent network hang for 5 minutes
TOKEN_REJECTED = ("Discord rejected DISCORD_TOKEN; copy the token again from the Developer "
                  "Portal (Bot → Reset Token)")

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
        # One policy for every path that can make the character talk: mentions, buttons,
        # greetings after a command.
        self.access = AccessPolicy(services.store, services.settings.allow_dms)
        self.webhooks = CharacterWebhooks(self, services.store, services.library)
        self.poster = DiscordPoster(self, services.chat, self.access, self.webhooks,
                                    streaming=services.settings.stream_replies)
        self.intake = Intake(services.store, services.chat, self.poster,
                             IntakeConfig.from_settings(services.settings),
                             owns_guild=guild_owner(services.settings))

    async def setup_hook(self) -> None:
        services = self.services
        settings = services.settings
        access = self.access
        limiter = MemberRateLimiter(settings.rate_limit_burst, settings.rate_limit_per_minute)
        await self.add_cog(ChatCog(self, services.chat, access, intake=self.intake,
                                   limiter=limiter, max_age_s=settings.pending_max_age_s,
                                   streaming=settings.stream_replies, webhooks=self.webhooks))
        await self.add_cog(PersonaCog(services.chat, access, self.poster, self.webhooks))
        await self.add_cog(PrivacyCog(services.store))
        await self.add_cog(AdminCog(services.chat, services.store, services.worker, access,
                                    engine_lines(services.engine), poster=self.poster,
                                    webhooks=self.webhooks))
        # buttons on replies from earlier runs
        self.add_view(ReplyControls(services.chat, access, streaming=settings.stream_replies))
        await self._sync_commands()

    async def close(self) -> None:
        """Stop answering before the Discord session goes (a graceful stop has already let
        the reply in progress finish); what is left stays recorded for the next start."""
        await self.intake.stop(grace_s=0)
        await super().close()

    async def on_message(self, message: discord.Message, /) -> None:
        """No prefix commands: conversation is the ChatCog's, commands are slash commands."""

    async def on_ready(self) -> None:
        log.info("connected as %s to %d server(s)", self.user, len(self.guilds))

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        """An event that came in while the bot stops (the start-up catch-up, a deletion)
        finds the database closed: nothing is lost (what was not read back or recorded is
        read back at the next start), so that is one line, not a traceback."""
        if isinstance(sys.exc_info()[1], StoreClosedError) and self.intake.stopping:
            log.info("%s left for the next start: the bot is stopping", event_method)
            return
        await super().on_error(event_method, *args, **kwargs)

    async def _sync_commands(self) -> None:
        """Register the slash commands with Discord. A failure is one log line, not the end:
        mentions and buttons work without a sync, and the commands synced last time stay."""
        guild_id = self.services.settings.dev_guild_id
        try:
            if guild_id is None:
                synced = await self.tree.sync()
                log.info("synced %d slash commands globally (may take up to an hour to appear)",
                         len(synced))
                return
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d slash commands to server %s", len(synced), guild_id)
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as error:
            log.error("could not sync slash commands %s: %s; the bot keeps answering "
                      "mentions, slash commands stay as Discord last had them",
                      _sync_target(guild_id), _sync_reason(error, guild_id))


def _sync_target(guild_id: int | None) -> str:
    return "globally" if guild_id is None else f"to server DEV_GUILD_ID={guild_id}"


def _sync_reason(error: Exception, guild_id: int | None) -> str:
    if isinstance(error, discord.Forbidden) and guild_id is not None:
        return (f"Discord refused ({error.status} {error.text or 'Forbidden'}): the bot is not "
                "in that server, or was invited without the applications.commands scope; "
                "invite it there or fix DEV_GUILD_ID")
    if isinstance(error, discord.HTTPException):
        return f"Discord answered {error.status} {error.text or error.response.reason}"
    return f"{type(error).__name__} {error}".strip()


class ShardedPygBot(PygBot, commands.AutoShardedBot):
    """The same bot on several gateway connections (shards) in one process: discord.py's
    AutoShardedBot routes each server's events to its shard."""


def engine_lines(engine: Engine | RemoteEngine) -> EngineLines:
    if isinstance(engine, RemoteEngine):
        return engine.status_lines
    return ModelInfo(engine.model_name, engine.device, engine.dtype).status_lines


def make_bot(services: Services, **options: Any) -> PygBot:
    """A plain bot, or with SHARD_COUNT a sharded one running SHARD_IDS (all by default)."""
    settings = services.settings
    if settings.shard_count is None:
        return PygBot(services, **options)
    shard_ids = list(settings.shard_ids) or None
    log.info("running shard(s) %s of %d", ", ".join(map(str, shard_ids or
                                                       range(settings.shard_count))),
             settings.shard_count)
    return ShardedPygBot(services, shard_count=settings.shard_count, shard_ids=shard_ids,
                         **options)


def use_discord_endpoints(settings: Settings) -> None:
    """Point discord.py at a Discord-compatible server when the settings name one.

    discord.py has exactly these two knobs: the REST base and the gateway a plain Client
    connects to (it never asks `GET /gateway/bot`).
    """
    if settings.discord_api_url:
        discord.http.Route.BASE = settings.discord_api_url
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def check_login(settings: Settings) -> None:
    """Log in over REST once, before the model loads: a rejected token or a Discord that
    cannot be reached is reported in seconds, as one line."""
    use_discord_endpoints(settings)
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        user = await asyncio.wait_for(http.static_login(settings.discord_token),
                                      LOGIN_TIMEOUT_S)
    except discord.LoginFailure:
        raise StartupError(TOKEN_REJECTED) from None
    except (OSError, aiohttp.ClientError, asyncio.TimeoutError, discord.HTTPException) as error:
        raise unreachable(error, settings) from None
    finally:
        await http.close()
    log.info("DISCORD_TOKEN accepted: logging in as %s", user.get("username", "the bot"))


def unreachable(error: BaseException, settings: Settings) -> StartupError:
    """One line for a network failure between this machine and Discord."""
    reason = str(error).strip() or type(error).__name__
    if isinstance(error, discord.HTTPException):
        reason = f"HTTP {error.status}"
    elif isinstance(error, asyncio.TimeoutError):
        reason = f"no answer in {LOGIN_TIMEOUT_S:.0f} s"
    return StartupError(
        f"cannot reach Discord at {discord.http.Route.BASE} ({reason}); check this machine's "
        "internet connection, DNS, firewall and proxy"
        + (", and DISCORD_API_URL" if settings.discord_api_url else ""))


async def run_discord(services: Services) -> None:
    """Connect and serve until SIGTERM or SIGINT (Ctrl-C), then stop gracefully; setup
    problems become one-line StartupErrors."""
    use_discord_endpoints(services.settings)
    async with make_bot(services) as bot:
        try:
            await _serve_until_stopped(bot, services)
        except discord.LoginFailure:
            raise StartupError(TOKEN_REJECTED) from None
        except (OSError, aiohttp.ClientError) as error:  # e.g. the network went at login
            raise unreachable(error, services.settings) from None
        except discord.PrivilegedIntentsRequired:
            raise StartupError("enable MESSAGE CONTENT INTENT for the bot in the Developer "
                               "Portal (Bot → Privileged Gateway Intents)") from None


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # systemd and Docker stop with SIGTERM


async def _serve_until_stopped(bot: PygBot, services: Services) -> None:
    """Run the bot; on a stop signal take no new work, let the reply in progress finish
    within SHUTDOWN_GRACE_S and be posted, leave the rest recorded for the next start, then
    close the database and the Discord session, in that order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    running = asyncio.create_task(bot.start(services.settings.discord_token), name="discord")
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # the connection ended by itself: say why
            return
        log.info("stop requested: finishing the reply in progress")
        await bot.intake.stop(services.settings.shutdown_grace_s)
        await services.store.close()
        await bot.close()
        await running
        log.info("stopped cleanly")
    finally:
        stopping.cancel()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
