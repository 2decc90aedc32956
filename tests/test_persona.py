"""Personas: the shipped characters, files people trade, and broken files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pygbot.character_files import load_character_dir
from pygbot.persona import Persona, PersonaError, save_persona_file

REPO = Path(__file__).resolve().parent.parent


def load_personas(directory: Path) -> dict[str, Persona]:
    return {key: c.persona for key, c in load_character_dir(directory).items()}


def test_at_least_three_distinct_characters_ship_in_personas() -> None:
    personas = load_personas(REPO / "personas")
    assert len(personas) >= 3
    for persona in personas.values():
        assert persona.greeting and persona.example_dialogue and persona.scenario
    assert len({p.persona for p in personas.values()}) == len(personas)


def test_a_broken_file_is_reported_by_name_and_reason_and_the_rest_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    save_persona_file(Persona(name="Good", persona="Fine."), tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "nameless.json").write_text(json.dumps({"persona": "no name"}))
    (tmp_path / "colon.json").write_text(json.dumps({"name": "Evil: x", "persona": "p"}))
    with caplog.at_level(logging.WARNING):
        personas = load_personas(tmp_path)
    assert list(personas) == ["good"]
    assert "broken.json: not valid JSON" in caplog.text
    assert "nameless.json: needs at least 'name' and 'persona'" in caplog.text
    assert "colon.json: name may not contain ':'" in caplog.text


def test_tavern_style_cards_load_with_placeholders_filled(tmp_path: Path) -> None:
    card = {"char_name": "Mira", "char_persona": "{{char}} is a barista who helps {{User}}.",
            "world_scenario": "A cafe.", "char_greeting": "Hi, I'm <BOT>!",
            "example_dialogue": "<START>\n<USER>: Coffee?\n{{char}}: Always."}
    (tmp_path / "mira.json").write_text(json.dumps(card))
    mira = load_personas(tmp_path)["mira"]
    assert mira.greeting == "Hi, I'm Mira!"
    # {{user}} waits for the member being answered: their label, and "You" where they speak.
    for_bob = mira.for_member("Bob")
    assert for_bob.persona == "Mira is a barista who helps Bob."
    assert for_bob.example_dialogue == "<START>\nYou: Coffee?\nMira: Always."


@pytest.mark.parametrize(("fields", "reason"), [
    ({"name": "", "persona": "p"}, "name is empty"),
    ({"name": "You", "persona": "p"}, "label for members"),
    ({"name": "A" * 40, "persona": "p"}, "longer than 32"),
    ({"name": "Ok", "persona": "   "}, "persona text is empty"),
    ({"name": "Ok", "persona": "p" * 5000}, "persona is longer than 4000"),
])
def test_invalid_personas_are_refused_with_a_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(PersonaError, match=reason):
        Persona(**fields)


def test_a_saved_persona_loads_back_unchanged(tmp_path: Path) -> None:
    persona = Persona(name="Zoë", persona="Émigré poet.", greeting="Bonjour!")
    save_persona_file(persona, tmp_path)
    assert load_personas(tmp_path)["zoë"] == persona


DEEP = "[" * 100_000 + "]" * 100_000  # 200 KB: under the size limits, far over the depth limit


def test_a_deeply_nested_file_is_skipped_with_one_line_and_the_rest_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    save_persona_file(Persona(name="Good", persona="Fine."), tmp_path)
    (tmp_path / "deep.json").write_text(DEEP)
    nested_card = {"name": "Nest", "persona": "p", "extensions": DEEP}  # brackets in a string
    (tmp_path / "nest.json").write_text(json.dumps(nested_card))
    (tmp_path / "big.json").write_text(json.dumps({"name": "Big", "persona": "p" * 3_000_000}))
    with caplog.at_level(logging.WARNING):
        personas = load_personas(tmp_path)
    assert sorted(personas) == ["good", "nest"]
    assert "deep.json: JSON nested more than 20 levels deep" in caplog.text
    assert "big.json: the card's JSON is larger than 2048 KiB" in caplog.text
    assert len(caplog.records) == 2


def run_console(tmp_path: Path, personas: Path, model: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DB_PATH": str(tmp_path / "db.sqlite3"), "PERSONAS_DIR": str(personas),
           "MAX_NEW_TOKENS": "8", "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, str(REPO / "bot.py"), "--console", "--model",
                           str(model)], input="Hello\n", env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)


def test_start_up_survives_a_deeply_nested_persona_file(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    personas = tmp_path / "personas"
    save_persona_file(Persona(name="Good", persona="Fine.", greeting="Hi there."), personas)
    (personas / "deep.json").write_text(DEEP)
    result = run_console(tmp_path, personas, tiny_model_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Good: Hi there.")
    assert "Traceback" not in result.stderr
    [warning] = [line for line in result.stderr.splitlines() if "deep.json" in line]
    assert warning.endswith("skipped persona file deep.json: JSON nested more than 20 levels "
                            "deep")


def test_start_up_is_refused_in_one_line_when_only_a_nested_file_is_left(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "deep.json").write_text(DEEP)
    result = run_console(tmp_path, personas, tiny_model_dir)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "pygbot: no built-in characters were loaded; add a persona file to the persona "
        "folder (PERSONAS_DIR)")
    assert "Traceback" not in result.stderr
