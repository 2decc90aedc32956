"""SHARD_COUNT / SHARD_IDS: each process answers the servers of its shards, sharing one
SQLite file with the others (WAL, busy timeout)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pygbot.app import Services
from pygbot.chat import ChatConfig, ChatService
from pygbot.client import ShardedPygBot, make_bot
from pygbot.library import PersonaLibrary
from pygbot.store import Store
from pygbot.worker import Worker
from tests.discord_emulator import Channel, DiscordEmulator, Guild, connected
from tests.discord_harness import Server, bot_settings
from tests.scripted_engine import ScriptedEngine

SHARDS = 2
GUILD_SPACING_S = 0.002  # snowflakes carry milliseconds: a new one may land on the next shard


def shard_of(guild: Guild) -> int:
    return (guild.id >> 22) % SHARDS  # Discord's routing rule


def guilds_on_both_shards(discord: DiscordEmulator) -> dict[int, Guild]:
    """A guild for each shard (ids come from the clock, so make them until both exist)."""
    found: dict[int, Guild] = {}
    while len(found) < SHARDS:
        guild = discord.add_guild(f"Server {len(found)}")
        found.setdefault(shard_of(guild), guild)
        if len(found) < SHARDS:
            time.sleep(GUILD_SPACING_S)  # how the clock moves on; no timing is asserted
    return found


@contextlib.asynccontextmanager
async def shard_process(server: Server, db_path: Path, shard_id: int,
                        engine: Any) -> AsyncIterator[Services]:
    """One pygbot process running shard `shard_id` of SHARDS, on its own database handle."""
    settings = dataclasses.replace(bot_settings(server, db_path), shard_count=SHARDS,
                                   shard_ids=(shard_id,), dev_guild_id=None)
    async with await Store.open(db_path) as store, Worker(engine) as worker:
        library = PersonaLibrary.from_dir(store, settings.personas_dir,
                                          settings.default_persona)
        chat = ChatService(store, worker, library, engine.count_tokens,
                           ChatConfig.from_settings(settings))
        services = Services(settings, store, library, engine, worker, chat)
        bot = make_bot(services, guild_ready_timeout=0.1)
        assert isinstance(bot, ShardedPygBot)
        async with connected(bot, server.discord):
            yield services


def nsfw_channel(discord: DiscordEmulator, guild: Guild) -> Channel:
    return discord.add_text_channel(guild, "roleplay", nsfw=True)


async def test_each_shard_process_answers_only_its_own_servers(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    discord = server.discord
    guilds = guilds_on_both_shards(discord)
    channels = {shard: nsfw_channel(discord, guild) for shard, guild in guilds.items()}
    members = {shard: discord.add_member(guild, f"member{shard}", f"Member {shard}")
               for shard, guild in guilds.items()}
    other = ScriptedEngine([" From shard one."], scripted.count_tokens)
    scripted.script(" From shard zero.")
    async with shard_process(server, db_path, 0, scripted), \
            shard_process(server, db_path, 1, other):
        for shard in (1, 0):
            await discord.send_message(channels[shard], members[shard],
                                       f"{discord.bot_user.mention} hello")
        zero = await discord.wait_for_message(channels[0],
                                              lambda m: m["content"] == "From shard zero.")
        one = await discord.wait_for_message(channels[1],
                                             lambda m: m["content"] == "From shard one.")
    # Each process generated only for its own server, and both wrote to the one database.
    assert len(scripted.requests) == 1 and len(other.requests) == 1
    assert zero["channel_id"] == str(channels[0].id) and one["channel_id"] == str(channels[1].id)
    async with await Store.open(db_path) as store:
        for shard, channel in channels.items():
            texts = [turn.text for turn in await store.history(channel.id)]
            assert texts[-1] == f"From shard {'zero' if shard == 0 else 'one'}."
    identified = [payload.get("shard") for payload in discord.hub.identify_payloads]
    assert sorted(tuple(shard) for shard in identified if shard) == [(0, SHARDS), (1, SHARDS)]
