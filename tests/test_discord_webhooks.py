"""Posting as the character: `/pygbot webhook on` makes replies come from a channel webhook
with the character's name and picture, and everything else (buttons, streaming, deletes,
threads, restarts, a missing permission) keeps working as members expect."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pygbot.cogs.admin import WEBHOOK_PERMISSION_MISSING
from pygbot.cogs.character_webhooks import MISSING_PERMISSION_NOTICE, WEBHOOK_NAME
from pygbot.cogs.reply_view import NEXT_ID, PREVIOUS_ID, REGENERATE_ID
from pygbot.discord_text import (
    STREAMING_MARK,
    answer_header,
    answered_message_id,
    split_header,
)
from pygbot.store import IntakeMessage, Store, StoredTurn
from tests.card_factory import b64, png_card, v2_card
from tests.discord_emulator import Channel
from tests.discord_harness import Server, bot_settings, bot_with_engine, eventually
from tests.scripted_engine import ScriptedEngine

JSON = dict[str, Any]
MANAGE_WEBHOOKS = 1 << 29


pytestmark = pytest.mark.usefixtures("fast_edits")


async def webhook(server: Server, state: str, channel: Channel | None = None,
                  member: Any = None) -> str:
    """Run /pygbot webhook; the text the invoking member sees."""
    handle = await server.discord.run_slash_command(
        channel or server.roleplay, member or server.admin, "pygbot webhook", {"state": state})
    await handle.response()
    assert handle.message is not None
    return str(handle.message["content"])


async def character_post(server: Server, channel: Channel, after: JSON | None = None,
                         text: str | None = None) -> JSON:
    """The next finished message the bot posts in `channel` (not a streamed draft, not a
    greeting), or the one showing `text`."""
    def wanted(message: JSON) -> bool:
        if text is not None:
            return body(message) == text
        answers = "message_reference" in message or split_header(message["content"])[0]
        return bool(answers) and not message["content"].endswith(STREAMING_MARK)
    return await server.discord.wait_for_message(channel, wanted, after=after)


async def stored(db_path: Path, channel_id: int) -> list[StoredTurn]:
    async with await Store.open(db_path) as store:
        return await store.history(channel_id)


async def recorded(db_path: Path, channel_id: int, message: JSON) -> StoredTurn:
    """The stored turn shown by `message`, once the bot has recorded it."""
    found: list[StoredTurn] = []

    async def check() -> bool:
        found[:] = [t for t in await stored(db_path, channel_id)
                    if str(t.message_id) == message["id"]]
        return bool(found)

    await eventually(check)
    return found[0]


def body(message: JSON) -> str:
    return split_header(message["content"])[1]


async def test_replies_come_from_a_webhook_with_the_characters_name_and_picture(
    server: Server, db_path: Path, quiet_bot: ScriptedEngine,
) -> None:
    await import_and_play_mira(server)
    assert (await webhook(server, "on")).startswith("The character now posts under its own")
    quiet_bot.script(" Hello, Bob. The kettle is on.", " Tea it is, then.")
    asked = await server.discord.send_message(server.roleplay, server.member,
                                              server.mention("hi Mira"))
    reply = await character_post(server, server.roleplay, after=asked)

    [hook] = server.discord.webhooks(server.roleplay)
    assert hook.name == WEBHOOK_NAME
    assert reply["webhook_id"] == str(hook.id) and reply["author"]["id"] == str(hook.id)
    assert reply["author"]["username"] == "Mira"
    async with await Store.open(db_path) as store:
        picture = await store.custom_persona_avatar(server.guild.id, "Mira")
    assert picture is not None and server.discord.avatar_image(reply["author"]) == picture
    # No native reply is possible: a small first line names the member and links the message.
    assert "message_reference" not in reply
    header, text = split_header(reply["content"])
    assert header == (f"-# ↪ <@{server.member.id}> · [message](<https://discord.com/channels/"
                      f"{server.guild.id}/{server.roleplay.id}/{asked['id']}>)\n")
    assert text == "Hello, Bob. The kettle is on."
    assert reply["pinged_user_ids"] == [server.member.id]  # only the member answered
    assert reply["components"]  # 🔄 ◀ ▶: a bot-made webhook may carry buttons
    executions = [r for r in server.discord.requests
                  if r.method == "POST" and r.path.startswith(f"/webhooks/{hook.id}/")]
    assert executions and all(r.query.get("wait") == "1" for r in executions)
    assert not any(r.authorized for r in executions)  # a webhook token needs no bot token
    assert (await recorded(db_path, server.roleplay.id, reply)).text == text

    again = await server.discord.send_message(server.roleplay, server.member,
                                              server.mention("tea?"))
    second = await character_post(server, server.roleplay, after=again)
    assert second["webhook_id"] == str(hook.id)  # the same webhook, reused
    assert len(server.discord.webhooks(server.roleplay)) == 1
    await eventually(lambda: _async(server.discord.message(reply)["components"] == []))

    assert "replies from my own account" in await webhook(server, "off")
    third = await ask(server, quiet_bot, "and now?", " As myself again.")
    assert "webhook_id" not in third and third["author_id"] == server.bot.id
    assert third["message_reference"]["message_id"]  # a native reply once more


async def test_buttons_edits_and_deletes_work_on_webhook_messages(
    server: Server, db_path: Path, quiet_bot: ScriptedEngine,
) -> None:
    await webhook(server, "on")
    reply = await ask(server, quiet_bot, "hi", " First thought.")
    header, _ = split_header(reply["content"])
    await recorded(db_path, server.roleplay.id, reply)

    quiet_bot.script(" Second thought.")
    click = await server.discord.click_button(reply, REGENERATE_ID, server.member)
    await click.response()
    await eventually(lambda: _async(body(server.discord.message(reply)) == "Second thought."))
    rerolled = server.discord.message(reply)
    assert rerolled["content"].startswith(header)  # the answered member stays shown
    turn = await recorded(db_path, server.roleplay.id, reply)
    assert turn.text == "Second thought." and turn.alternatives == ("First thought.",
                                                                    "Second thought.")
    back = await server.discord.click_button(reply, PREVIOUS_ID, server.member)
    await back.response()
    assert server.discord.message(reply)["content"] == header + "First thought."
    assert (await recorded(db_path, server.roleplay.id, reply)).text == "First thought."
    forth = await server.discord.click_button(reply, NEXT_ID, server.member)
    await forth.response()
    assert body(server.discord.message(reply)) == "Second thought."

    # A moderator deletes the character's line: memory follows Discord.
    await server.discord.delete_message(reply)

    async def forgotten() -> bool:
        return all(str(t.message_id) != reply["id"] for t in await stored(db_path,
                                                                          server.roleplay.id))

    await eventually(forgotten)


async def test_a_streamed_reply_grows_in_the_webhook_message_and_ends_with_buttons(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    await webhook(server, "on")
    scripted_bot.script(" Hello there, traveller. The stars are bright tonight. Look up!")
    held = scripted_bot.pause_after("bright tonight.")
    asked = await server.discord.send_message(server.roleplay, server.member,
                                              server.mention("hi"))
    early = await server.discord.wait_for_message(
        server.roleplay, lambda m: m["content"].endswith(STREAMING_MARK), after=asked)
    assert early["webhook_id"] and early["author"]["username"] == "Aria"
    assert early["pinged_user_ids"] == [server.member.id] and early["components"] == []
    assert body(early) == "Hello there, traveller." + STREAMING_MARK
    held.set()
    final = await character_post(server, server.roleplay, after=asked)
    assert final["id"] == early["id"]  # edited through the webhook, never posted twice
    assert body(final) == "Hello there, traveller. The stars are bright tonight. Look up!"
    assert final["content"].startswith(split_header(early["content"])[0])
    assert final["components"]
    assert (await recorded(db_path, server.roleplay.id, final)).text == body(final)


async def test_in_a_thread_the_parent_channels_webhook_posts_into_the_thread(
    server: Server, db_path: Path, quiet_bot: ScriptedEngine,
) -> None:
    thread = server.discord.add_thread(server.roleplay, "side quest", server.member)
    await server.discord.settle()
    await webhook(server, "on", thread)  # run in the thread: the channel and its threads
    quiet_bot.script(" A side quest!", " Onwards.")
    asked = await server.discord.send_message(thread, server.member, server.mention("go"))
    reply = await character_post(server, thread, after=asked)
    [hook] = server.discord.webhooks(server.roleplay)
    assert reply["webhook_id"] == str(hook.id) and reply["channel_id"] == str(thread.id)
    assert body(reply) == "A side quest!"
    assert all(r.query.get("thread_id") == str(thread.id) for r in server.discord.requests
               if r.path.startswith(f"/webhooks/{hook.id}/") and r.method == "POST")
    await recorded(db_path, thread.id, reply)
    again = await server.discord.send_message(thread, server.member, server.mention("on"))
    await character_post(server, thread, after=again)
    # Retiring the first reply's buttons edits it in the thread (thread_id on the PATCH).
    await eventually(lambda: _async(server.discord.message(reply)["components"] == []))


async def test_without_manage_webhooks_the_bot_replies_itself_and_says_so_once(
    server: Server, quiet_bot: ScriptedEngine,
) -> None:
    await webhook(server, "on")
    server.discord.set_permissions(server.roleplay, server.bot, deny=MANAGE_WEBHOOKS)
    await server.discord.settle()
    first = await ask(server, quiet_bot, "hello", " Hello yourself.")
    second = await ask(server, quiet_bot, "again", " Again, hello.")
    for reply in (first, second):
        assert "webhook_id" not in reply and reply["author_id"] == server.bot.id
    notices = [m for m in server.discord.messages(server.roleplay)
               if m["content"] == MISSING_PERMISSION_NOTICE]
    assert len(notices) == 1
    assert server.discord.webhooks(server.roleplay) == []

    # Given the permission back, the character posts as itself again.
    server.discord.set_permissions(server.roleplay, server.bot, allow=MANAGE_WEBHOOKS)
    await server.discord.settle()
    third = await ask(server, quiet_bot, "better?", " Much better.")
    assert third["webhook_id"]


async def test_enabling_without_manage_webhooks_tells_the_admin_not_the_channel(
    server: Server, quiet_bot: ScriptedEngine,
) -> None:
    server.discord.set_permissions(server.roleplay, server.bot, deny=MANAGE_WEBHOOKS)
    await server.discord.settle()
    assert await webhook(server, "on") == WEBHOOK_PERMISSION_MISSING
    reply = await ask(server, quiet_bot, "hello", " Hello.")
    assert reply["author_id"] == server.bot.id
    assert not any(m["content"] == MISSING_PERMISSION_NOTICE
                   for m in server.discord.messages(server.roleplay))


async def test_only_managers_switch_webhook_posting(
    server: Server, quiet_bot: ScriptedEngine,
) -> None:
    assert "Manage Server" in await webhook(server, "on", member=server.member)
    reply = await ask(server, quiet_bot, "hello", " Hello.")
    assert "webhook_id" not in reply


async def test_a_deleted_webhook_is_made_again_and_found_again_after_a_restart(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    settings = bot_settings(server, db_path, stream_replies=False)
    async with bot_with_engine(server, settings, scripted):
        await webhook(server, "on")
        first = await ask(server, scripted, "one", " One.")
        [old] = server.discord.webhooks(server.roleplay)
        server.discord.remove_webhook(old)  # an admin deletes it in the server settings
        second = await ask(server, scripted, "two", " Two.")
        [new] = server.discord.webhooks(server.roleplay)
        assert new.id != old.id and second["webhook_id"] == str(new.id)
        assert first["webhook_id"] == str(old.id)
    async with bot_with_engine(server, settings, scripted):
        third = await ask(server, scripted, "three", " Three.")
    assert third["webhook_id"] == str(new.id)  # found by name and owner, not made again
    assert len(server.discord.webhooks(server.roleplay)) == 1


async def test_a_webhook_that_refuses_a_reply_falls_back_to_a_normal_reply(
    server: Server, quiet_bot: ScriptedEngine,
) -> None:
    await webhook(server, "on")
    await ask(server, quiet_bot, "one", " One.")
    server.discord.fail_next("POST /webhooks/{webhook_id}/{token}", status=403, code=50013,
                             message="Missing Permissions")
    reply = await ask(server, quiet_bot, "two", " Two.")
    assert reply["author_id"] == server.bot.id and reply["content"] == "Two."


async def ask(server: Server, engine: ScriptedEngine, text: str, answer: str) -> JSON:
    engine.script(answer)
    asked = await server.discord.send_message(server.roleplay, server.member,
                                              server.mention(text))
    return await character_post(server, server.roleplay, after=asked, text=answer.strip())


async def import_and_play_mira(server: Server) -> None:
    card = server.discord.upload(server.roleplay, "mira.png",
                                 png_card([("chara", b64(v2_card()))]), "image/png")
    handle = await server.discord.run_slash_command(server.roleplay, server.admin,
                                                    "persona import", {"card": card})
    await handle.wait_for_followups(1)
    switch = await server.discord.run_slash_command(server.roleplay, server.admin,
                                                    "persona switch", {"name": "Mira"})
    await switch.response()
    await server.discord.wait_for_message(  # the greeting opens the conversation
        server.roleplay, lambda m: m["content"].startswith("Welcome back"))


async def _async(value: bool) -> bool:
    return value


async def test_two_characters_answer_in_turn_each_under_its_own_name(
    server: Server, db_path: Path, quiet_bot: ScriptedEngine,
) -> None:
    assert "webhook" in await persona(server, "add", "Pip")  # only with webhook posting on
    await webhook(server, "on")
    assert "joins this channel" in await persona(server, "add", "Pip")
    status = await server.discord.run_slash_command(server.roleplay, server.member,
                                                    "pygbot status")
    await status.response()
    assert status.message is not None
    assert "**Character:** Aria (with Pip)" in status.message["content"]
    assert "**Posting here:** as the character (webhook)" in status.message["content"]

    pip_line = await say(server, quiet_bot, server.mention("Pip, nice cap!"),
                         " Thank you kindly, it is my finest.")
    assert pip_line["author"]["username"] == "Pip"
    aria_line = await say(server, quiet_bot, server.mention("Aria, what do you think?"),
                          " I think Pip is showing off.")
    assert aria_line["author"]["username"] == "Aria"
    assert aria_line["webhook_id"] == pip_line["webhook_id"]  # one webhook, two faces
    # Aria reads Pip's line under Pip's name, and stops where Pip (or the member) would talk.
    asked_aria = quiet_bot.requests[-1]
    assert "\nPip: Thank you kindly, it is my finest.\n" in asked_aria.prompt
    assert asked_aria.prompt.endswith("\nAria:")
    assert "\nPip:" in asked_aria.stop_strings and "\nYou:" in asked_aria.stop_strings

    # Replying to Pip's message (no mention, no name) is talking to Pip.
    reply_to_pip = await say(server, quiet_bot, "*laughs* really?", " Truly, friend.",
                             reply_to=pip_line)
    assert reply_to_pip["author"]["username"] == "Pip"
    asked_pip = quiet_bot.requests[-1]
    assert "\nAria: I think Pip is showing off.\n" in asked_pip.prompt
    assert asked_pip.prompt.endswith("\nPip:") and "\nAria:" in asked_pip.stop_strings
    # Naming a character is enough where several talk.
    named = await say(server, quiet_bot, "thanks, aria", " Any time.")
    assert named["author"]["username"] == "Aria"

    turns = await stored(db_path, server.roleplay.id)
    assert [t.name for t in turns if t.role == "character"][-4:] == ["Pip", "Aria", "Pip",
                                                                     "Aria"]

    # 🔄 on Aria's line asks Aria again.
    await recorded(db_path, server.roleplay.id, named)
    quiet_bot.script(" Always.")
    click = await server.discord.click_button(named, REGENERATE_ID, server.member)
    await click.response()
    await eventually(lambda: _async(body(server.discord.message(named)) == "Always."))
    assert quiet_bot.requests[-1].prompt.endswith("\nAria:")

    assert "leaves this channel" in await persona(server, "remove", "Pip")
    back_to_one = await say(server, quiet_bot, server.mention("Pip?"), " Pip has gone.")
    assert back_to_one["author"]["username"] == "Aria"


async def test_a_channel_holds_at_most_the_configured_number_of_characters(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    settings = bot_settings(server, db_path, max_characters_per_channel=2)
    async with bot_with_engine(server, settings, scripted):
        await webhook(server, "on")
        assert "joins" in await persona(server, "add", "Pip")
        assert "MAX_CHARACTERS_PER_CHANNEL" in await persona(server, "add", "Rook")
        # Switching posting off sends the extra character away: one character, one account.
        await webhook(server, "off")
        await webhook(server, "on")
        assert "joins" in await persona(server, "add", "Rook")


async def persona(server: Server, action: str, name: str) -> str:
    handle = await server.discord.run_slash_command(server.roleplay, server.admin,
                                                    f"persona {action}", {"name": name})
    await handle.response()
    assert handle.message is not None
    return str(handle.message["content"])


async def say(server: Server, engine: ScriptedEngine, text: str, answer: str,
              reply_to: JSON | None = None) -> JSON:
    engine.script(answer)
    asked = await server.discord.send_message(server.roleplay, server.member, text,
                                              reply_to=reply_to)
    return await character_post(server, server.roleplay, after=asked, text=answer.strip())


async def test_a_webhook_reply_a_crash_left_half_streamed_is_removed_and_answered_again(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    discord = server.discord
    settings = bot_settings(server, db_path)
    async with bot_with_engine(server, settings, scripted):
        await webhook(server, "on")
        await ask(server, scripted, "hello", " Welcome back.")
    scripted.script(" Yes, I am here.")
    [hook] = discord.webhooks(server.roleplay)
    # While the bot is down: a mention, and what a crash mid-stream left behind.
    asked = await discord.send_message(server.roleplay, server.member,
                                       server.mention("are you there?"))
    header = answer_header(server.member.id, server.guild.id, server.roleplay.id,
                           int(asked["id"]))
    async with aiohttp.ClientSession() as session:
        url = f"{discord.base_url}/webhooks/{hook.id}/{hook.token}?wait=1"
        async with session.post(url, json={"content": header + "Yes, I am" + STREAMING_MARK,
                                           "username": "Aria"}) as response:
            leftover = await response.json()
    async with bot_with_engine(server, settings, scripted):
        final = await character_post(server, server.roleplay, after=asked,
                                     text="Yes, I am here.")
        await eventually(lambda: _async(discord.message(leftover)["deleted"]))
    assert final["content"].startswith(header)


def test_the_answer_header_names_the_member_and_links_the_message() -> None:
    header = answer_header(5, 1, 2, 3)
    assert header == "-# ↪ <@5> · [message](<https://discord.com/channels/1/2/3>)\n"
    assert split_header(header + "Hi.\nMore.") == (header, "Hi.\nMore.")
    assert split_header("Hi.\n-# ↪ not a header") == ("", "Hi.\n-# ↪ not a header")
    assert answered_message_id(header + "Hi.") == 3
    assert answered_message_id(answer_header(None, 1, 2, 4)) == 4
    assert answered_message_id("Hi. https://discord.com/channels/1/2/3") is None


async def test_a_stale_button_on_a_webhook_message_is_refused_and_taken_off(
    server: Server, db_path: Path, quiet_bot: ScriptedEngine,
) -> None:
    await webhook(server, "on")
    reply = await ask(server, quiet_bot, "hi", " Hello.")
    await recorded(db_path, server.roleplay.id, reply)
    # A server-wide switch from another channel: this channel's last reply is left with
    # buttons that now belong to an old conversation.
    switch = await server.discord.run_slash_command(server.roleplay_two, server.admin,
                                                    "persona switch", {"name": "Pip"})
    await switch.response()
    assert server.discord.message(reply)["components"]
    click = await server.discord.click_button(reply, REGENERATE_ID, server.member)
    [refusal] = await click.wait_for_followups(1)
    assert refusal["content"].startswith("Only the character's newest reply")
    assert refusal["flags"] & 64  # only the member sees it
    assert server.discord.message(reply)["components"] == []
    assert server.discord.message(reply)["content"] == reply["content"]


async def test_a_message_to_a_character_waiting_over_a_restart_is_answered_by_it(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    settings = bot_settings(server, db_path, stream_replies=False)
    async with bot_with_engine(server, settings, scripted):
        await webhook(server, "on")
        await persona(server, "add", "Pip")
    # Recorded for Pip (a reply to Pip's line, say) just before the bot stopped: the intake
    # keeps whom it addressed. Read afresh, the text alone would go to the main character.
    asked = await server.discord.send_message(server.roleplay, server.member,
                                              server.mention("still there?"))
    async with await Store.open(db_path) as store:
        assert await store.record_intake(IntakeMessage(
            message_id=int(asked["id"]), channel_id=server.roleplay.id,
            guild_id=server.guild.id, author_id=server.member.id, author_name="Bob",
            text="still there?", created_at=time.time(), character="Pip"))
    scripted.script(" Always, friend.")
    async with bot_with_engine(server, settings, scripted):
        reply = await character_post(server, server.roleplay, after=asked,
                                     text="Always, friend.")
    assert reply["author"]["username"] == "Pip"
    assert scripted.requests[-1].prompt.endswith("\nPip:")
