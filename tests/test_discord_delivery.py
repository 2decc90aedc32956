"""Nothing lost: every mention is answered once, in order, or gets a clear notice, through
floods, Discord errors, engine errors and a locked database."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import pygbot.store
from pygbot.client import PygBot
from pygbot.cogs.chat import RATE_LIMITED_NOTICE
from pygbot.cogs.posting import DiscordPoster
from pygbot.engine import GenerationRequest, GenerationResult
from pygbot.intake import BACKLOG_NOTICE, DATABASE_FAILED_NOTICE, ENGINE_FAILED_NOTICE
from pygbot.store import Store
from pygbot.worker import Worker
from tests.delivery import Delivery, account, replies_to
from tests.discord_emulator import Channel, connected
from tests.discord_harness import (
    Server,
    bot_settings,
    bot_with_engine,
    eventually,
    services_around,
)
from tests.scripted_engine import ScriptedEngine

JSON = dict[str, Any]
NOTICES = (BACKLOG_NOTICE, DATABASE_FAILED_NOTICE, ENGINE_FAILED_NOTICE)


class FailingOnceEngine(ScriptedEngine):
    """The scripted model, except that its first generation raises, as a broken GPU would."""

    def __init__(self, replies: Sequence[str], count_tokens: Callable[[str], int]) -> None:
        super().__init__(replies, count_tokens)
        self.failed = False

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().generate(requests)


def outcome(server: Server, channel: Channel, mentions: Sequence[JSON]) -> Delivery:
    return account(server.discord.messages(channel), server.bot.id,
                   {int(m["id"]) for m in mentions}, NOTICES)


def replies(server: Server, channel: Channel) -> list[tuple[int, str]]:
    return replies_to(server.discord.messages(channel), server.bot.id)


async def nothing_open(store: Store) -> bool:
    """Every recorded mention is settled: answered and posted, or told why not."""
    return not await store.open_intake_channels()


async def remembered(db_path: Path, channel_id: int) -> list[tuple[str, str]]:
    async with await Store.open(db_path) as store:
        return [(turn.role, turn.text) for turn in await store.history(channel_id)]


async def test_messages_sent_while_a_reply_is_made_are_answered_together_in_order(
    server: Server, db_path: Path, count_tokens: Callable[[str], int],
) -> None:
    release = threading.Event()
    engine = ScriptedEngine([" First answer.", " Both of those, then."], count_tokens, release)
    discord = server.discord
    async with bot_with_engine(server, bot_settings(server, db_path), engine) as services:
        first = await discord.send_message(server.roleplay, server.member, server.mention("one"))
        await discord.wait_for(lambda: services.worker.depth == 1)  # generating, held
        second = await discord.send_message(server.roleplay, server.admin,
                                            server.mention("two"))
        third = await discord.send_message(server.roleplay, server.member,
                                           server.mention("three"))
        release.set()
        await discord.wait_for_message(server.roleplay,
                                       lambda m: m["content"] == "Both of those, then.")
    assert replies(server, server.roleplay) == [
        (int(first["id"]), "First answer."), (int(third["id"]), "Both of those, then.")]
    assert outcome(server, server.roleplay, [first, second, third]) == Delivery(answered=3)
    assert len(engine.requests) == 2  # one generation for the two that waited
    assert "You: Aria two\nYou: Aria three\nAria:" in engine.requests[1].prompt
    memory = await remembered(db_path, server.roleplay.id)
    assert memory[1:] == [("user", "Aria one"), ("character", "First answer."),
                          ("user", "Aria two"), ("user", "Aria three"),
                          ("character", "Both of those, then.")]


async def test_each_channel_gets_its_greeting_then_its_replies_in_message_order(
    server: Server, db_path: Path, tiny_engine: Any,
) -> None:
    discord = server.discord
    channels = [server.roleplay, server.roleplay_two]
    members = {server.roleplay.id: server.member, server.roleplay_two.id: server.admin}
    async with bot_with_engine(server, bot_settings(server, db_path), tiny_engine):
        sent: dict[int, list[JSON]] = {channel.id: [] for channel in channels}
        for round_ in range(3):
            for channel in channels:
                sent[channel.id].append(await discord.send_message(
                    channel, members[channel.id], server.mention(f"message {round_}")))
        for channel in channels:
            await discord.wait_for(lambda c=channel: outcome(  # type: ignore[misc]
                server, c, sent[c.id]).answered == 3, timeout=60)
    for channel in channels:
        bot_messages = [m for m in discord.messages(channel)
                        if int(m["author"]["id"]) == server.bot.id]
        assert bot_messages[0].get("message_reference") is None  # the greeting comes first
        assert outcome(server, channel, sent[channel.id]) == Delivery(answered=3)


async def test_an_engine_error_ends_in_a_notice_and_the_next_mention_is_answered(
    server: Server, db_path: Path, count_tokens: Callable[[str], int],
) -> None:
    engine = FailingOnceEngine([" Back on my feet."], count_tokens)
    discord = server.discord
    async with bot_with_engine(server, bot_settings(server, db_path), engine):
        first = await discord.send_message(server.roleplay, server.member,
                                           server.mention("hello?"))
        await discord.wait_for_message(server.roleplay,
                                       lambda m: m["content"] == ENGINE_FAILED_NOTICE)
        second = await discord.send_message(server.roleplay, server.member,
                                            server.mention("hello again"))
        await discord.wait_for_message(server.roleplay,
                                       lambda m: m["content"] == "Back on my feet.")
    assert replies(server, server.roleplay) == [
        (int(first["id"]), ENGINE_FAILED_NOTICE), (int(second["id"]), "Back on my feet.")]
    assert ("user", "Aria hello?") not in await remembered(db_path, server.roleplay.id)


async def test_a_429_on_the_reply_is_waited_out_and_the_reply_posted_once(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Patience pays.")
    discord.fail_next("POST /channels/{channel_id}/messages", status=429, retry_after=0.2)
    asked = await discord.send_message(server.roleplay, server.member, server.mention("hi"))
    await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "Patience pays.")
    await discord.settle()
    assert outcome(server, server.roleplay, [asked]) == Delivery(answered=1)
    assert replies(server, server.roleplay) == [(int(asked["id"]), "Patience pays.")]


async def test_a_burst_of_server_errors_on_the_reply_is_retried_and_posted_once(
    server: Server, scripted_bot: ScriptedEngine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(DiscordPoster, "retry_delays_s", (0.05, 0.05, 0.05))
    discord = server.discord
    scripted_bot.script(" Ready.", " Through the storm.")
    await discord.send_message(server.roleplay, server.member, server.mention("warm-up"))
    await discord.wait_for(lambda: len(replies(server, server.roleplay)) == 1)
    discord.fail_next("POST /channels/{channel_id}/messages", status=503, times=3,
                      message="Service Unavailable")
    asked = await discord.send_message(server.roleplay, server.member, server.mention("hi"))
    await discord.wait_for_message(server.roleplay,
                                   lambda m: m["content"] == "Through the storm.")
    assert replies(server, server.roleplay)[1:] == [(int(asked["id"]), "Through the storm.")]


async def test_a_reply_discord_keeps_refusing_stays_stored_and_is_posted_on_the_next_try(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(DiscordPoster, "retry_delays_s", ())
    monkeypatch.setattr("pygbot.intake.POST_RETRY_DELAYS_S", (0.1, 0.1))
    discord = server.discord
    scripted_bot.script(" Ready.", " Eventually.")
    await discord.send_message(server.roleplay, server.member, server.mention("warm-up"))
    await discord.wait_for(lambda: len(replies(server, server.roleplay)) == 1)
    discord.fail_next("POST /channels/{channel_id}/messages", status=503, times=2)
    asked = await discord.send_message(server.roleplay, server.member, server.mention("hi"))
    await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "Eventually.")
    assert replies(server, server.roleplay)[1:] == [(int(asked["id"]), "Eventually.")]
    assert ("character", "Eventually.") in await remembered(db_path, server.roleplay.id)


async def test_a_database_locked_for_a_while_delays_the_reply_but_loses_nothing(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pygbot.store, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(pygbot.store, "WRITE_RETRY_PAUSE_S", 0.3)
    discord = server.discord
    scripted_bot.script(" Ready.", " Worth the wait.")
    await discord.send_message(server.roleplay, server.member, server.mention("warm-up"))
    await discord.wait_for(lambda: len(replies(server, server.roleplay)) == 1)
    with locked(db_path):  # e.g. a backup holding the write lock
        asked = await discord.send_message(server.roleplay, server.member,
                                           server.mention("still there?"))
        await asyncio.sleep(0.5)
        assert len(replies(server, server.roleplay)) == 1
    await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "Worth the wait.")
    assert replies(server, server.roleplay)[1:] == [(int(asked["id"]), "Worth the wait.")]


async def test_a_database_that_stays_locked_ends_in_a_notice(
    server: Server, db_path: Path, scripted_bot: ScriptedEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pygbot.store, "BUSY_TIMEOUT_MS", 50)
    monkeypatch.setattr(pygbot.store, "WRITE_RETRY_PAUSE_S", 0.01)
    monkeypatch.setattr(pygbot.store, "WRITE_ATTEMPTS", 2)
    discord = server.discord
    await discord.send_message(server.roleplay, server.member, server.mention("warm-up"))
    await discord.wait_for(lambda: len(replies(server, server.roleplay)) == 1)
    with locked(db_path):
        asked = await discord.send_message(server.roleplay, server.member,
                                           server.mention("hello?"))
        notice = await discord.wait_for_message(
            server.roleplay, lambda m: m["content"] == DATABASE_FAILED_NOTICE, timeout=30)
    assert int(notice["message_reference"]["message_id"]) == int(asked["id"])


async def test_a_member_who_floods_is_told_once_and_the_rest_are_answered(
    server: Server, db_path: Path, count_tokens: Callable[[str], int],
) -> None:
    # Distinct replies: the two allowed mentions get one reply or two, depending on whether
    # they arrive together, and a second identical reply would be refused as a repeat.
    engine = ScriptedEngine([" First.", " Second."], count_tokens)
    settings = bot_settings(server, db_path, rate_limit_burst=2, rate_limit_per_minute=1)
    discord = server.discord
    async with bot_with_engine(server, settings, engine):
        sent = [await discord.send_message(server.roleplay, server.member,
                                           server.mention(f"spam {n}")) for n in range(5)]
        await discord.wait_for(lambda: outcome(server, server.roleplay, sent[:2]).answered == 2)
        await discord.wait_for(lambda: any(
            m["content"].startswith("You're writing faster") for m in
            discord.messages(server.roleplay)))
        await discord.settle()
    notices = [m for m in discord.messages(server.roleplay)
               if m["content"].startswith(RATE_LIMITED_NOTICE.split("{")[0][:20])]
    assert len(notices) == 1
    assert int(notices[0]["message_reference"]["message_id"]) == int(sent[2]["id"])
    assert outcome(server, server.roleplay, sent[:2]) == Delivery(answered=2)


async def test_a_full_backlog_says_so_and_still_answers_later(
    server: Server, db_path: Path, count_tokens: Callable[[str], int],
) -> None:
    release = threading.Event()
    engine = ScriptedEngine([" One.", " Two.", " Three."], count_tokens, release)
    settings = bot_settings(server, db_path, pending_max=1)
    discord = server.discord
    async with bot_with_engine(server, settings, engine) as services:
        first = await discord.send_message(server.roleplay, server.member, server.mention("a"))
        await discord.wait_for(lambda: services.worker.depth == 1)
        second = await discord.send_message(server.roleplay_two, server.member,
                                            server.mention("b"))
        await discord.wait_for_message(server.roleplay_two,
                                       lambda m: m["content"] == BACKLOG_NOTICE)
        release.set()
        await discord.wait_for(lambda: outcome(server, server.roleplay_two, [second]).answered)
    assert outcome(server, server.roleplay, [first]) == Delivery(answered=1)
    assert outcome(server, server.roleplay_two, [second]) == Delivery(answered=1, notices=1)


@pytest.mark.parametrize("resumable", [True, False], ids=["resumed", "not-resumable"])
async def test_a_mention_sent_while_the_gateway_was_away_is_answered_once(
    server: Server, db_path: Path, count_tokens: Callable[[str], int], resumable: bool,
) -> None:
    engine = ScriptedEngine([" Hello.", " Welcome back."], count_tokens)
    discord = server.discord
    async with bot_with_engine(server, bot_settings(server, db_path), engine) as services:
        first = await discord.send_message(server.roleplay, server.member, server.mention("hi"))
        await discord.wait_for(lambda: len(replies(server, server.roleplay)) == 1)
        async with discord.gateway_outage(resumable=resumable):
            gap = await discord.send_message(server.roleplay, server.member,
                                             server.mention("are you there?"))
        # Resumed: the gap is replayed. Not resumable: a new session; catch-up finds it.
        await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "Welcome back.")
        await eventually(lambda: nothing_open(services.store))
        await discord.settle()
    assert discord.identify_count == (1 if resumable else 2)
    assert replies(server, server.roleplay) == [
        (int(first["id"]), "Hello."), (int(gap["id"]), "Welcome back.")]
    assert len(engine.requests) == 2


async def test_a_first_mention_in_a_new_channel_while_the_bot_was_away_is_answered(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    scripted_bot.script(" Hello.", " Nice to meet you.")
    await discord.send_message(server.roleplay, server.member, server.mention("hi"))
    await discord.wait_for(lambda: len(replies(server, server.roleplay)) == 1)
    async with discord.gateway_outage(resumable=False):  # nothing of the gap is replayed
        asked = await discord.send_message(server.roleplay_two, server.admin,
                                           server.mention("first time here"))
    reply = await discord.wait_for_message(server.roleplay_two,
                                           lambda m: m["content"] == "Nice to meet you.")
    assert int(reply["message_reference"]["message_id"]) == int(asked["id"])


class locked:  # noqa: N801 - used as a context manager, like contextlib's
    """Another process's write lock on the database (a backup, an sqlite3 shell)."""

    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        self._connection: sqlite3.Connection | None = None

    def __enter__(self) -> locked:
        connection = sqlite3.connect(self._db_path, isolation_level=None,
                                     check_same_thread=False)
        connection.execute("BEGIN IMMEDIATE")
        self._connection = connection
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._connection is not None
        self._connection.execute("ROLLBACK")
        self._connection.close()


