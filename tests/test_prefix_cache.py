"""The per-channel KV prefix cache: the same greedy text as without it, only the new tokens
computed on the next turn, and least recently used conversations evicted under the cap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import torch

from pygbot.chat import Author, ChatConfig, ChatService, EmptyReplyError
from pygbot.engine import Engine, GenerationParams, GenerationRequest, GenerationResult
from pygbot.library import PersonaLibrary
from pygbot.prefix_cache import BYTES_PER_MB, PrefixCache, common_prefix_length
from pygbot.store import Store
from pygbot.worker import Worker

REPO = Path(__file__).resolve().parent.parent
PERSONA = "Aria's Persona: Aria is a cheerful ship's navigator who loves stars and maps.\n<START>\n"
MESSAGES = ["Hello there! How are you today?", "What are you working on?",
            "Can you tell me a story?", "Do you like the sea?", "Tell me a joke.",
            "Where are we going?", "Good night!"]
# The bot's own kind of request: penalties over the conversation window, DRY, stop strings.
PENALISED = GenerationParams(max_new_tokens=16, temperature=0.0, repetition_penalty=1.3,
                             dry_multiplier=0.8)


def request(prompt: str, key: str, params: GenerationParams = PENALISED) -> GenerationRequest:
    return GenerationRequest(prompt, ("\nYou:",), params, penalty_from=len(PERSONA),
                             dry_sequence_breakers=("\n", ":"), cache_key=key)


def converse(engine: Engine, keys: Sequence[str], turns: int) -> list[list[GenerationResult]]:
    """`turns` turns of one conversation per key, every turn's requests in one batch; each
    channel is `turn` messages further along than the previous one, so lengths differ."""
    prompts = {key: PERSONA + "".join(f"You: {m}\nAria: ok\n" for m in MESSAGES[:offset])
               for offset, key in enumerate(keys)}
    results = []
    for turn in range(turns):
        for key in keys:
            prompts[key] += f"You: {MESSAGES[turn]}\nAria:"
        batch = engine.generate([request(prompts[key], key) for key in keys])
        for key, result in zip(keys, batch, strict=True):
            prompts[key] += result.text.split("\nYou:")[0] + "\n"
        results.append(batch)
    return results


def test_a_conversation_reads_the_same_and_computes_only_the_new_tokens(
    cached: Engine, uncached: Engine,
) -> None:
    with_cache = [batch[0] for batch in converse(cached, ["channel:1"], turns=6)]
    without = [batch[0] for batch in converse(uncached, ["channel:1"], turns=6)]

    assert [r.text for r in with_cache] == [r.text for r in without]
    assert [r.new_tokens for r in with_cache] == [r.new_tokens for r in without]
    assert with_cache[0].reused_tokens == 0 and all(r.reused_tokens == 0 for r in without)
    assert all(0 < r.first_token_seconds <= r.seconds for r in with_cache)
    for previous, result in pairwise(with_cache):
        # At least the whole last prompt is reused; computed: at most the reply and message
        # (a random model's reply may re-tokenize differently from what it generated).
        assert result.reused_tokens >= previous.prompt_tokens


def test_channels_batched_together_each_resume_from_their_own_cache(
    cached: Engine, uncached: Engine,
) -> None:
    keys = ["channel:10", "channel:11", "channel:12"]
    with_cache = converse(cached, keys, turns=4)
    without = converse(uncached, keys, turns=4)

    assert [[r.text for r in batch] for batch in with_cache] == \
        [[r.text for r in batch] for batch in without]
    assert len({r.prompt_tokens for r in with_cache[-1]}) == 3  # different lengths, one batch
    for previous, batch in pairwise(with_cache):
        assert [r.reused_tokens >= p.prompt_tokens for p, r in zip(previous, batch,
                                                                   strict=True)] == [True] * 3


def test_a_changed_history_reuses_only_the_common_prefix(cached: Engine,
                                                        uncached: Engine) -> None:
    first = PERSONA + "You: Tell me a joke.\nAria:"
    cached.generate([request(first, "channel:20")])
    edited = PERSONA + "You: Tell me a story instead.\nAria:"

    [result] = cached.generate([request(edited, "channel:20")])

    assert result.text == uncached.generate([request(edited, "channel:20")])[0].text
    persona_tokens = cached.count_tokens(PERSONA)
    assert persona_tokens <= result.reused_tokens < result.prompt_tokens - 3


def test_requests_without_a_key_are_neither_read_nor_kept(cached: Engine) -> None:
    prompt = PERSONA + "You: Where are we going?\nAria:"
    plain = GenerationRequest(prompt, ("\nYou:",), PENALISED)
    before = cached.prefix_cache.stats().entries
    assert [r.reused_tokens for r in cached.generate([plain, plain])] == [0, 0]
    assert cached.prefix_cache.stats().entries == before


def test_prefix_cache_mb_zero_means_no_cache(uncached: Engine) -> None:
    assert not uncached.prefix_cache.enabled
    converse(uncached, ["channel:30"], turns=2)
    assert uncached.prefix_cache.stats().entries == 0


async def test_the_chat_keys_the_cache_by_channel_and_replies_as_without_it(
    tmp_path: Path, cached: Engine, uncached: Engine,
) -> None:
    async def replies(engine: Engine, name: str) -> list[str]:
        config = ChatConfig(params=replace_params(), repetition_guard=False)
        async with await Store.open(tmp_path / f"{name}.sqlite3") as store, \
                Worker(engine) as worker:
            library = PersonaLibrary.from_dir(store, REPO / "personas", "Aria")
            chat = ChatService(store, worker, library, engine.count_tokens, config, seed=1)
            texts = []
            for message in MESSAGES[:4]:
                try:
                    reply = await chat.reply(40, 4, Author(7, "Sam"), message)
                    texts.append(reply.turn.text)
                except EmptyReplyError:
                    texts.append("<empty>")
            return texts

    hits_before = cached.prefix_cache.stats().hits
    assert await replies(cached, "cached") == await replies(uncached, "uncached")
    assert cached.prefix_cache.stats().hits - hits_before >= 3


def replace_params() -> GenerationParams:
    return GenerationParams(max_new_tokens=12, temperature=0.0, repetition_penalty=1.1,
                            dry_multiplier=0.8)


# --- the LRU under its cap (no model needed) ----------------------------------------------------

def states(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers of float32 states, 4 KiB per token in all."""
    return [(torch.zeros(1, 2, tokens, 128), torch.zeros(1, 2, tokens, 128)) for _ in range(2)]


