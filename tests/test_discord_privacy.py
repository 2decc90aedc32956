"""`/forget-me` through the emulator: a member's messages leave the character's memory."""

from __future__ import annotations

from pathlib import Path

from pygbot.cogs.privacy import FORGOTTEN
from pygbot.store import Store
from tests.discord_emulator import Channel, User
from tests.discord_harness import Server
from tests.scripted_engine import ScriptedEngine


async def names_and_texts(db_path: Path, channel_id: int) -> list[tuple[str, str]]:
    async with await Store.open(db_path) as store:
        return [(turn.name, turn.text) for turn in await store.history(channel_id)]


async def ask(server: Server, channel: Channel, author: User, text: str, answer: str) -> None:
    await server.discord.send_message(channel, author, server.mention(text))
    await server.discord.wait_for_message(channel, lambda m: m["content"] == answer)


async def test_forget_me_removes_only_that_members_messages_from_every_channel(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Noted, Bob.", " Got it.", " Hi Alice.", " Hello again.")
    await ask(server, server.roleplay, server.member, "my password is hunter2", "Noted, Bob.")
    await ask(server, server.roleplay_two, server.member, "I live on Elm Street", "Got it.")
    await ask(server, server.roleplay, server.admin, "hi, I'm Alice", "Hi Alice.")

    forget = await discord.run_slash_command(server.roleplay, server.member, "forget-me")
    done = await forget.wait_for_message(lambda m: m["content"].startswith("Done"))
    assert forget.ephemeral and done["content"] == FORGOTTEN.format(count=2)

    roleplay = await names_and_texts(db_path, server.roleplay.id)
    assert "Bob" not in [name for name, _ in roleplay]
    assert ("Alice", "Aria hi, I'm Alice") in roleplay
    assert "Bob" not in [name for name, _ in await names_and_texts(db_path,
                                                                   server.roleplay_two.id)]
    await discord.send_message(server.roleplay, server.admin, server.mention("still there?"))
    await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "Hello again.")
    assert "hunter2" not in scripted_bot.requests[-1].prompt
    assert "hi, I'm Alice" in scripted_bot.requests[-1].prompt
