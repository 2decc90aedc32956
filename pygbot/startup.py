"""Start-up checks that cost nothing, run before anything slow (Discord, the model).

A setting, the token's shape, the database or a character name that is wrong should be
reported in a second, not after a minute of loading the model. Nothing here imports torch,
transformers or discord.
"""

from __future__ import annotations

import base64
import binascii
import re

from pygbot.config import Settings

# A bot token is three base64url parts joined by dots: the bot's user id, a timestamp and a
# signature (https://discord.com/developers/docs/reference#authentication).
TOKEN_PART = re.compile(r"[A-Za-z0-9_-]+")
TOKEN_PARTS = 3
WHERE_TOKENS_ARE = "Developer Portal → your application → Bot → Reset Token"


class StartupError(Exception):
    """Start-up failed for a reason the admin can fix; `str()` is the one line to show."""


def check_discord_settings(settings: Settings) -> None:
    """What running on Discord needs before anything else: a token of the right shape."""
    if not settings.discord_token:
        raise StartupError("DISCORD_TOKEN is not set: put your bot token in .env (see README), "
                           "or run `python bot.py --console` to chat in the terminal")
    check_token_shape(settings.discord_token)


def check_token_shape(token: str) -> None:
    """Refuse what is certainly not a bot token, in one line that never repeats it. (Spaces
    and other characters no token has, e.g. a 'Bot ' prefix, are refused with the settings.)"""
    parts = token.split(".")
    if len(parts) != TOKEN_PARTS or not all(TOKEN_PART.fullmatch(part) for part in parts) \
            or not _decodes_to_an_id(parts[0]):
        raise StartupError(
            f"DISCORD_TOKEN does not look like a bot token (three parts joined by dots); copy "
            f"it again from the {WHERE_TOKENS_ARE} — not the Application ID, Public Key or "
            f"Client Secret")


def _decodes_to_an_id(part: str) -> bool:
    """The first part is the bot's user id (a snowflake, in decimal) in base64."""
    try:
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return False
    return decoded.isdigit()
