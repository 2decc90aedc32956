"""Prefilling ahead: the start of a channel's next prompt, computed while the worker is idle,
so the turn that drops a chunk of history reuses it instead of computing the whole prompt."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from pygbot.chat import Author, ChatConfig, ChatService, EmptyReplyError
from pygbot.engine import Engine, GenerationParams, GenerationRequest, GenerationResult
from pygbot.library import PersonaLibrary
from pygbot.lookahead import next_prompt_start
from pygbot.persona import Persona
from pygbot.prefix_cache import PrefixCache
from pygbot.prompt import YOU, Turn, build_prompt
from pygbot.store import Store
from pygbot.worker import Worker

REPO = Path(__file__).resolve().parent.parent
GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0, repetition_penalty=1.1,
                          dry_multiplier=0.8)
# Long enough that a 600-token context overflows within a dozen turns.
MESSAGES = [f"Message {n}: tell me about the stars over the harbour tonight, the maps you drew "
            f"of the northern coast, and what the old captain said about the storm {n}."
            for n in range(1, 19)]
ARIA = Persona(name="Aria", persona="Aria is the ship's navigation AI.",
               example_dialogue="<START>\nYou: Hi\nAria: Hello there!")


def words_count(text: str) -> int:
    return len(text.split())


# --- rendering the next prompt's start (no model) ----------------------------------------------

def conversation(pairs: int, member: str = YOU) -> list[Turn]:
    turns = []
    for n in range(pairs):
        turns.append(Turn(member, f"question {n} " + "about the sea " * 3))
        turns.append(Turn("Aria", f"answer {n}" + " with many words" * 3, is_character=True))
    return turns


def answered_prompt(turns: Sequence[Turn], budget: int) -> str:
    """The prompt that was just answered: the conversation without its reply."""
    return build_prompt(ARIA, turns[:-1], budget, words_count).text


def foreseen_starts(budget: int, message_tokens: int, member: str = YOU
                    ) -> list[tuple[list[Turn], str]]:
    """The starts foreseen as a conversation grows, with the conversation each time."""
    found = []
    for pairs in range(1, 30):
        turns = conversation(pairs, member)
        start = next_prompt_start(ARIA, turns, budget, words_count,
                                  answered_prompt=answered_prompt(turns, budget),
                                  speaker=member, message_tokens=message_tokens)
        if start is not None:
            found.append((turns, start))
    return found


def test_nothing_is_foreseen_while_the_next_message_still_fits() -> None:
    turns = conversation(3)
    assert next_prompt_start(ARIA, turns, 400, words_count,
                             answered_prompt=answered_prompt(turns, 400), speaker=YOU,
                             message_tokens=10) is None


def test_the_examples_leaving_and_each_history_drop_are_foreseen() -> None:
    budget, expected = 200, 12
    found = foreseen_starts(budget, expected)
    assert "Hello there!" not in found[0][1]  # first the example dialogue leaves
    drops = [(turns, start) for turns, start in found if "question 0 " not in start]
    assert len(drops) >= 2
    for turns, start in found:
        answered = answered_prompt(turns, budget)

        def next_prompt(message_tokens: int, turns: list[Turn] = turns) -> str:
            return build_prompt(ARIA, [*turns, filler(message_tokens)], budget,
                                words_count).text

        assert start.startswith("Aria's Persona: Aria is the ship's navigation AI.\n")
        assert start.endswith(f"Aria: {turns[-1].text}\n")
        assert not start.startswith(answered)  # the start moved
        # The next prompt begins with it: for a message like the last one if that makes
        # history leave, else for the shortest message that does.
        if not next_prompt(expected).startswith(answered):
            assert next_prompt(expected).startswith(start)
        else:
            shortest = next(size for size in range(expected, budget)
                            if not next_prompt(size).startswith(answered))
            assert next_prompt(shortest).startswith(start)
            assert shortest <= 2 * expected


def filler(words: int) -> Turn:
    return Turn(YOU, " ".join(["word"] * words))


def test_a_member_label_is_where_the_start_ends() -> None:
    found = foreseen_starts(200, 40, member="Sam")
    assert found
    assert all(start.endswith(f"Aria: {turns[-1].text}\n") for turns, start in found)


# --- the cache's two entries per conversation (no model) -----------------------------------------

def states(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(1, 1, tokens, 4), torch.zeros(1, 1, tokens, 4))]


def test_a_lookup_takes_the_entry_that_shares_more() -> None:
    cache = PrefixCache(capacity_mb=1)
    cache.store("c", [1, 2, 3, 4, 5], states(5))
    cache.store_ahead("c", [1, 9, 9, 9], states(4))

    assert cache.lookup("c", [1, 2, 3, 7]).length == 3  # type: ignore[union-attr]
    assert cache.lookup("c", [1, 9, 9, 9, 6]).length == 4  # type: ignore[union-attr]
    assert cache.lookup("c", [1, 9, 9, 9]).length == 3  # type: ignore[union-attr]
    assert cache.lookup("c", [1, 9, 9, 9], whole=True).length == 4  # type: ignore[union-attr]
    assert cache.stats().entries == 2


def test_the_turn_that_used_the_ahead_entry_replaces_it() -> None:
    cache = PrefixCache(capacity_mb=1)
    cache.store("c", [1, 2, 3], states(3))
    cache.store_ahead("c", [1, 9, 9, 9, 9, 9], states(6))
    cache.store("c", [1, 2, 3, 4, 5], states(5))  # a turn without the drop: ahead still due
    assert cache.stats().entries == 2

    # The drop came; the ahead entry's last token merged with the next line's first.
    cache.store("c", [1, 9, 9, 9, 9, 7, 4, 5], states(8))
    assert cache.stats().entries == 1
    cache.store_ahead("c", [1, 8], states(2))
    cache.discard("c")
    assert cache.stats().entries == 0 and cache.stats().nbytes == 0


# --- the engine: prefill ahead, in slices, same greedy text ---------------------------------------

def test_a_prefill_cut_short_goes_on_later_and_the_reply_reads_the_same(
    cached: Engine, uncached: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pygbot.engine.AHEAD_SLICE_TOKENS", 16)
    start = "Aria's Persona: a navigator.\n<START>\n" + "".join(
        f"You: {m}\nAria: I see.\n" for m in MESSAGES[:4])
    prompt = start + "You: And now?\nAria:"
    slices = iter([False, True])  # stop after the second slice

    first = cached.prefill("channel:ahead", start, lambda: next(slices, True))
    assert first == 32  # two slices of 16
    rest = cached.prefill("channel:ahead", start)
    assert first + rest == len(cached.token_ids(start))
    assert cached.prefill("channel:ahead", start) == 0  # all of it is held now

    request = GenerationRequest(prompt, ("\nYou:",), GREEDY, cache_key="channel:ahead")
    [result] = cached.generate([request])
    [plain] = uncached.generate([request])
    assert result.reused_tokens == first + rest
    assert result.text == plain.text


async def test_an_engine_without_a_cache_prefills_nothing(uncached: Engine) -> None:
    assert uncached.prefill("channel:none", "Aria's Persona: a navigator.\n") == 0
    built: list[bool] = []
    async with Worker(uncached) as worker:  # PREFIX_CACHE_MB=0: not even the prompt is built
        worker.prefill_when_idle("channel:none", lambda: built.append(True) or "x")  # type: ignore[func-returns-value]
        await worker.settled()
    assert built == []


# --- the chat: the turn that drops history reuses the start prefilled ahead -----------------------

class Recording:
    """The engine as the worker sees it, keeping every request and result."""

    def __init__(self, engine: Engine, prefill_ahead: bool) -> None:
        self.engine = engine
        self.calls: list[tuple[GenerationRequest, GenerationResult]] = []
        self.can_prefill = prefill_ahead
        self.prefill = engine.prefill

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results = self.engine.generate(requests)
        self.calls.extend(zip(requests, results, strict=True))
        return results


async def chat_turns(engine: Engine, database: Path, *, prefill_ahead: bool
                     ) -> list[tuple[GenerationRequest, GenerationResult]]:
    recording = Recording(engine, prefill_ahead)
    config = ChatConfig(context_tokens=600, params=GREEDY, repetition_guard=False)
    async with await Store.open(database) as store, \
            Worker(recording) as worker:
        library = PersonaLibrary.from_dir(store, REPO / "personas", "Aria")
        chat = ChatService(store, worker, library, engine.count_tokens, config, seed=1)
        for message in MESSAGES:
            with contextlib.suppress(EmptyReplyError):  # a random model's reply may be empty
                await chat.reply(50, 5, Author(7, "Sam"), message)
            await worker.settled()  # the member takes a moment to write the next message
    return recording.calls


async def test_the_turn_that_drops_history_computes_only_the_new_lines(
    tmp_path: Path, cached: Engine, uncached: Engine,
) -> None:
    cached.prefix_cache = PrefixCache(64)
    turns = await chat_turns(cached, tmp_path / "ahead.sqlite3", prefill_ahead=True)
    cached.prefix_cache = PrefixCache(64)
    without_ahead = await chat_turns(cached, tmp_path / "behind.sqlite3", prefill_ahead=False)
    plain = await chat_turns(uncached, tmp_path / "plain.sqlite3", prefill_ahead=False)

    assert [r.text for _, r in turns] == [r.text for _, r in plain]
    drops = [n for n in range(1, len(turns))
             if not turns[n][0].prompt.startswith(turns[n - 1][0].prompt)]
    assert len(drops) >= 3, "the conversation never outgrew its context"
    for n in range(1, len(turns)):
        assert computed(turns[n][1]) <= new_material(cached, turns, n), n
    # Without the prefill ahead, each drop computes the history after the persona again.
    assert all(computed(without_ahead[n][1]) > 2 * new_material(cached, without_ahead, n)
               for n in drops)


def computed(result: GenerationResult) -> int:
    return result.prompt_tokens - result.reused_tokens


def new_material(engine: Engine, turns: Sequence[tuple[GenerationRequest, GenerationResult]],
                 n: int) -> int:
    """Tokens turn `n` adds to the one before: its reply, the new message and `Aria:` (and a
    few more, as a random model's reply may re-tokenize differently from what it generated)."""
    new_lines = "\nYou:" + turns[n][0].prompt.rsplit("\nYou:", 1)[-1]
    return engine.count_tokens(turns[n - 1][1].text + new_lines) + 8


# --- the worker: only while idle, never in a member's way ----------------------------------------

class SlowPrefill:
    """An engine whose prefill takes `slices` slices of `slice_s` seconds each."""

    def __init__(self, slices: int = 20, slice_s: float = 0.02) -> None:
        self.slices, self.slice_s = slices, slice_s
        self.events: list[str] = []
        self.done: dict[str, int] = {}
        self.lock = threading.Lock()
        self.can_prefill = True

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        with self.lock:
            self.events.append(f"generate {requests[0].prompt}")
        if requests[0].prompt == "slow":
            time.sleep(0.2)
        return [GenerationResult("ok", 1, 0.0, 1) for _ in requests]

    def prefill(self, cache_key: str, text: str, should_stop: Callable[[], bool]) -> int:
        computed = 0
        while self.done.get(cache_key, 0) < self.slices:
            if computed and should_stop():
                break
            time.sleep(self.slice_s)
            self.done[cache_key] = self.done.get(cache_key, 0) + 1
            computed += 1
            with self.lock:
                self.events.append(f"slice {cache_key}")
        return computed


def ask(text: str, cache_key: str | None = None) -> GenerationRequest:
    return GenerationRequest(text, (), GenerationParams(max_new_tokens=1), cache_key=cache_key)


async def test_a_request_waits_for_one_slice_then_the_prefill_goes_on() -> None:
    engine = SlowPrefill()
    async with Worker(engine) as worker:
        worker.prefill_when_idle("a", lambda: "start")
        while not engine.events:
            await asyncio.sleep(0.005)
        await worker.submit(ask("hello"))
        await worker.settled()

    position = engine.events.index("generate hello")
    assert 1 <= position <= 3  # one slice at most after the request arrived (plus timing)
    assert engine.done["a"] == engine.slices  # finished afterwards
    assert worker.stats().ahead_tokens == engine.slices


async def test_a_newer_ask_replaces_one_not_yet_started() -> None:
    engine = SlowPrefill(slices=2)
    built: list[str] = []

    def start(name: str) -> Callable[[], str]:
        return lambda: built.append(name) or name  # type: ignore[func-returns-value]

    async with Worker(engine) as worker:
        blocker = asyncio.create_task(worker.submit(ask("first")))
        worker.prefill_when_idle("a", start("old"))
        worker.prefill_when_idle("a", start("new"))
        await blocker
        await worker.settled()
    assert built == ["new"]


async def test_a_new_turn_of_the_same_conversation_cancels_its_prefill_not_yet_run() -> None:
    engine = SlowPrefill(slices=2)
    built: list[str] = []
    async with Worker(engine) as worker:
        busy = asyncio.create_task(worker.submit(ask("slow")))
        await asyncio.sleep(0.05)
        worker.prefill_when_idle("a", lambda: built.append("a") or "a")  # type: ignore[func-returns-value]
        worker.prefill_when_idle("b", lambda: built.append("b") or "b")  # type: ignore[func-returns-value]
        await worker.submit(ask("next turn of a", cache_key="a"))
        await busy
        await worker.settled()
    assert built == ["b"]


async def test_nothing_to_prefill_and_failures_cost_no_reply() -> None:
    engine = SlowPrefill(slices=1)

    def broken() -> str:
        raise RuntimeError("a prompt that cannot be rendered")

    async with Worker(engine) as worker:
        worker.prefill_when_idle("none", lambda: None)
        worker.prefill_when_idle("broken", broken)
        await worker.settled()
        assert (await worker.submit(ask("still here"))).text == "ok"
    assert "slice none" not in engine.events and "slice broken" not in engine.events


async def test_an_engine_without_prefill_is_never_asked() -> None:
    class Plain:
        def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
            return [GenerationResult("ok", 1, 0.0, 1) for _ in requests]

    called: list[bool] = []
    async with Worker(Plain()) as worker:
        worker.prefill_when_idle("a", lambda: called.append(True) or "x")  # type: ignore[func-returns-value]
        await worker.settled()
    assert called == []


async def test_closing_stops_a_prefill_at_its_next_slice() -> None:
    engine = SlowPrefill(slices=500)
    worker = Worker(engine)
    worker.start()
    worker.prefill_when_idle("a", lambda: "start")
    while not engine.events:
        await asyncio.sleep(0.005)
    await asyncio.wait_for(worker.close(), timeout=5)
    assert engine.done["a"] < engine.slices