async def test_a_stop_while_the_bot_catches_up_at_start_is_quiet_and_loses_nothing(
    server: Server, db_path: Path, scripted: ScriptedEngine, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    discord = server.discord
    asked = await discord.send_message(server.roleplay, server.member,
                                       server.mention("anyone there?"))  # before the start
    # Reading the channel back at start-up is slow; the stop comes meanwhile, and closes the
    # database (as a SIGTERM does) before the catch-up has recorded the message.
    discord.delay_next("GET /channels/{channel_id}/messages", 1.0)
    settings = bot_settings(server, db_path)
    store = await Store.open(db_path)
    async with Worker(scripted) as worker:
        bot = PygBot(services_around(settings, store, worker, scripted), guild_ready_timeout=0.1)
        async def reading_back() -> bool:
            return any(r.method == "GET" and r.path == f"/channels/{server.roleplay.id}/messages"
                       for r in discord.requests)

        async with connected(bot, discord):
            await eventually(reading_back)
            await bot.intake.stop(0)
            await store.close()
            await asyncio.sleep(1.5)  # the catch-up goes on against the closed database
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems]
    assert "on_ready left for the next start: the bot is stopping" in caplog.text
    assert not [m for m in discord.messages(server.roleplay) if m.get("message_reference")]
    scripted.script(" Yes, I'm here.")  # the next start reads the message back and answers
    async with bot_with_engine(server, settings, scripted):
        reply = await discord.wait_for_message(server.roleplay,
                                               lambda m: m["content"] == "Yes, I'm here.")
    assert int(reply["message_reference"]["message_id"]) == int(asked["id"])
