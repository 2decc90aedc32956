"""Regenerate and swipes, and memory that follows Discord edits and deletes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pygbot.cogs.reply_view import NEXT_ID, NOT_NEWEST, PREVIOUS_ID, REGENERATE_ID
from pygbot.engine import Engine
from pygbot.store import Store
from tests.discord_harness import (
    Server,
    bot_settings,
    bot_with_engine,
    eventually,
)
from tests.scripted_engine import ScriptedEngine
from tests.swipes import check_reroll, reroll_and_browse

JSON = dict[str, Any]


async def remembered(db_path: Path, channel_id: int) -> list[str]:
    async with await Store.open(db_path) as store:
        return [turn.text for turn in await store.history(channel_id)]


def buttons(message: JSON) -> dict[str, JSON]:
    return {button["custom_id"]: button
            for row in message.get("components", []) for button in row["components"]}


async def ask(server: Server, text: str, answer: str) -> tuple[JSON, JSON]:
    """A member mentions the bot; returns their message and the bot's reply."""
    asked = await server.discord.send_message(server.roleplay, server.member,
                                              server.mention(text))
    reply = await server.discord.wait_for_message(server.roleplay,
                                                  lambda m: m["content"] == answer)
    return asked, reply


async def wait_for_content(server: Server, message: JSON, content: str) -> JSON:
    await server.discord.wait_for(lambda: server.discord.message(message)["content"] == content)
    return server.discord.message(message)


async def test_regenerate_and_browse_alternatives_the_shown_one_is_remembered(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" The rings are lovely.")
    _, reply = await ask(server, "What's outside?", "The rings are lovely.")
    assert set(buttons(reply)) >= {PREVIOUS_ID, REGENERATE_ID, NEXT_ID}
    assert buttons(reply)[PREVIOUS_ID]["disabled"] and buttons(reply)[NEXT_ID]["disabled"]

    scripted_bot.script(" A comet just flew by!")
    await discord.click_button(reply, REGENERATE_ID, server.member)
    rerolled = await wait_for_content(server, reply, "A comet just flew by!")
    assert not buttons(rerolled)[PREVIOUS_ID].get("disabled")
    assert (await remembered(db_path, server.roleplay.id))[-1] == "A comet just flew by!"
    assert "You: Aria What's outside?\nAria:" in scripted_bot.requests[-1].prompt

    previous = await discord.click_button(rerolled, PREVIOUS_ID, server.member)
    await previous.response()
    back = await wait_for_content(server, reply, "The rings are lovely.")
    assert buttons(back)[NEXT_ID].get("disabled") is not True
    assert (await remembered(db_path, server.roleplay.id))[-1] == "The rings are lovely."


async def test_only_the_newest_reply_has_live_buttons(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" First reply.", " Second reply.")
    _, first = await ask(server, "one", "First reply.")
    _, second = await ask(server, "two", "Second reply.")
    await discord.wait_for(lambda: not buttons(discord.message(first)))
    assert REGENERATE_ID in buttons(discord.message(second))


