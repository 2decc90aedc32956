"""Every path that makes the character talk checks where it may talk; stale buttons retire;
a failed command sync at start-up is one log line and the bot keeps serving."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from pygbot.cogs.access import AGE_RESTRICTED_NOTICE
from pygbot.cogs.reply_view import NEXT_ID, NOT_NEWEST, PREVIOUS_ID, REGENERATE_ID
from pygbot.store import IntakeMessage, Store
from tests.discord_emulator import Channel
from tests.discord_harness import Server, bot_settings, bot_with_engine, eventually
from tests.scripted_engine import ScriptedEngine

JSON = dict[str, Any]


def buttons(message: JSON) -> dict[str, JSON]:
    return {button["custom_id"]: button
            for row in message.get("components", []) for button in row["components"]}


async def ask(server: Server, channel: Channel, text: str, answer: str) -> JSON:
    """A member mentions the bot in `channel`; returns the bot's reply once it is remembered
    (so its buttons can find their turn)."""
    discord = server.discord
    await discord.send_message(channel, server.member, server.mention(text))
    reply = await discord.wait_for_message(channel, lambda m: m["content"] == answer)
    await discord.wait_for(lambda: buttons(discord.message(reply)))
    return reply


async def attached(db_path: Path, channel: Channel) -> bool:
    async with await Store.open(db_path) as store:
        return (await store.history(channel.id))[-1].message_id is not None


async def refused_click(server: Server, message: JSON, custom_id: str) -> str:
    """Click as a member; the ephemeral answer they get."""
    click = await server.discord.click_button(message, custom_id, server.member)
    await click.response()
    assert click.ephemeral and click.message is not None
    return str(click.message["content"])


async def slash(server: Server, channel: Channel, command: str, **options: Any) -> None:
    handle = await server.discord.run_slash_command(channel, server.admin, command,
                                                    options=options or None)
    await handle.response()
    if command == "reset":  # deferred: done when it says so
        await handle.wait_for_message(lambda m: "cleared" in m["content"])


# --- buttons check access like mentions do -------------------------------------------------


async def test_buttons_in_a_channel_no_longer_allowed_are_refused_without_generating(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    await slash(server, server.general, "pygbot allow-channels")  # on
    scripted_bot.script(" First take.", " Second take.")
    reply = await ask(server, server.general, "hi", "First take.")
    await discord.click_button(reply, REGENERATE_ID, server.member)
    await discord.wait_for(lambda: discord.message(reply)["content"] == "Second take.")
    await eventually(lambda: attached(db_path, server.general))
    await slash(server, server.general, "pygbot allow-channels")  # off again

    assert await refused_click(server, reply, REGENERATE_ID) == AGE_RESTRICTED_NOTICE
    assert await refused_click(server, reply, PREVIOUS_ID) == AGE_RESTRICTED_NOTICE
    await discord.settle()
    assert len(scripted_bot.requests) == 2  # the mention and the allowed regenerate only
    assert discord.message(reply)["content"] == "Second take."  # not browsed back either


async def test_a_channel_that_stops_being_age_restricted_refuses_the_buttons(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Hello from the roleplay channel.")
    reply = await ask(server, server.roleplay, "hi", "Hello from the roleplay channel.")
    discord.set_age_restricted(server.roleplay, False)
    await discord.settle()
    await asyncio.sleep(0.1)  # the CHANNEL_UPDATE reaches the bot's cache

    assert await refused_click(server, reply, REGENERATE_ID) == AGE_RESTRICTED_NOTICE
    assert len(scripted_bot.requests) == 1
    discord.set_age_restricted(server.roleplay, True)  # ticked again: the buttons work again
    await discord.settle()
    await asyncio.sleep(0.1)
    scripted_bot.script(" Welcome back.")
    await discord.click_button(reply, REGENERATE_ID, server.member)
    await discord.wait_for(lambda: discord.message(reply)["content"] == "Welcome back.")


async def test_a_reset_outside_allowed_channels_posts_no_greeting(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    await slash(server, server.general, "reset")
    await discord.settle()
    await asyncio.sleep(0.1)
    posted = [m for m in discord.messages(server.general) if m["author_id"] == server.bot.id]
    assert [m["content"] for m in posted] == ["Memory of this channel cleared."]
    assert scripted_bot.requests == []


# --- stale buttons retire ------------------------------------------------------------------


async def test_reset_takes_the_buttons_off_the_previous_reply(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Remember me?")
    reply = await ask(server, server.roleplay, "hi", "Remember me?")
    await slash(server, server.roleplay, "reset")
    await discord.wait_for(lambda: not buttons(discord.message(reply)))
    assert discord.message(reply)["content"] == "Remember me?"  # the text stays, as posted


async def test_a_persona_switch_retires_the_old_characters_buttons(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Aria here.", " Aria over there.")
    here = await ask(server, server.roleplay, "hi", "Aria here.")
    there = await ask(server, server.roleplay_two, "hi", "Aria over there.")
    await slash(server, server.roleplay, "persona switch", name="Rook")  # whole server

    await discord.wait_for(lambda: not buttons(discord.message(here)))
    # In the server's other channels the old buttons are refused at their first click.
    assert REGENERATE_ID in buttons(discord.message(there))
    assert await refused_click(server, there, REGENERATE_ID) == NOT_NEWEST
    await discord.wait_for(lambda: not buttons(discord.message(there)))
    assert len(scripted_bot.requests) == 2


async def test_switching_to_the_character_already_playing_keeps_the_buttons(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Still Aria.")
    reply = await ask(server, server.roleplay, "hi", "Still Aria.")
    await slash(server, server.roleplay, "persona switch", name="Aria")
    await discord.settle()
    await asyncio.sleep(0.1)
    assert set(buttons(discord.message(reply))) >= {PREVIOUS_ID, REGENERATE_ID, NEXT_ID}


# --- a failed command sync ----------------------------------------------------------------


NOT_A_MEMBER_GUILD_ID = 123456789012345678  # a server the bot was never invited to


async def test_a_failed_command_sync_is_one_log_line_and_the_bot_keeps_serving(
    server: Server, db_path: Path, scripted: ScriptedEngine, caplog: pytest.LogCaptureFixture,
) -> None:
    discord = server.discord
    settings = bot_settings(server, db_path, dev_guild_id=NOT_A_MEMBER_GUILD_ID)
    scripted.script(" Still here.")
    with caplog.at_level(logging.INFO):
        async with bot_with_engine(server, settings, scripted):
            await ask(server, server.roleplay, "are you there?", "Still here.")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    message = errors[0].getMessage()
    assert message.startswith(f"could not sync slash commands to server "
                              f"DEV_GUILD_ID={NOT_A_MEMBER_GUILD_ID}: Discord refused (403 ")
    assert "the bot is not in that server" in message and "\n" not in message
    assert discord.synced_commands(server.guild) == []


async def test_a_message_left_pending_is_not_answered_once_its_channel_is_no_longer_allowed(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    discord = server.discord
    # Bob wrote while the channel was allowed; the bot went down before answering, and
    # meanwhile an admin unticked the channel's age restriction.
    asked = await discord.send_message(server.roleplay, server.member,
                                       server.mention("are you there?"))
    async with await Store.open(db_path) as store:
        await store.record_intake(IntakeMessage(
            message_id=int(asked["id"]), channel_id=server.roleplay.id,
            guild_id=server.guild.id, author_id=server.member.id, author_name="Bob",
            text="Aria are you there?", created_at=time.time()))
    discord.set_age_restricted(server.roleplay, False)
    async with bot_with_engine(server, bot_settings(server, db_path), scripted) as services:
        notice = await discord.wait_for_message(
            server.roleplay, lambda m: m["content"] == AGE_RESTRICTED_NOTICE)

        async def settled() -> bool:  # not left to be retried at the next start
            return await services.store.open_intake(server.roleplay.id) == []

        await eventually(settled)
    assert notice["message_reference"]["message_id"] == asked["id"]
    assert scripted.requests == []
