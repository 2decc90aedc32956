"""Assembling the running parts from `Settings`: database, characters, model, worker, chat.

Kept apart from bot.py so the entry point stays free of logic, and apart from config.py so
reading settings never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pygbot.chat import ChatConfig, ChatService
from pygbot.config import ConfigError, Settings, check_combinations
from pygbot.engine import Engine, EngineLoadError, configure_cpu_threads
from pygbot.engine_errors import EngineUnavailableError
from pygbot.hub import HubError, local_folder
from pygbot.intake import keep_settled_s
from pygbot.library import NoPersonasError, PersonaLibrary, UnknownPersonaError
from pygbot.remote import RemoteConfig, RemoteEngine
from pygbot.remote_api import unsupported_settings
from pygbot.retention import Retention, RetentionPolicy
from pygbot.startup import StartupError
from pygbot.store import Store, StoreError
from pygbot.tokenizer import TokenCounter, TokenizerLoadError
from pygbot.worker import Worker

log = logging.getLogger(__name__)

__all__ = ["Services", "StartupError", "open_services", "switch_persona"]

# Work to do once the database and characters are open but before the model loads: checks
# that take a second (a character name, the Discord login) must not wait a minute for it.
BeforeModel = Callable[[PersonaLibrary], Awaitable[None]]


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    library: PersonaLibrary
    engine: Engine | RemoteEngine
    worker: Worker
    chat: ChatService


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, before_model: BeforeModel | None = None,
) -> AsyncIterator[Services]:
    """Open everything in dependency order, cheapest first, and close it in reverse, also
    on errors: database, characters, `before_model`, then the model."""
    log.info("settings: %s", settings.redacted())  # the token shows as <set>, never itself
    try:
        store = await Store.open(settings.db_path)
    except (StoreError, OSError) as error:
        raise StartupError(
            f"cannot open the database DB_PATH={settings.db_path}: {error}") from None
    retention = Retention(store, RetentionPolicy.from_settings(
        settings, keep_settled_s(settings.pending_max_age_s)))
    async with store, retention:
        try:
            library = PersonaLibrary.from_dir(store, settings.personas_dir,
                                              settings.default_persona)
        except NoPersonasError as error:
            raise StartupError(str(error)) from None
        if before_model is not None:
            await before_model(library)
        async with _open_engine(settings) as engine:
            config = ChatConfig.from_settings(settings, engine.context_tokens)
            try:  # a model with a smaller context than CONTEXT_TOKENS may leave too little room
                check_combinations(settings, config.context_tokens)
            except ConfigError as error:
                raise StartupError(str(error)) from None
            async with _worker(settings, engine) as worker:
                chat = ChatService(store, worker, library, engine.count_tokens, config)
                yield Services(settings, store, library, engine, worker, chat)


def _worker(settings: Settings, engine: Engine | RemoteEngine) -> Worker:
    if settings.engine == "remote":
        # The server batches by itself: each request goes alone, ENGINE_CONCURRENCY at once,
        # so a slow or failed one never holds up another.
        return Worker(engine, settings.queue_max, max_batch=1,
                      concurrent_batches=settings.engine_concurrency)
    return Worker(engine, settings.queue_max, settings.max_batch)


@contextlib.asynccontextmanager
async def _open_engine(settings: Settings) -> AsyncIterator[Engine | RemoteEngine]:
    if settings.engine == "remote":
        async with _open_remote_engine(settings) as remote:
            yield remote
        return
    yield await load_engine(settings)


async def load_engine(settings: Settings) -> Engine:
    """MODEL as a local folder (from the Hub if need be), then the model on its device."""
    log.info("CPU math on %d thread(s)", configure_cpu_threads(settings.cpu_threads))
    try:
        folder = await asyncio.to_thread(local_folder, settings.model)
        return await asyncio.to_thread(functools.partial(
            Engine.load, folder, settings.device, settings.dtype, settings.model,
            settings.prefix_cache_mb, torch_compile=settings.torch_compile))
    except (HubError, EngineLoadError) as error:
        raise StartupError(str(error)) from None


@contextlib.asynccontextmanager
async def _open_remote_engine(settings: Settings) -> AsyncIterator[RemoteEngine]:
    """The tokenizer (for the budget) loaded here, the model served elsewhere; a server that
    is down is one line and exit 1, unless ENGINE_START_OFFLINE lets the bot start anyway."""
    try:
        counter = await asyncio.to_thread(TokenCounter.load, settings.tokenizer_source)
    except TokenizerLoadError as error:
        raise StartupError(str(error)) from None
    for unsupported in unsupported_settings(settings):
        log.warning("%s", unsupported)
    engine = RemoteEngine(RemoteConfig.from_settings(settings), counter)
    try:
        await engine.open()
    except EngineUnavailableError as error:
        if not settings.engine_start_offline:
            await engine.aclose()
            raise StartupError(f"{error}; start the server first, fix ENGINE_URL, or set "
                               "ENGINE_START_OFFLINE=true to start anyway") from None
        log.warning("starting without the engine server (ENGINE_START_OFFLINE): %s", error)
    try:
        yield engine
    finally:
        await engine.aclose()


async def switch_persona(library: PersonaLibrary, guild_id: int, name: str) -> None:
    """Make `name` the active character, or fail with the names that exist."""
    try:
        await library.switch(guild_id, name)
    except UnknownPersonaError as error:
        names = ", ".join(persona.name for persona in await library.all(guild_id))
        raise StartupError(f"{error}; choose one of {names}") from None
