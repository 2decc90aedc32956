"""Carrying a reply in progress from the model's thread to the event loop.

The engine calls `GenerationRequest.on_text` from the thread that generates, once per step;
listeners (the console, the Discord cog) live on the event loop. `TextRelay` crosses over
with `loop.call_soon_threadsafe` and coalesces: however many steps the thread produced since
the loop last looked, the loop handles only the newest text, so a slow loop never falls
behind a fast model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

PartialListener = Callable[[str], None]  # called on the event loop with the text to show


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

    def on_text(self, generated: str) -> None:
        """Engine side: remember the newest text; wake the loop if it is not already due."""
        with self._lock:
            scheduled = self._pending is not None
            self._pending = generated
        if not scheduled and not self._closed and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver)

    def close(self) -> None:
        self._closed = True

    def _deliver(self) -> None:
        with self._lock:
            generated, self._pending = self._pending, None
        if self._closed or generated is None:
            return
        shown = self._visible(generated)
        if shown and shown != self._shown:
            self._shown = shown
            self._listener(shown)
