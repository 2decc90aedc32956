"""Properties of the card parser, checked on many hostile inputs (hypothesis):

(a) whatever bytes arrive — random, a valid card cut short or with a byte changed, any JSON
    value in any field — the parser returns a character or raises `CardError` with one line
    of reason; nothing else escapes;
(b) a card it accepts exports and imports back to the same persona, as JSON and as PNG;
(c) card text — persona, scenario, example dialogue, greetings, lorebook entries, the name —
    and the member's display name filled in for `{{user}}` never add a line to the prompt:
    every line is still one the renderer opened with its own label.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pygbot.cards import CardError, Character, export_png, export_v2_json, read_character
from pygbot.chat import _for_member
from pygbot.prompt import YOU, Turn, build_prompt, speaker_label
from tests.card_factory import b64, png_card, v2_card, v3_card
from tests.test_prompt_properties import assert_only_the_renderer_starts_lines, hostile_text

FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
# Each example encodes a 400×600 PNG: fewer of them, same coverage of the text fields.
PICTURES = settings(FAST, max_examples=100)
VALID_PNG = png_card([("chara", b64(v2_card()))])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)
CARD_FIELDS = ["name", "description", "personality", "scenario", "first_mes", "mes_example",
               "alternate_greetings", "character_book", "nickname", "extensions", "tags"]


def read_or_refuse(raw: bytes) -> Character | None:
    """The parser's whole contract: a character, or a CardError of one clear line."""
    try:
        return read_character(raw)
    except CardError as error:
        message = str(error)
        assert message and "\n" not in message and len(message) < 300
        return None


@FAST
@given(raw=st.binary(max_size=600))
def test_random_bytes_are_a_character_or_a_clear_refusal(raw: bytes) -> None:
    read_or_refuse(raw)


@FAST
@given(cut=st.integers(0, len(VALID_PNG)), position=st.integers(0, len(VALID_PNG) - 1),
       value=st.integers(0, 255))
def test_a_damaged_png_card_is_a_character_or_a_clear_refusal(cut: int, position: int,
                                                                value: int) -> None:
    read_or_refuse(VALID_PNG[:cut])
    damaged = bytearray(VALID_PNG)
    damaged[position] = value
    read_or_refuse(bytes(damaged))


@FAST
@given(field=st.sampled_from(CARD_FIELDS), value=json_values, v3=st.booleans())
def test_any_json_in_any_field_is_a_character_or_a_clear_refusal(field: str, value: Any,
                                                                  v3: bool) -> None:
    card = (v3_card if v3 else v2_card)(**{field: value})
    read_or_refuse(json.dumps(card).encode())
    read_or_refuse(json.dumps(value).encode())


@FAST
@given(book=st.fixed_dictionaries({
    "scan_depth": st.one_of(st.none(), st.integers(-3, 10)),
    "token_budget": st.one_of(st.none(), st.integers(-10, 500)),
    "entries": st.lists(st.fixed_dictionaries({
        "keys": st.lists(st.text(max_size=5), max_size=3), "content": hostile_text,
        "enabled": st.booleans(), "insertion_order": st.integers(-5, 5),
        "constant": st.booleans(), "selective": st.booleans(),
        "secondary_keys": st.lists(st.text(max_size=5), max_size=2),
        "case_sensitive": st.one_of(st.none(), st.booleans()),
        "priority": st.one_of(st.none(), st.integers(-5, 5))}), max_size=4)}))
def test_any_well_typed_lorebook_is_accepted(book: dict[str, Any]) -> None:
    assert read_or_refuse(json.dumps(v2_card(character_book=book)).encode()) is not None


@st.composite
def hostile_cards(draw: st.DrawFn) -> dict[str, Any]:
    """Cards whose every text is hostile: line breaks of all kinds, forged labels,
    `<START>` spellings, placeholders, invisible characters."""
    name = draw(st.sampled_from(["Mira", "Dr. Who", "Zoë", "Aria ♡ v2", "{{user}}"]))
    lore = [{"keys": [], "content": draw(hostile_text), "enabled": True, "constant": True,
             "insertion_order": index} for index in range(draw(st.integers(0, 3)))]
    make = draw(st.sampled_from([v2_card, v3_card]))
    return make(name=name, description=draw(hostile_text) + " p",
                personality=draw(hostile_text), scenario=draw(hostile_text),
                first_mes=draw(hostile_text), mes_example=draw(hostile_text),
                alternate_greetings=[draw(hostile_text)],
                nickname=draw(hostile_text),
                character_book={"entries": lore, "token_budget": 300})


@PICTURES
@given(card=hostile_cards())
def test_an_accepted_card_exports_and_imports_back_unchanged(card: dict[str, Any]) -> None:
    character = read_or_refuse(json.dumps(card).encode())
    if character is None:
        return
    persona = character.persona
    assert read_character(export_png(persona, None)).persona == persona
    if card["spec"] == "chara_card_v2":  # V2 JSON export of a V3 card drops the nickname
        assert read_character(export_v2_json(persona)).persona == persona


@settings(FAST, max_examples=1_000)  # issue 8: at least 1,000 cases per hostile-input property
@given(card=hostile_cards(), display_name=hostile_text, message=hostile_text,
       names_mode=st.booleans())
def test_card_text_and_display_names_never_add_a_line_to_the_prompt(
    card: dict[str, Any], display_name: str, message: str, names_mode: bool,
    count_tokens: Callable[[str], int],
) -> None:
    character = read_or_refuse(json.dumps(card).encode())
    if character is None:
        return
    persona = character.persona
    speaker = speaker_label(display_name, persona.name) if names_mode else YOU
    turns = [Turn(persona.name, persona.greeting or "hi", is_character=True),
             Turn(speaker, message)]
    filled = _for_member(persona, display_name)
    prompt = build_prompt(filled, turns, 1024, count_tokens)
    assert_only_the_renderer_starts_lines(prompt, filled, turns)
    assert count_tokens(prompt.text) <= 1024


def test_the_property_strategies_produce_accepted_cards() -> None:
    # Guard against a strategy that only ever makes refused cards (the tests above would
    # then check nothing).
    accepted = hostile_cards().filter(
        lambda card: read_or_refuse(json.dumps(card).encode()) is not None)
    assert accepted.example() is not None


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
