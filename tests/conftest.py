"""Shared fixtures: a tiny real model built on the fly, loaded through the engine's own path."""

from __future__ import annotations

import os

# Tests never reach a model hub: everything they load is built here. huggingface_hub reads
# these once, on import, so they are set before anything imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pygbot.cogs.posting import DiscordPoster
from pygbot.cogs.reply_view import ReplyControls
from pygbot.engine import Engine
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator.fixtures import discord_emulator  # noqa: F401  (a fixture)
from tests.discord_harness import Server, bot_settings, bot_with_engine, build_server
from tests.model_factory import build_tiny_model
from tests.scripted_engine import ScriptedEngine


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> Engine:
    return Engine.load(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def cached(tiny_model_dir: Path) -> Engine:
    """The tiny model with a 64 MB prefix cache, one per test module (tests swap its cache)."""
    return Engine.load(str(tiny_model_dir), device="cpu", dtype="float32", prefix_cache_mb=64)


@pytest.fixture(scope="module")
def uncached(tiny_model_dir: Path) -> Engine:
    """The tiny model without a prefix cache: every prompt computed whole."""
    return Engine.load(str(tiny_model_dir), device="cpu", dtype="float32", prefix_cache_mb=0)


@pytest.fixture(scope="session")
def count_tokens(tiny_engine: Engine) -> Callable[[str], int]:
    """The tiny model's real BPE tokenizer (trained on the fly), as the prompt sees it."""
    return tiny_engine.count_tokens


# --- Discord: a test server on the emulator, and pygbot connected to it ---------------------
@pytest.fixture
def server(discord_emulator: DiscordEmulator) -> Server:  # noqa: F811
    return build_server(discord_emulator)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "bot.sqlite3"


@pytest.fixture
def scripted(count_tokens: Callable[[str], int]) -> ScriptedEngine:
    return ScriptedEngine([], count_tokens)


@pytest.fixture
async def scripted_bot(server: Server, db_path: Path,
                       scripted: ScriptedEngine) -> AsyncIterator[ScriptedEngine]:
    async with bot_with_engine(server, bot_settings(server, db_path), scripted):
        yield scripted


FAST_EDITS_S = 0.05  # the streaming edit interval in tests (1 s in the bot)


@pytest.fixture
def fast_edits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streaming edits and posting retries at test speed (modules that stream opt in with
    `pytestmark = pytest.mark.usefixtures("fast_edits")`)."""
    monkeypatch.setattr(DiscordPoster, "stream_interval_s", FAST_EDITS_S)
    monkeypatch.setattr(ReplyControls, "stream_interval_s", FAST_EDITS_S)
    monkeypatch.setattr(DiscordPoster, "retry_delays_s", (0.05, 0.05))


@pytest.fixture
async def quiet_bot(server: Server, db_path: Path,
                    scripted: ScriptedEngine) -> AsyncIterator[ScriptedEngine]:
    """The bot with STREAM_REPLIES=false: each reply is posted once, whole."""
    async with bot_with_engine(server, bot_settings(server, db_path, stream_replies=False),
                               scripted):
        yield scripted
