"""Carrying a reply in progress from the model's thread to the event loop.

The engine calls `GenerationRequest.on_text` from the thread that generates, once per step;
listeners (the console, the Discord cog) live on the event loop. `TextRelay` crosses over
with `loop.call_soon_threadsafe` and coalesces: however many steps the thread produced since
the loop last looked, the loop handles only the newest text, so a slow loop never falls
behind a fast model. It also wakes the loop at most every `RELAY_INTERVAL_S`: working out the
visible text is Python on the loop, and doing it after every step of a fast model took the
interpreter lock from the generating thread often enough to slow generation down.

`ThrottledShow` is the other end for a listener that must not show every change (a Discord
message may be edited only so often): it shows the newest text at most once per interval,
one request at a time, dropping whatever a newer text replaced meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

PartialListener = Callable[[str], None]  # called on the event loop with the text to show
RELAY_INTERVAL_S = 0.2  # sentences arrive far slower than this; listeners never notice


class TextRelay:
    """One attempt's generated text, turned into visible text on the loop.

    `on_text` is the engine-side callback (any thread). Each newest text goes through
    `visible` on the loop, and `listener` hears it when it differs from what it heard last.
    After `close()` nothing more is delivered.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, visible: Callable[[str], str],
                 listener: PartialListener) -> None:
        self._loop = loop
        self._visible = visible
        self._listener = listener
        self._lock = threading.Lock()
        self._pending: str | None = None  # newest text the loop has not handled yet
        self._shown = ""
        self._closed = False
        self._last_delivery = float("-inf")  # loop time

    def on_text(self, generated: str) -> None:
        """Engine side: remember the newest text; wake the loop if it is not already due."""
        with self._lock:
            scheduled = self._pending is not None
            self._pending = generated
        if not scheduled and not self._closed and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver_in_time)

    def close(self) -> None:
        """The attempt is over (call on the loop): its newest text is delivered now, if it
        was still waiting, and nothing after."""
        if not self._closed:
            self._deliver()
        self._closed = True

    def _deliver_in_time(self) -> None:
        wait = self._last_delivery + RELAY_INTERVAL_S - self._loop.time()
        if wait > 0:
            self._loop.call_later(wait, self._deliver)
        else:
            self._deliver()

    def _deliver(self) -> None:
        self._last_delivery = self._loop.time()
        with self._lock:
            generated, self._pending = self._pending, None
        if self._closed or generated is None:
            return
        shown = self._visible(generated)
        if shown and shown != self._shown:
            self._shown = shown
            self._listener(shown)


class ThrottledShow:
    """Shows the newest pushed text through the coroutine `show`, one call at a time, each
    starting at least `interval_s` after the one before. `push` is a `PartialListener`.

    A failing `show` is logged and does not stop later ones (the caller's `show` decides
    whether to give up). `close()` waits for a call in progress, so whatever it was doing
    (e.g. creating the message) has happened or failed before the caller goes on, and drops
    text still waiting.
    """

    def __init__(self, show: Callable[[str], Awaitable[None]], interval_s: float) -> None:
        self._show = show
        self._interval_s = interval_s
        self._wanted: str | None = None  # newest text not shown yet
        self._next_at = 0.0  # loop time before which no call may start
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def push(self, text: str) -> None:
        if self._closed.is_set():
            return
        self._wanted = text
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def close(self) -> None:
        self._closed.set()
        self._wanted = None
        if self._task is not None:
            await self._task

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self._wanted is not None and not self._closed.is_set():
            delay = self._next_at - loop.time()
            if delay > 0:  # wait out the interval, unless closed meanwhile
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), delay)
                continue  # look again: closed, or time is up (timers may fire a hair early)
            text, self._wanted = self._wanted, None
            self._next_at = loop.time() + self._interval_s
            try:
                await self._show(text)
            except Exception:
                log.exception("showing a reply in progress failed")
