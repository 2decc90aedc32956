"""Streaming on Discord: what members see while a reply is generated, and that it always ends
as exactly the stored reply, in the one message the bot remembers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pygbot.cogs.reply_view import REGENERATE_ID
from pygbot.discord_text import STREAMING_MARK
from pygbot.intake import EMPTY_REPLY_NOTICE
from pygbot.store import Store, StoredTurn
from tests.discord_harness import Server, bot_settings, bot_with_engine, eventually
from tests.scripted_engine import ScriptedEngine

JSON = dict[str, Any]
STORY = (" Hello there, traveller. The stars are bright tonight. I was charting the rings of "
         "Saturn, they look wonderful. Want to see them with me?")
# Where a sentence of STORY is settled (visible_reply holds the last few words back, in
# case a loop begins there).
FIRST_SENTENCE_SETTLED = "bright tonight."
SECOND_SENTENCE_SETTLED = "rings of"
SHOW_DEADLINE_S = 30.0


pytestmark = pytest.mark.usefixtures("fast_edits")


def bot_replies(server: Server) -> list[JSON]:
    """The bot's visible replies to members (not its greeting) in #roleplay, oldest first."""
    return [m for m in server.discord.messages(server.roleplay)
            if m["author_id"] == server.bot.id and m.get("message_reference")]


async def stored_reply(db_path: Path, channel_id: int) -> StoredTurn:
    """The channel's newest turn, once the bot has recorded the message it was posted as (it
    records that just after members see the finished reply)."""
    newest: list[StoredTurn] = []

    async def posted() -> bool:
        async with await Store.open(db_path) as store:
            newest.append((await store.history(channel_id))[-1])
        return newest[-1].message_id is not None

    await eventually(posted)
    return newest[-1]


async def shows(server: Server, check: Callable[[str], bool]) -> JSON:
    """The bot's newest reply, once its content passes `check`."""
    found: list[JSON] = []

    def seen() -> bool:
        replies = bot_replies(server)
        if replies and check(replies[-1]["content"]):
            found.append(replies[-1])
            return True
        return False

    # A generous deadline, not a timing claim: edits are throttled to one a second and a
    # loaded CI machine runs the bot, the emulator and the test on the same cores.
    await server.discord.wait_for(seen, timeout=SHOW_DEADLINE_S)
    return found[-1]


def contents(server: Server, message: JSON) -> list[str]:
    return [version["content"] for version in server.discord.message_versions(message)]


