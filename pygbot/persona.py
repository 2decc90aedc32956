"""The character the bot plays: a `Persona` value and the files people read and trade.

A persona file is JSON with the keys of `Persona` (`name`, `persona`, `scenario`, `greeting`,
`example_dialogue`). TavernAI / Pygmalion-style cards (`char_name`, `char_persona`,
`world_scenario`, `char_greeting`, `example_dialogue`) load too, so characters made for other
front ends can be dropped into `personas/` as they are.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pygbot.labels import is_label_char

log = logging.getLogger(__name__)

# Limits chosen so a persona fits Discord's modal text inputs (4000 characters each) and a
# name fits a prompt label and a slash-command choice (100 characters, no line breaks).
NAME_MAX_CHARS = 32
TEXT_MAX_CHARS = 4000
PERSONA_FILE_MAX_BYTES = 256 * 1024
# Cards nest a few levels ({"data": {"character_book": {"entries": [{"keys": [...]}]}}});
# anything deeper is not a character. Checked before parsing, because Python's JSON parser
# recurses once per level and a file of a few KB of "[[[[" would exhaust the stack.
PERSONA_FILE_MAX_DEPTH = 20


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

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

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
        return cls(**{key: _clean(value) for key, value in fields.items()})

    def with_placeholders_filled(self) -> Persona:
        """Cards write `{{char}}` and `{{user}}`; the prompt wants the name and `You`."""
        def fill(text: str) -> str:
            return text.replace("{{char}}", self.name).replace("{{user}}", "You")

        return Persona(
            name=self.name,
            persona=fill(self.persona),
            scenario=fill(self.scenario),
            greeting=fill(self.greeting),
            example_dialogue=fill(self.example_dialogue),
        )


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
    for field in ("persona", "scenario", "greeting", "example_dialogue"):
        if len(getattr(persona, field)) > TEXT_MAX_CHARS:
            raise PersonaError(f"{field} is longer than {TEXT_MAX_CHARS} characters")


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def load_persona_file(path: Path) -> Persona:
    """Read one persona file; raises `PersonaError` with a reason a person can act on."""
    try:
        if path.stat().st_size > PERSONA_FILE_MAX_BYTES:
            raise PersonaError(f"file is larger than {PERSONA_FILE_MAX_BYTES // 1024} KiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PersonaError(f"cannot read file: {error}") from error
    if json_depth(text) > PERSONA_FILE_MAX_DEPTH:
        raise PersonaError(f"JSON nested more than {PERSONA_FILE_MAX_DEPTH} levels deep")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PersonaError(f"not valid JSON: {error.msg} at line {error.lineno}") from error
    if not isinstance(data, dict):
        raise PersonaError("the file must hold a JSON object")
    return Persona.from_dict(data).with_placeholders_filled()


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


def load_persona_dir(directory: Path) -> dict[str, Persona]:
    """Load every `*.json` in `directory`, keyed by case-folded name.

    A broken file is logged by name and reason and skipped, so one bad download never
    takes the other characters down with it.
    """
    personas: dict[str, Persona] = {}
    if not directory.is_dir():
        log.warning("persona folder %s does not exist; no built-in characters", directory)
        return personas
    for path in sorted(directory.glob("*.json")):
        try:
            persona = load_persona_file(path)
        except PersonaError as error:
            log.warning("skipped persona file %s: %s", path.name, error)
            continue
        key = persona.name.casefold()
        if key in personas:
            log.warning("skipped persona file %s: a character named %r is already loaded",
                        path.name, persona.name)
            continue
        personas[key] = persona
    return personas


def save_persona_file(persona: Persona, directory: Path) -> Path:
    """Write `persona` as pretty JSON named after it; returns the path."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", persona.name).strip("_").lower() or "persona"
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(persona.to_dict(), indent=2, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path
