"""A loopback Discord (REST API v10 + gateway) for testing the real discord.py client.

See `emulator.DiscordEmulator` for the API and `fixtures` for pytest helpers.
"""

from tests.discord_emulator.commands import ActionRefusedError
from tests.discord_emulator.emulator import DiscordEmulator
from tests.discord_emulator.fixtures import connected
from tests.discord_emulator.interactions import InteractionHandle
from tests.discord_emulator.permissions import Overwrite
from tests.discord_emulator.state import Channel, Guild, Role, TypingEvent, User

__all__ = [
    "ActionRefusedError",
    "Channel",
    "DiscordEmulator",
    "Guild",
    "InteractionHandle",
    "Overwrite",
    "Role",
    "TypingEvent",
    "User",
    "connected",
]
