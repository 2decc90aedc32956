"""pygbot on Discord, through the real discord.py client and the loopback Discord emulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pygbot.cogs.access import AGE_RESTRICTED_NOTICE, DMS_OFF_NOTICE
from pygbot.cogs.checks import MANAGE_SERVER_REFUSAL
from pygbot.engine import Engine
from pygbot.store import Store
from tests.discord_emulator import ActionRefusedError
from tests.discord_harness import (
    Server,
    bot_from_settings,
    bot_settings,
    bot_with_engine,
    eventually,
)
from tests.scripted_engine import ScriptedEngine

ARIA_GREETING = "*the intercom chimes softly*"
ROOK_GREETING = "*stamps the rain off his boots*"


async def history(db_path: Path, channel_id: int) -> list[tuple[str, str]]:
    async with await Store.open(db_path) as store:
        return [(turn.name, turn.text) for turn in await store.history(channel_id)]


async def test_a_mention_gets_a_typing_indicator_and_an_in_character_reply(
    server: Server, db_path: Path, tiny_engine: Engine,
) -> None:
    discord = server.discord
    async with bot_with_engine(server, bot_settings(server, db_path), tiny_engine) as services:
        asked = await discord.send_message(server.roleplay, server.member,
                                           server.mention("Hello there!"))
        reply = await discord.wait_for_message(
            server.roleplay, lambda m: m.get("message_reference") is not None)
        greeting, answer = discord.messages(server.roleplay)[1:]

        async def reply_remembered() -> bool:
            return (await services.store.history(server.roleplay.id))[-1].message_id is not None

        await eventually(reply_remembered)
        stored = await services.store.history(server.roleplay.id)
    assert greeting["content"].startswith(ARIA_GREETING)  # a new conversation opens with it
    assert answer["id"] == reply["id"] and reply["type"] == 19
    assert reply["message_reference"]["message_id"] == asked["id"]
    assert discord.typing_events(server.roleplay)  # "Aria is typing…" while generating
    assert [(t.role, t.name) for t in stored] == [
        ("character", "Aria"), ("user", "Bob"), ("character", "Aria")]
    assert stored[1].text == "Aria Hello there!"  # the bot's mention became the name
    assert stored[2].text == reply["content"] and stored[2].message_id == int(reply["id"])


async def test_replying_to_the_bot_continues_the_conversation(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Nice to meet you, Bob!", " The rings, of course.")
    await discord.send_message(server.roleplay, server.member, server.mention("Hi, I'm Bob"))
    first = await discord.wait_for_message(server.roleplay, lambda m: "Nice to meet" in
                                           m["content"])
    await discord.send_message(server.roleplay, server.member, "What do you like best?",
                               reply_to=first, mention_author=False)
    second = await discord.wait_for_message(server.roleplay,
                                            lambda m: m["content"] == "The rings, of course.")
    assert second["message_reference"] is not None
    assert "You: Aria Hi, I'm Bob\nAria: Nice to meet you, Bob!\nYou: What do you like best?\n" \
        "Aria:" in scripted_bot.requests[-1].prompt


async def test_own_messages_other_bots_and_unaddressed_messages_are_ignored(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    other_bot = discord.add_member(server.guild, "otherbot", bot=True)
    await discord.send_message(server.roleplay, other_bot, server.mention("hello"))
    await discord.send_message(server.roleplay, server.member, "just chatting, no mention")
    await discord.settle()
    await asyncio.sleep(0.2)
    assert scripted_bot.requests == []
    assert discord.messages(server.roleplay)[-1]["content"] == "just chatting, no mention"


async def test_other_mentions_become_display_names(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Hello to you both!")
    await discord.send_message(server.roleplay, server.member,
                               server.mention(f"say hi to {server.admin.mention}"))
    await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "Hello to you both!")
    assert ("Bob", "Aria say hi to Alice") in await history(db_path, server.roleplay.id)


async def test_a_member_without_manage_server_cannot_switch_or_edit(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    switch = await discord.run_slash_command(server.roleplay, server.member, "persona switch",
                                             options={"name": "Rook"})
    await switch.response()
    assert switch.ephemeral and switch.message is not None
    assert switch.message["content"] == MANAGE_SERVER_REFUSAL
    edit = await discord.run_slash_command(server.roleplay, server.member, "persona edit",
                                           options={"name": "Aria"})
    await edit.response()
    assert edit.modal is None and edit.ephemeral
    reset = await discord.run_slash_command(server.roleplay, server.member, "reset")
    await reset.response()
    assert reset.ephemeral
    async with await Store.open(db_path) as store:
        assert await store.active_persona(server.guild.id) is None  # still the default


async def test_switching_persona_posts_the_greeting_and_changes_the_next_reply(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    switch = await discord.run_slash_command(server.roleplay, server.admin, "persona switch",
                                             options={"name": "rook"})
    await switch.response()
    assert switch.message is not None
    assert switch.message["content"] == "**Rook** takes over in this server."
    await discord.wait_for_message(server.roleplay, lambda m: m["content"].startswith(
        ROOK_GREETING))
    scripted_bot.script(" Aye, the storm's a bad one.")
    await discord.send_message(server.roleplay, server.member, server.mention("Bad storm?"))
    await discord.wait_for_message(server.roleplay, lambda m: "storm's a bad" in m["content"])
    assert scripted_bot.requests[-1].prompt.startswith("Rook's Persona:")


async def test_switch_autocomplete_offers_the_characters(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    choices = await server.discord.run_autocomplete(
        server.roleplay, server.admin, "persona switch", {"name": "r"}, focused="name")
    assert [choice["name"] for choice in choices] == ["Aria", "Rook"]


async def test_reset_empties_the_channel_memory_and_greets_again(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Remembered.")
    await discord.send_message(server.roleplay, server.member, server.mention("remember me"))
    await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "Remembered.")
    reset = await discord.run_slash_command(server.roleplay, server.admin, "reset")
    await reset.wait_for_message(lambda m: "cleared" in m["content"])
    greetings = lambda: [m for m in discord.messages(server.roleplay)  # noqa: E731
                         if m["content"].startswith(ARIA_GREETING)]
    await discord.wait_for(lambda: len(greetings()) == 2)
    remembered = await history(db_path, server.roleplay.id)
    assert len(remembered) == 1 and remembered[0][1].startswith(ARIA_GREETING)


async def test_a_reply_over_2000_characters_arrives_in_pieces(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    # Every six-word window holds a number, so the loop guard rightly sees no repetition.
    long_reply = " ".join(f"Chapter {i} is quite short." for i in range(400))
    scripted_bot.script(" " + long_reply)
    await discord.send_message(server.roleplay, server.member, server.mention("long story?"))
    await discord.wait_for(lambda: sum("Chapter 399 " in m["content"]
                                       for m in discord.messages(server.roleplay)))
    pieces = [m for m in discord.messages(server.roleplay) if "Chapter" in m["content"]]
    assert len(pieces) >= 3 and all(len(p["content"]) <= 2000 for p in pieces)
    assert all(p["content"].endswith(".") for p in pieces)  # split at sentence ends
    assert " ".join(p["content"] for p in pieces) == long_reply
    assert pieces[0]["message_reference"] is not None


async def test_everyone_and_member_mentions_in_the_models_text_ping_no_one(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    role = discord.add_role(server.guild, "Moderators", mentionable=True)
    scripted_bot.script(f" @everyone @here look! {server.admin.mention} <@&{role.id}>")
    await discord.send_message(server.roleplay, server.member, server.mention("ping people"))
    reply = await discord.wait_for_message(server.roleplay, lambda m: "look!" in m["content"])
    assert not reply["pinged_everyone"]
    assert reply["pinged_role_ids"] == []
    assert server.admin.id not in reply["pinged_user_ids"]


async def test_a_channel_that_is_not_age_restricted_gets_one_notice_and_no_conversation(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    await discord.send_message(server.general, server.member, server.mention("hi"))
    notice = await discord.wait_for_message(server.general)
    assert notice["content"] == AGE_RESTRICTED_NOTICE
    await discord.send_message(server.general, server.member, server.mention("hello?"))
    await discord.settle()
    await asyncio.sleep(0.2)
    bot_messages = [m for m in discord.messages(server.general) if m["author_id"] == server.bot.id]
    assert len(bot_messages) == 1 and scripted_bot.requests == []


async def test_allow_channels_lets_the_bot_talk_everywhere(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    toggle = await discord.run_slash_command(server.general, server.admin,
                                             "pygbot allow-channels")
    await toggle.response()
    scripted_bot.script(" Hello, general!")
    await discord.send_message(server.general, server.member, server.mention("hi"))
    await discord.wait_for_message(server.general, lambda m: m["content"] == "Hello, general!")


async def test_threads_have_their_own_history(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    thread = discord.add_thread(server.roleplay, "side story", owner=server.member)
    scripted_bot.script(" In the thread!")
    await discord.send_message(thread, server.member, server.mention("thread hello"))
    await discord.wait_for_message(thread, lambda m: m["content"] == "In the thread!")
    assert ("Bob", "Aria thread hello") in await history(db_path, thread.id)
    assert await history(db_path, server.roleplay.id) == []


async def test_direct_messages_are_off_by_default(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    dm = server.discord.dm_channel(server.member)
    await server.discord.send_message(dm, server.member, "hello in private")
    notice = await server.discord.wait_for_message(dm)
    assert notice["content"] == DMS_OFF_NOTICE and scripted_bot.requests == []


async def test_direct_messages_work_when_allowed(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    settings = bot_settings(server, db_path, allow_dms=True)
    scripted.script(" Psst, hello!")
    async with bot_with_engine(server, settings, scripted):
        dm = server.discord.dm_channel(server.member)
        await server.discord.send_message(dm, server.member, "hello in private")
        await server.discord.wait_for_message(dm, lambda m: m["content"] == "Psst, hello!")


async def test_create_a_character_with_the_modal_and_retry_after_a_mistake(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    create = await discord.run_slash_command(server.roleplay, server.admin, "persona create")
    await create.response()
    assert create.modal is not None and create.modal["title"] == "New character"
    typed = {"name": "Mira: the barista", "persona": "Mira runs a tiny cafe.",
             "scenario": "", "greeting": "Welcome in!", "example_dialogue": ""}
    refused = await discord.submit_modal(create, server.admin, typed)
    await refused.response()
    assert refused.ephemeral and refused.message is not None
    assert "name may not contain ':'" in refused.message["content"]
    again = await discord.click_button(refused.message, refused.message["components"][0][
        "components"][0]["custom_id"], server.admin)
    await again.response()
    assert again.modal is not None
    prefilled = [row["components"][0] for row in again.modal["components"]]
    assert prefilled[1]["value"] == "Mira runs a tiny cafe."  # nothing they typed was lost
    saved = await discord.submit_modal(again, server.admin, {**typed, "name": "Mira"})
    await saved.response()
    assert saved.message is not None and "Saved **Mira**" in saved.message["content"]
    listing = await discord.run_slash_command(server.roleplay, server.member, "persona list")
    await listing.response()
    assert listing.message is not None and "**Mira** · made here" in listing.message["content"]


async def test_edit_prefills_the_modal_and_saves_a_server_copy(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    edit = await discord.run_slash_command(server.roleplay, server.admin, "persona edit",
                                           options={"name": "Pip"})
    await edit.response()
    assert edit.modal is not None and edit.modal["title"] == "Edit Pip"
    fields = {row["components"][0]["custom_id"]: row["components"][0].get("value")
              for row in edit.modal["components"]}
    assert fields["greeting"].startswith("*bows with a flourish")
    changed = {**fields, "greeting": "Hello, friend!"}
    saved = await discord.submit_modal(edit, server.admin, changed)
    await saved.response()
    show = await discord.run_slash_command(server.roleplay, server.member, "persona show",
                                           options={"name": "Pip"})
    await show.response()
    assert show.message is not None
    assert show.message["embeds"][0]["fields"][1]["value"] == "Hello, friend!"


async def test_status_shows_model_device_queue_and_speed(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    status = await server.discord.run_slash_command(server.roleplay, server.member,
                                                    "pygbot status")
    await status.response()
    assert status.ephemeral and status.message is not None
    content = status.message["content"]
    for expected in ("**Model:** scripted", "**Device:** cpu", "**Queue:** 0", "tokens/s"):
        assert expected in content


async def test_commands_sync_to_the_dev_guild(server: Server, scripted_bot: ScriptedEngine
                                              ) -> None:
    names = {command["name"] for command in server.discord.synced_commands(server.guild)}
    assert names == {"persona", "reset", "pygbot", "forget-me"}
    assert server.discord.synced_commands() == []  # nothing global


async def test_a_restart_keeps_the_history(
    server: Server, db_path: Path, tiny_model_dir: Path,
) -> None:
    discord = server.discord
    settings = bot_settings(server, db_path, model=str(tiny_model_dir))
    async with bot_from_settings(server, settings):
        await discord.send_message(server.roleplay, server.member, server.mention("first visit"))
        await discord.wait_for_message(server.roleplay,
                                       lambda m: m.get("message_reference") is not None)
    before = await history(db_path, server.roleplay.id)
    async with bot_from_settings(server, settings) as services:
        remembered = await services.store.history(server.roleplay.id)
    assert ("Bob", "Aria first visit") in before
    assert [(t.name, t.text) for t in remembered] == before


async def test_the_admin_can_still_act_when_discord_permissions_are_the_only_gate(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    """/persona has no default permissions, so Discord delivers it; the handler decides."""
    try:
        handle = await server.discord.run_slash_command(
            server.roleplay, server.member, "persona delete", options={"name": "Pip"})
    except ActionRefusedError:
        pytest.fail("Discord itself should not refuse /persona delete to members")
    await handle.response()
    assert handle.message is not None and handle.message["content"] == MANAGE_SERVER_REFUSAL


async def test_a_discord_error_on_posting_loses_nothing_and_the_bot_carries_on(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    discord = server.discord
    scripted_bot.script(" First answer.", " Refused by Discord.", " Third answer.")
    await discord.send_message(server.roleplay, server.member, server.mention("one"))
    await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "First answer.")
    discord.fail_next("POST /channels/{channel_id}/messages", status=403, code=50013,
                      message="Missing Permissions")
    await discord.send_message(server.roleplay, server.member, server.mention("two"))

    async def kept() -> bool:
        return ("Aria", "Refused by Discord.") in await history(db_path, server.roleplay.id)

    await eventually(kept)
    await discord.send_message(server.roleplay, server.member, server.mention("three"))
    await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "Third answer.")
    assert "could not post the reply" in caplog.text and "Missing Permissions" in caplog.text


async def test_a_channel_can_play_its_own_character(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    switch = await discord.run_slash_command(server.roleplay_two, server.admin, "persona switch",
                                             options={"name": "Pip", "channel_only": True})
    await switch.response()
    assert switch.message is not None
    assert switch.message["content"] == "**Pip** takes over in this channel."
    scripted_bot.script(" A song for you!", " Hello from the ship.")
    await discord.send_message(server.roleplay_two, server.member, server.mention("sing?"))
    await discord.wait_for_message(server.roleplay_two, lambda m: m["content"] == "A song for you!")
    await discord.send_message(server.roleplay, server.member, server.mention("hi"))
    await discord.wait_for_message(server.roleplay,
                                   lambda m: m["content"] == "Hello from the ship.")
    assert scripted_bot.requests[0].prompt.startswith("Pip's Persona:")
    assert scripted_bot.requests[1].prompt.startswith("Aria's Persona:")
