"""`python bot.py --console` as a person would run it: a subprocess with piped input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def console(
    tmp_path: Path, model: Path, stdin: str, *args: str,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DB_PATH": str(tmp_path / "console.sqlite3"), "MAX_NEW_TOKENS": "12",
           "PERSONAS_DIR": str(REPO / "personas"), "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, str(REPO / "bot.py"), "--console", "--model",
                           str(model), *args], input=stdin, env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)


def test_console_chats_with_piped_input_and_exits_zero(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    result = console(tmp_path, tiny_model_dir, "Hello there\n\nHow are you?\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Aria: *the intercom chimes softly*")
    answers = lines[1:]
    assert len(answers) == 2  # one per non-blank message
    assert all(line.startswith("Aria: ") or "try again" in line for line in answers)


def test_console_memory_is_the_same_sqlite_file_across_runs(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    console(tmp_path, tiny_model_dir, "First visit\n")
    second = console(tmp_path, tiny_model_dir, "Back again\n")
    assert second.returncode == 0, second.stderr
    assert not second.stdout.startswith("Aria: *the intercom")  # no second greeting


def test_console_plays_the_chosen_persona(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = console(tmp_path, tiny_model_dir, "Ahoy\n", "--persona", "rook")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Rook: *stamps the rain off his boots*")


def test_an_unknown_persona_is_one_line_with_the_choices(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    result = console(tmp_path, tiny_model_dir, "", "--persona", "Nobody")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("choose one of Aria, Pip, Rook")
    assert "Traceback" not in result.stderr


def test_a_model_that_cannot_be_loaded_is_explained_in_one_line(tmp_path: Path) -> None:
    result = console(tmp_path, tmp_path / "no-such-model", "hi\n")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("pygbot: ") and "MODEL" in message
    assert "Traceback" not in result.stderr


def test_startup_logs_the_settings_but_never_the_token(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    env = {**os.environ, "DB_PATH": str(tmp_path / "c.sqlite3"), "MAX_NEW_TOKENS": "4",
           "PERSONAS_DIR": str(REPO / "personas"), "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "INFO",
           "DISCORD_TOKEN": "very-secret-token-123"}
    result = subprocess.run([sys.executable, str(REPO / "bot.py"), "--console", "--model",
                             str(tiny_model_dir)], input="hi\n", env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "'DISCORD_TOKEN': '<set>'" in result.stderr
    assert "very-secret-token-123" not in result.stderr + result.stdout
