"""The store against a real SQLite file in a temp dir: what is written is what comes back,
also after closing and reopening, and failures leave nothing half-written."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pygbot import store as store_module
from pygbot.persona import Persona
from pygbot.store import (
    SCHEMA_VERSION,
    GuildSettings,
    NewTurn,
    Store,
    StoreClosedError,
    StoreError,
    UnknownTurnError,
)

CHANNEL = 111
OTHER_CHANNEL = 222
GUILD = 9001
OTHER_GUILD = 9002
MEMBER_ID = 42


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "folder" / "pygbot.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    async with await Store.open(db_path) as opened:
        yield opened


def member(text: str, message_id: int | None = None) -> NewTurn:
    return NewTurn("user", "Sam", text, MEMBER_ID, message_id)


def character(text: str, message_id: int | None = None) -> NewTurn:
    return NewTurn("character", "Aria", text, None, message_id)


def read_pragma(path: Path, pragma: str) -> object:
    """Read a setting with the standard library, independently of the store's connection."""
    with sqlite3.connect(path) as db:
        return db.execute(f"PRAGMA {pragma}").fetchone()[0]


# --- opening and migrations ---------------------------------------------------------------------


async def test_open_creates_missing_parent_folders(store: Store, db_path: Path) -> None:
    assert db_path.is_file()


async def test_database_runs_in_wal_mode(store: Store, db_path: Path) -> None:
    assert read_pragma(db_path, "journal_mode") == "wal"


async def test_schema_version_is_the_latest_migration(store: Store, db_path: Path) -> None:
    assert SCHEMA_VERSION >= 1
    assert read_pragma(db_path, "user_version") == SCHEMA_VERSION


async def test_reopening_a_current_database_keeps_its_version(db_path: Path) -> None:
    for _ in range(2):
        async with await Store.open(db_path):
            pass
    assert read_pragma(db_path, "user_version") == SCHEMA_VERSION


async def test_database_from_a_newer_pygbot_is_refused_untouched(db_path: Path) -> None:
    async with await Store.open(db_path):
        pass
    newer = SCHEMA_VERSION + 5
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {newer}")

    with pytest.raises(StoreError) as raised:
        await Store.open(db_path)

    assert str(raised.value) == (f"database schema version {newer} is newer than this pygbot "
                                 f"({SCHEMA_VERSION}); upgrade pygbot")
    assert read_pragma(db_path, "user_version") == newer


async def test_a_file_that_is_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 100)

    with pytest.raises(StoreError, match="not a database"):
        await Store.open(path)


async def test_pending_migrations_run_on_an_existing_database_and_keep_its_data(
    db_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with await Store.open(db_path) as store:
        await store.add_turns(CHANNEL, [member("from before the upgrade")])
    upgraded = (*store_module.MIGRATIONS, "CREATE TABLE added_later (x INTEGER);")
    monkeypatch.setattr(store_module, "MIGRATIONS", upgraded)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(upgraded))

    async with await Store.open(db_path) as store:
        assert [turn.text for turn in await store.history(CHANNEL)] == ["from before the upgrade"]

    assert read_pragma(db_path, "user_version") == len(upgraded)
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM added_later").fetchone()[0] == 0


