"""Lorebooks: which entries the conversation switches on, what fits, and where they go."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pygbot.cards import read_character
from pygbot.lorebook import Lorebook, strip_decorators
from pygbot.persona import Persona
from pygbot.prompt import MIN_PROMPT_TOKENS, Turn, build_prompt, measure_persona
from tests.card_factory import v2_card


def entry(content: str, keys: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    return {"keys": keys or [], "content": content, "enabled": True, "insertion_order": 0,
            **fields}


def card_persona(entries: list[dict[str, Any]], **book: Any) -> Persona:
    card = v2_card(character_book={"entries": entries, **book}, mes_example="")
    return read_character(json.dumps(card).encode()).persona


def lore_in(persona: Persona, *messages: str, budget: int = 1000,
            count_tokens: Callable[[str], int] = lambda t: len(t.split())) -> str:
    turns = [Turn("You", text) for text in messages]
    prompt = build_prompt(persona, turns, budget, count_tokens)
    return prompt.text.split("\n")[0]


def test_an_entry_is_inserted_after_the_persona_when_its_key_is_mentioned() -> None:
    persona = card_persona([entry("The cafe is called Bean There.", ["cafe"])])
    assert lore_in(persona, "what's this place?").endswith("Warm, chatty.")
    assert lore_in(persona, "I love this Cafe!").endswith(
        "Warm, chatty. The cafe is called Bean There.")


def test_keys_match_whole_words_and_case_sensitivity_is_honoured() -> None:
    persona = card_persona([entry("CAT LORE", ["cat"]),
                            entry("BOB LORE", ["Bob"], case_sensitive=True)])
    assert "CAT LORE" not in lore_in(persona, "concatenate these")
    assert "CAT LORE" in lore_in(persona, "a CAT!")
    assert "BOB LORE" not in lore_in(persona, "bob is here")
    assert "BOB LORE" in lore_in(persona, "Bob is here")


def test_selective_entries_need_a_secondary_key_too() -> None:
    persona = card_persona([entry("SECRET", ["door"], selective=True,
                                  secondary_keys=["key", "lock"])])
    assert "SECRET" not in lore_in(persona, "a door")
    assert "SECRET" in lore_in(persona, "a door with a lock")


def test_only_the_last_scan_depth_messages_are_scanned() -> None:
    persona = card_persona([entry("DRAGON LORE", ["dragon"])], scan_depth=1)
    assert "DRAGON LORE" not in lore_in(persona, "a dragon!", "anyway")
    assert "DRAGON LORE" in lore_in(persona, "anyway", "a dragon!")


def test_disabled_regex_and_empty_entries_never_appear_and_constant_ones_always() -> None:
    persona = card_persona([entry("ALWAYS", constant=True),
                            entry("OFF", ["x"], enabled=False),
                            entry("REGEX", ["/x/i"], use_regex=True),
                            entry("", ["x"])])
    first_line = lore_in(persona, "x")
    assert first_line.endswith("Warm, chatty. ALWAYS")


def test_over_budget_the_lowest_priority_goes_and_order_follows_insertion_order() -> None:
    persona = card_persona([
        entry("third one two", constant=True, insertion_order=3, priority=10),
        entry("first one two", constant=True, insertion_order=1, priority=5),
        entry("dropped one two", constant=True, insertion_order=2, priority=1),
    ], token_budget=6)
    assert lore_in(persona, "hi").endswith("Warm, chatty. first one two third one two")


def test_lore_never_pushes_out_the_persona_or_the_message_being_answered(
    count_tokens: Callable[[str], int],
) -> None:
    persona = card_persona([entry("lore " * 300, constant=True, priority=100)],
                           token_budget=100_000)
    message = "please remember this message " * 20
    prompt = build_prompt(persona, [Turn("You", "older"), Turn("You", message)],
                          MIN_PROMPT_TOKENS, count_tokens)
    lines = prompt.text.split("\n")
    assert lines[0].startswith("Mira's Persona: Mira is a barista")
    assert lines[-2] == f"You: {message.strip()}"
    assert count_tokens(prompt.text) <= MIN_PROMPT_TOKENS


def test_decorators_are_removed_from_entry_content() -> None:
    assert strip_decorators("@@depth 4\n@@role system\nThe lore.") == "The lore."
    assert Lorebook.from_dict({"entries": [entry("@@activate\nX")]}).entries[0].content == "X"


def test_the_token_cost_line_adds_up_and_warns_when_the_conversation_is_cramped() -> None:
    def words(text: str) -> int:
        return len(text.split())

    persona = card_persona([entry("one two three", ["x"]), entry("four five", ["y"])],
                           token_budget=4)
    cost = measure_persona(persona, 2048, 200, words)
    assert cost.lorebook == 4
    assert cost.conversation == 2048 - cost.persona - cost.examples - 4 - 200
    assert cost.summary().startswith(f"persona {cost.persona} + examples 0 + lorebook ≤ 4 + "
                                     f"reply 200 of 2,048 tokens; {cost.conversation:,} left")
    assert "⚠️" not in cost.summary()
    long = Persona("Big", "word " * 700, example_dialogue="You: hi\nBig: " + "yo " * 800,
                   card={})
    cramped = measure_persona(long, 2048, 200, words)
    assert cramped.cramped
    assert "less than a quarter of the context" in cramped.summary()
