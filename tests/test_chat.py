"""The Discord-free conversation service, with a real store file and a real worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pygbot.chat import (
    Author,
    ChatConfig,
    ChatService,
    EmptyReplyError,
    NothingToRegenerateError,
    RejectedReplyError,
)
from pygbot.engine import Engine, GenerationParams
from pygbot.library import PersonaLibrary
from pygbot.store import Store
from pygbot.worker import Worker
from tests.scripted_engine import ScriptedEngine

REPO = Path(__file__).resolve().parent.parent
SAM = Author(7, "Sam")
BEA = Author(8, "Bea")
CHANNEL, GUILD = 100, 10
QUICK = GenerationParams(max_new_tokens=12, temperature=0.7)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await Store.open(tmp_path / "memory.sqlite3") as opened:
        yield opened


def make_chat(store: Store, engine: Engine | ScriptedEngine, worker: Worker,
              **config: object) -> ChatService:
    library = PersonaLibrary.from_dir(store, REPO / "personas", "Aria")
    settings = ChatConfig(params=QUICK, **config)  # type: ignore[arg-type]
    return ChatService(store, worker, library, engine.count_tokens, settings, seed=1)


@pytest.fixture
async def scripted(store: Store, count_tokens: Callable[[str], int]
                   ) -> AsyncIterator[tuple[ChatService, ScriptedEngine]]:
    engine = ScriptedEngine([], count_tokens)
    async with Worker(engine) as worker:
        yield make_chat(store, engine, worker), engine


async def test_a_fresh_channel_opens_with_the_greeting_and_stores_both_turns(
    store: Store, tiny_engine: Engine,
) -> None:
    async with Worker(tiny_engine) as worker:
        chat = make_chat(store, tiny_engine, worker)
        try:
            reply = await chat.reply(CHANNEL, GUILD, SAM, "Hello Aria!", message_id=555)
        except EmptyReplyError:
            pytest.skip("the random tiny model produced nothing three times")
    assert reply.greeting is not None and reply.greeting.text.startswith("*the intercom chimes")
    history = await store.history(CHANNEL)
    assert [(t.role, t.name) for t in history] == [
        ("character", "Aria"), ("user", "Sam"), ("character", "Aria")]
    assert history[1].text == "Hello Aria!" and history[1].message_id == 555
    assert history[2].text == reply.turn.text and reply.turn.text.strip()


async def test_history_survives_a_restart_and_reaches_the_prompt(
    tmp_path: Path, count_tokens: Callable[[str], int],
) -> None:
    path = tmp_path / "restart.sqlite3"
    engine = ScriptedEngine([" I remember the comet."], count_tokens)
    async with await Store.open(path) as first, Worker(engine) as worker:
        await make_chat(first, engine, worker).reply(CHANNEL, GUILD, SAM, "Did you see the comet?")
    engine.script(" Yes, still.")
    async with await Store.open(path) as second, Worker(engine) as worker:
        await make_chat(second, engine, worker).reply(CHANNEL, GUILD, SAM, "Still remember?")
    last_prompt = engine.requests[-1].prompt
    assert "You: Did you see the comet?\nAria: I remember the comet.\nYou: Still remember?\nAria:" \
        in last_prompt


async def test_the_reply_is_cut_before_the_model_speaks_for_the_member(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" Sure thing!\nYou: and then I said yes\nAria: great")
    reply = await chat.reply(CHANNEL, GUILD, SAM, "Can you help?")
    assert reply.turn.text == "Sure thing!"
    assert "\nYou:" in engine.requests[0].stop_strings


async def test_a_reply_cut_at_max_new_tokens_ends_on_a_finished_sentence(
    scripted: tuple[ChatService, ScriptedEngine], store: Store,
) -> None:
    chat, engine = scripted
    engine.script(" The rings are ice. Some pieces are as big as houses and they drift")
    reply = await chat.reply(CHANNEL, GUILD, SAM, "Tell me about the rings")
    assert reply.turn.text == "The rings are ice."
    assert (await store.history(CHANNEL))[-1].text == "The rings are ice."


async def test_a_reply_that_ended_by_itself_keeps_its_last_words(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" Ice, mostly\nYou: and?")  # under the 12-token cap: the turn ended there
    reply = await chat.reply(CHANNEL, GUILD, SAM, "Tell me about the rings")
    assert reply.turn.text == "Ice, mostly"


async def test_an_empty_reply_is_an_error_and_nothing_is_stored(
    scripted: tuple[ChatService, ScriptedEngine], store: Store,
) -> None:
    chat, engine = scripted
    engine.script("\nYou: hi", "   ", "\nAria:")
    with pytest.raises(EmptyReplyError):
        await chat.reply(CHANNEL, GUILD, SAM, "hello?")
    assert [t.role for t in await store.history(CHANNEL)] == ["character"]  # the greeting only


async def test_a_loop_inside_a_reply_is_trimmed(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" I love the stars. They shine so bright. I love the stars. They shine so")
    reply = await chat.reply(CHANNEL, GUILD, SAM, "What do you love?")
    assert reply.turn.text == "I love the stars. They shine so bright."


async def test_a_near_duplicate_of_a_recent_reply_is_resampled(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" The rings are beautiful tonight, aren't they?")
    await chat.reply(CHANNEL, GUILD, SAM, "Look outside")
    engine.script(" The rings are beautiful tonight, aren't they!", " Want to hear some jazz?")
    reply = await chat.reply(CHANNEL, GUILD, SAM, "Yes")
    assert reply.turn.text == "Want to hear some jazz?"
    assert len({r.params.seed for r in engine.requests}) == len(engine.requests)  # new seeds
    first_try, retry = engine.requests[-2:]
    assert retry.params.temperature > first_try.params.temperature  # and a hotter one


async def test_a_short_reply_said_again_is_resampled_not_posted(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" No.")
    await chat.reply(CHANNEL, GUILD, SAM, "Will it rain?")
    engine.script(" No.", " Maybe tomorrow, the clouds look heavy.")
    reply = await chat.reply(CHANNEL, GUILD, SAM, "Will it snow?")
    assert reply.turn.text == "Maybe tomorrow, the clouds look heavy."


async def test_a_reply_that_repeats_on_every_try_is_not_posted_or_stored(
    scripted: tuple[ChatService, ScriptedEngine], store: Store,
) -> None:
    chat, engine = scripted
    engine.script(" No.")
    await chat.reply(CHANNEL, GUILD, SAM, "Will it rain?")
    engine.script(" No.", " No!", " no")
    with pytest.raises(RejectedReplyError):
        await chat.reply(CHANNEL, GUILD, SAM, "Will it snow?")
    assert [turn.text for turn in await store.history(CHANNEL, 10)][-1] == "No."


async def test_a_reply_where_the_character_takes_another_name_is_resampled(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" Hi! I'm Luna, the ship's cook.", " Hi! I'm Aria, your navigator.")
    reply = await chat.reply(CHANNEL, GUILD, SAM, "Who are you?")
    assert reply.turn.text == "Hi! I'm Aria, your navigator."


async def test_a_reply_of_bare_numbers_is_resampled_and_an_action_is_kept(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" 12.50", " Twelve fifty, and the coffee's extra.")
    reply = await chat.reply(CHANNEL, GUILD, SAM, "How much do you charge?")
    assert reply.turn.text == "Twelve fifty, and the coffee's extra."
    engine.script(" *nods slowly*")
    reply = await chat.reply(CHANNEL, GUILD, SAM, "Deal?")
    assert reply.turn.text == "*nods slowly*"


async def test_the_turn_structure_and_speaker_names_are_dry_sequence_breakers(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" Hello!")
    await chat.reply(CHANNEL, GUILD, SAM, "Hi")
    breakers = engine.requests[-1].dry_sequence_breakers
    assert {"\n", ":", "\"", "*", "You", "Aria"} <= set(breakers)


async def test_without_the_guard_the_penalty_covers_the_whole_prompt(
    store: Store, count_tokens: Callable[[str], int],
) -> None:
    engine = ScriptedEngine([" a", " b"], count_tokens)
    async with Worker(engine) as worker:
        await make_chat(store, engine, worker).reply(CHANNEL, GUILD, SAM, "one")
        await make_chat(store, engine, worker, repetition_guard=False).reply(
            CHANNEL + 1, GUILD, SAM, "one")
    guarded, unguarded = engine.requests
    assert guarded.prompt[guarded.penalty_from:].startswith("Aria: *the intercom")
    assert unguarded.penalty_from == 0


async def test_regenerate_adds_an_alternative_that_becomes_the_memory(
    scripted: tuple[ChatService, ScriptedEngine], store: Store,
) -> None:
    chat, engine = scripted
    engine.script(" First answer.", " Second answer, quite different.")
    first = await chat.reply(CHANNEL, GUILD, SAM, "Tell me something")
    regenerated = await chat.regenerate(CHANNEL, GUILD)
    assert regenerated.id == first.turn.id
    assert regenerated.alternatives == ("First answer.", "Second answer, quite different.")
    assert (await store.history(CHANNEL))[-1].text == "Second answer, quite different."
    back = await chat.choose_alternative(first.turn.id, 0)
    assert (await store.history(CHANNEL))[-1].text == "First answer." == back.text
    assert "Tell me something\nAria:" in engine.requests[1].prompt


async def test_one_regenerate_samples_its_candidates_together_and_stores_them_all(
    store: Store, count_tokens: Callable[[str], int],
) -> None:
    engine = ScriptedEngine([" First answer."], count_tokens)
    async with Worker(engine, max_batch=1) as worker:  # a job of 3 is never split
        chat = make_chat(store, engine, worker, swipe_candidates=3)
        first = await chat.reply(CHANNEL, GUILD, SAM, "Tell me something")
        engine.script(" A comet flew by.", " The rings are lovely.", " Tea is ready.")
        regenerated = await chat.regenerate(CHANNEL, GUILD)
    assert engine.batches == [1, 3]  # the reply alone, the candidates in one generate call
    assert len({request.params.seed for request in engine.requests[1:]}) == 3
    assert regenerated.alternatives == ("First answer.", "A comet flew by.",
                                        "The rings are lovely.", "Tea is ready.")
    assert regenerated.chosen == 1 and regenerated.text == "A comet flew by."
    assert (await store.history(CHANNEL))[-1].text == "A comet flew by."
    assert (await chat.choose_alternative(first.turn.id, 3)).text == "Tea is ready."


async def test_the_guard_keeps_only_candidates_that_repeat_nothing_first_acceptable_shown(
    store: Store, count_tokens: Callable[[str], int],
) -> None:
    engine = ScriptedEngine([" The station hums quietly tonight."], count_tokens)
    async with Worker(engine) as worker:
        chat = make_chat(store, engine, worker, swipe_candidates=4)
        await chat.reply(CHANNEL, GUILD, SAM, "Tell me something")
        engine.script(" The station hums quietly tonight.",  # the reply shown already
                      " A comet is passing the window.", "",  # a fresh one, an empty one
                      " A comet is passing the window!")  # a near-duplicate of a candidate
        regenerated = await chat.regenerate(CHANNEL, GUILD)
    assert regenerated.alternatives == ("The station hums quietly tonight.",
                                        "A comet is passing the window.")
    assert regenerated.text == "A comet is passing the window." and regenerated.chosen == 1
    assert engine.batches == [1, 4]


async def test_the_greeting_alone_cannot_be_regenerated(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, _ = scripted
    await chat.start_conversation(CHANNEL, GUILD)
    with pytest.raises(NothingToRegenerateError):
        await chat.regenerate(CHANNEL, GUILD)


async def test_speaker_names_mode_labels_members_and_stops_at_their_names(
    store: Store, count_tokens: Callable[[str], int],
) -> None:
    engine = ScriptedEngine([" Hi Sam!", " Hi Bea!\nSam: I speak for Sam now"], count_tokens)
    async with Worker(engine) as worker:
        chat = make_chat(store, engine, worker, speaker_labels="names")
        await chat.reply(CHANNEL, GUILD, SAM, "hello")
        reply = await chat.reply(CHANNEL, GUILD, BEA, "hey there")
    assert reply.turn.text == "Hi Bea!"
    prompt = engine.requests[-1]
    assert "Sam: hello\nAria: Hi Sam!\nBea: hey there\nAria:" in prompt.prompt
    assert {"\nSam:", "\nBea:", "\nYou:", "\nAria:"} <= set(prompt.stop_strings)


async def test_switching_persona_starts_a_new_conversation_with_its_greeting(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" Hello from Aria.", " Ahoy from Rook.")
    await chat.reply(CHANNEL, GUILD, SAM, "hi")
    await chat.library.switch(GUILD, "rook")
    reply = await chat.reply(CHANNEL, GUILD, SAM, "who are you?")
    assert reply.greeting is not None and "Kettle's on" in reply.greeting.text
    prompt = engine.requests[-1].prompt
    assert prompt.startswith("Rook's Persona:") and "Hello from Aria" not in prompt


async def test_edits_and_deletes_follow_the_message(
    scripted: tuple[ChatService, ScriptedEngine], store: Store,
) -> None:
    chat, engine = scripted
    engine.script(" Noted.")
    await chat.reply(CHANNEL, GUILD, SAM, "my name is Sma", message_id=42)
    await chat.edit_message(42, "my name is Sam")
    assert [t.text for t in await store.history(CHANNEL)][1] == "my name is Sam"
    assert await chat.forget_message(42)
    assert "my name is Sam" not in [t.text for t in await store.history(CHANNEL)]


async def test_reset_forgets_the_channel_and_greets_again(
    scripted: tuple[ChatService, ScriptedEngine], store: Store,
) -> None:
    chat, engine = scripted
    engine.script(" Fine.")
    await chat.reply(CHANNEL, GUILD, SAM, "hi")
    greeting = await chat.reset(CHANNEL, GUILD)
    history = await store.history(CHANNEL)
    assert greeting is not None and [t.id for t in history] == [greeting.id]


# --- streaming --------------------------------------------------------------------------------

async def _until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_the_first_sentence_is_heard_while_the_reply_is_still_generated(
    scripted: tuple[ChatService, ScriptedEngine], store: Store,
) -> None:
    chat, engine = scripted
    engine.script(" *looks up* Oh, hello there. I was just charting the rings of Saturn, "
                  "they look wonderful tonight. Want to see?")
    resume = engine.pause_after("wonderful")
    heard: list[str] = []
    task = asyncio.create_task(chat.reply(CHANNEL, GUILD, SAM, "Hi!", on_partial=heard.append))
    await _until(lambda: bool(heard))
    assert heard == ["*looks up* Oh, hello there."] and not task.done()
    resume.set()
    reply = await task
    assert reply.turn.text == (await store.history(CHANNEL))[-1].text
    assert all(reply.turn.text.startswith(partial) for partial in heard)


async def test_a_forged_turn_and_a_start_tag_are_never_heard(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" Sure, I will bring the star map and the old brass compass for you."
                  "\nYou: Also give me the keys to the ship, right now, please.\nAria: Fine.",
                  " Of course, here is the chart, the one with the comet on it, see? <START>"
                  " You: thanks a lot, friend")
    heard: list[str] = []
    first = await chat.reply(CHANNEL, GUILD, SAM, "Help?", on_partial=heard.append)
    second = await chat.reply(CHANNEL, GUILD, SAM, "Chart?", on_partial=heard.append)
    assert heard and not any("You:" in text or "START" in text for text in heard)
    assert (first.turn.text, second.turn.text) == (
        "Sure, I will bring the star map and the old brass compass for you.",
        "Of course, here is the chart, the one with the comet on it, see?")


async def test_a_loop_is_never_heard_and_a_repeated_reply_is_replaced_by_its_resample(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" The rings are beautiful tonight, aren't they? The rings are beautiful "
                  "tonight, aren't they? The rings are beautiful tonight, aren't they?")
    heard: list[str] = []
    first = await chat.reply(CHANNEL, GUILD, SAM, "Look outside", on_partial=heard.append)
    assert first.turn.text == "The rings are beautiful tonight, aren't they?"
    assert all(first.turn.text.startswith(text) for text in heard)

    engine.script(" The rings are beautiful tonight, aren't they!\nYou: They are.",
                  " Want to hear some jazz? I have a record from Earth, a rare one.")
    heard.clear()
    second = await chat.reply(CHANNEL, GUILD, SAM, "Yes", on_partial=heard.append)
    assert second.turn.text == "Want to hear some jazz? I have a record from Earth, a rare one."
    assert heard[0].startswith("The rings")  # the first try was on screen ...
    assert second.turn.text.startswith(heard[-1])  # ... and the resample replaced it


async def test_without_a_listener_nothing_streams(
    scripted: tuple[ChatService, ScriptedEngine],
) -> None:
    chat, engine = scripted
    engine.script(" Plain and simple.")
    await chat.reply(CHANNEL, GUILD, SAM, "hi")
    assert engine.requests[-1].on_text is None


async def test_a_real_model_streams_prefixes_of_its_final_reply(
    store: Store, tiny_engine: Engine,
) -> None:
    heard: list[str] = []
    async with Worker(tiny_engine) as worker:
        chat = make_chat(store, tiny_engine, worker, repetition_guard=False)
        try:
            reply = await chat.reply(CHANNEL, GUILD, SAM, "Tell me a long story.",
                                     on_partial=heard.append)
        except EmptyReplyError:
            pytest.skip("the random tiny model produced nothing")
    assert all(reply.turn.text.startswith(text) for text in heard)
