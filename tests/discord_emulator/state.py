"""The emulated Discord world: users, guilds, roles, members, channels, threads and messages.

Plain mutable records plus `World`, which owns them and answers the questions Discord's servers
answer (who is in which guild, what may they do in a channel). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.discord_emulator import permissions as perms
from tests.discord_emulator.permissions import Overwrite
from tests.discord_emulator.snowflake import SnowflakeFactory, iso_timestamp

JSON = dict[str, Any]

# Channel types (API notes §4).
GUILD_TEXT = 0
DM = 1
GUILD_CATEGORY = 4
PUBLIC_THREAD = 11
PRIVATE_THREAD = 12
THREAD_TYPES = frozenset({10, PUBLIC_THREAD, PRIVATE_THREAD})

# Message flags (API notes §3.1).
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7


class NotFoundError(LookupError):
    """An id the emulated world does not know."""


@dataclass
class User:
    """A Discord user; `mention` is the `<@id>` token that pings them."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    avatar: str | None = None

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    @property
    def display_name(self) -> str:
        return self.global_name or self.username


@dataclass
class Role:
    """A guild role; the @everyone role's id equals its guild's id."""

    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    mentionable: bool = False
    managed: bool = False

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


@dataclass
class Member:
    """A user's membership in one guild."""

    user: User
    guild_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_timestamp)


@dataclass
class Channel:
    """A guild text channel, category, thread (types 10-12) or DM (type 1)."""

    id: int
    type: int
    name: str | None
    guild_id: int | None
    position: int = 0
    nsfw: bool = False
    parent_id: int | None = None
    topic: str | None = None
    overwrites: list[Overwrite] = field(default_factory=list)
    recipients: list[User] = field(default_factory=list)  # DMs: the user the bot talks to
    owner_id: int | None = None  # threads only
    archived: bool = False
    locked: bool = False
    auto_archive_duration: int = 1440
    created_at: str = field(default_factory=iso_timestamp)
    message_count: int = 0
    last_message_id: int | None = None

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    @property
    def is_dm(self) -> bool:
        return self.type == DM

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass
class Guild:
    """A server: its roles (incl. @everyone), members and the ids of its channels."""

    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    channel_ids: list[int] = field(default_factory=list)

    @property
    def everyone(self) -> Role:
        return self.roles[self.id]


@dataclass(frozen=True)
class Pings:
    """Who a message actually notified, as Discord decides from content and allowed_mentions."""

    user_ids: frozenset[int] = frozenset()
    everyone: bool = False
    role_ids: frozenset[int] = frozenset()


@dataclass
class StoredMessage:
    """A message as Discord stores it: `payload` is the full message object (with content)."""

    id: int
    channel_id: int
    author_id: int
    payload: JSON
    pings: Pings = Pings()
    ephemeral: bool = False
    interaction_id: int | None = None
    deleted: bool = False
    versions: list[JSON] = field(default_factory=list)  # earlier payloads, oldest first
    reactions: dict[str, set[int]] = field(default_factory=dict)  # emoji -> user ids

    @property
    def loading(self) -> bool:
        return bool(self.payload.get("flags", 0) & FLAG_LOADING)

    def view(self) -> JSON:
        """What a test sees: the payload plus `author_id` and the `pinged_*` facts (ints)."""
        return {
            **self.payload,
            "author_id": self.author_id,
            "pinged_user_ids": sorted(self.pings.user_ids),
            "pinged_everyone": self.pings.everyone,
            "pinged_role_ids": sorted(self.pings.role_ids),
            "ephemeral": self.ephemeral,
            "deleted": self.deleted,
        }


@dataclass(frozen=True)
class TypingEvent:
    """Someone started typing in a channel (unix seconds)."""

    channel_id: int
    user_id: int
    timestamp: int


@dataclass
class Webhook:
    """A channel webhook the bot created (interaction webhooks live with their interaction)."""

    id: int
    token: str
    channel_id: int
    guild_id: int
    name: str
    avatar: str | None  # image hash, as Discord names avatars; see World.images
    creator_id: int
    application_id: int | None  # set for webhooks a bot made: they may carry buttons


