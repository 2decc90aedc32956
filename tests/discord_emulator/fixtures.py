"""pytest helpers: the `discord_emulator` fixture and `connected()` to run a bot against it.

Register in tests/conftest.py with:
    from tests.discord_emulator.fixtures import discord_emulator  # noqa: F401
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

import pytest

from tests.discord_emulator.emulator import DiscordEmulator

if TYPE_CHECKING:
    import discord

ClientT = TypeVar("ClientT", bound="discord.Client")

READY_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0


@pytest.fixture
async def discord_emulator() -> AsyncIterator[DiscordEmulator]:
    """A started emulator with discord.py pointed at it; stopped and unpatched afterwards."""
    async with DiscordEmulator() as emulator:
        yield emulator


@contextlib.asynccontextmanager
async def connected(
    bot: ClientT,
    emulator: DiscordEmulator,
    token: str | None = None,
    *,
    ready_timeout: float = READY_TIMEOUT_S,
) -> AsyncIterator[ClientT]:
    """Run `bot.start(token)` as a task until `on_ready`, yield the bot, then close it.

    Build the client with `guild_ready_timeout=0.1` or on_ready waits 2 s. A crash of the
    client task fails the emulator's waits at once and is re-raised when the block exits;
    a client that stops before becoming ready raises here (e.g. LoginFailure, 4014).
    """
    ready = asyncio.Event()
    _on_ready(bot, ready)
    task: asyncio.Task[None] = asyncio.create_task(
        bot.start(token or emulator.token), name="discord-bot"
    )
    emulator.events.watch(task)
    try:
        await _until_ready(task, ready, ready_timeout)
        yield bot
    finally:
        await _close(bot, task)


def _on_ready(bot: discord.Client, ready: asyncio.Event) -> None:
    async def set_ready() -> None:
        ready.set()

    add_listener = getattr(bot, "add_listener", None)
    if add_listener is not None:  # commands.Bot: an extra listener leaves on_ready alone
        add_listener(set_ready, "on_ready")
        return
    original = bot.dispatch

    def dispatch(event: str, /, *args: object, **kwargs: object) -> None:
        if event == "ready":
            ready.set()
        original(event, *args, **kwargs)

    bot.dispatch = dispatch  # type: ignore[method-assign]


async def _until_ready(task: asyncio.Task[None], ready: asyncio.Event, timeout: float) -> None:
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait(
        {task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if waiter not in done:
        waiter.cancel()
        if task in done:
            task.result()  # re-raise why the client stopped
            raise RuntimeError("the bot stopped before it became ready")
        raise TimeoutError(f"the bot was not ready within {timeout}s")


async def _close(bot: discord.Client, task: asyncio.Task[None]) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(bot.close(), CLOSE_TIMEOUT_S)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT_S)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
