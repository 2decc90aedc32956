"""Settings: defaults, .env, validation with one-line errors, nothing secret in logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pygbot.config import ConfigError, Settings, documented_keys

REPO = Path(__file__).resolve().parent.parent


def test_defaults_follow_the_pygmalion_guidance() -> None:
    settings = Settings.from_env({}, env_file=None)
    assert settings.model == "PygmalionAI/pygmalion-1.3b"
    assert settings.context_tokens == 2048
    assert 0.5 <= settings.temperature <= 0.7
    assert settings.top_p == 0.9
    # Some repetition control is on; which one the quality bench decides (see the README).
    assert settings.dry_multiplier > 0 or settings.repetition_penalty > 1.0
    assert settings.device == "auto" and settings.dtype == "auto"


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MODEL=models/local\nTEMPERATURE=0.5\nDEVICE=cpu\n")
    settings = Settings.from_env({"TEMPERATURE": "0.6"}, env_file=env_file)
    assert settings.model == "models/local"
    assert settings.temperature == 0.6
    assert settings.device == "cpu"


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("TEMPERATURE", "hot", "float from 0.0 to 2.0"),
    ("TOP_P", "1.5", "float from 0.0 to 1.0"),
    ("DEVICE", "tpu", "one of auto, cuda, cpu"),
    ("DTYPE", "int4", "one of auto, float16, bfloat16, float32"),
    ("QUEUE_MAX", "0", "int from 1 to 10000"),
    ("ALLOW_DMS", "maybe", "true or false"),
    ("DEV_GUILD_ID", "my-server", "a Discord server id"),
    ("SPEAKER_LABELS", "nicknames", "one of you, names"),
    ("MAX_NEW_TOKENS", "１２", "written in ASCII digits 0-9"),
    ("TOP_K", "٣", "written in ASCII digits 0-9"),
    ("DEV_GUILD_ID", "١٢٣", "a Discord server id"),
])
def test_a_wrong_value_names_the_key_and_what_is_allowed(
    key: str, value: str, allowed: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({key: value}, env_file=None)
    message = str(caught.value)
    assert message.startswith(f"{key}=") and allowed in message and "\n" not in message


def test_env_example_documents_every_key_with_its_default() -> None:
    example = (REPO / ".env.example").read_text()
    for key, default, _help in documented_keys():
        assert f"\n{key}={default}\n" in example


def test_readme_configuration_table_lists_every_key_with_its_default() -> None:
    readme = (REPO / "README.md").read_text()
    for key, default, _help in documented_keys():
        assert f"| `{key}` | {f'`{default}`' if default else '(empty)'} |" in readme


def test_the_token_never_appears_in_the_redacted_settings() -> None:
    settings = Settings.from_env({"DISCORD_TOKEN": "secret-token-value"}, env_file=None)
    assert "secret-token-value" not in repr(settings.redacted())


def run_bot(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "bot.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_wrong_setting_stops_startup_with_one_line_and_status_2(tmp_path: Path) -> None:
    result = run_bot("--console", env={"TEMPERATURE": "warm", "PATH": ""}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        "pygbot: TEMPERATURE='warm' is not allowed: float from 0.0 to 2.0"


def test_bot_without_token_exits_with_a_one_line_explanation(tmp_path: Path) -> None:
    result = run_bot(env={"PATH": ""}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "DISCORD_TOKEN is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_context_too_small_for_the_reply_stops_startup_with_one_line(tmp_path: Path) -> None:
    result = run_bot("--console", env={"CONTEXT_TOKENS": "256", "MAX_NEW_TOKENS": "512",
                                       "PATH": ""}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("pygbot: CONTEXT_TOKENS of 256 tokens minus "
                                    "MAX_NEW_TOKENS=512 leaves -256 tokens for the prompt")
    assert "raise CONTEXT_TOKENS to 1024 or more, or lower MAX_NEW_TOKENS" in result.stderr


# --- .env problems: one line, exit 2; unknown keys warn ---------------------------------------

SECRET = "MTIz.secret-token.value"


def run_with_env_file(tmp_path: Path, content: bytes) -> subprocess.CompletedProcess[str]:
    """`python bot.py` (no token in the environment) with this `.env`."""
    (tmp_path / ".env").write_bytes(content)
    return run_bot(env={"PATH": ""}, cwd=tmp_path)


@pytest.mark.parametrize(("content", "expected"), [
    (b"MODEL=models/pyg\nPERSONAS_DIR=caf\xe9\n", ".env line 2 is not UTF-8 text (byte 0xe9)"),
    (b"MODEL=\"models/pyg\nTEMPERATURE=0.5\n", ".env line 1 is not KEY=value"),
    (b"# settings\nDISCORD_TOKEN " + SECRET.encode() + b"\n", ".env line 2 is not KEY=value"),
    (SECRET.encode() + b"\n", ".env line 1 has a name but no '='"),
    (b"CONTEXT_TOKENS=\xef\xbc\x92\xef\xbc\x90\xef\xbc\x94\xef\xbc\x98\n",
     "written in ASCII digits 0-9"),
    (b"DB_PATH=data/bot\x00.sqlite3\n", "DB_PATH contains a control character"),
    (b"DISCORD_TOKEN=\"" + SECRET.encode() + b" \xe2\x80\x8b\"\n",
     "DISCORD_TOKEN contains spaces or characters a bot token never has"),
])
def test_any_env_file_problem_is_one_line_and_status_2_without_the_secret(
    tmp_path: Path, content: bytes, expected: str,
) -> None:
    result = run_with_env_file(tmp_path, content)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("pygbot: ") and expected in result.stderr
    assert "Traceback" not in result.stderr and "secret-token" not in result.stderr


def test_a_misspelt_key_in_env_is_warned_about_with_the_closest_setting(tmp_path: Path) -> None:
    result = run_with_env_file(tmp_path, b"TEMPRATURE=0.5\nmodel=x\nFAVOURITE_COLOUR=blue\n")
    assert result.returncode == 2  # no DISCORD_TOKEN: the warnings come first
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 3
    assert warnings[0].endswith(".env line 1: TEMPRATURE is not a pygbot setting; "
                                "did you mean TEMPERATURE?")
    assert warnings[1].endswith(".env line 2: model is not a pygbot setting; did you mean MODEL?")
    assert warnings[2].endswith("FAVOURITE_COLOUR is not a pygbot setting; it is ignored")
    assert result.stderr.splitlines()[-1].startswith("pygbot: DISCORD_TOKEN is not set")


def test_an_env_file_with_a_byte_order_mark_quotes_and_export_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"\xef\xbb\xbfexport MODEL='models/my pyg'  # local copy\n"
                         b"TEMPERATURE = \"0.5\"\n\n# comment\nSPEAKER_LABELS=\n")
    settings = Settings.from_env({}, env_file=env_file)
    assert settings.model == "models/my pyg" and settings.temperature == 0.5
    assert settings.speaker_labels == "you"


def test_a_control_character_from_the_environment_is_refused_too() -> None:
    with pytest.raises(ConfigError, match=r"^MODEL contains a control character"):
        Settings.from_env({"MODEL": "models/\x1b[31mpyg"}, env_file=None)


def test_the_engine_api_key_never_appears_in_the_redacted_settings() -> None:
    settings = Settings.from_env({"ENGINE": "remote", "ENGINE_URL": "http://gpu-box:8000",
                                  "ENGINE_API_KEY": "sk-engine-secret"}, env_file=None)
    assert "sk-engine-secret" not in repr(settings.redacted())
    assert "sk-engine-secret" not in repr(settings)
    assert settings.redacted()["ENGINE_API_KEY"] == "<set>"


@pytest.mark.parametrize(("environ", "names"), [
    ({"ENGINE": "remote"}, ("ENGINE=remote needs ENGINE_URL",)),
    ({"XTC_PROBABILITY": "0.5"}, ("XTC_PROBABILITY=0.5 needs ENGINE=remote",)),
    ({"ENGINE": "remote", "ENGINE_URL": "http://x:1", "XTC_PROBABILITY": "0.5",
      "ENGINE_FLAVOR": "vllm"}, ("aphrodite, koboldcpp, llamacpp",)),
    ({"SHARD_IDS": "0,1"}, ("SHARD_IDS needs SHARD_COUNT",)),
    ({"SHARD_COUNT": "2", "SHARD_IDS": "1,2"}, ("SHARD_IDS 2 not below SHARD_COUNT=2",)),
])
def test_engine_and_shard_settings_that_cannot_work_are_refused_in_one_line(
    environ: dict[str, str], names: tuple[str, ...],
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ, env_file=None)
    assert all(name in str(caught.value) for name in names) and "\n" not in str(caught.value)


def test_shard_ids_and_the_tokenizer_default() -> None:
    settings = Settings.from_env({"SHARD_COUNT": "4", "SHARD_IDS": "3, 1"}, env_file=None)
    assert settings.shard_ids == (1, 3) and settings.shard_count == 4
    assert settings.tokenizer_source == settings.model
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        Settings.from_env({"SHARD_COUNT": "4", "SHARD_IDS": "one"}, env_file=None)
