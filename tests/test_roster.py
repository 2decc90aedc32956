"""Several characters in one channel: who answers a message, and who may join (real SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pygbot.library import PersonaLibrary, UnknownPersonaError
from pygbot.persona import Persona
from pygbot.roster import (
    AlreadyHereError,
    ChannelRoster,
    NotJoinedError,
    Roster,
    RosterFullError,
)
from pygbot.store import Store

GUILD, CHANNEL, OTHER_CHANNEL = 1, 10, 11


def character(name: str) -> Persona:
    return Persona(name=name, persona=f"{name} is a test character.")


ARIA, PIP, ROOK, OLD_ROOK = (character(n) for n in ("Aria", "Pip", "Rook", "Old Rook"))


@pytest.mark.parametrize(("text", "replied_to", "answers"), [
    ("Pip, what do you think?", None, "Pip"),
    ("pip: hello", None, "Pip"),
    ("  *waves* hi", "Pip", "Pip"),  # a reply to Pip's message
    ("Aria, settle this", "Pip", "Aria"),  # named first beats the reply
    ("I wonder what Pip makes of this", None, "Pip"),
    ("Pip and Aria, come here", None, "Pip"),  # the first one named
    ("Pipette is a word, not a name", None, "Aria"),  # whole words only
    ("hello there", None, "Aria"),  # nobody named: the main character
    ("hello there", "Someone Gone", "Aria"),  # replied to a character no longer here
])
def test_the_character_named_or_replied_to_answers(text: str, replied_to: str | None,
                                                   answers: str) -> None:
    roster = Roster(ARIA, (PIP,))
    assert roster.addressed(text, replied_to).name == answers


def test_the_longest_name_wins_where_two_start_together() -> None:
    roster = Roster(ARIA, (ROOK, OLD_ROOK))
    assert roster.addressed("Old Rook, a tale?").name == "Old Rook"
    assert roster.addressed("Rook, a tale?").name == "Rook"


def test_with_one_character_the_main_one_answers_everything() -> None:
    roster = Roster(ARIA)
    assert roster.addressed("Pip, hello", "Pip").name == "Aria"
    assert not roster.names_someone("Aria, hello")  # a mention is still needed
    assert Roster(ARIA, (PIP,)).names_someone("so, ARIA?")


@pytest.fixture
async def rosters(tmp_path: Path) -> AsyncIterator[ChannelRoster]:
    async with await Store.open(tmp_path / "bot.sqlite3") as store:
        library = PersonaLibrary(store, {p.name: p for p in (ARIA, PIP, ROOK, OLD_ROOK)},
                                 "Aria")
        yield ChannelRoster(store, library, limit=3)


async def test_characters_join_up_to_the_limit_and_leave(rosters: ChannelRoster) -> None:
    assert (await rosters.add(GUILD, CHANNEL, "pip")).name == "Pip"
    await rosters.add(GUILD, CHANNEL, "Rook")
    assert (await rosters.roster(GUILD, CHANNEL)).names == ("Aria", "Pip", "Rook")
    with pytest.raises(RosterFullError, match="MAX_CHARACTERS_PER_CHANNEL"):
        await rosters.add(GUILD, CHANNEL, "Old Rook")
    with pytest.raises(AlreadyHereError):
        await rosters.add(GUILD, CHANNEL, "ROOK")
    with pytest.raises(AlreadyHereError):
        await rosters.add(GUILD, CHANNEL, "Aria")  # the main character is here already
    with pytest.raises(UnknownPersonaError):
        await rosters.add(GUILD, CHANNEL, "Nobody")
    assert (await rosters.roster(GUILD, OTHER_CHANNEL)).names == ("Aria",)

    assert await rosters.remove(GUILD, CHANNEL, "pip") == "Pip"
    with pytest.raises(NotJoinedError):
        await rosters.remove(GUILD, CHANNEL, "Pip")
    with pytest.raises(NotJoinedError):
        await rosters.remove(GUILD, CHANNEL, "Aria")  # /persona switch changes the main one
    assert (await rosters.roster(GUILD, CHANNEL)).names == ("Aria", "Rook")
    await rosters.clear(CHANNEL)
    assert (await rosters.roster(GUILD, CHANNEL)).names == ("Aria",)


async def test_the_roster_is_kept_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    builtins = {p.name: p for p in (ARIA, PIP)}
    async with await Store.open(path) as store:
        await ChannelRoster(store, PersonaLibrary(store, builtins, "Aria"), 3).add(
            GUILD, CHANNEL, "Pip")
    async with await Store.open(path) as store:
        roster = await ChannelRoster(store, PersonaLibrary(store, builtins, "Aria"),
                                     3).roster(GUILD, CHANNEL)
    assert roster.names == ("Aria", "Pip")
