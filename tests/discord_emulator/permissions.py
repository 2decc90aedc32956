"""Permission bits and Discord's permission algorithm (API notes §8)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CREATE_INSTANT_INVITE = 1 << 0
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
SEND_TTS_MESSAGES = 1 << 12
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
MANAGE_ROLES = 1 << 28
MANAGE_WEBHOOKS = 1 << 29
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
CREATE_PUBLIC_THREADS = 1 << 35
CREATE_PRIVATE_THREADS = 1 << 36
SEND_MESSAGES_IN_THREADS = 1 << 38
MODERATE_MEMBERS = 1 << 40
PIN_MESSAGES = 1 << 51

ALL_PERMISSIONS = 8866461766385663  # discord.Permissions.all().value

# Permissions that only matter when the member can send messages in the channel.
SEND_DEPENDENT = SEND_TTS_MESSAGES | EMBED_LINKS | ATTACH_FILES | MENTION_EVERYONE

# A fresh server's @everyone role, close to what Discord gives new servers.
DEFAULT_EVERYONE_PERMISSIONS = (
    CREATE_INSTANT_INVITE
    | ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | MENTION_EVERYONE
    | USE_EXTERNAL_EMOJIS
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | CREATE_PRIVATE_THREADS
    | SEND_MESSAGES_IN_THREADS
)

# What the bot's integration role grants unless a test asks for less.
DEFAULT_BOT_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | SEND_MESSAGES_IN_THREADS
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | MENTION_EVERYONE
    | USE_EXTERNAL_EMOJIS
    | MANAGE_WEBHOOKS
    | CREATE_PUBLIC_THREADS
    | USE_APPLICATION_COMMANDS
)


@dataclass(frozen=True)
class Overwrite:
    """A channel permission overwrite; `type` 0 is a role, 1 a member."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


def base_permissions(*, is_owner: bool, everyone: int, role_permissions: Iterable[int]) -> int:
    """Guild-level permissions: owner gets all; else @everyone OR roles; ADMINISTRATOR gets all."""
    if is_owner:
        return ALL_PERMISSIONS
    permissions = everyone
    for bits in role_permissions:
        permissions |= bits
    return ALL_PERMISSIONS if permissions & ADMINISTRATOR else permissions


def apply_overwrites(
    base: int,
    *,
    guild_id: int,
    member_id: int,
    role_ids: Iterable[int],
    overwrites: Iterable[Overwrite],
) -> int:
    """Overwrites in Discord's order: @everyone, the member's roles together, the member."""
    if base & ADMINISTRATOR:
        return ALL_PERMISSIONS
    by_target = {(o.type, o.id): o for o in overwrites}
    permissions = base
    everyone = by_target.get((0, guild_id))
    if everyone is not None:
        permissions = (permissions & ~everyone.deny) | everyone.allow
    allow = deny = 0
    for role_id in role_ids:
        role_overwrite = by_target.get((0, role_id))
        if role_overwrite is not None:
            allow |= role_overwrite.allow
            deny |= role_overwrite.deny
    permissions = (permissions & ~deny) | allow
    member = by_target.get((1, member_id))
    if member is not None:
        permissions = (permissions & ~member.deny) | member.allow
    return permissions


def apply_implicit(permissions: int, *, in_thread: bool) -> int:
    """Implicit rules: no VIEW_CHANNEL voids everything; no send right voids send extras."""
    if permissions & ADMINISTRATOR:
        return ALL_PERMISSIONS
    if not permissions & VIEW_CHANNEL:
        return 0
    send_right = SEND_MESSAGES_IN_THREADS if in_thread else SEND_MESSAGES
    if not permissions & send_right:
        permissions &= ~SEND_DEPENDENT
    return permissions


def has(permissions: int, required: int) -> bool:
    """True when every bit of `required` is granted."""
    return permissions & required == required
