"""Settings validation as a property (hypothesis): every combination of values either gives
settings that can work together, or is refused with one line naming a key."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pygbot.config import ConfigError, Settings
from pygbot.prompt import MIN_PROMPT_TOKENS

EXAMPLES = 1_000
KEYS = ("CONTEXT_TOKENS", "MAX_NEW_TOKENS", "DISCORD_API_URL", "DISCORD_GATEWAY_URL")

numbers = st.one_of(st.integers(-10, 40_000).map(str), st.sampled_from(
    ["", " 512 ", "1e3", "2048.0", "１２", "٣", "0x200", "+600", "- 5"]), st.text(max_size=6))
urls = st.sampled_from(["", "http://127.0.0.1:1/api/v10", "ws://127.0.0.1:1/", "ftp://x"])


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
@given(context=numbers, max_new=numbers, api=urls, gateway=urls)
def test_settings_that_cannot_work_together_are_refused_in_one_line(
    context: str, max_new: str, api: str, gateway: str,
) -> None:
    environ = {"CONTEXT_TOKENS": context, "MAX_NEW_TOKENS": max_new,
               "DISCORD_API_URL": api, "DISCORD_GATEWAY_URL": gateway}
    try:
        loaded = Settings.from_env(environ, env_file=None)
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(KEYS)
        return
    assert loaded.context_tokens - loaded.max_new_tokens >= MIN_PROMPT_TOKENS
    assert context.strip().isascii() and max_new.strip().isascii()
    assert bool(loaded.discord_api_url) == bool(loaded.discord_gateway_url)
