"""A server with channels and members on the Discord emulator, and pygbot connected to it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pygbot.app import Services, open_services
from pygbot.chat import ChatConfig, ChatService
from pygbot.client import PygBot
from pygbot.config import Settings
from pygbot.library import PersonaLibrary
from pygbot.store import Store
from pygbot.worker import Worker
from tests.discord_emulator import Channel, DiscordEmulator, Guild, User, connected

REPO = Path(__file__).resolve().parent.parent
MANAGE_GUILD = 1 << 5
EVENTUALLY_S = 10.0
POLL_S = 0.02


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = EVENTUALLY_S) -> None:
    """Wait until `check()` holds: the bot finishes its work after members see the reply."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(POLL_S)


@dataclass
class Server:
    """What the tests act with: an age-restricted channel, an ordinary one, two members."""

    discord: DiscordEmulator
    guild: Guild
    roleplay: Channel  # age-restricted
    roleplay_two: Channel  # age-restricted
    general: Channel  # not age-restricted
    admin: User  # has Manage Server
    member: User  # has not

    @property
    def bot(self) -> User:
        return self.discord.bot_user

    def mention(self, text: str) -> str:
        return f"{self.bot.mention} {text}"


def build_server(discord: DiscordEmulator) -> Server:
    guild = discord.add_guild("Test Server")
    return Server(
        discord=discord,
        guild=guild,
        roleplay=discord.add_text_channel(guild, "roleplay", nsfw=True),
        roleplay_two=discord.add_text_channel(guild, "roleplay-two", nsfw=True),
        general=discord.add_text_channel(guild, "general"),
        admin=discord.add_member(guild, "alice", "Alice", permissions=MANAGE_GUILD),
        member=discord.add_member(guild, "bob", "Bob"),
    )


def bot_settings(server: Server, db_path: Path, **overrides: Any) -> Settings:
    base = Settings(discord_token=server.discord.token, db_path=db_path,
                    personas_dir=REPO / "personas", dev_guild_id=server.guild.id,
                    max_new_tokens=16, device="cpu", dtype="float32")
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def bot_with_engine(server: Server, settings: Settings, engine: Any,
                          seed: int = 3) -> AsyncIterator[Services]:
    """pygbot's real parts around `engine` (a tiny model or a scripted stand-in)."""
    async with await Store.open(settings.db_path) as store, \
            Worker(engine, settings.queue_max, settings.max_batch) as worker:
        services = services_around(settings, store, worker, engine, seed)
        async with connected(PygBot(services, guild_ready_timeout=0.1), server.discord):
            yield services


def services_around(settings: Settings, store: Store, worker: Worker, engine: Any,
                    seed: int = 3) -> Services:
    """The chat service and the rest on an open store and a running worker."""
    library = PersonaLibrary.from_dir(store, settings.personas_dir, settings.default_persona)
    chat = ChatService(store, worker, library, engine.count_tokens,
                       ChatConfig.from_settings(settings), seed=seed)
    return Services(settings, store, library, engine, worker, chat)


@contextlib.asynccontextmanager
async def bot_from_settings(server: Server, settings: Settings) -> AsyncIterator[Services]:
    """pygbot exactly as bot.py assembles it (model loaded from `settings.model`)."""
    async with open_services(settings) as services, \
            connected(PygBot(services, guild_ready_timeout=0.1), server.discord):
        yield services
