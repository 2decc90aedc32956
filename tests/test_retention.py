"""Retention against a real SQLite file: old turns are pruned per channel and by age, /reset
and forgetting give the space back, and forgotten text leaves the disk."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pygbot.retention import SECONDS_PER_DAY, Retention, RetentionPolicy
from pygbot.store import IntakeMessage, NewTurn, Store

CHANNEL = 111
OTHER_CHANNEL = 222
BOB = 42
ALICE = 43
PAGE_FILLER = "x" * 2000  # a turn of about half a page


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pygbot.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    async with await Store.open(db_path) as opened:
        yield opened


async def talk(store: Store, channel_id: int, count: int, text: str = "hello",
               author_id: int = BOB) -> None:
    """`count` exchanges: a member's message and the character's reply."""
    for index in range(count):
        await store.add_turns(channel_id, [
            NewTurn("user", "Bob" if author_id == BOB else "Alice", f"{text} {index}", author_id),
            NewTurn("character", "Aria", f"reply {index}")])


def disk_bytes(db_path: Path) -> bytes:
    """Everything SQLite keeps on disk for this database: the file and its WAL."""
    wal = db_path.with_name(db_path.name + "-wal")
    return db_path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def test_each_channel_keeps_its_newest_turns(store: Store) -> None:
    await talk(store, CHANNEL, 10)
    await talk(store, OTHER_CHANNEL, 2)
    removed = await Retention(store, RetentionPolicy(6, 0, SECONDS_PER_DAY)).prune_once()
    assert removed == 14
    kept = [turn.text for turn in await store.history(CHANNEL)]
    assert kept == ["hello 7", "reply 7", "hello 8", "reply 8", "hello 9", "reply 9"]
    assert len(await store.history(OTHER_CHANNEL)) == 4


async def test_turns_older_than_the_age_limit_go_but_a_reply_not_yet_posted_stays(
    store: Store,
) -> None:
    await talk(store, CHANNEL, 3)
    waiting = IntakeMessage(message_id=900, channel_id=CHANNEL, guild_id=1, author_id=BOB,
                            author_name="Bob", text="still owed", created_at=time.time())
    await store.record_intake(waiting)
    *_, owed = await store.add_turns(CHANNEL, [
        NewTurn("user", "Bob", "still owed", BOB, message_id=900),
        NewTurn("character", "Aria", "stored, not posted yet")])
    three_days_later = time.time() + 3 * SECONDS_PER_DAY
    retention = Retention(store, RetentionPolicy(1000, 2, SECONDS_PER_DAY),
                          clock=lambda: three_days_later)
    assert await retention.prune_once() == 7
    assert [turn.id for turn in await store.history(CHANNEL)] == [owed.id]


async def test_without_an_age_limit_old_turns_stay(store: Store) -> None:
    await talk(store, CHANNEL, 3)
    ten_years_later = time.time() + 3650 * SECONDS_PER_DAY
    retention = Retention(store, RetentionPolicy(1000, 0, SECONDS_PER_DAY),
                          clock=lambda: ten_years_later)
    assert await retention.prune_once() == 0
    assert len(await store.history(CHANNEL)) == 6


async def test_reset_gives_the_space_back_to_the_file_system(store: Store, db_path: Path) -> None:
    await talk(store, CHANNEL, 1000, PAGE_FILLER)
    await store.reclaim_space()
    full = db_path.stat().st_size
    assert await store.clear_channel(CHANNEL) == 2000
    assert db_path.stat().st_size < full / 10


async def test_pruning_gives_the_space_back_too(store: Store, db_path: Path) -> None:
    await talk(store, CHANNEL, 1000, PAGE_FILLER)
    await store.reclaim_space()
    full = db_path.stat().st_size
    await Retention(store, RetentionPolicy(100, 0, SECONDS_PER_DAY)).prune_once()
    assert db_path.stat().st_size < full / 5


async def test_a_database_made_before_retention_is_switched_once_and_keeps_its_data(
    db_path: Path,
) -> None:
    async with await Store.open(db_path) as store:
        await talk(store, CHANNEL, 1000, PAGE_FILLER)
    with sqlite3.connect(db_path, isolation_level=None) as old:  # as older pygbot made it
        old.executescript("PRAGMA auto_vacuum = NONE; VACUUM;")
        assert old.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    old.close()
    async with await Store.open(db_path) as store:
        assert len(await store.history(CHANNEL, 5000)) == 2000
        full = db_path.stat().st_size
        await store.clear_channel(CHANNEL)
        assert db_path.stat().st_size < full / 10
    with sqlite3.connect(db_path) as reopened:
        assert reopened.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    reopened.close()


async def test_forget_author_removes_a_members_messages_everywhere_and_nothing_else(
    store: Store, db_path: Path,
) -> None:
    await talk(store, CHANNEL, 2, "my secret is swordfish", BOB)
    await talk(store, OTHER_CHANNEL, 1, "bob elsewhere", BOB)
    await talk(store, CHANNEL, 1, "alice here", ALICE)
    await store.record_intake(IntakeMessage(
        message_id=901, channel_id=CHANNEL, guild_id=1, author_id=BOB, author_name="Bob",
        text="my secret is swordfish, again", created_at=time.time()))
    assert await store.forget_author(BOB) == 3
    remaining = [(t.name, t.text) for t in await store.history(CHANNEL)]
    assert ("Alice", "alice here 0") in remaining
    assert not [name for name, _ in remaining if name == "Bob"]
    assert [t.role for t in await store.history(OTHER_CHANNEL)] == ["character"]
    assert await store.open_intake(CHANNEL) == []
    assert b"swordfish" not in disk_bytes(db_path)  # overwritten, not left in free pages


async def test_reset_text_leaves_the_disk(store: Store, db_path: Path) -> None:
    await talk(store, CHANNEL, 3, "the launch code is 0000")
    await store.clear_channel(CHANNEL)
    assert b"launch code" not in disk_bytes(db_path)