class World:
    """Everything that exists in the emulated Discord, with Discord's lookups and rules."""

    def __init__(self, ids: SnowflakeFactory, bot_id: int) -> None:
        self.ids = ids
        self.bot_id = bot_id
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, StoredMessage] = {}
        self.channel_messages: dict[int, list[int]] = {}
        self.typing: list[TypingEvent] = []
        self.webhooks: dict[int, Webhook] = {}
        self.attachments: dict[int, tuple[str, bytes, str]] = {}  # id -> (name, data, type)
        self.images: dict[str, bytes] = {}  # avatar hash -> the image members see

    # --- lookups -------------------------------------------------------------------------
    def user(self, user_id: int) -> User:
        try:
            return self.users[user_id]
        except KeyError:
            raise NotFoundError(f"unknown user {user_id}") from None

    def guild(self, guild_id: int) -> Guild:
        try:
            return self.guilds[guild_id]
        except KeyError:
            raise NotFoundError(f"unknown guild {guild_id}") from None

    def channel(self, channel_id: int) -> Channel:
        try:
            return self.channels[channel_id]
        except KeyError:
            raise NotFoundError(f"unknown channel {channel_id}") from None

    def message(self, message_id: int) -> StoredMessage:
        stored = self.messages.get(message_id)
        if stored is None or stored.deleted:
            raise NotFoundError(f"unknown message {message_id}")
        return stored

    def member(self, guild_id: int, user_id: int) -> Member | None:
        guild = self.guilds.get(guild_id)
        return guild.members.get(user_id) if guild else None

    def guild_channels(self, guild: Guild) -> Iterator[Channel]:
        return (self.channels[c] for c in guild.channel_ids)

    def channel_history(self, channel_id: int) -> list[StoredMessage]:
        """Stored, undeleted messages of a channel, oldest first."""
        ids = self.channel_messages.get(channel_id, [])
        return [self.messages[i] for i in ids if not self.messages[i].deleted]

    def find_dm(self, user_id: int) -> Channel | None:
        """The bot's DM channel with a user (DMs here are always between the bot and one user)."""
        for channel in self.channels.values():
            if channel.is_dm and channel.recipients[0].id == user_id:
                return channel
        return None

    # --- rules ---------------------------------------------------------------------------
    def guild_permissions(self, guild: Guild, user_id: int) -> int:
        """Guild-level permissions of a member (0 for non-members)."""
        member = guild.members.get(user_id)
        if member is None:
            return 0
        return perms.base_permissions(
            is_owner=user_id == guild.owner_id,
            everyone=guild.everyone.permissions,
            role_permissions=(guild.roles[r].permissions for r in member.role_ids),
        )

    def channel_permissions(self, channel: Channel, user_id: int) -> int:
        """A user's computed permissions in a channel; threads use their parent's overwrites."""
        if channel.is_dm:
            in_dm = user_id == self.bot_id or any(u.id == user_id for u in channel.recipients)
            return perms.DEFAULT_EVERYONE_PERMISSIONS if in_dm else 0
        assert channel.guild_id is not None
        guild = self.guild(channel.guild_id)
        member = guild.members.get(user_id)
        if member is None:
            return 0
        base = self.guild_permissions(guild, user_id)
        if user_id == guild.owner_id:
            return base
        source = (
            self.channel(channel.parent_id) if channel.is_thread and channel.parent_id else channel
        )
        result = perms.apply_overwrites(
            base,
            guild_id=guild.id,
            member_id=user_id,
            role_ids=member.role_ids,
            overwrites=source.overwrites,
        )
        return perms.apply_implicit(result, in_thread=channel.is_thread)

    def can_send(self, channel: Channel, user_id: int) -> bool:
        right = perms.SEND_MESSAGES_IN_THREADS if channel.is_thread else perms.SEND_MESSAGES
        return perms.has(self.channel_permissions(channel, user_id), perms.VIEW_CHANNEL | right)

    def store_message(self, stored: StoredMessage) -> None:
        self.messages[stored.id] = stored
        self.channel_messages.setdefault(stored.channel_id, []).append(stored.id)
        channel = self.channels.get(stored.channel_id)
        if channel is not None and not stored.ephemeral:
            channel.last_message_id = stored.id
            channel.message_count += 1