def test_least_recently_used_conversations_leave_first_under_the_cap() -> None:
    cache = PrefixCache(capacity_mb=1)  # 256 tokens of these states
    cache.store("a", list(range(100)), states(100))
    cache.store("b", list(range(100)), states(100))
    assert cache.lookup("a", list(range(150))) is not None  # "a" is now the most recent
    cache.store("c", list(range(100)), states(100))  # over the cap: "b" goes

    assert cache.lookup("b", list(range(150))) is None
    assert cache.lookup("a", list(range(150))) is not None
    assert cache.lookup("c", list(range(150))) is not None
    assert cache.stats().nbytes <= BYTES_PER_MB
    cache.store("huge", list(range(300)), states(300))  # alone over the cap: not kept
    assert cache.lookup("huge", list(range(300))) is None
    assert cache.stats().entries == 2


def test_a_copy_starts_with_the_same_entries_and_then_goes_its_own_way() -> None:
    cache = PrefixCache(capacity_mb=1)
    cache.store("a", list(range(100)), states(100))
    twin = cache.copy()
    twin.store("b", list(range(100)), states(100))
    twin.store("c", list(range(100)), states(100))  # over the twin's cap: its "a" goes

    hit = cache.lookup("a", list(range(150)))
    assert hit is not None and hit.length == 100
    assert cache.lookup("b", list(range(150))) is None
    assert twin.lookup("a", list(range(150))) is None
    assert twin.capacity_bytes == cache.capacity_bytes and twin.stats().entries == 2
    assert cache.stats().entries == 1


def test_a_lookup_leaves_at_least_one_token_to_compute() -> None:
    cache = PrefixCache(capacity_mb=1)
    cache.store("a", [1, 2, 3, 4], states(4))
    hit = cache.lookup("a", [1, 2, 3, 4])
    assert hit is not None and hit.length == 3  # the last token's logits start the reply
    partial = cache.lookup("a", [1, 2, 9, 9, 9])
    assert partial is not None and partial.length == 2
    assert cache.lookup("a", [9, 2, 3]) is None
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2


def test_a_row_that_stops_early_leaves_the_batch_with_its_states(
    cached: Engine, uncached: Engine,
) -> None:
    first = PERSONA + "You: Do you like the sea?\nAria:"
    other = PERSONA + "You: Sing me a song.\nAria:"
    free = uncached.generate([request(first, "x")])[0].text
    stop = next(free[i:i + 2] for i in range(4, len(free) - 1) if free[i:i + 2].isprintable())
    early = replace(request(first, "channel:50"), stop_strings=(stop,))

    def two_turns(engine: Engine) -> list[GenerationResult]:
        stopped, _ = engine.generate([early, request(other, "channel:51")])
        follow_up = first + stopped.text + "\nYou: And the mountains?\nAria:"
        return [stopped, *engine.generate([request(follow_up, "channel:50"),
                                           request(other + " la la\nYou: more\nAria:",
                                                   "channel:51")])]

    with_cache, without = two_turns(cached), two_turns(uncached)
    assert with_cache[0].new_tokens < PENALISED.max_new_tokens  # it did stop early
    assert [r.text for r in with_cache] == [r.text for r in without]
    assert with_cache[1].reused_tokens >= with_cache[0].prompt_tokens
