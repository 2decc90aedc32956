"""What reaches the log: webhook and interaction tokens never do, even at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pygbot import logs

WEBHOOK_TOKEN = "Zm9vYmFyLXdlYmhvb2stdG9rZW4tdGhhdC1sZXRzLWFueW9uZS1wb3N0LWhlcmU"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_webhook_url_discord_py_logs_at_debug_shows_no_token(
    capsys: pytest.CaptureFixture[str], restore_logging: None,
) -> None:
    logs.configure("DEBUG", libraries=False)
    # What discord.webhook.async_ logs for every webhook request (discord.py 2.7).
    logging.getLogger("discord.webhook.async_").debug(
        "Webhook ID %s with %s %s has returned status code %s", 123, "POST",
        f"https://discord.com/api/v10/webhooks/123/{WEBHOOK_TOKEN}?wait=1", 200)
    logging.getLogger("discord.webhook.async_").debug(
        "%s", "https://discord.com/api/v10/interactions/456/aW50ZXJhY3Rpb24tdG9rZW4/callback")
    written = capsys.readouterr().err
    assert "/webhooks/123/<token>?wait=1 has returned status code 200" in written
    assert "/interactions/456/<token>/callback" in written
    assert WEBHOOK_TOKEN not in written and "aW50ZXJhY3Rpb24tdG9rZW4" not in written
