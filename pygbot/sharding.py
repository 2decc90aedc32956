"""Which Discord servers this process answers when the bot is sharded across processes.

Discord routes a server's events to shard `(server_id >> 22) % shard_count`, and direct
messages to shard 0. Processes that share one database must also leave each other's
recorded messages and channels alone; this rule tells them which are theirs.
"""

from __future__ import annotations

from collections.abc import Callable

from pygbot.config import Settings

SNOWFLAKE_TIMESTAMP_SHIFT = 22  # Discord ids carry their creation time above bit 22
DIRECT_MESSAGES = 0  # the guild id the store records for direct messages


def shard_of(guild_id: int, shard_count: int) -> int:
    return (guild_id >> SNOWFLAKE_TIMESTAMP_SHIFT) % shard_count


def every_guild(guild_id: int) -> bool:
    return True


def guild_owner(settings: Settings) -> Callable[[int], bool]:
    """A predicate: does this process answer the server `guild_id` (0: direct messages)?"""
    count = settings.shard_count
    if count is None or not settings.shard_ids:
        return every_guild  # unsharded, or every shard in this one process
    mine = frozenset(settings.shard_ids)

    def owns(guild_id: int) -> bool:
        return shard_of(guild_id, count) in mine  # guild 0 (DMs) is shard 0's

    return owns
