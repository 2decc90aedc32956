"""`python bot.py --console` as a person would run it: a subprocess with piped input; and
streaming on a terminal, in-process with the scripted model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from pygbot.chat import ChatConfig, ChatService
from pygbot.console import Console
from pygbot.library import PersonaLibrary
from pygbot.store import Store
from pygbot.worker import Worker
from tests.scripted_engine import ScriptedEngine

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
    # One answer per non-blank message; the random model's reply may run over several lines.
    answers = [line for line in lines[1:] if line.startswith("Aria: ") or "try again" in line]
    assert len(answers) == 2
    assert lines[1] in answers


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


# --- streaming on a terminal ------------------------------------------------------------------

class Terminal(io.StringIO):
    """Standard output as a terminal: what was written, and isatty() like a real one."""

    def isatty(self) -> bool:
        return True


@contextlib.asynccontextmanager
async def console_on_terminal(
    tmp_path: Path, engine: ScriptedEngine, stdin: str, stream: bool = True,
) -> AsyncIterator[tuple[asyncio.Task[int], Terminal]]:
    async with await Store.open(tmp_path / "console.sqlite3") as store, \
            Worker(engine) as worker:
        library = PersonaLibrary.from_dir(store, REPO / "personas", "Aria")
        chat = ChatService(store, worker, library, engine.count_tokens, ChatConfig(), seed=1)
        out = Terminal()
        task = asyncio.create_task(Console(chat, io.StringIO(stdin), out, stream=stream).run())
        yield task, out
        await asyncio.wait_for(task, timeout=30)


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_a_reply_streams_to_the_terminal_before_it_is_done(
    tmp_path: Path, count_tokens: Callable[[str], int],
) -> None:
    reply = ("*looks up* Oh, hello there. I was just charting the rings of Saturn, they look "
             "wonderful tonight.")
    engine = ScriptedEngine([" " + reply], count_tokens)
    resume = engine.pause_after("wonderful")
    async with console_on_terminal(tmp_path, engine, "Hi!\n") as (task, out):
        await _until(lambda: "Aria: *looks up* Oh, hello there." in out.getvalue())
        assert not task.done()
        assert "Saturn" not in out.getvalue()  # only whole, settled sentences so far
        resume.set()
    assert out.getvalue().endswith(f"\nAria: {reply}\n")  # grew in place into one line


async def test_a_resample_rewrites_the_line_in_place(
    tmp_path: Path, count_tokens: Callable[[str], int],
) -> None:
    first = "The rings are beautiful tonight, aren't they!"
    engine = ScriptedEngine([f" {first}\nYou: yes", f" {first}\nYou: yes",
                             " Want to hear some jazz? I have a record from Earth."],
                            count_tokens)
    async with console_on_terminal(tmp_path, engine, "Look\nAgain\n") as (_, out):
        pass
    written = out.getvalue()
    assert written.count(f"Aria: {first}") == 2  # shown the second time too, then erased
    assert written.endswith("\x1b[JAria: Want to hear some jazz? I have a record from Earth.\n")


async def test_with_streaming_off_the_terminal_gets_the_whole_reply_once(
    tmp_path: Path, count_tokens: Callable[[str], int],
) -> None:
    engine = ScriptedEngine([" Hello there. Nice to meet you, traveller from afar, truly."],
                            count_tokens)
    async with console_on_terminal(tmp_path, engine, "Hi!\n", stream=False) as (_, out):
        pass
    assert out.getvalue().endswith(
        "\nAria: Hello there. Nice to meet you, traveller from afar, truly.\n")
    assert engine.requests[-1].on_text is None
