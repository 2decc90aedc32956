"""A new admin's first starts, as `python bot.py` subprocesses: the cheap things are checked
before the model loads, and every failure is one line saying what to do.

No test here reaches the network: the Hugging Face Hub is an address on 127.0.0.1 where
nothing listens (HF_ENDPOINT), Discord is the loopback emulator or such a closed port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.bot_process import READY_LINE
from tests.discord_emulator import DiscordEmulator

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 240  # a hang guard only; nothing asserts how long a start takes
# Engine.load logs this before it touches the model; its absence proves a check came first.
MODEL_LOAD_MARK = "loading "
WELL_SHAPED_TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.Gx4bYw.not-the-emulators-signature-at-all"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"  # a commit hash in the Hub cache


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bot_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a fresh start: no .env, an empty Hub cache, an unreachable Hub."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HF_", "TRANSFORMERS_", "DISCORD_", "HUGGING"))}
    env.update({"HF_HOME": str(tmp_path / "hf-home"),
                "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
                "DB_PATH": str(tmp_path / "bot.sqlite3"), "PERSONAS_DIR": str(REPO / "personas"),
                "MAX_NEW_TOKENS": "8", "LOG_LEVEL": "INFO", "DEVICE": "cpu",
                "DTYPE": "float32"})
    env.update(settings)
    return env


def run_bot(tmp_path: Path, *args: str, env: Mapping[str, str],
            stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "bot.py"), *args,
                           "--env-file", str(tmp_path / "no.env")],
                          input=stdin, env=dict(env), cwd=tmp_path, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def assert_one_clear_line(stderr: str) -> None:
    assert "Traceback" not in stderr
    lines = [line.split(": ", 1)[-1] for line in stderr.splitlines()]  # without the time
    assert len(lines) == len(set(lines)), f"a line was logged twice:\n{stderr}"
    assert last_line(stderr).startswith("pygbot: ")


# --- the Hugging Face Hub out of reach ------------------------------------------------------------

def test_an_unreachable_hub_is_one_line_without_retries(tmp_path: Path) -> None:
    env = bot_env(tmp_path)
    result = run_bot(tmp_path, "--console", env=env, stdin="hi\n")
    assert result.returncode == 1
    assert_one_clear_line(result.stderr)
    message = last_line(result.stderr)
    assert message.startswith(f"pygbot: cannot reach the Hugging Face Hub at "
                              f"{env['HF_ENDPOINT']} (")
    assert "MODEL=PygmalionAI/pygmalion-1.3b is not in the local cache" in message
    assert "`python bot.py --download-model MODEL --to DIR`" in message
    assert "`python bot.py --try`" in message
    assert "Retry" not in result.stderr and "WARNING" not in result.stderr


def test_an_unreachable_hub_uses_the_cached_copy(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = bot_env(tmp_path)
    snapshot = (Path(env["HF_HOME"]) / "hub" / "models--pygbot-test--tiny" / "snapshots"
                / SNAPSHOT)
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(SNAPSHOT)
    result = run_bot(tmp_path, "--console", "--model", "pygbot-test/tiny", env=env,
                     stdin="Hello there\n")
    assert result.returncode == 0, result.stderr
    # The greeting, then the reply (a random model's reply may run over several lines).
    assert [line for line in result.stdout.splitlines() if line.startswith("Aria: ")][1:]
    assert "using the cached copy of pygbot-test/tiny" in result.stderr
    assert "Retry" not in result.stderr


# --- cheap checks come before the model --------------------------------------------------------

def test_a_wrong_persona_is_reported_before_the_model_loads(tmp_path: Path) -> None:
    # The model could not even be found: the persona's line proves it was never tried.
    result = run_bot(tmp_path, "--console", "--persona", "Nobody", env=bot_env(tmp_path))
    assert result.returncode == 1
    assert_one_clear_line(result.stderr)
    assert last_line(result.stderr) == ("pygbot: there is no character named 'Nobody'; "
                                        "choose one of Aria, Pip, Rook")
    assert MODEL_LOAD_MARK not in result.stderr and "Hugging Face" not in result.stderr


def test_a_database_that_cannot_be_opened_is_reported_before_the_model_loads(
    tmp_path: Path,
) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("this is not SQLite " * 100)
    result = run_bot(tmp_path, "--console",
                     env=bot_env(tmp_path, DB_PATH=str(not_a_database)))
    assert result.returncode == 1
    assert_one_clear_line(result.stderr)
    assert last_line(result.stderr).startswith(f"pygbot: cannot open the database "
                                               f"DB_PATH={not_a_database}: ")
    assert MODEL_LOAD_MARK not in result.stderr


@pytest.mark.parametrize(("token", "reason"), [
    ("Bot MTEwMDAwMDAwMDAwMDAwMDAwMQ.Gx4bYw.abcdefabcdef", "contains spaces"),
    ("0123456789abcdef0123456789abcdef", "does not look like a bot token"),  # client secret
    ("1100000000000000001", "does not look like a bot token"),  # application id
])
def test_a_token_of_the_wrong_shape_is_one_line_before_anything_loads(
    tmp_path: Path, token: str, reason: str,
) -> None:
    result = run_bot(tmp_path, env=bot_env(tmp_path, DISCORD_TOKEN=token))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and reason in result.stderr
    assert token not in result.stderr and "abcdefabcdef" not in result.stderr


async def run_bot_async(tmp_path: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """`python bot.py` while this test's event loop serves the Discord emulator."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "bot.py"), "--env-file", str(tmp_path / "no.env"),
        env=dict(env), cwd=tmp_path, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    return process.returncode or 0, stderr.decode()


