"""Durable memory: conversations, each server's characters and settings, in one SQLite file.

The only module that speaks SQL. Durability rules:
- WAL journal, so a crash loses at most the transaction in flight and readers never block;
- one transaction per logical change (`Store._transaction`), so a reply and the message it
  answers are stored together or not at all;
- the schema grows by numbered migrations recorded in `PRAGMA user_version`, and a database
  written by a newer pygbot is refused rather than misread.

All statements share one aiosqlite connection. aiosqlite runs them one after another on its
thread, but a transaction spans several awaits, so an `asyncio.Lock` keeps other coroutines'
statements from landing inside someone else's BEGIN ... COMMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import aiosqlite

from pygbot.persona import Persona, PersonaError

log = logging.getLogger(__name__)

Role = Literal["user", "character"]

# How long a statement waits for another process's lock (a backup tool, sqlite3 shell)
# before failing with "database is locked".
BUSY_TIMEOUT_MS = 5_000
# A write that still finds the database locked is tried again this many times, pausing a
# little longer each time, before the caller is told (about half a minute at the defaults).
WRITE_ATTEMPTS = 5
WRITE_RETRY_PAUSE_S = 0.5

# Schema migrations: MIGRATIONS[n] takes the database from user_version n to n + 1.
# Append new scripts; never edit one that has shipped, because databases already ran it.
MIGRATIONS: tuple[str, ...] = (
    # 1: conversation memory, personas, server settings.
    # AUTOINCREMENT so a deleted turn's id is never reused: callers hold turn ids across awaits
    # (a reply being posted while /reset runs) and must not attach to a stranger's turn.
    """
    CREATE TABLE turns (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        channel_id  INTEGER NOT NULL,
        role        TEXT    NOT NULL CHECK (role IN ('user', 'character')),
        name        TEXT    NOT NULL,
        text        TEXT    NOT NULL,
        author_id   INTEGER,
        message_id  INTEGER UNIQUE,
        created_at  REAL    NOT NULL,
        chosen      INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX turns_by_channel ON turns (channel_id, id);

    CREATE TABLE alternatives (
        turn_id   INTEGER NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
        position  INTEGER NOT NULL,
        text      TEXT    NOT NULL,
        PRIMARY KEY (turn_id, position)
    ) WITHOUT ROWID;

    CREATE TABLE guild_personas (
        guild_id      INTEGER PRIMARY KEY,
        persona_name  TEXT NOT NULL
    );

    CREATE TABLE custom_personas (
        guild_id  INTEGER NOT NULL,
        name_key  TEXT    NOT NULL,
        data      TEXT    NOT NULL,
        PRIMARY KEY (guild_id, name_key)
    );

    CREATE TABLE guild_settings (
        guild_id            INTEGER PRIMARY KEY,
        allow_all_channels  INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 2: a channel (or thread) may play its own character instead of the server's.
    """
    CREATE TABLE channel_personas (
        channel_id    INTEGER PRIMARY KEY,
        guild_id      INTEGER NOT NULL,
        persona_name  TEXT    NOT NULL
    );
    CREATE INDEX channel_personas_by_guild ON channel_personas (guild_id);
    """,
    # 3: the durable intake. Every message the character is asked to answer is a row here
    # before it is queued; storing the reply marks it 'answered' (reply_turn_id) in the same
    # transaction, posting the reply marks it 'done'. The message id is the key, so a message
    # is taken once however often it is seen (live, replayed, read back from history).
    """
    CREATE TABLE intake (
        message_id     INTEGER PRIMARY KEY,
        channel_id     INTEGER NOT NULL,
        guild_id       INTEGER NOT NULL,
        author_id      INTEGER NOT NULL,
        author_name    TEXT    NOT NULL,
        text           TEXT    NOT NULL,
        created_at     REAL    NOT NULL,
        state          TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN
                           ('pending', 'answered', 'done', 'failed', 'expired', 'withdrawn')),
        reply_turn_id  INTEGER,
        settled_at     REAL
    );
    CREATE INDEX intake_open ON intake (state, channel_id, message_id);
    """,
    # 4: a server character's picture (from an imported card), apart from its JSON so the
    # reads every reply makes never load it.
    """
    ALTER TABLE custom_personas ADD COLUMN avatar BLOB;
    """,
    # 5: channels where the character posts through a webhook under its own name and face
    # (`told_missing`: the channel was told once that Manage Webhooks is missing).
    """
    CREATE TABLE webhook_channels (
        channel_id    INTEGER PRIMARY KEY,
        guild_id      INTEGER NOT NULL,
        told_missing  INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 6: several characters in one channel. `channel_characters` holds the ones that joined
    # the channel's main character (`/persona add`); `intake.character` is the one a message
    # addressed (NULL: the main one), so it is still the one that answers after a restart.
    # Which character spoke a turn is `turns.name` of its character turns, as before.
    """
    CREATE TABLE channel_characters (
        channel_id    INTEGER NOT NULL,
        guild_id      INTEGER NOT NULL,
        name_key      TEXT    NOT NULL,
        persona_name  TEXT    NOT NULL,
        joined_at     REAL    NOT NULL,
        PRIMARY KEY (channel_id, name_key)
    );
    ALTER TABLE intake ADD COLUMN character TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
AUTO_VACUUM_INCREMENTAL = 2  # PRAGMA auto_vacuum: 0 none, 1 full, 2 incremental

# Writers take SQLite's write lock up front: a deferred transaction that reads and then writes
# fails at once with SQLITE_BUSY (busy_timeout cannot help) if another process wrote meanwhile.
_BEGIN_WRITE = "BEGIN IMMEDIATE"
_BEGIN_READ = "BEGIN DEFERRED"

_TURN_COLUMNS = "id, channel_id, role, name, text, author_id, message_id, created_at, chosen"
_INTAKE_COLUMNS = ("message_id, channel_id, guild_id, author_id, author_name, text, created_at, "
                   "state, reply_turn_id, character")
IntakeState = Literal["pending", "answered", "done", "failed", "expired", "withdrawn"]
OPEN_STATES = ("pending", "answered")  # still owed to the member
_OPEN_STATES_SQL = "('pending', 'answered')"


class StoreClosedError(RuntimeError):
    """The database was closed (the bot is stopping): nothing was read or written. Not a
    `StoreError`: nothing is wrong with the data, and members must not be told it failed."""


class StoreError(Exception):
    """The database cannot be used as asked; `str()` says why in one line."""


class UnknownTurnError(StoreError, LookupError):
    """No stored turn has this id (it was deleted, or the channel was reset)."""


@dataclass(frozen=True)
class NewTurn:
    role: Role
    name: str  # member display name, or the character's name
    text: str
    author_id: int | None = None  # Discord user id; None for character turns
    message_id: int | None = None
    # Character turns: more alternatives after `text` (a greeting's alternate greetings).
    more_alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredTurn:
    id: int
    channel_id: int
    role: Role
    name: str
    text: str  # the text that counts as memory (== alternatives[chosen] for character turns)
    author_id: int | None
    message_id: int | None
    created_at: float  # unix seconds
    alternatives: tuple[str, ...] = ()  # character turns: every generated alternative, in order
    chosen: int = 0


@dataclass(frozen=True)
class IntakeMessage:
    """A member's message the character owes an answer, as recorded by the intake."""

    message_id: int
    channel_id: int
    guild_id: int
    author_id: int
    author_name: str
    text: str
    created_at: float  # unix seconds, when the member sent it
    state: IntakeState = "pending"
    reply_turn_id: int | None = None  # set once the reply is stored ('answered')
    character: str | None = None  # the character addressed; None: the channel's main one


@dataclass(frozen=True)
class GuildSettings:
    allow_all_channels: bool = False  # False = converse only in age-restricted channels


@dataclass(frozen=True)
class WebhookPosting:
    """A channel where the character posts through a webhook."""

    told_missing: bool = False  # the channel heard once that Manage Webhooks is missing


class Store:
    """Async access to the bot's SQLite database; create with `await Store.open(path)`."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (or create) the database at `path` and bring its schema up to date."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module must not open transactions behind our back;
        # `_transaction` issues BEGIN/COMMIT itself.
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await _configure(db, path)
            await _migrate(db)
        except BaseException as error:
            await db.close()
            if isinstance(error, sqlite3.Error):  # e.g. "file is not a database"
                raise StoreError(str(error)) from error
            raise
        log.info("opened database %s (schema version %d)", path, SCHEMA_VERSION)
        return cls(db)

    async def close(self) -> None:
        """Close after any transaction in flight has finished; closing twice is harmless."""
        async with self._lock:
            if not self._closed:
                self._closed = True
                await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- conversation memory --------------------------------------------------------------------

    async def history(self, channel_id: int, limit: int = 200) -> list[StoredTurn]:
        """The newest `limit` turns of a channel, oldest first, with their alternatives."""
        if limit <= 0:  # SQLite reads LIMIT -1 as "no limit"; nobody means that here
            return []
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                f"SELECT {_TURN_COLUMNS} FROM turns WHERE channel_id = ? ORDER BY id DESC LIMIT ?",
                (channel_id, limit),
            )
            return await _with_alternatives(db, reversed(list(rows)))

    async def add_turns(self, channel_id: int, turns: Sequence[NewTurn]) -> list[StoredTurn]:
        """Store `turns` in order, all or none; a character turn's text becomes alternative 0.

        When the last turn is the character's, the intake rows of the member messages stored
        with it become 'answered' by it in the same transaction: a crash can never leave a
        message both remembered and still waiting to be answered.
        """
        created_at = time.time()
        async with self._transaction() as db:
            stored = [await _insert_turn(db, channel_id, turn, created_at) for turn in turns]
            await _mark_answered(db, stored)
        return stored

    async def set_message_id(self, turn_id: int, message_id: int) -> None:
        """Remember which Discord message shows a turn, so edits and deletes can follow it.

        A turn deleted while its message was being posted (a /reset in between) is not an
        error: there is nothing left to attach, so it is logged and ignored.
        """
        async with self._transaction() as db:
            try:
                cursor = await _execute(db, "UPDATE turns SET message_id = ? WHERE id = ?",
                                        (message_id, turn_id))
            except sqlite3.IntegrityError as error:
                raise StoreError(f"message {message_id} already shows another turn") from error
        if cursor.rowcount == 0:
            log.info("turn %d is gone; message %d not attached", turn_id, message_id)

    async def turn(self, turn_id: int) -> StoredTurn | None:
        """The turn with this id; None once it is gone (deleted, or the channel was reset)."""
        async with self._reading() as db:
            return await _turn_where(db, "id = ?", turn_id)

    async def turn_by_message(self, message_id: int) -> StoredTurn | None:
        async with self._reading() as db:
            return await _turn_where(db, "message_id = ?", message_id)

    async def edit_turn_by_message(self, message_id: int, text: str) -> StoredTurn | None:
        """Follow a Discord edit: the edited text replaces the turn's (and its chosen
        alternative's) text. None when no turn shows that message."""
        async with self._transaction() as db:
            turn = await _turn_where(db, "message_id = ?", message_id)
            if turn is None:
                return None
            await db.execute("UPDATE turns SET text = ? WHERE id = ?", (text, turn.id))
            await db.execute(
                "UPDATE alternatives SET text = ? WHERE turn_id = ? AND position = ?",
                (text, turn.id, turn.chosen),
            )
            return await _turn_by_id(db, turn.id)

    async def delete_turn_by_message(self, message_id: int) -> bool:
        """Forget the turn a deleted Discord message showed; False when none did."""
        async with self._transaction() as db:
            cursor = await _execute(db, "DELETE FROM turns WHERE message_id = ?", (message_id,))
        return cursor.rowcount > 0

    async def clear_channel(self, channel_id: int) -> int:
        """Forget a channel's conversation (alternatives go with their turns) and give the
        space back; rows removed."""
        async with self._transaction() as db:
            cursor = await _execute(db, "DELETE FROM turns WHERE channel_id = ?", (channel_id,))
        await self.reclaim_space()
        return cursor.rowcount

    async def add_alternative(self, turn_id: int, text: str) -> StoredTurn:
        """Append a regenerated reply to a character turn and make it the one remembered."""
        return await self.add_alternatives(turn_id, [text])

    async def add_alternatives(self, turn_id: int, texts: Sequence[str]) -> StoredTurn:
        """Append regenerated replies to a character turn, in order, in one transaction, and
        make the first of them the one remembered."""
        if not texts:
            raise ValueError("add_alternatives() needs at least one text")
        async with self._transaction() as db:
            turn = await _character_turn(db, turn_id)
            first = len(turn.alternatives)
            await db.executemany(
                "INSERT INTO alternatives (turn_id, position, text) VALUES (?, ?, ?)",
                [(turn_id, first + offset, text) for offset, text in enumerate(texts)],
            )
            await _select_alternative(db, turn_id, first, texts[0])
            return await _turn_by_id(db, turn_id)

    async def choose_alternative(self, turn_id: int, index: int) -> StoredTurn:
        """Make alternative `index` the remembered text; IndexError when it does not exist."""
        async with self._transaction() as db:
            turn = await _character_turn(db, turn_id)
            # No Python-style negative indexing: a negative index is a caller's bug.
            if not 0 <= index < len(turn.alternatives):
                raise IndexError(f"turn {turn_id} has {len(turn.alternatives)} alternatives; "
                                 f"there is no alternative {index}")
            await _select_alternative(db, turn_id, index, turn.alternatives[index])
            return await _turn_by_id(db, turn_id)

    # --- retention: what is kept, and giving space back ---------------------------------------

    async def prune_turns(self, keep_per_channel: int, older_than: float | None = None) -> int:
        """Forget turns beyond the newest `keep_per_channel` of each channel and, with
        `older_than` (unix seconds), turns stored before it; a reply still waiting to be
        posted is kept. Rows removed; call `reclaim_space` to shrink the file."""
        async with self._transaction() as db:
            cursor = await _execute(
                db,
                "DELETE FROM turns WHERE id IN (SELECT id FROM (SELECT id, created_at, "
                "ROW_NUMBER() OVER (PARTITION BY channel_id ORDER BY id DESC) AS newer "
                "FROM turns) WHERE newer > ? OR created_at < ?) AND id NOT IN (SELECT "
                f"reply_turn_id FROM intake WHERE state IN {_OPEN_STATES_SQL} "
                "AND reply_turn_id IS NOT NULL)",
                (keep_per_channel, 0.0 if older_than is None else older_than))
        return cursor.rowcount

    async def forget_author(self, author_id: int) -> int:
        """Forget every message a member wrote, in every channel, and the intake's copies of
        them (also those not answered yet: forgetting wins), then give the space back.
        Returns the number of the member's turns removed."""
        async with self._transaction() as db:
            cursor = await _execute(
                db, "DELETE FROM turns WHERE role = 'user' AND author_id = ?", (author_id,))
            await db.execute("DELETE FROM intake WHERE author_id = ?", (author_id,))
        await self.reclaim_space()
        return cursor.rowcount

    async def reclaim_space(self) -> None:
        """Return the pages deleted rows used to the file system now (incremental vacuum)
        and fold the write-ahead log into the file, so forgotten text leaves the disk.
        Another process holding the database only postpones this to the next time."""
        async with self._lock:
            if self._closed:
                return
            try:
                # executescript steps the pragma to the end; execute() would free one page.
                await self._db.executescript(
                    "PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
            except sqlite3.OperationalError as error:
                log.warning("could not give database space back yet: %s", error)

    # --- intake: messages the character owes an answer -------------------------------------------

    async def record_intake(self, message: IntakeMessage) -> bool:
        """Record a message to answer; False when it was recorded before (in any state) or its
        turn is already in memory, so a message is answered once however often it is seen."""
        async with self._transaction() as db:
            cursor = await _execute(
                db,
                f"INSERT INTO intake ({_INTAKE_COLUMNS}) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, ? "
                "WHERE NOT EXISTS (SELECT 1 FROM turns WHERE message_id = ?) "
                "ON CONFLICT (message_id) DO NOTHING",
                (message.message_id, message.channel_id, message.guild_id, message.author_id,
                 message.author_name, message.text, message.created_at, message.character,
                 message.message_id))
        return cursor.rowcount > 0

    async def intake_backlog(self) -> int:
        """How many recorded messages wait for a reply to be generated."""
        async with self._reading() as db:
            rows = list(await db.execute_fetchall(
                "SELECT COUNT(*) FROM intake WHERE state = 'pending'"))
        return int(rows[0][0])

    async def open_intake(self, channel_id: int) -> list[IntakeMessage]:
        """A channel's messages still owed an answer or a posted reply, in message order."""
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                f"SELECT {_INTAKE_COLUMNS} FROM intake WHERE state IN {_OPEN_STATES_SQL} "
                "AND channel_id = ? ORDER BY message_id", (channel_id,))
        return [_intake_message(row) for row in rows]

    async def open_intake_channels(self) -> list[int]:
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                f"SELECT DISTINCT channel_id FROM intake WHERE state IN {_OPEN_STATES_SQL}")
        return [int(row[0]) for row in rows]

    async def settle_intake(self, message_ids: Sequence[int], state: IntakeState) -> None:
        """Close messages still open with `state` (failed, expired, withdrawn, done)."""
        async with self._transaction() as db:
            await db.execute(
                f"UPDATE intake SET state = ?, settled_at = ? WHERE state IN {_OPEN_STATES_SQL} "
                "AND message_id IN (SELECT value FROM json_each(?))",
                (state, time.time(), json.dumps(list(message_ids))))

    async def withdraw_intake(self, message_id: int) -> bool:
        """The member deleted a message not yet answered; False when it was not waiting."""
        async with self._transaction() as db:
            cursor = await _execute(
                db, "UPDATE intake SET state = 'withdrawn', settled_at = ? "
                "WHERE message_id = ? AND state = 'pending'", (time.time(), message_id))
        return cursor.rowcount > 0

    async def reply_posted(self, turn_id: int, message_id: int) -> None:
        """The reply `turn_id` is on Discord as `message_id`: remember where, and close the
        messages it answers, together."""
        async with self._transaction() as db:
            with contextlib.suppress(sqlite3.IntegrityError):  # already attached elsewhere
                await db.execute("UPDATE turns SET message_id = ? WHERE id = ?",
                                 (message_id, turn_id))
            await db.execute(
                "UPDATE intake SET state = 'done', settled_at = ? "
                "WHERE reply_turn_id = ? AND state = 'answered'", (time.time(), turn_id))

    async def reply_seen_on_discord(self, answering_id: int, message_id: int) -> bool:
        """A reply to `answering_id` was found on Discord (posted just before a crash): if
        its stored reply was still waiting to be posted, count it as posted."""
        async with self._reading() as db:
            rows = list(await db.execute_fetchall(
                "SELECT reply_turn_id FROM intake WHERE message_id = ? AND state = 'answered'",
                (answering_id,)))
        if not rows or rows[0][0] is None:
            return False
        await self.reply_posted(int(rows[0][0]), message_id)
        return True

    async def recent_channels(self, limit: int) -> list[int]:
        """Channels the character converses in, most recently active first."""
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                "SELECT channel_id FROM (SELECT channel_id, MAX(created_at) AS latest FROM turns "
                "GROUP BY channel_id UNION ALL SELECT channel_id, MAX(created_at) FROM intake "
                "GROUP BY channel_id) GROUP BY channel_id ORDER BY MAX(latest) DESC LIMIT ?",
                (limit,))
        return [int(row[0]) for row in rows]

    async def prune_intake(self, older_than: float) -> int:
        """Forget settled intake rows of messages sent before `older_than` (unix seconds)."""
        async with self._transaction() as db:
            cursor = await _execute(
                db, f"DELETE FROM intake WHERE state NOT IN {_OPEN_STATES_SQL} AND created_at < ?",
                (older_than,))
        return cursor.rowcount

    # --- personas -------------------------------------------------------------------------------

    async def active_persona(self, guild_id: int, channel_id: int | None = None) -> str | None:
        """The character chosen for the channel, else for the server; None if neither chose."""
        async with self._reading() as db:
            rows = list(await db.execute_fetchall(
                "SELECT persona_name FROM channel_personas WHERE channel_id = ? "
                "UNION ALL SELECT persona_name FROM guild_personas WHERE guild_id = ? LIMIT 1",
                (channel_id, guild_id)))
        return cast(str, rows[0][0]) if rows else None

    async def set_active_persona(self, guild_id: int, name: str,
                                 channel_id: int | None = None) -> None:
        """Choose the server's character (clearing every channel's own choice), or with
        `channel_id` only that channel's."""
        async with self._transaction() as db:
            if channel_id is not None:
                await db.execute(
                    "INSERT INTO channel_personas (channel_id, guild_id, persona_name) "
                    "VALUES (?, ?, ?) ON CONFLICT (channel_id) "
                    "DO UPDATE SET persona_name = excluded.persona_name",
                    (channel_id, guild_id, name))
                return
            await db.execute("DELETE FROM channel_personas WHERE guild_id = ?", (guild_id,))
            await db.execute(
                "INSERT INTO guild_personas (guild_id, persona_name) VALUES (?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET persona_name = excluded.persona_name",
                (guild_id, name),
            )

    async def rename_persona_choices(self, guild_id: int, old_name: str, new_name: str) -> None:
        """Where the server or its channels chose `old_name`, they now play `new_name`."""
        async with self._transaction() as db:
            for table in ("guild_personas", "channel_personas"):
                await db.execute(
                    f"UPDATE {table} SET persona_name = ? "
                    "WHERE guild_id = ? AND persona_name = ? COLLATE NOCASE",
                    (new_name, guild_id, old_name))

    async def custom_personas(self, guild_id: int) -> list[Persona]:
        """The server's own characters, by case-folded name. A row that no longer passes
        validation is logged and skipped so one bad row cannot hide the others."""
        async with self._reading() as db:
            rows = await db.execute_fetchall(
                "SELECT name_key, data FROM custom_personas WHERE guild_id = ? ORDER BY name_key",
                (guild_id,),
            )
        personas = []
        for name_key, data in rows:
            try:
                personas.append(Persona.from_dict(json.loads(data)))
            except (PersonaError, json.JSONDecodeError) as error:
                log.warning("skipped stored persona %r of server %s: %s", name_key, guild_id,
                            error)
        return personas

    async def save_custom_persona(self, guild_id: int, persona: Persona,
                                  avatar: bytes | None = None, *,
                                  replace_avatar: bool = False) -> None:
        """Create or replace the server's character with this name, ignoring case. Its
        picture stays as it was unless `replace_avatar` (then `avatar`, None for none)."""
        data = json.dumps(persona.to_dict(), ensure_ascii=False)
        keep = "custom_personas.avatar" if not replace_avatar else "excluded.avatar"
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO custom_personas (guild_id, name_key, data, avatar) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (guild_id, name_key) "
                f"DO UPDATE SET data = excluded.data, avatar = {keep}",
                (guild_id, _name_key(persona.name), data, avatar),
            )

    async def custom_persona_avatar(self, guild_id: int, name: str) -> bytes | None:
        """The picture of the server's character `name` (any case); None when it has none."""
        async with self._reading() as db:
            rows = list(await db.execute_fetchall(
                "SELECT avatar FROM custom_personas WHERE guild_id = ? AND name_key = ?",
                (guild_id, _name_key(name))))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    async def delete_custom_persona(self, guild_id: int, name: str) -> bool:
        """Delete the server's character named `name` (any case); False when it had none."""
        async with self._transaction() as db:
            cursor = await _execute(
                db, "DELETE FROM custom_personas WHERE guild_id = ? AND name_key = ?",
                (guild_id, _name_key(name)),
            )
        return cursor.rowcount > 0

    # --- server settings ------------------------------------------------------------------------

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The server's settings; defaults until an admin changes one."""
        async with self._reading() as db:
            rows = list(await db.execute_fetchall(
                "SELECT allow_all_channels FROM guild_settings WHERE guild_id = ?", (guild_id,)))
        if not rows:
            return GuildSettings()
        return GuildSettings(allow_all_channels=bool(rows[0][0]))

    async def set_allow_all_channels(self, guild_id: int, allowed: bool) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO guild_settings (guild_id, allow_all_channels) VALUES (?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET allow_all_channels = "
                "excluded.allow_all_channels",
                (guild_id, int(allowed)),
            )

    # --- webhook posting ------------------------------------------------------------------------

    async def webhook_posting(self, channel_id: int) -> WebhookPosting | None:
        """How channel `channel_id` posts through a webhook; None when it does not."""
        async with self._reading() as db:
            rows = list(await db.execute_fetchall(
                "SELECT told_missing FROM webhook_channels WHERE channel_id = ?", (channel_id,)))
        return WebhookPosting(told_missing=bool(rows[0][0])) if rows else None

    async def set_webhook_posting(self, channel_id: int, guild_id: int, on: bool, *,
                                  told_missing: bool = False) -> None:
        async with self._transaction() as db:
            if not on:
                await db.execute("DELETE FROM webhook_channels WHERE channel_id = ?",
                                 (channel_id,))
                return
            await db.execute(
                "INSERT INTO webhook_channels (channel_id, guild_id, told_missing) "
                "VALUES (?, ?, ?) ON CONFLICT (channel_id) DO UPDATE SET "
                "told_missing = excluded.told_missing",
                (channel_id, guild_id, int(told_missing)))

    async def note_webhook_notice(self, channel_id: int, told_missing: bool) -> None:
        """Remember whether the channel has been told that Manage Webhooks is missing."""
        async with self._transaction() as db:
            await db.execute("UPDATE webhook_channels SET told_missing = ? WHERE channel_id = ?",
                             (int(told_missing), channel_id))

    # --- several characters in a channel -------------------------------------------------------

    async def joined_characters(self, channel_id: int) -> list[str]:
        """The characters that joined the channel's main one, in the order they joined."""
        async with self._reading() as db:
            rows = list(await db.execute_fetchall(
                "SELECT persona_name FROM channel_characters WHERE channel_id = ? "
                "ORDER BY joined_at, name_key", (channel_id,)))
        return [row[0] for row in rows]

    async def join_character(self, channel_id: int, guild_id: int, name: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO channel_characters (channel_id, guild_id, name_key, persona_name, "
                "joined_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel_id, name_key) "
                "DO UPDATE SET persona_name = excluded.persona_name",
                (channel_id, guild_id, _name_key(name), name, time.time()))

    async def leave_character(self, channel_id: int, name: str) -> bool:
        async with self._transaction() as db:
            cursor = await _execute(
                db, "DELETE FROM channel_characters WHERE channel_id = ? AND name_key = ?",
                (channel_id, _name_key(name)))
        return cursor.rowcount > 0

    # --- internals ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str = _BEGIN_WRITE) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN on entry, COMMIT on success, ROLLBACK on any error or cancellation.

        BEGIN and COMMIT sit inside the `try` because a cancelled await does not stop the
        statement (aiosqlite still runs it), and a failed COMMIT leaves the transaction open;
        either way the ROLLBACK closes it, and is a no-op when nothing is open.
        """
        async with self._lock:
            if self._closed:  # rather than aiosqlite's bare "no active connection"
                raise StoreClosedError("the database is closed: the bot is stopping")
            try:
                await self._begin(begin)
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # Shielded so a second cancellation cannot leave the connection mid-transaction;
                # aiosqlite runs statements in order, so the ROLLBACK lands before anything next.
                await asyncio.shield(self._db.rollback())
                raise

    async def _begin(self, begin: str) -> None:
        """BEGIN, waiting out another process's write lock: SQLite waits busy_timeout, and a
        write that still finds it locked is tried again a few times before giving up. Once
        BEGIN IMMEDIATE has succeeded the write lock is ours, so nothing later can be busy."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                await self._db.execute(begin)
                return
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or attempt == WRITE_ATTEMPTS:
                    raise
                log.warning("database is locked by another process; retrying (%d of %d)",
                            attempt, WRITE_ATTEMPTS - 1)
                await asyncio.sleep(WRITE_RETRY_PAUSE_S * attempt)

    def _reading(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        """A read-only transaction. Reads need the lock too: on a shared connection a read
        issued inside another coroutine's transaction would see its uncommitted rows."""
        return self._transaction(_BEGIN_READ)


# --- connection setup ---------------------------------------------------------------------------


def _is_busy(error: sqlite3.OperationalError) -> bool:
    message = str(error).lower()
    return "locked" in message or "busy" in message



async def _configure(db: aiosqlite.Connection, path: Path) -> None:
    """Per-connection settings; none of them is stored in the file except the journal mode
    (and, for a new file, incremental vacuum)."""
    db.row_factory = sqlite3.Row
    # Takes effect only on a file without tables yet; older files are switched by
    # `_use_incremental_vacuum` after the migrations.
    await db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    rows = list(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
    if rows[0][0] != "wal":  # e.g. a network filesystem without shared memory
        log.warning("database %s runs in %s journal mode, not WAL", path, rows[0][0])
    # With WAL, NORMAL loses no committed transaction on an application crash, only possibly
    # the last ones on a power cut, and saves an fsync per commit.
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute("PRAGMA foreign_keys = ON")  # off by default; the cascade needs it
    await db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
    # Deleted text is overwritten, not left in free pages: /reset and /forget-me mean it.
    await db.execute("PRAGMA secure_delete = ON")


async def _migrate(db: aiosqlite.Connection) -> None:
    """Apply the migrations this database has not run yet, each in its own transaction."""
    version = await _user_version(db)
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema version {version} is newer than this pygbot "
                         f"({SCHEMA_VERSION}); upgrade pygbot")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        await _apply_migration(db, target)
    await _use_incremental_vacuum(db)


async def _use_incremental_vacuum(db: aiosqlite.Connection) -> None:
    """Switch a database made before retention existed to incremental vacuum, once.

    SQLite only changes auto_vacuum on a file with tables by rebuilding it (VACUUM), which
    cannot run inside a migration's transaction; so this step is keyed on the file's own
    setting rather than on `user_version`, and a file restored from an old backup is
    switched too. It takes a moment per 100 MB, and only the first time.
    """
    rows = list(await db.execute_fetchall("PRAGMA auto_vacuum"))
    if rows[0][0] == AUTO_VACUUM_INCREMENTAL:
        return
    log.info("switching the database to incremental vacuum (a one-time VACUUM)")
    try:
        await db.executescript("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
    except sqlite3.OperationalError as error:  # e.g. another process reading it right now
        log.warning("could not switch the database to incremental vacuum (tried again at "
                    "the next start; until then deleted rows leave free pages): %s", error)


async def _apply_migration(db: aiosqlite.Connection, target: int) -> None:
    # executescript commits anything pending first and cannot take parameters, so the
    # transaction and the version bump are part of the script itself.
    script = f"BEGIN;\n{MIGRATIONS[target - 1]}\nPRAGMA user_version = {target};\nCOMMIT;"
    try:
        await db.executescript(script)
    except BaseException as error:
        await asyncio.shield(db.rollback())  # a failed script leaves its transaction open
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"migration to schema version {target} failed: {error}") from error
        raise
    log.info("migrated database schema to version %d", target)


async def _user_version(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


# --- turns --------------------------------------------------------------------------------------


async def _execute(
    db: aiosqlite.Connection, sql: str, params: Sequence[Any]
) -> aiosqlite.Cursor:
    """Run one statement and close its cursor, keeping it only for `rowcount`/`lastrowid`."""
    async with db.execute(sql, params) as cursor:
        return cursor


async def _insert_turn(
    db: aiosqlite.Connection, channel_id: int, turn: NewTurn, created_at: float
) -> StoredTurn:
    try:
        cursor = await _execute(
            db,
            "INSERT INTO turns (channel_id, role, name, text, author_id, message_id, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (channel_id, turn.role, turn.name, turn.text, turn.author_id, turn.message_id,
             created_at),
        )
    except sqlite3.IntegrityError as error:
        raise StoreError(f"cannot store turn (message {turn.message_id}): {error}") from error
    turn_id = cursor.lastrowid
    assert turn_id is not None  # an INSERT into a rowid table always sets it
    alternatives: tuple[str, ...] = ()
    if turn.role == "character":
        alternatives = (turn.text, *turn.more_alternatives)
        await db.executemany(
            "INSERT INTO alternatives (turn_id, position, text) VALUES (?, ?, ?)",
            [(turn_id, position, text) for position, text in enumerate(alternatives)])
    return StoredTurn(turn_id, channel_id, turn.role, turn.name, turn.text, turn.author_id,
                      turn.message_id, created_at, alternatives, 0)


async def _mark_answered(db: aiosqlite.Connection, stored: Sequence[StoredTurn]) -> None:
    if not stored or stored[-1].role != "character":
        return
    answered = [t.message_id for t in stored[:-1] if t.role == "user" and t.message_id]
    if answered:
        await db.execute(
            "UPDATE intake SET state = 'answered', reply_turn_id = ? WHERE state = 'pending' "
            "AND message_id IN (SELECT value FROM json_each(?))",
            (stored[-1].id, json.dumps(answered)))


def _intake_message(row: sqlite3.Row) -> IntakeMessage:
    return IntakeMessage(
        message_id=row["message_id"], channel_id=row["channel_id"], guild_id=row["guild_id"],
        author_id=row["author_id"], author_name=row["author_name"], text=row["text"],
        created_at=row["created_at"], state=row["state"], reply_turn_id=row["reply_turn_id"],
        character=row["character"])


async def _turn_where(db: aiosqlite.Connection, condition: str, value: int) -> StoredTurn | None:
    """The one turn matching `condition` (a constant SQL fragment on a unique column)."""
    rows = await db.execute_fetchall(f"SELECT {_TURN_COLUMNS} FROM turns WHERE {condition}",
                                     (value,))
    turns = await _with_alternatives(db, rows)
    return turns[0] if turns else None


async def _turn_by_id(db: aiosqlite.Connection, turn_id: int) -> StoredTurn:
    turn = await _turn_where(db, "id = ?", turn_id)
    if turn is None:
        raise UnknownTurnError(f"no turn with id {turn_id}")
    return turn


async def _character_turn(db: aiosqlite.Connection, turn_id: int) -> StoredTurn:
    turn = await _turn_by_id(db, turn_id)
    if turn.role != "character":
        raise StoreError(f"turn {turn_id} is a member's message; only the character's "
                         "replies have alternatives")
    return turn


async def _select_alternative(
    db: aiosqlite.Connection, turn_id: int, position: int, text: str
) -> None:
    await db.execute("UPDATE turns SET chosen = ?, text = ? WHERE id = ?",
                     (position, text, turn_id))


async def _with_alternatives(
    db: aiosqlite.Connection, rows: Iterable[sqlite3.Row]
) -> list[StoredTurn]:
    """Turn rows into `StoredTurn`s, loading every row's alternatives in one query."""
    rows = list(rows)
    if not rows:
        return []
    # The ids travel as one JSON array so any number of turns is a single bound parameter.
    ids = json.dumps([row["id"] for row in rows])
    alternatives: dict[int, list[str]] = {row["id"]: [] for row in rows}
    for turn_id, text in await db.execute_fetchall(
        "SELECT turn_id, text FROM alternatives "
        "WHERE turn_id IN (SELECT value FROM json_each(?)) ORDER BY turn_id, position",
        (ids,),
    ):
        alternatives[turn_id].append(text)
    return [_stored_turn(row, alternatives[row["id"]]) for row in rows]


def _stored_turn(row: sqlite3.Row, alternatives: Sequence[str]) -> StoredTurn:
    return StoredTurn(
        id=row["id"],
        channel_id=row["channel_id"],
        role=row["role"],
        name=row["name"],
        text=row["text"],
        author_id=row["author_id"],
        message_id=row["message_id"],
        created_at=row["created_at"],
        alternatives=tuple(alternatives),
        chosen=row["chosen"],
    )


def _name_key(name: str) -> str:
    """Persona names are unique per server regardless of case (Aria == ARIA)."""
    return name.strip().casefold()


# --- inspection (`python bot.py --check`) -------------------------------------------------------


@dataclass(frozen=True)
class DatabaseReport:
    schema_version: int
    integrity: str  # "ok", or SQLite's first complaint


def inspect_database(path: Path) -> DatabaseReport:
    """Read a database's schema version and integrity without writing a byte: safe beside a
    running bot, and changes nothing (no migration) before a restart."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise StoreError(str(error)) from error
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        integrity = str(db.execute("PRAGMA quick_check").fetchone()[0])
    except sqlite3.Error as error:  # e.g. "file is not a database"
        raise StoreError(str(error)) from error
    finally:
        db.close()
    return DatabaseReport(version, integrity)