async def test_a_failing_migration_changes_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with await Store.open(db_path):
        pass
    broken = (*store_module.MIGRATIONS, "CREATE TABLE half_done (x); CREATE TABLE (;")
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(broken))

    with pytest.raises(StoreError, match=f"migration to schema version {len(broken)} failed"):
        await Store.open(db_path)

    assert read_pragma(db_path, "user_version") == len(broken) - 1
    with sqlite3.connect(db_path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in tables


# --- conversation memory ------------------------------------------------------------------------


async def test_history_survives_closing_and_reopening(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.add_turns(CHANNEL, [member("hi there", 1), character("Hello, Sam!")])

    async with await Store.open(db_path) as store:
        history = await store.history(CHANNEL)

    assert [(turn.role, turn.name, turn.text) for turn in history] == [
        ("user", "Sam", "hi there"), ("character", "Aria", "Hello, Sam!")]
    assert history[0].author_id == MEMBER_ID
    assert history[0].message_id == 1
    assert history[1].alternatives == ("Hello, Sam!",)


async def test_history_returns_the_newest_turns_oldest_first(store: Store) -> None:
    for number in range(10):
        await store.add_turns(CHANNEL, [member(f"message {number}")])

    history = await store.history(CHANNEL, limit=3)

    assert [turn.text for turn in history] == ["message 7", "message 8", "message 9"]


async def test_history_of_an_unknown_channel_is_empty(store: Store) -> None:
    assert await store.history(CHANNEL) == []


async def test_history_with_a_zero_limit_is_empty(store: Store) -> None:
    await store.add_turns(CHANNEL, [member("hello")])
    assert await store.history(CHANNEL, limit=0) == []


async def test_add_turns_returns_the_stored_turns_with_ids(store: Store) -> None:
    user_turn, reply = await store.add_turns(CHANNEL, [member("hi", 5), character("Hey!")])

    assert user_turn.id < reply.id
    assert (user_turn.channel_id, user_turn.role, user_turn.message_id) == (CHANNEL, "user", 5)
    assert user_turn.alternatives == ()
    assert (reply.role, reply.text, reply.alternatives, reply.chosen) == (
        "character", "Hey!", ("Hey!",), 0)
    assert reply.author_id is None
    assert reply.created_at > 0
    assert await store.history(CHANNEL) == [user_turn, reply]


async def test_add_turns_stores_nothing_when_one_turn_fails(store: Store) -> None:
    await store.add_turns(CHANNEL, [member("first", message_id=1)])

    with pytest.raises(StoreError):
        await store.add_turns(CHANNEL, [member("second", message_id=2),
                                        member("duplicate", message_id=1),
                                        character("never stored")])

    assert [turn.text for turn in await store.history(CHANNEL)] == ["first"]
    assert await store.turn_by_message(2) is None


async def test_store_keeps_working_after_a_failed_transaction(store: Store) -> None:
    await store.add_turns(CHANNEL, [member("first", message_id=1)])
    with pytest.raises(StoreError):
        await store.add_turns(CHANNEL, [member("duplicate", message_id=1)])

    await store.add_turns(CHANNEL, [member("after", message_id=2)])

    assert [turn.text for turn in await store.history(CHANNEL)] == ["first", "after"]


async def test_a_cancelled_add_turns_leaves_nothing_and_the_store_usable(store: Store) -> None:
    turns = [member(f"turn {number}") for number in range(2000)]
    task = asyncio.create_task(store.add_turns(CHANNEL, turns))
    await asyncio.sleep(0.005)  # long enough to be inserting, far too short to finish

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await store.history(CHANNEL) == []
    await store.add_turns(CHANNEL, [member("still works")])
    assert [turn.text for turn in await store.history(CHANNEL)] == ["still works"]


async def test_concurrent_add_turns_from_many_tasks_all_land_in_pairs(store: Store) -> None:
    tasks = 50

    await asyncio.gather(*(
        store.add_turns(CHANNEL, [member(f"question {number}"), character(f"answer {number}")])
        for number in range(tasks)))

    history = await store.history(CHANNEL, limit=1000)
    assert len(history) == 2 * tasks
    pairs = [(history[index].text, history[index + 1].text)
             for index in range(0, len(history), 2)]
    assert sorted(pairs) == sorted(
        (f"question {number}", f"answer {number}") for number in range(tasks))


async def test_set_message_id_lets_the_turn_be_found_by_message(store: Store) -> None:
    [reply] = await store.add_turns(CHANNEL, [character("Hello!")])

    await store.set_message_id(reply.id, 777)

    found = await store.turn_by_message(777)
    assert found is not None
    assert (found.id, found.text, found.message_id) == (reply.id, "Hello!", 777)


async def test_set_message_id_already_used_by_another_turn_is_refused(store: Store) -> None:
    await store.add_turns(CHANNEL, [member("hi", message_id=777)])
    [reply] = await store.add_turns(CHANNEL, [character("Hello!")])

    with pytest.raises(StoreError, match="message 777 already shows another turn"):
        await store.set_message_id(reply.id, 777)

    found = await store.turn_by_message(777)
    assert found is not None
    assert found.text == "hi"


async def test_set_message_id_of_a_deleted_turn_is_ignored(store: Store) -> None:
    [reply] = await store.add_turns(CHANNEL, [character("Hello!")])
    await store.clear_channel(CHANNEL)

    await store.set_message_id(reply.id, 777)

    assert await store.turn_by_message(777) is None


async def test_turn_ids_are_not_reused_after_a_reset(store: Store) -> None:
    [old] = await store.add_turns(CHANNEL, [character("Hello!")])
    await store.clear_channel(CHANNEL)

    [new] = await store.add_turns(CHANNEL, [character("Hello again!")])

    assert new.id > old.id


async def test_turn_by_unknown_message_is_none(store: Store) -> None:
    assert await store.turn_by_message(12345) is None


async def test_edit_by_message_changes_a_member_turn(store: Store) -> None:
    await store.add_turns(CHANNEL, [member("helo", message_id=10)])

    edited = await store.edit_turn_by_message(10, "hello")

    assert edited is not None
    assert edited.text == "hello"
    assert [turn.text for turn in await store.history(CHANNEL)] == ["hello"]


async def test_edit_by_message_changes_the_chosen_alternative_of_a_reply(store: Store) -> None:
    [reply] = await store.add_turns(CHANNEL, [character("first", message_id=20)])
    await store.add_alternative(reply.id, "second")

    edited = await store.edit_turn_by_message(20, "second, edited")

    assert edited is not None
    assert (edited.text, edited.alternatives, edited.chosen) == (
        "second, edited", ("first", "second, edited"), 1)


async def test_edit_by_unknown_message_is_none(store: Store) -> None:
    assert await store.edit_turn_by_message(999, "text") is None


async def test_delete_by_message_removes_only_that_turn(store: Store) -> None:
    await store.add_turns(CHANNEL, [member("keep", 1), member("drop", 2), character("Hi", 3)])

    assert await store.delete_turn_by_message(2) is True

    assert [turn.text for turn in await store.history(CHANNEL)] == ["keep", "Hi"]


async def test_delete_by_unknown_message_reports_nothing_removed(store: Store) -> None:
    assert await store.delete_turn_by_message(404) is False


async def test_clear_channel_removes_only_that_channel(store: Store) -> None:
    await store.add_turns(CHANNEL, [member("one"), character("two")])
    await store.add_turns(OTHER_CHANNEL, [member("elsewhere")])

    assert await store.clear_channel(CHANNEL) == 2

    assert await store.history(CHANNEL) == []
    assert [turn.text for turn in await store.history(OTHER_CHANNEL)] == ["elsewhere"]


async def test_clear_channel_removes_the_alternatives_too(store: Store, db_path: Path) -> None:
    [reply] = await store.add_turns(CHANNEL, [character("one")])
    await store.add_alternative(reply.id, "two")

    await store.clear_channel(CHANNEL)

    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM alternatives").fetchone()[0] == 0


async def test_add_alternative_appends_and_selects_it(store: Store) -> None:
    [reply] = await store.add_turns(CHANNEL, [character("first")])

    updated = await store.add_alternative(reply.id, "second")

    assert (updated.text, updated.alternatives, updated.chosen) == (
        "second", ("first", "second"), 1)
    assert await store.history(CHANNEL) == [updated]


async def test_several_alternatives_are_added_at_once_and_the_first_is_remembered(
    store: Store, db_path: Path,
) -> None:
    [reply] = await store.add_turns(CHANNEL, [character("first")])

    updated = await store.add_alternatives(reply.id, ["second", "third", "fourth"])
    await store.close()

    assert (updated.text, updated.chosen) == ("second", 1)
    async with await Store.open(db_path) as reopened:
        [remembered] = await reopened.history(CHANNEL)
    assert (remembered.text, remembered.alternatives, remembered.chosen) == (
        "second", ("first", "second", "third", "fourth"), 1)


async def test_choose_alternative_makes_it_the_remembered_text(store: Store, db_path: Path) -> None:
    [reply] = await store.add_turns(CHANNEL, [character("first")])
    await store.add_alternative(reply.id, "second")
    await store.add_alternative(reply.id, "third")

    chosen = await store.choose_alternative(reply.id, 0)
    await store.close()

    assert (chosen.text, chosen.chosen) == ("first", 0)
    async with await Store.open(db_path) as reopened:
        [remembered] = await reopened.history(CHANNEL)
    assert (remembered.text, remembered.alternatives, remembered.chosen) == (
        "first", ("first", "second", "third"), 0)


@pytest.mark.parametrize("index", [2, -1])
async def test_choose_alternative_out_of_range_is_an_index_error(store: Store, index: int) -> None:
    [reply] = await store.add_turns(CHANNEL, [character("first")])
    await store.add_alternative(reply.id, "second")

    with pytest.raises(IndexError, match=f"turn {reply.id} has 2 alternatives; "
                                         f"there is no alternative {index}"):
        await store.choose_alternative(reply.id, index)

    [unchanged] = await store.history(CHANNEL)
    assert (unchanged.text, unchanged.chosen) == ("second", 1)


async def test_alternatives_of_an_unknown_turn_are_refused(store: Store) -> None:
    with pytest.raises(UnknownTurnError):
        await store.add_alternative(31337, "text")
    with pytest.raises(UnknownTurnError):
        await store.choose_alternative(31337, 0)


async def test_member_turns_cannot_get_alternatives(store: Store) -> None:
    [question] = await store.add_turns(CHANNEL, [member("question")])

    with pytest.raises(StoreError, match="only the character's replies have alternatives"):
        await store.add_alternative(question.id, "rewritten")

    assert [turn.text for turn in await store.history(CHANNEL)] == ["question"]


async def test_history_loads_the_alternatives_of_every_reply(store: Store) -> None:
    first, _, second = await store.add_turns(
        CHANNEL, [character("a1"), member("q"), character("b1")])
    await store.add_alternative(first.id, "a2")
    await store.add_alternative(second.id, "b2")
    await store.add_alternative(second.id, "b3")

    history = await store.history(CHANNEL)

    assert [(turn.text, turn.alternatives) for turn in history] == [
        ("a2", ("a1", "a2")), ("q", ()), ("b3", ("b1", "b2", "b3"))]


# --- personas -----------------------------------------------------------------------------------


async def test_active_persona_is_none_until_chosen(store: Store) -> None:
    assert await store.active_persona(GUILD) is None


async def test_active_persona_is_kept_per_server_and_persists(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.set_active_persona(GUILD, "Aria")
        await store.set_active_persona(GUILD, "Rook")
        await store.set_active_persona(OTHER_GUILD, "Pip")

    async with await Store.open(db_path) as store:
        assert await store.active_persona(GUILD) == "Rook"
        assert await store.active_persona(OTHER_GUILD) == "Pip"


async def test_custom_persona_round_trips_every_field(db_path: Path) -> None:
    persona = Persona(name="Élodie", persona="A café owner — warm, 🎻 violinist.",
                      scenario="Paris, rain.", greeting="Bonjour!",
                      example_dialogue="<START>\nYou: hi\nÉlodie: Salut!")
    async with await Store.open(db_path) as store:
        await store.save_custom_persona(GUILD, persona)

    async with await Store.open(db_path) as store:
        assert await store.custom_personas(GUILD) == [persona]
        assert await store.custom_personas(OTHER_GUILD) == []


async def test_saving_a_custom_persona_replaces_one_with_the_same_name_in_any_case(
    store: Store,
) -> None:
    await store.save_custom_persona(GUILD, Persona("Nova", "the first version"))
    await store.save_custom_persona(GUILD, Persona("Bolt", "another one"))

    await store.save_custom_persona(GUILD, Persona("NOVA", "the second version"))

    assert await store.custom_personas(GUILD) == [
        Persona("Bolt", "another one"), Persona("NOVA", "the second version")]


async def test_deleting_a_custom_persona_ignores_case(store: Store) -> None:
    await store.save_custom_persona(GUILD, Persona("Nova", "a star"))
    await store.save_custom_persona(OTHER_GUILD, Persona("Nova", "another server's star"))

    assert await store.delete_custom_persona(GUILD, "nOVA") is True
    assert await store.delete_custom_persona(GUILD, "Nova") is False

    assert await store.custom_personas(GUILD) == []
    assert await store.custom_personas(OTHER_GUILD) == [Persona("Nova", "another server's star")]


async def test_a_broken_stored_persona_is_skipped_not_fatal(store: Store, db_path: Path) -> None:
    await store.save_custom_persona(GUILD, Persona("Nova", "a star"))
    with sqlite3.connect(db_path) as db:
        db.execute("INSERT INTO custom_personas (guild_id, name_key, data) "
                   "VALUES (?, 'broken', '{\"name\": \"\"}')", (GUILD,))

    assert await store.custom_personas(GUILD) == [Persona("Nova", "a star")]


# --- server settings ----------------------------------------------------------------------------


async def test_servers_do_not_allow_all_channels_by_default(store: Store) -> None:
    assert await store.guild_settings(GUILD) == GuildSettings(allow_all_channels=False)


async def test_allow_all_channels_persists_per_server(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        await store.set_allow_all_channels(GUILD, True)
        await store.set_allow_all_channels(OTHER_GUILD, True)
        await store.set_allow_all_channels(OTHER_GUILD, False)

    async with await Store.open(db_path) as store:
        assert (await store.guild_settings(GUILD)).allow_all_channels is True
        assert (await store.guild_settings(OTHER_GUILD)).allow_all_channels is False


async def test_a_channel_choice_overrides_the_server_until_the_server_switches(
    store: Store,
) -> None:
    await store.set_active_persona(GUILD, "Aria")
    await store.set_active_persona(GUILD, "Pip", channel_id=CHANNEL)
    assert await store.active_persona(GUILD, CHANNEL) == "Pip"
    assert await store.active_persona(GUILD, OTHER_CHANNEL) == "Aria"
    assert await store.active_persona(GUILD) == "Aria"
    await store.set_active_persona(GUILD, "Rook")
    assert await store.active_persona(GUILD, CHANNEL) == "Rook"


async def test_renaming_a_character_follows_every_place_that_chose_it(store: Store) -> None:
    await store.set_active_persona(GUILD, "Mira")
    await store.set_active_persona(GUILD, "mira", channel_id=CHANNEL)
    await store.rename_persona_choices(GUILD, "MIRA", "Mirabel")
    assert await store.active_persona(GUILD) == "Mirabel"
    assert await store.active_persona(GUILD, CHANNEL) == "Mirabel"


async def test_a_database_from_before_several_characters_keeps_its_waiting_messages(
    db_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Migration 6 (channel rosters, the character a message addresses) on a version-5 file:
    a message waiting to be answered is still there, addressed to the main character."""
    shipped = store_module.MIGRATIONS
    monkeypatch.setattr(store_module, "MIGRATIONS", shipped[:5])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 5)
    async with await Store.open(db_path) as store:
        with sqlite3.connect(db_path) as db:
            db.execute("INSERT INTO intake (message_id, channel_id, guild_id, author_id, "
                       "author_name, text, created_at) VALUES (7, ?, 1, 2, 'Bob', 'hi', 0)",
                       (CHANNEL,))
    monkeypatch.setattr(store_module, "MIGRATIONS", shipped)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(shipped))
    async with await Store.open(db_path) as store:
        [waiting] = await store.open_intake(CHANNEL)
        assert (waiting.text, waiting.character) == ("hi", None)
        await store.join_character(CHANNEL, 1, "Pip")
        assert await store.joined_characters(CHANNEL) == ["Pip"]
    assert read_pragma(db_path, "user_version") == len(shipped)


async def test_a_closed_store_says_so_rather_than_failing_obscurely(db_path: Path) -> None:
    store = await Store.open(db_path)
    await store.close()
    with pytest.raises(StoreClosedError, match="closed"):
        await store.history(CHANNEL)
    with pytest.raises(StoreClosedError):
        await store.add_turns(CHANNEL, [character("late")])
