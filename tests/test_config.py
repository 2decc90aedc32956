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
