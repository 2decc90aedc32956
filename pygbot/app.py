"""Assembling the running parts from `Settings`: database, characters, model, worker, chat.

Kept apart from bot.py so the entry point stays free of logic, and apart from config.py so
reading settings never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pygbot.chat import ChatConfig, ChatService
from pygbot.config import ConfigError, Settings, check_combinations
from pygbot.engine import Engine, EngineLoadError
from pygbot.library import NoPersonasError, PersonaLibrary, UnknownPersonaError
from pygbot.store import Store, StoreError
from pygbot.worker import Worker

log = logging.getLogger(__name__)


class StartupError(Exception):
    """Start-up failed for a reason the admin can fix; `str()` is the one line to show."""


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    library: PersonaLibrary
    engine: Engine
    worker: Worker
    chat: ChatService


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open everything in dependency order and close it in reverse, also on errors."""
    log.info("settings: %s", settings.redacted())  # the token shows as <set>, never itself
    try:
        store = await Store.open(settings.db_path)
    except (StoreError, OSError) as error:
        raise StartupError(
            f"cannot open the database DB_PATH={settings.db_path}: {error}") from None
    async with store:
        try:
            library = PersonaLibrary.from_dir(store, settings.personas_dir,
                                              settings.default_persona)
            engine = await asyncio.to_thread(Engine.load, settings.model, settings.device,
                                             settings.dtype)
        except (EngineLoadError, NoPersonasError) as error:
            raise StartupError(str(error)) from None
        config = ChatConfig.from_settings(settings, engine.context_tokens)
        try:  # a model with a smaller context than CONTEXT_TOKENS may leave too little room
            check_combinations(settings, config.context_tokens)
        except ConfigError as error:
            raise StartupError(str(error)) from None
        async with Worker(engine, settings.queue_max, settings.max_batch) as worker:
            chat = ChatService(store, worker, library, engine.count_tokens, config)
            yield Services(settings, store, library, engine, worker, chat)


async def switch_persona(library: PersonaLibrary, guild_id: int, name: str) -> None:
    """Make `name` the active character, or fail with the names that exist."""
    try:
        await library.switch(guild_id, name)
    except UnknownPersonaError as error:
        names = ", ".join(persona.name for persona in await library.all(guild_id))
        raise StartupError(f"{error}; choose one of {names}") from None
