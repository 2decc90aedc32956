"""JSON builders for the objects Discord sends: users, roles, members, channels, guilds.

Shapes follow the API notes (§1.5, §1.6, §3, §4): ids as strings, keys dpy requires always
present, and keys that must be *absent* (e.g. `guild_id` in DMs) left out rather than null.
"""

from __future__ import annotations

from typing import Any

from tests.discord_emulator.state import JSON, Channel, Guild, Member, Role, User, World

THREAD_MEMBER_FLAGS = 0


def user_json(user: User) -> JSON:
    data: JSON = {
        "id": str(user.id),
        "username": user.username,
        "discriminator": "0",
        "global_name": user.global_name,
        "avatar": user.avatar,
        "public_flags": 0,
    }
    if user.bot:
        data["bot"] = True
    return data


def role_json(role: Role) -> JSON:
    return {
        "id": str(role.id),
        "name": role.name,
        "permissions": str(role.permissions),
        "position": role.position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "managed": role.managed,
        "mentionable": role.mentionable,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }


def member_json(member: Member, *, with_user: bool = True, permissions: int | None = None) -> JSON:
    """A guild member; `with_user=False` for message/resolved members (API notes §10.5)."""
    data: JSON = {
        "roles": [str(r) for r in member.role_ids],
        "nick": member.nick,
        "avatar": None,
        "joined_at": member.joined_at,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
        "communication_disabled_until": None,
    }
    if with_user:
        data["user"] = user_json(member.user)
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def channel_json(world: World, channel: Channel, *, include_guild_id: bool = True) -> JSON:
    """Any channel object; threads get the thread fields dpy requires (API notes §4)."""
    if channel.is_dm:
        return {
            "id": str(channel.id),
            "type": channel.type,
            "last_message_id": _opt_id(channel.last_message_id),
            "recipients": [user_json(u) for u in channel.recipients],
            "flags": 0,
        }
    data: JSON = {
        "id": str(channel.id),
        "type": channel.type,
        "name": channel.name,
        "position": channel.position,
        "parent_id": _opt_id(channel.parent_id),
        "nsfw": channel.nsfw,
        "rate_limit_per_user": 0,
        "last_message_id": _opt_id(channel.last_message_id),
        "flags": 0,
    }
    if include_guild_id:
        data["guild_id"] = str(channel.guild_id)
    if channel.is_thread:
        data.update(_thread_fields(channel))
    else:
        data["permission_overwrites"] = [o.to_json() for o in channel.overwrites]
        data["topic"] = channel.topic
        data["default_auto_archive_duration"] = 1440
    return data


def _thread_fields(thread: Channel) -> JSON:
    return {
        "owner_id": str(thread.owner_id),
        "message_count": thread.message_count,
        "total_message_sent": thread.message_count,
        "member_count": 1,
        "thread_metadata": {
            "archived": thread.archived,
            "auto_archive_duration": thread.auto_archive_duration,
            "archive_timestamp": thread.created_at,
            "locked": thread.locked,
            "invitable": True,
            "create_timestamp": thread.created_at,
        },
        "applied_tags": [],
    }


def guild_create_json(world: World, guild: Guild, *, bot_id: int, all_members: bool) -> JSON:
    """GUILD_CREATE's body; without GUILD_PRESENCES only the bot's own member is listed."""
    members = [m for m in guild.members.values() if all_members or m.user.id == bot_id]
    channels = [c for c in world.guild_channels(guild) if not c.is_thread]
    threads = [c for c in world.guild_channels(guild) if c.is_thread and not c.archived]
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "owner_id": str(guild.owner_id),
        "unavailable": False,
        "large": False,
        "member_count": len(guild.members),
        "joined_at": guild.members[bot_id].joined_at,
        "roles": [role_json(r) for r in guild.roles.values()],
        "channels": [channel_json(world, c, include_guild_id=False) for c in channels],
        "threads": [channel_json(world, t) for t in threads],
        "members": [member_json(m) for m in members],
        "emojis": [],
        "stickers": [],
        "features": [],
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "preferred_locale": "en-US",
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "system_channel_id": None,
        "afk_channel_id": None,
        "afk_timeout": 300,
        "max_members": 500000,
    }


def application_json(bot: User, owner: User, flags: int) -> JSON:
    """The application object dpy fetches at login (API notes §5.2)."""
    return {
        "id": str(bot.id),
        "name": bot.username,
        "icon": None,
        "description": "",
        "summary": "",
        "type": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "verify_key": "0" * 64,
        "owner": user_json(owner),
        "team": None,
        "flags": flags,
        "bot": user_json(bot),
        "interactions_endpoint_url": None,
        "redirect_uris": [],
        "tags": [],
        "approximate_guild_count": 0,
    }


def _opt_id(value: int | None) -> str | None:
    return None if value is None else str(value)


def snowflake_of(value: Any) -> int:
    """Normalise an id dpy may send as int or str (API notes §10.12)."""
    return int(str(value))