async def test_a_token_discord_rejects_is_reported_before_the_model_loads(
    tmp_path: Path, discord_emulator: DiscordEmulator,
) -> None:
    env = bot_env(tmp_path, DISCORD_TOKEN=WELL_SHAPED_TOKEN,
                  DISCORD_API_URL=discord_emulator.base_url,
                  DISCORD_GATEWAY_URL=discord_emulator.gateway_url)
    status, stderr = await run_bot_async(tmp_path, env)
    assert status == 1
    assert_one_clear_line(stderr)
    assert last_line(stderr) == ("pygbot: Discord rejected DISCORD_TOKEN; copy the token "
                                 "again from the Developer Portal (Bot → Reset Token)")
    assert MODEL_LOAD_MARK not in stderr and WELL_SHAPED_TOKEN not in stderr


def test_discord_out_of_reach_is_one_line_saying_what_to_check(tmp_path: Path) -> None:
    port = closed_port()
    env = bot_env(tmp_path, DISCORD_TOKEN=WELL_SHAPED_TOKEN,
                  DISCORD_API_URL=f"http://127.0.0.1:{port}/api/v10",
                  DISCORD_GATEWAY_URL=f"ws://127.0.0.1:{port}/")
    result = run_bot(tmp_path, env=env)
    assert result.returncode == 1
    assert_one_clear_line(result.stderr)
    message = last_line(result.stderr)
    assert message.startswith(f"pygbot: cannot reach Discord at http://127.0.0.1:{port}/api/v10 (")
    assert message.endswith("check this machine's internet connection, DNS, firewall and "
                            "proxy, and DISCORD_API_URL")
    assert MODEL_LOAD_MARK not in result.stderr


# --- a good start ---------------------------------------------------------------------------------

async def test_a_good_start_shows_model_progress_and_no_voice_warnings(
    tmp_path: Path, tiny_model_dir: Path, discord_emulator: DiscordEmulator,
) -> None:
    env = bot_env(tmp_path, DISCORD_TOKEN=discord_emulator.token, MODEL=str(tiny_model_dir),
                  DISCORD_API_URL=discord_emulator.base_url,
                  DISCORD_GATEWAY_URL=discord_emulator.gateway_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "bot.py"), "--env-file", str(tmp_path / "no.env"),
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert process.stderr is not None
    seen: list[str] = []
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while not any(READY_LINE in line for line in seen):
            line = (await process.stderr.readline()).decode()
            assert line, "".join(seen)  # the bot ended before it connected
            seen.append(line)
        process.terminate()
        rest = (await process.stderr.read()).decode()
        assert await process.wait() == 0, "".join(seen) + rest
    log = "".join(seen) + rest
    assert f"loading {tiny_model_dir} on cpu as float32" in log
    assert "Loading weights" in log  # transformers' own progress bar
    assert "DISCORD_TOKEN accepted" in log
    assert "voice" not in log and "PyNaCl" not in log


# --- /retry with greedy settings ----------------------------------------------------------------

def test_retry_with_greedy_settings_explains_instead_of_repeating(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    result = run_bot(tmp_path, "--console", "--model", str(tiny_model_dir),
                     env=bot_env(tmp_path, TEMPERATURE="0", LOG_LEVEL="WARNING"),
                     stdin="Hello there\n/retry\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "(TEMPERATURE=0 is greedy decoding, which writes the same reply every time; set "
        "TEMPERATURE above 0 (e.g. 0.65) to get different alternatives)")
