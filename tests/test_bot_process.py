"""A real `python bot.py` process against the emulator: stop signals, SIGKILL and restarts.

Each test runs the bot as an admin would (settings in the environment, the tiny model from a
folder, a real SQLite file) and asserts what members see and what the admin sees: every
mention answered exactly once, in order; a clean stop logged and exit status 0.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.bot_process import STOPPED_LINE, BotProcess, bot_environment
from tests.delivery import Delivery, account
from tests.discord_emulator import Channel, User
from tests.discord_harness import Server

JSON = dict[str, Any]
# The in-flight reply must be posted before the bot exits: a grace long enough for the tiny
# model on a busy machine (the 8 s default was not always), so a stop that does not wait for
# the reply still fails while a slow machine does not.
SHUTDOWN_GRACE_S = 60.0
STOP_TIMEOUT_S = SHUTDOWN_GRACE_S + 60.0
ANSWER_TIMEOUT_S = 180.0
SLOW_TYPING_S = 1.0  # how long Discord takes to acknowledge "typing" in the signal tests


@pytest.fixture
async def bot(server: Server, db_path: Path, tiny_model_dir: Path,
              tmp_path: Path) -> AsyncIterator[BotProcess]:
    process = BotProcess(bot_environment(server.discord, tiny_model_dir, db_path,
                                         SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S)),
                         tmp_path / "bot.log")
    await process.start_and_wait_ready()
    try:
        yield process
    finally:
        await process.kill()  # only if a test left it running


def outcome(server: Server, channel: Channel, mentions: Sequence[JSON]) -> Delivery:
    return account(server.discord.messages(channel), server.bot.id,
                   {int(m["id"]) for m in mentions})


def typing_requested(server: Server, channel: Channel) -> bool:
    return any(r.method == "POST" and r.path == f"/channels/{channel.id}/typing"
               for r in server.discord.requests)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_during_a_reply_posts_it_logs_the_stop_and_exits_0(
    server: Server, bot: BotProcess, signum: signal.Signals,
) -> None:
    discord = server.discord
    # The reply's typing indicator goes out right before generation; holding Discord's answer
    # to it a moment makes certain the signal arrives while the reply is being made.
    discord.delay_next(f"POST /channels/{server.roleplay.id}/typing", SLOW_TYPING_S)
    asked = await discord.send_message(server.roleplay, server.member,
                                       server.mention("tell me a story"))
    await discord.wait_for(lambda: typing_requested(server, server.roleplay), timeout=60)
    bot.send_signal(signum)
    status = await bot.wait(STOP_TIMEOUT_S)
    log = bot.log()
    assert status == 0, log
    assert outcome(server, server.roleplay, [asked]) == Delivery(answered=1)
    assert "for 1 repl(ies) in progress" in log  # the reply was in flight at the signal
    assert STOPPED_LINE in log
    assert "Session is closed" not in log and "Traceback" not in log


async def test_sigkill_during_a_burst_then_a_restart_answers_every_mention_once_in_order(
    server: Server, bot: BotProcess,
) -> None:
    discord = server.discord
    talkers: dict[int, User] = {server.roleplay.id: server.member,
                                server.roleplay_two.id: server.admin}
    channels = [server.roleplay, server.roleplay_two]
    sent: dict[int, list[JSON]] = {channel.id: [] for channel in channels}

    async def mention(channel: Channel, text: str) -> None:
        sent[channel.id].append(await discord.send_message(
            channel, talkers[channel.id], server.mention(text)))

    for round_ in range(4):  # within the per-member burst allowance
        for channel in channels:
            await mention(channel, f"burst {round_}")
    await discord.wait_for(lambda: any(
        outcome(server, c, sent[c.id]).answered for c in channels), timeout=ANSWER_TIMEOUT_S)
    await bot.kill()  # mid-burst: some answered, some in flight, some waiting
    for channel in channels:  # written while the bot is down: found by catch-up
        await mention(channel, "are you back?")
    await bot.start_and_wait_ready()
    await discord.wait_for(lambda: all(
        outcome(server, c, sent[c.id]).answered == len(sent[c.id]) for c in channels),
        timeout=ANSWER_TIMEOUT_S)
    bot.send_signal(signal.SIGTERM)  # nothing posted after this point can go unseen
    assert await bot.wait(STOP_TIMEOUT_S) == 0
    for channel in channels:
        assert outcome(server, channel, sent[channel.id]) == Delivery(answered=5)