async def test_a_reply_appears_at_its_first_sentence_grows_and_ends_as_stored(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    scripted_bot.script(STORY)
    first_held = scripted_bot.pause_after(FIRST_SENTENCE_SETTLED)
    second_held = scripted_bot.pause_after(SECOND_SENTENCE_SETTLED)
    asked = await server.discord.send_message(server.roleplay, server.member,
                                              server.mention("hi!"))
    early = await shows(server, lambda content: content.endswith(STREAMING_MARK))
    assert early["content"] == "Hello there, traveller." + STREAMING_MARK
    assert early["message_reference"]["message_id"] == asked["id"]
    assert early["pinged_user_ids"] == [server.member.id]  # the member is told at once
    assert early["components"] == []  # no buttons on a reply still being written

    first_held.set()
    grown = await shows(server, lambda content: "tonight." in content)
    assert grown["id"] == early["id"]
    assert grown["content"].endswith("The stars are bright tonight." + STREAMING_MARK)

    second_held.set()
    final = await shows(server, lambda content: not content.endswith(STREAMING_MARK))
    stored = await stored_reply(db_path, server.roleplay.id)
    assert final["id"] == early["id"] == str(stored.message_id)
    assert final["content"] == stored.text == STORY.strip()
    assert final["components"]  # 🔄 and friends, on the finished reply only
    assert all(stored.text.startswith(shown.removesuffix(STREAMING_MARK))
               for shown in contents(server, final))
    assert len(bot_replies(server)) == 1


async def test_a_resample_replaces_a_repeated_reply_on_screen(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    said = " The rings are beautiful tonight, aren't they? I could watch them for hours."
    fresh = " Want to hear some jazz? I have a record from Earth, a rare one."
    scripted_bot.script(said)
    await server.discord.send_message(server.roleplay, server.member, server.mention("look"))
    await shows(server, lambda content: content == said.strip())

    scripted_bot.script(said + "\nYou: yes", fresh)
    held = scripted_bot.pause_after("\nYou:")
    await server.discord.send_message(server.roleplay, server.member, server.mention("yes"))
    repeat = await shows(server, lambda content: "for hours." + STREAMING_MARK in content)
    held.set()
    final = await shows(server, lambda content: content == fresh.strip())
    assert final["id"] == repeat["id"]  # the resample replaced it in the same message
    assert (await stored_reply(db_path, server.roleplay.id)).text == fresh.strip()
    assert [m["content"] for m in bot_replies(server)] == [said.strip(), fresh.strip()]


async def test_a_reply_rejected_on_every_try_leaves_only_the_notice(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    said = " The rings are beautiful tonight, aren't they? I could watch them for hours."
    scripted_bot.script(said)
    await server.discord.send_message(server.roleplay, server.member, server.mention("look"))
    await shows(server, lambda content: content == said.strip())

    scripted_bot.script(*[said + " Truly."] * 3)  # the first try and both resamples repeat
    held = scripted_bot.pause_after("for hours.")
    await server.discord.send_message(server.roleplay, server.member, server.mention("again"))
    shown = await shows(server, lambda content: content.endswith(STREAMING_MARK))
    held.set()
    await shows(server, lambda content: content == EMPTY_REPLY_NOTICE)
    assert server.discord.message(shown)["deleted"]
    assert [m["content"] for m in bot_replies(server)] == [said.strip(), EMPTY_REPLY_NOTICE]


async def test_a_failed_final_edit_is_retried_on_the_same_message(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    said = "Hello there, traveller. Nice night for it, is it not?"
    scripted_bot.script(" " + said)
    held = scripted_bot.pause_after("is it")
    await server.discord.send_message(server.roleplay, server.member, server.mention("hi"))
    early = await shows(server, lambda content: content.endswith(STREAMING_MARK))
    server.discord.fail_next("PATCH /channels/{channel_id}/messages/{message_id}", status=503)
    held.set()
    final = await shows(server, lambda content: not content.endswith(STREAMING_MARK))
    stored = await stored_reply(db_path, server.roleplay.id)
    assert final["content"] == stored.text == said

    async def recorded() -> bool:
        return (await stored_reply(db_path, server.roleplay.id)).message_id is not None

    await eventually(recorded)
    assert str((await stored_reply(db_path, server.roleplay.id)).message_id) == early["id"]
    assert len(bot_replies(server)) == 1


async def test_regenerate_streams_into_the_same_message_and_ends_with_buttons(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    scripted_bot.script(" First thought.", STORY)
    await server.discord.send_message(server.roleplay, server.member, server.mention("hi"))
    reply = await shows(server, lambda content: content == "First thought.")
    await stored_reply(db_path, server.roleplay.id)  # 🔄 works on a reply the bot has recorded
    held = scripted_bot.pause_after(FIRST_SENTENCE_SETTLED)
    await server.discord.click_button(reply, REGENERATE_ID, server.member)
    growing = await shows(server, lambda content: content.endswith(STREAMING_MARK))
    assert growing["id"] == reply["id"]
    assert growing["content"] == "Hello there, traveller." + STREAMING_MARK
    assert growing["components"] == []  # no clicking while it is written
    held.set()
    final = await shows(server, lambda content: content == STORY.strip())
    assert final["id"] == reply["id"] and final["components"]
    stored = await stored_reply(db_path, server.roleplay.id)
    assert stored.text == STORY.strip() and stored.alternatives[0] == "First thought."


async def test_with_streaming_off_the_reply_is_posted_once_whole(
    server: Server, quiet_bot: ScriptedEngine,
) -> None:
    quiet_bot.script(STORY)
    await server.discord.send_message(server.roleplay, server.member, server.mention("hi"))
    final = await shows(server, lambda content: content == STORY.strip())
    assert contents(server, final) == [STORY.strip()]  # never edited


async def test_a_reply_a_crash_left_half_streamed_is_removed_and_the_message_answered(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    discord = server.discord
    settings = bot_settings(server, db_path)
    scripted.script(" Welcome back.", " Yes, I am here.")
    async with bot_with_engine(server, settings, scripted):
        await discord.send_message(server.roleplay, server.member, server.mention("hello"))
        await shows(server, lambda content: content == "Welcome back.")
    # While the bot is down: a mention, and what a crash mid-stream leaves behind.
    asked = await discord.send_message(server.roleplay, server.member,
                                       server.mention("are you there?"))
    leftover = await discord.send_message(server.roleplay, server.bot,
                                          "Yes, I am" + STREAMING_MARK, reply_to=asked)
    async with bot_with_engine(server, settings, scripted):
        final = await shows(server, lambda content: content == "Yes, I am here.")
    assert discord.message(leftover)["deleted"]
    assert final["message_reference"]["message_id"] == asked["id"]
    assert [m["content"] for m in bot_replies(server)] == ["Welcome back.", "Yes, I am here."]
