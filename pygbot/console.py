"""Chat with the character in a terminal, through the same service and memory as Discord.

One message per line. Piped input works too (`echo hi | python bot.py --console`): the
session ends at the end of input. `/reset`, `/retry` and `/quit` do what they say.

On a terminal, replies stream: the character's line grows sentence by sentence while it is
generated, and a resample rewrites it in place. Output that is not a terminal (a pipe, a file)
gets each reply once, whole, so it stays one line per reply for whatever reads it.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from typing import TextIO

from pygbot.chat import (
    Author,
    ChatService,
    EmptyReplyError,
    GreedyRegenerateError,
    NothingToRegenerateError,
)
from pygbot.engine_errors import EngineRequestError, EngineUnavailableError
from pygbot.streaming import PartialListener
from pygbot.worker import QueueFullError

CONSOLE_GUILD_ID = 0  # the terminal is its own "server": its character choice is its own
CONSOLE_CHANNEL_ID = 0
CONSOLE_AUTHOR = Author(id=0, display_name="You")
HELP = "Type a message and press Enter. /reset forgets the chat, /retry rerolls, /quit leaves."
# ANSI: carriage return, cursor up one row, erase from the cursor to the end of the screen.
LINE_START, ROW_UP, ERASE_BELOW = "\r", "\x1b[1A", "\x1b[J"


class LiveLine:
    """The character's line on a terminal while it streams: new text is appended; text that
    does not continue what is shown (a resample) erases the line and writes it anew."""

    def __init__(self, out: TextIO, name: str) -> None:
        self._out = out
        self._prefix = f"{name}: "
        self._shown: str | None = None

    def show(self, text: str) -> None:
        if self._shown is not None and text.startswith(self._shown):
            self._out.write(text[len(self._shown):])
        else:
            self.erase()
            self._out.write(self._prefix + text)
        self._shown = text
        self._out.flush()

    def finish(self, text: str) -> None:
        self.show(text)
        self._out.write("\n")
        self._out.flush()
        self._shown = None

    def erase(self) -> None:
        """Remove what was shown (before a notice, or a resample that starts over)."""
        if self._shown is None:
            return
        self._out.write(LINE_START + ROW_UP * (self._rows(self._prefix + self._shown) - 1)
                        + ERASE_BELOW)
        self._out.flush()
        self._shown = None

    @staticmethod
    def _rows(text: str) -> int:
        width = max(shutil.get_terminal_size().columns, 1)
        return sum(max(math.ceil(len(line) / width), 1) for line in text.split("\n"))


class Console:
    def __init__(self, chat: ChatService, stdin: TextIO, stdout: TextIO,
                 stream: bool = True) -> None:
        self._chat = chat
        self._in = stdin
        self._out = stdout
        self._interactive = stdin.isatty()
        self._stream = stream and stdout.isatty()

    async def run(self) -> int:
        """Chat until end of input or /quit; returns the exit status."""
        persona = await self._chat.library.active(CONSOLE_GUILD_ID)
        if self._interactive:
            self._say(f"Chatting with {persona.name}. {HELP}")
        greeting = await self._chat.start_conversation(CONSOLE_CHANNEL_ID, CONSOLE_GUILD_ID)
        if greeting is not None:
            self._say(f"{greeting.name}: {greeting.text}")
        while (line := await self._read_line()) is not None:
            text = line.strip()
            if text == "/quit":
                break
            if text:
                await self._handle(text)
        return 0

    async def _handle(self, text: str) -> None:
        try:
            if text == "/reset":
                greeting = await self._chat.reset(CONSOLE_CHANNEL_ID, CONSOLE_GUILD_ID)
                self._say("(memory cleared)")
                if greeting is not None:
                    self._say(f"{greeting.name}: {greeting.text}")
            else:
                await self._answer(text)
        except GreedyRegenerateError as error:
            self._say(f"({error})")  # trying again would not help
        except (EmptyReplyError, NothingToRegenerateError, QueueFullError,
                EngineUnavailableError, EngineRequestError) as error:
            self._say(f"({error}; nothing was stored, try again)")

    async def _answer(self, text: str) -> None:
        """A reply (or, for /retry, a new alternative), streamed when the output can show it."""
        persona = await self._chat.library.active(CONSOLE_GUILD_ID, CONSOLE_CHANNEL_ID)
        live = LiveLine(self._out, persona.name)
        on_partial: PartialListener | None = live.show if self._stream else None
        try:
            if text == "/retry":
                turn = await self._chat.regenerate(CONSOLE_CHANNEL_ID, CONSOLE_GUILD_ID,
                                                   on_partial=on_partial)
            else:
                turn = (await self._chat.reply(CONSOLE_CHANNEL_ID, CONSOLE_GUILD_ID,
                                               CONSOLE_AUTHOR, text,
                                               on_partial=on_partial)).turn
        except BaseException:
            live.erase()
            raise
        if self._stream:
            live.finish(turn.text)
        else:
            self._say(f"{turn.name}: {turn.text}")

    async def _read_line(self) -> str | None:
        if self._interactive:
            self._out.write("You: ")
            self._out.flush()
        line = await asyncio.to_thread(self._in.readline)
        return line or None  # "" means end of input; a blank line is "\n"

    def _say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()
