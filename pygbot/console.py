"""Chat with the character in a terminal, through the same service and memory as Discord.

One message per line. Piped input works too (`echo hi | python bot.py --console`): the
session ends at the end of input. `/reset`, `/retry` and `/quit` do what they say.
"""

from __future__ import annotations

import asyncio
from typing import TextIO

from pygbot.chat import Author, ChatService, EmptyReplyError, NothingToRegenerateError
from pygbot.worker import QueueFullError

CONSOLE_GUILD_ID = 0  # the terminal is its own "server": its character choice is its own
CONSOLE_CHANNEL_ID = 0
CONSOLE_AUTHOR = Author(id=0, display_name="You")
HELP = "Type a message and press Enter. /reset forgets the chat, /retry rerolls, /quit leaves."


class Console:
    def __init__(self, chat: ChatService, stdin: TextIO, stdout: TextIO) -> None:
        self._chat = chat
        self._in = stdin
        self._out = stdout
        self._interactive = stdin.isatty()

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
            elif text == "/retry":
                turn = await self._chat.regenerate(CONSOLE_CHANNEL_ID, CONSOLE_GUILD_ID)
                self._say(f"{turn.name}: {turn.text}")
            else:
                reply = await self._chat.reply(
                    CONSOLE_CHANNEL_ID, CONSOLE_GUILD_ID, CONSOLE_AUTHOR, text)
                self._say(f"{reply.turn.name}: {reply.turn.text}")
        except (EmptyReplyError, NothingToRegenerateError, QueueFullError) as error:
            self._say(f"({error}; nothing was stored, try again)")

    async def _read_line(self) -> str | None:
        if self._interactive:
            self._out.write("You: ")
            self._out.flush()
        line = await asyncio.to_thread(self._in.readline)
        return line or None  # "" means end of input; a blank line is "\n"

    def _say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()