async def test_buttons_left_on_a_forgotten_reply_refuse_and_disappear(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Soon forgotten.")
    _, reply = await ask(server, "hi", "Soon forgotten.")
    reset = await discord.run_slash_command(server.roleplay, server.admin, "reset")
    await reset.wait_for_message(lambda m: "cleared" in m["content"])
    click = await discord.click_button(reply, REGENERATE_ID, server.member)
    await click.response()
    assert click.ephemeral and click.message is not None
    assert click.message["content"] == NOT_NEWEST
    await discord.wait_for(lambda: not buttons(discord.message(reply)))
    assert len(scripted_bot.requests) == 1  # nothing was regenerated


async def test_buttons_still_work_after_a_restart(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    settings = bot_settings(server, db_path)
    scripted.script(" Before the restart.")
    async with bot_with_engine(server, settings, scripted):
        _, reply = await ask(server, "hello", "Before the restart.")

        async def attached() -> bool:
            async with await Store.open(db_path) as store:
                latest = (await store.history(server.roleplay.id))[-1]
            return latest.message_id is not None

        await eventually(attached)
    scripted.script(" After the restart.")
    async with bot_with_engine(server, settings, scripted):
        await server.discord.click_button(reply, REGENERATE_ID, server.member)
        await wait_for_content(server, reply, "After the restart.")
    assert (await remembered(db_path, server.roleplay.id))[-1] == "After the restart."


async def test_editing_a_message_updates_its_turn(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    scripted_bot.script(" Nice name!")
    asked, _ = await ask(server, "my name is Bbo", "Nice name!")
    await server.discord.edit_message(asked, server.mention("my name is Bob"))

    async def updated() -> bool:
        return "Aria my name is Bob" in await remembered(db_path, server.roleplay.id)

    await eventually(updated)
    assert "Aria my name is Bbo" not in await remembered(db_path, server.roleplay.id)


async def test_deleting_a_message_forgets_its_turn(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
) -> None:
    scripted_bot.script(" Noted.")
    asked, _ = await ask(server, "my secret is 1234", "Noted.")
    await server.discord.delete_message(asked)

    async def forgotten() -> bool:
        return "Aria my secret is 1234" not in await remembered(db_path, server.roleplay.id)

    await eventually(forgotten)
    assert "Noted." in await remembered(db_path, server.roleplay.id)


async def test_deleting_a_message_whose_reply_is_queued_cancels_it(
    server: Server, db_path: Path, count_tokens: Callable[[str], int],
) -> None:
    release = threading.Event()
    engine = ScriptedEngine([" Answer to the first."], count_tokens, release)
    discord = server.discord
    settings = bot_settings(server, db_path, max_batch=1)
    async with bot_with_engine(server, settings, engine) as services:
        await discord.send_message(server.roleplay, server.member, server.mention("first"))
        await discord.wait_for(lambda: services.worker.depth == 1)  # generating, blocked
        queued = await discord.send_message(server.roleplay_two, server.member,
                                            server.mention("never mind this one"))
        await discord.wait_for(lambda: services.worker.depth == 2)  # waiting in the queue
        await discord.delete_message(queued)
        await discord.wait_for(lambda: services.worker.depth <= 1)
        release.set()
        await discord.wait_for_message(server.roleplay,
                                       lambda m: m["content"] == "Answer to the first.")
    prompts = [request.prompt for request in engine.requests]
    assert len(prompts) == 1 and "never mind" not in prompts[0]
    assert not [m for m in discord.messages(server.roleplay_two) if m.get("message_reference")]
    assert "Aria never mind this one" not in await remembered(db_path, server.roleplay_two.id)


async def test_one_reroll_brings_several_alternatives_browsed_without_generating(
    server: Server, db_path: Path, tiny_engine: Engine,
) -> None:
    settings = bot_settings(server, db_path, swipe_candidates=3)
    async with bot_with_engine(server, settings, tiny_engine) as services:
        asked = await server.discord.send_message(server.roleplay, server.member,
                                                  server.mention("Tell me a story"))
        reply = await server.discord.wait_for_message(
            server.roleplay, lambda m: (m.get("message_reference") or {}).get("message_id")
            == asked["id"])
        requests_before = services.worker.stats().requests
        reroll = await reroll_and_browse(server, services.store, reply,
                                         lambda: services.worker.stats().requests)
        rerolled_with = services.worker.stats().requests - requests_before
    check_reroll(reroll, candidates=3)
    assert rerolled_with == 3  # the three candidates, sampled together
    assert (await remembered(db_path, server.roleplay.id))[-1] == reroll.turn.text


async def test_a_reroll_clicked_while_the_new_reply_is_being_recorded_is_not_refused(
    server: Server, db_path: Path, scripted: ScriptedEngine,
) -> None:
    discord = server.discord
    settings = bot_settings(server, db_path, stream_replies=False)
    async with bot_with_engine(server, settings, scripted):
        scripted.script(" First reply.")
        _, first = await ask(server, "one", "First reply.")

        async def recorded(text: str) -> bool:
            async with await Store.open(db_path) as store:
                latest = (await store.history(server.roleplay.id))[-1]
            return latest.text == text and latest.message_id is not None

        await eventually(lambda: recorded("First reply."))
        # The bot posts the new reply with its buttons, then takes the buttons off the first
        # one (slow here), and only then records the new reply's message: click in between.
        discord.delay_next("PATCH /channels/{channel_id}/messages/{message_id}", 1.2)
        scripted.script(" Second reply.", " Rerolled reply.")
        _, second = await ask(server, "two", "Second reply.")
        assert not await recorded("Second reply.")  # the moment this test is about
        early = await discord.click_button(second, REGENERATE_ID, server.member)
        await early.response()
        assert early.message is None or early.message["content"] != NOT_NEWEST
        rerolled = await wait_for_content(server, second, "Rerolled reply.")
    assert REGENERATE_ID in buttons(rerolled)
    assert not buttons(discord.message(first))  # the first reply's buttons were retired
    assert (await remembered(db_path, server.roleplay.id))[-1] == "Rerolled reply."
