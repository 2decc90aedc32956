"""The character the bot plays: a `Persona` value and pygbot's own persona files.

A persona file is JSON with the keys of `Persona` (`name`, `persona`, `scenario`, `greeting`,
`example_dialogue`). TavernAI / Pygmalion-style cards (`char_name`, `char_persona`,
`world_scenario`, `char_greeting`, `example_dialogue`) load too. Character Card V1/V2/V3
files (JSON, PNG, CHARX) are read by `pygbot.cards`, which builds a `Persona` that keeps the
whole card for export.

Placeholders: `{{char}}` (and `<BOT>`) become the character's name when a persona is loaded;
`{{user}}` (and `<USER>`) stay as `{{user}}` until a prompt is made for a member, because
the name depends on who is talking (`Persona.for_member`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pygbot.labels import is_label_char
from pygbot.lorebook import Lorebook

# Limits chosen so a persona fits Discord's modal text inputs (4000 characters each) and a
# name fits a prompt label and a slash-command choice (100 characters, no line breaks).
NAME_MAX_CHARS = 32
TEXT_MAX_CHARS = 4000
# Cards nest a few levels ({"data": {"character_book": {"entries": [{"keys": [...]}]}}});
# anything deeper is not a character. Checked before parsing, because Python's JSON parser
# recurses once per level and a file of a few KB of "[[[[" would exhaust the stack.
PERSONA_FILE_MAX_DEPTH = 20
# Cards made elsewhere often have longer descriptions than a Discord form holds; they are
# kept whole (the prompt's budget decides how much of them the model sees).
CARD_TEXT_MAX_CHARS = 32_000
GREETINGS_MAX = 100  # alternate greetings kept as the greeting's swipes
USER_PLACEHOLDER = "{{user}}"
# `{{char}}`, `<BOT>`, `<char>` and `{{user}}`, `<USER>` in any case and spacing.
_CHAR_PLACEHOLDER = re.compile(r"\{\{\s*char\s*\}\}|<\s*(?:bot|char)\s*>", re.IGNORECASE)
_USER_PLACEHOLDER = re.compile(r"\{\{\s*user\s*\}\}|<\s*user\s*>", re.IGNORECASE)
# An example-dialogue line spoken by the member: its label is the prompt's member label.
_USER_LABEL_LINE = re.compile(r"^(\s*)\{\{user\}\}(\s*:)", re.MULTILINE)
MEMBER_LABEL = "You"  # the prompt's label for members (pygbot.prompt.YOU)


# Keys of TavernAI-style character cards, mapped onto ours.
_CARD_KEYS = {
    "char_name": "name",
    "char_persona": "persona",
    "description": "persona",
    "world_scenario": "scenario",
    "char_greeting": "greeting",
    "first_mes": "greeting",
    "mes_example": "example_dialogue",
}


class PersonaError(ValueError):
    """A persona that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class Persona:
    name: str
    persona: str
    scenario: str = ""
    greeting: str = ""
    example_dialogue: str = ""
    alternate_greetings: tuple[str, ...] = ()  # offered as swipes of the greeting
    lorebook: Lorebook | None = None
    # The whole character card this persona came from (its top-level JSON object), kept so
    # an export gives back every field, unknown ones included; None for personas made here.
    card: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def greetings(self) -> tuple[str, ...]:
        """The greeting and its alternatives, in swipe order."""
        return (self.greeting, *self.alternate_greetings) if self.greeting else ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "persona": self.persona,
                                "scenario": self.scenario, "greeting": self.greeting,
                                "example_dialogue": self.example_dialogue}
        if self.alternate_greetings:
            data["alternate_greetings"] = list(self.alternate_greetings)
        if self.lorebook is not None:
            data["lorebook"] = self.lorebook.to_dict()
        if self.card is not None:
            data["card"] = self.card
        return data

    def for_member(self, member_label: str) -> Persona:
        """`{{user}}` filled in with the member being answered: their label in example
        dialogue lines they speak, `member_label` everywhere else. `member_label` must be a
        prompt label (`pygbot.prompt.speaker_label`), so it holds no line break or colon."""
        def fill(text: str) -> str:
            return text.replace(USER_PLACEHOLDER, member_label)

        examples = _USER_LABEL_LINE.sub(rf"\g<1>{MEMBER_LABEL}\g<2>", self.example_dialogue)
        return replace(
            self, persona=fill(self.persona), scenario=fill(self.scenario),
            greeting=fill(self.greeting), example_dialogue=fill(examples),
            alternate_greetings=tuple(fill(text) for text in self.alternate_greetings),
            lorebook=self.lorebook.with_text(fill) if self.lorebook else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Persona:
        """Build from our own keys or a TavernAI-style card; unknown keys are ignored."""
        if isinstance(data.get("data"), Mapping):  # character card v2 nests its fields in "data"
            data = data["data"]
        fields: dict[str, str] = {}
        for key, value in data.items():
            target = key if key in _FIELD_NAMES else _CARD_KEYS.get(key)
            if target is None or (target in fields and key not in _FIELD_NAMES):
                continue
            if not isinstance(value, str):
                raise PersonaError(f"field {key!r} must be text, not {type(value).__name__}")
            fields[target] = value
        if "name" not in fields or "persona" not in fields:
            raise PersonaError("needs at least 'name' and 'persona'")
        cleaned: dict[str, Any] = {key: _clean(value) for key, value in fields.items()}
        return cls(**cleaned, **_stored_extras(data))

    def with_placeholders_filled(self) -> Persona:
        """`{{char}}` becomes the name; `{{user}}` in any spelling becomes `{{user}}`."""
        def fill(text: str) -> str:
            return normalize_placeholders(text, self.name)

        return replace(
            self, persona=fill(self.persona), scenario=fill(self.scenario),
            greeting=fill(self.greeting), example_dialogue=fill(self.example_dialogue),
            alternate_greetings=tuple(fill(text) for text in self.alternate_greetings),
            lorebook=self.lorebook.with_text(fill) if self.lorebook else None)


def normalize_placeholders(text: str, char_name: str) -> str:
    """`{{char}}`/`<BOT>` → `char_name`; `{{user}}`/`<USER>` → `{{user}}` (filled later)."""
    text = _CHAR_PLACEHOLDER.sub(lambda _: char_name, text)
    return _USER_PLACEHOLDER.sub(USER_PLACEHOLDER, text)


def _stored_extras(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields beyond the five texts, as `Persona.to_dict` writes them."""
    extras: dict[str, Any] = {}
    greetings = data.get("alternate_greetings")
    if greetings is not None:
        if not isinstance(greetings, list) or not all(isinstance(g, str) for g in greetings):
            raise PersonaError("field 'alternate_greetings' must be a list of text")
        extras["alternate_greetings"] = tuple(_clean(text) for text in greetings)
    if isinstance(data.get("lorebook"), Mapping):
        extras["lorebook"] = Lorebook.from_dict(data["lorebook"])
    if isinstance(data.get("card"), Mapping):
        extras["card"] = data["card"]
    return extras


_FIELD_NAMES = {"name", "persona", "scenario", "greeting", "example_dialogue"}


def validate(persona: Persona) -> None:
    name = persona.name
    if not name.strip():
        raise PersonaError("name is empty")
    if name != name.strip():
        raise PersonaError("name has leading or trailing spaces")
    if len(name) > NAME_MAX_CHARS:
        raise PersonaError(f"name is longer than {NAME_MAX_CHARS} characters")
    # The name becomes the speaker label `NAME:` in the prompt, so it is held to the same
    # allow-list as every label: no colon or look-alike, no bracket, line break or
    # invisible character can reach the start of a prompt line through it.
    if not all(is_label_char(char) for char in name):
        raise PersonaError("name may not contain ':' or other symbols; use letters, digits, "
                           "spaces and ' - . _")
    if name.casefold() == "you":
        raise PersonaError("name 'You' is the label for members in the prompt")
    if not persona.persona.strip():
        raise PersonaError("persona text is empty")
    limit = TEXT_MAX_CHARS if persona.card is None else CARD_TEXT_MAX_CHARS
    for name in ("persona", "scenario", "greeting", "example_dialogue"):
        if len(getattr(persona, name)) > limit:
            raise PersonaError(f"{name} is longer than {limit} characters")
    if len(persona.alternate_greetings) > GREETINGS_MAX:
        raise PersonaError(f"more than {GREETINGS_MAX} alternate greetings")
    if any(len(text) > limit for text in persona.alternate_greetings):
        raise PersonaError(f"an alternate greeting is longer than {limit} characters")


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of JSON `text` nest, brackets inside strings not
    counted; a linear scan that never recurses, so any text can be measured safely."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def save_persona_file(persona: Persona, directory: Path) -> Path:
    """Write `persona` as pretty JSON named after it; returns the path."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", persona.name).strip("_").lower() or "persona"
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(persona.to_dict(), indent=2, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path
