"""`python bot.py --check`: is this configuration fit to start? Asked before a restart.

Checks the settings, the token's shape, the characters, the database and the model folder,
and prints one line per finding. Nothing is changed (the database is opened read-only, no
migration runs), nothing slow is done (the model is not loaded, Discord and the Hub are not
contacted), so it is safe beside a running bot. Exit status 0 when the bot can start, 2 when
something must be fixed first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pygbot.config import ConfigError, Settings
from pygbot.library import NoPersonasError, PersonaLibrary
from pygbot.startup import StartupError, check_token_shape
from pygbot.store import SCHEMA_VERSION, Store, StoreError, inspect_database

EXIT_OK = 0
EXIT_PROBLEMS = 2
OK, NOTE, PROBLEM = "ok", "note", "PROBLEM"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
BYTES_PER_GB = 1e9
SCRATCH_DATABASE = ":memory:"
SCRATCH_GUILD_ID = 0  # any server: the scratch store has no server characters


@dataclass(frozen=True)
class Finding:
    status: str  # OK, NOTE (worth knowing, not in the way) or PROBLEM (fix before starting)
    subject: str
    detail: str


def run_check(env_file: Path, model: str | None, out: TextIO) -> int:
    """Print the report to `out`; the exit status is 2 when anything is a PROBLEM."""
    findings = list(check_all(env_file, model))
    out.write(f"pygbot --check ({env_file})\n")
    for finding in findings:
        out.write(f"  {finding.status:<8} {finding.subject:<11} {finding.detail}\n")
    problems = sum(finding.status == PROBLEM for finding in findings)
    if problems:
        out.write(f"{problems} problem{'s' if problems > 1 else ''}: fix before starting "
                  "the bot.\n")
        return EXIT_PROBLEMS
    out.write("The bot can start with these settings.\n")
    return EXIT_OK


def check_all(env_file: Path, model: str | None) -> Iterator[Finding]:
    if not env_file.is_file():
        yield Finding(NOTE, "settings", f"{env_file} not found: defaults and the environment "
                                        "only (`cp .env.example .env` to make one)")
    with _warnings_of("pygbot") as warnings:  # e.g. a misspelt key, which is ignored
        try:
            settings = Settings.from_env(env_file=env_file)
        except ConfigError as error:
            settings = None
            problem = str(error)
    for warning in warnings:
        yield Finding(NOTE, "settings", warning)
    if settings is None:
        yield Finding(PROBLEM, "settings", problem)
        return  # the other checks read their paths from the settings
    yield Finding(OK, "settings", "every value is valid, and they work together")
    yield token_finding(settings.discord_token)
    yield from character_findings(settings)
    yield database_finding(settings.db_path)
    yield model_finding(model or settings.model)


def token_finding(token: str) -> Finding:
    if not token:
        return Finding(PROBLEM, "token", "DISCORD_TOKEN is not set: the bot cannot log in "
                                         "(`--console` works without it)")
    try:
        check_token_shape(token)
    except StartupError as error:
        return Finding(PROBLEM, "token", str(error))
    return Finding(OK, "token", "DISCORD_TOKEN looks like a bot token (Discord is not asked)")


def character_findings(settings: Settings) -> Iterator[Finding]:
    """The characters loaded exactly as at start. A broken file is skipped there (and
    logged), a DEFAULT_PERSONA that is none of them replaced: here each is a problem."""
    names, warnings = asyncio.run(_load_characters(settings))
    for warning in warnings:
        yield Finding(PROBLEM, "characters", warning)
    if names:
        yield Finding(OK, "characters", f"{len(names)} from {settings.personas_dir}: "
                                        + ", ".join(names))


async def _load_characters(settings: Settings) -> tuple[list[str], list[str]]:
    """The names loaded, and the warnings (or the error) loading them."""
    # The library keeps servers' own characters in a store; a scratch one in memory keeps
    # the real database untouched.
    with _warnings_of("pygbot.store"):  # "not WAL": true of a scratch store, and irrelevant
        scratch = await Store.open(SCRATCH_DATABASE)
    async with scratch:
        with _warnings_of("pygbot") as warnings:
            try:
                library = PersonaLibrary.from_dir(scratch, settings.personas_dir,
                                                  settings.default_persona)
            except NoPersonasError as error:
                return [], [*warnings, str(error)]
        return [persona.name for persona in await library.all(SCRATCH_GUILD_ID)], warnings


def database_finding(path: Path) -> Finding:
    if not path.exists():
        return Finding(NOTE, "database", f"{path} does not exist yet; it is created at start")
    try:
        report = inspect_database(path)
    except StoreError as error:
        return Finding(PROBLEM, "database", f"{path}: {error}")
    if report.integrity != "ok":
        return Finding(PROBLEM, "database", f"{path} is damaged: {report.integrity}")
    if report.schema_version > SCHEMA_VERSION:
        return Finding(PROBLEM, "database", f"{path} has schema version "
                                            f"{report.schema_version}, newer than this pygbot "
                                            f"({SCHEMA_VERSION}): upgrade pygbot")
    if report.schema_version < SCHEMA_VERSION:
        return Finding(NOTE, "database", f"{path} (schema version {report.schema_version}) is "
                                         f"upgraded to version {SCHEMA_VERSION} at start")
    return Finding(OK, "database", f"{path}: schema version {report.schema_version}, "
                                   "integrity ok")


def model_finding(model: str) -> Finding:
    from pygbot.hub import DOWNLOAD_HINT, cached_folder, is_hub_id  # noqa: PLC0415

    if not is_hub_id(model):
        return _folder_finding(Path(model).expanduser(), model)
    folder = cached_folder(model)
    if folder is not None:
        return _folder_finding(Path(folder), f"{model} (Hugging Face cache)")
    return Finding(NOTE, "model", f"{model} is not downloaded yet: the first start downloads "
                                  f"it, or run {DOWNLOAD_HINT}")


def _folder_finding(folder: Path, shown: str) -> Finding:
    if not folder.is_dir():
        return Finding(PROBLEM, "model", f"MODEL={shown}: no such folder")
    missing = [name for name in ("config.json", "tokenizer.json")
               if not (folder / name).is_file()]
    weights = [path for pattern in WEIGHT_PATTERNS for path in folder.glob(pattern)]
    if not weights:
        missing.append("weights (*.safetensors or *.bin)")
    if missing:
        return Finding(PROBLEM, "model", f"{shown} lacks {', '.join(missing)}")
    size = sum(path.stat().st_size for path in weights) / BYTES_PER_GB
    return Finding(OK, "model", f"{shown}: config, tokenizer and {size:.1f} GB of weights")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _warnings_of:  # noqa: N801 (used like a function: `with _warnings_of(...)`)
    """Collect the warnings a loader logs (e.g. a skipped character file) as findings; they
    are not logged as well, so the report says each thing once."""

    def __init__(self, logger_name: str) -> None:
        self._logger = logging.getLogger(logger_name)
        self._handler = _Collect()
        self._propagate = self._logger.propagate

    def __enter__(self) -> list[str]:
        self._logger.addHandler(self._handler)
        self._logger.propagate = False
        return self._handler.messages

    def __exit__(self, *_: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.propagate = self._propagate
