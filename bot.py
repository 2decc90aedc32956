"""pygbot: a Discord bot that plays a character with Pygmalion 1.3B.

    python bot.py                       run the Discord bot (needs DISCORD_TOKEN in .env)
    python bot.py --console             chat with the character in this terminal
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

from pygbot.config import ConfigError, Settings

EXIT_STARTUP = 1  # the model, database or characters could not be loaded
EXIT_USAGE = 2  # wrong settings or arguments
EXIT_CARD = 3  # --import-card: the card is unreadable, broken or its name is taken


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A Discord bot that plays a Pygmalion character.")
    parser.add_argument("--console", action="store_true",
                        help="chat in the terminal instead of connecting to Discord")
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
    if not args.console and not settings.discord_token:
        return _fail("DISCORD_TOKEN is not set: put your bot token in .env (see README), "
                     "or run `python bot.py --console` to chat in the terminal", EXIT_USAGE)
    logging.getLogger().setLevel(settings.log_level)
    # Heavy imports (torch, transformers) wait until the settings are known to be good.
    from pygbot.app import StartupError

    try:
        return asyncio.run(run(settings, args))
    except StartupError as error:
        return _fail(str(error), EXIT_STARTUP)
    except KeyboardInterrupt:
        return 0


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from pygbot.app import open_services, switch_persona

    async with open_services(settings) as services:
        if args.console:
            from pygbot.console import CONSOLE_GUILD_ID, Console

            if args.persona:
                await switch_persona(services.library, CONSOLE_GUILD_ID, args.persona)
            return await Console(services.chat, sys.stdin, sys.stdout,
                                 stream=settings.stream_replies).run()
        from pygbot.client import run_discord

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
