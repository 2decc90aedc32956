"""Several characters in one channel: who is here, and whom a message addresses.

A channel always has its main character (the server's or the channel's own, as
`/persona switch` sets it). Where the character posts through a webhook, other characters
can join it (`/persona add`) up to a small limit; each then answers under its own name and
face. Which one answers a message:

1. the character named at the start of the message ("Pip, ..." / "Pip: ..."),
2. else the character whose message the member replied to,
3. else a character named anywhere in the message (the first one named),
4. else the main character.

Free of Discord: the cogs pass text and the name of the character replied to.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from pygbot.library import PersonaLibrary, UnknownPersonaError
from pygbot.persona import Persona
from pygbot.store import Store

log = logging.getLogger(__name__)

# Punctuation that may follow a name said to someone at the start of a message.
_VOCATIVE_END = r"\s*[,:!?.;—–-]"


class RosterFullError(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"this channel already holds {limit} characters, the most allowed "
                         "(MAX_CHARACTERS_PER_CHANNEL)")


class AlreadyHereError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is already in this channel")


class NotJoinedError(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} did not join this channel (the main character is changed "
                         "with /persona switch)")


@dataclass(frozen=True)
class Roster:
    """The characters of one channel: its main one first, then those that joined."""

    main: Persona
    joined: tuple[Persona, ...] = ()

    @property
    def characters(self) -> tuple[Persona, ...]:
        return (self.main, *self.joined)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(persona.name for persona in self.characters)

    def get(self, name: str | None) -> Persona | None:
        if name is None:
            return None
        key = name.strip().casefold()
        return next((p for p in self.characters if p.name.casefold() == key), None)

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def addressed(self, text: str, replied_to: str | None = None) -> Persona:
        """The character that answers `text` (see the module docstring); `replied_to` is
        the name of the character whose message the member replied to, if any."""
        if not self.joined:
            return self.main
        opening = self._named(text, lambda name: rf"^\W*{name}{_VOCATIVE_END}")
        if opening is not None:
            return opening
        replied = self.get(replied_to)
        if replied is not None:
            return replied
        return self._named(text, lambda name: rf"(?<!\w){name}(?!\w)") or self.main

    def names_someone(self, text: str) -> bool:
        """Whether `text` names one of the characters that joined (it is then addressed to
        the channel's characters even without a mention of the bot)."""
        return bool(self.joined) and self._named(
            text, lambda name: rf"(?<!\w){name}(?!\w)") is not None

    def _named(self, text: str, pattern: Callable[[str], str]) -> Persona | None:
        """The character whose name `pattern` finds first in `text` (the longest name wins
        at one position: "Old Rook" before "Rook")."""
        best: tuple[int, int, Persona] | None = None
        for persona in self.characters:
            match = re.search(pattern(re.escape(persona.name)), text, re.IGNORECASE)
            if match is None:
                continue
            rank = (match.start(), -len(persona.name), persona)
            if best is None or rank[:2] < best[:2]:
                best = rank
        return best[2] if best is not None else None


class ChannelRoster:
    """Reads and changes which characters a channel holds (at most `limit`, main included)."""

    def __init__(self, store: Store, library: PersonaLibrary, limit: int) -> None:
        self._store = store
        self._library = library
        self.limit = limit

    async def roster(self, guild_id: int, channel_id: int) -> Roster:
        main = await self._library.active(guild_id, channel_id)
        joined: list[Persona] = []
        for name in await self._store.joined_characters(channel_id):
            if name.casefold() == main.name.casefold():
                continue  # became the main character with /persona switch
            try:
                joined.append(await self._library.get(guild_id, name))
            except UnknownPersonaError:
                log.info("character %r left channel %s: it was deleted", name, channel_id)
        return Roster(main, tuple(joined[:max(self.limit - 1, 0)]))

    async def add(self, guild_id: int, channel_id: int, name: str) -> Persona:
        """Let character `name` join the channel. Raises `UnknownPersonaError`,
        `AlreadyHereError` or `RosterFullError`."""
        persona = await self._library.get(guild_id, name)
        roster = await self.roster(guild_id, channel_id)
        if roster.has(persona.name):
            raise AlreadyHereError(persona.name)
        if len(roster.characters) >= self.limit:
            raise RosterFullError(self.limit)
        await self._store.join_character(channel_id, guild_id, persona.name)
        return persona

    async def remove(self, guild_id: int, channel_id: int, name: str) -> str:
        """Send a joined character away; the name it had. Raises `NotJoinedError`."""
        roster = await self.roster(guild_id, channel_id)
        persona = roster.get(name)
        if persona is None or persona is roster.main \
                or not await self._store.leave_character(channel_id, persona.name):
            raise NotJoinedError(persona.name if persona is not None else name.strip())
        return persona.name

    async def clear(self, channel_id: int) -> None:
        """Only the main character stays (webhook posting was switched off)."""
        for name in await self._store.joined_characters(channel_id):
            await self._store.leave_character(channel_id, name)
