"""The persona folder: character files (pygbot JSON, card JSON, PNG, CHARX) loaded at start,
and cards written into it by `python bot.py --import-card`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

from pygbot.cards import (
    CARD_FILE_MAX_BYTES,
    CardError,
    Character,
    card_document,
    export_png,
    read_character,
)
from pygbot.persona import PersonaError

log = logging.getLogger(__name__)

CHARACTER_SUFFIXES = (".json", ".png", ".charx")


def load_character_file(path: Path) -> Character:
    """Read one character file; raises `PersonaError` with a reason a person can act on."""
    try:
        if path.stat().st_size > CARD_FILE_MAX_BYTES:
            raise CardError(f"the file is larger than {CARD_FILE_MAX_BYTES // (1024 * 1024)} "
                            "MiB")
        raw = path.read_bytes()
    except OSError as error:
        raise CardError(f"cannot read file: {error.strerror or error}") from None
    return read_character(raw)


def load_character_dir(directory: Path) -> dict[str, Character]:
    """Every character file in `directory`, keyed by case-folded name.

    A broken file is logged by name and reason and skipped, so one bad download never
    takes the other characters down with it.
    """
    characters: dict[str, Character] = {}
    if not directory.is_dir():
        log.warning("persona folder %s does not exist; no built-in characters", directory)
        return characters
    for path in _character_paths(directory):
        try:
            character = load_character_file(path)
        except PersonaError as error:
            log.warning("skipped persona file %s: %s", path.name, error)
            continue
        key = character.persona.name.casefold()
        if key in characters:
            log.warning("skipped persona file %s: a character named %r is already loaded",
                        path.name, character.persona.name)
            continue
        characters[key] = character
    return characters


def import_card_file(source: Path, directory: Path) -> tuple[Path, Character]:
    """Copy the character in card file `source` into `directory` as a file the bot loads at
    start: a PNG card when it has a picture, else card JSON. Nothing is written when the
    card cannot be read or its name is taken; raises `PersonaError` saying why."""
    character = load_character_file(source)
    name = character.persona.name
    if directory.is_dir():
        for path in _character_paths(directory):
            try:
                other = load_character_file(path)
            except PersonaError:
                continue
            if other.persona.name.casefold() == name.casefold():
                raise CardError(f"{directory / path.name} already holds a character named "
                                f"{name!r}")
    target = directory / f"{file_stem(name)}{'.png' if character.avatar else '.json'}"
    if target.exists():
        raise CardError(f"{target} already exists")
    if character.avatar:
        data = export_png(character.persona, character.avatar)
    else:
        data = (json.dumps(card_document(character.persona), indent=2, ensure_ascii=False)
                + "\n").encode("utf-8")
    _write_atomically(target, data)
    return target, character


def file_stem(name: str) -> str:
    """A file name for a character: ASCII letters, digits, '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_").lower() or "character"


def _character_paths(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir()
                  if path.suffix.lower() in CHARACTER_SUFFIXES and path.is_file())


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temporary file beside `target` and rename: a crash leaves no half card."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".import-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
