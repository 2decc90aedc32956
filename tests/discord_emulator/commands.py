"""Application commands: the stored shape after a sync (API notes §5.5) and how a member's
invocation becomes interaction `data` (§7.1), with the checks Discord makes before any
interaction exists (default_member_permissions, contexts, nsfw, required options).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.discord_emulator import permissions as perms
from tests.discord_emulator.payloads import channel_json, member_json, role_json, user_json
from tests.discord_emulator.snowflake import SnowflakeFactory
from tests.discord_emulator.state import JSON, Channel, Role, User, World
from tests.discord_emulator.validation import validate_commands

CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND = 1, 2, 3
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = range(3, 12)
GUILD_CONTEXT, BOT_DM_CONTEXT = 0, 1
SERVER_FIELDS = ("id", "application_id", "version", "guild_id")


class ActionRefusedError(Exception):
    """Discord's client would not let the member do this (permissions, context, options)."""


@dataclass(frozen=True)
class Invocation:
    """A resolved command: the stored command, the subcommand path and the leaf's options."""

    command: JSON
    path: tuple[JSON, ...]  # subcommand group / subcommand definitions, outermost first
    leaf_options: tuple[JSON, ...]


class CommandRegistry:
    """Commands per scope: `None` for global, a guild id for guild commands."""

    def __init__(self, ids: SnowflakeFactory, application_id: int) -> None:
        self._ids = ids
        self._application_id = application_id
        self.scopes: dict[int | None, dict[tuple[int, str], JSON]] = {}
        self.sync_count = 0

    def overwrite(self, guild_id: int | None, commands: Sequence[JSON]) -> list[JSON]:
        """Bulk overwrite: ids survive re-syncs of a (type, name); versions bump on change."""
        validate_commands(commands)
        previous = self.scopes.get(guild_id, {})
        fresh: dict[tuple[int, str], JSON] = {}
        for command in commands:
            key = (int(command.get("type") or CHAT_INPUT), str(command["name"]))
            fresh[key] = self._stored(command, guild_id, previous.get(key))
        self.scopes[guild_id] = fresh
        self.sync_count += 1
        return self.list(guild_id)

    def list(self, guild_id: int | None) -> list[JSON]:
        return [copy.deepcopy(c) for c in self.scopes.get(guild_id, {}).values()]

    def _stored(self, command: JSON, guild_id: int | None, previous: JSON | None) -> JSON:
        kind = int(command.get("type") or CHAT_INPUT)
        permissions = command.get("default_member_permissions")
        stored: JSON = {
            "application_id": str(self._application_id),
            "type": kind,
            "name": command["name"],
            "name_localizations": command.get("name_localizations"),
            "description": (command.get("description") or "") if kind == CHAT_INPUT else "",
            "description_localizations": command.get("description_localizations"),
            "options": copy.deepcopy(command.get("options") or []),
            "default_member_permissions": None if permissions is None else str(permissions),
            "dm_permission": bool(command.get("dm_permission", True)),
            "nsfw": bool(command.get("nsfw", False)),
            "contexts": command.get("contexts"),
            "integration_types": command.get("integration_types") or [0],
        }
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        unchanged = previous is not None and _comparable(previous) == _comparable(stored)
        stored["id"] = previous["id"] if previous else str(self._ids.next())
        stored["version"] = previous["version"] if unchanged and previous else str(self._ids.next())
        return stored

    def find(
        self, qualified_name: str, *, guild_id: int | None, kind: int = CHAT_INPUT
    ) -> Invocation:
        """Look a command up as the Discord client would: guild commands, then global ones."""
        parts = qualified_name.split()
        if not parts:
            raise ActionRefusedError("empty command name")
        command = None
        for scope in ([guild_id] if guild_id is not None else []) + [None]:
            command = self.scopes.get(scope, {}).get((kind, parts[0]))
            if command is not None:
                break
        if command is None:
            raise ActionRefusedError(f"no synced command named {parts[0]!r} here")
        path: list[JSON] = []
        options = command.get("options") or []
        for part in parts[1:]:
            match = next(
                (
                    o
                    for o in options
                    if o["name"] == part and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)
                ),
                None,
            )
            if match is None:
                raise ActionRefusedError(f"{qualified_name!r}: no subcommand {part!r}")
            path.append(match)
            options = match.get("options") or []
        if any(o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in options):
            raise ActionRefusedError(f"{qualified_name!r} needs a subcommand")
        return Invocation(command=command, path=tuple(path), leaf_options=tuple(options))


def _comparable(command: JSON) -> JSON:
    return {k: v for k, v in command.items() if k not in SERVER_FIELDS}


def check_may_invoke(world: World, command: JSON, channel: Channel, user_id: int) -> None:
    """Refuse as Discord does: wrong context, nsfw command outside nsfw, missing permissions."""
    if channel.is_dm:
        if command.get("guild_id") is not None or not _allows_dm(command):
            raise ActionRefusedError(f"/{command['name']} cannot be used in DMs")
        return
    if command.get("nsfw") and not _channel_nsfw(world, channel):
        raise ActionRefusedError(f"/{command['name']} is age-restricted; this channel is not")
    channel_perms = world.channel_permissions(channel, user_id)
    if not perms.has(channel_perms, perms.USE_APPLICATION_COMMANDS):
        raise ActionRefusedError("the member lacks USE_APPLICATION_COMMANDS here")
    required = command.get("default_member_permissions")
    if required is None:
        return
    assert channel.guild_id is not None
    guild_perms = world.guild_permissions(world.guild(channel.guild_id), user_id)
    if guild_perms & perms.ADMINISTRATOR:
        return
    if int(required) == 0 or not perms.has(guild_perms, int(required)):
        raise ActionRefusedError(f"the member lacks the permissions /{command['name']} requires")


def _allows_dm(command: JSON) -> bool:
    contexts = command.get("contexts")
    if contexts is None:
        return bool(command.get("dm_permission", True))
    return BOT_DM_CONTEXT in contexts


def _channel_nsfw(world: World, channel: Channel) -> bool:
    if channel.is_thread and channel.parent_id is not None:
        return world.channel(channel.parent_id).nsfw
    return channel.nsfw


class OptionBuilder:
    """Turns `{name: value}` into interaction options plus `resolved` (API notes §7.1)."""

    def __init__(self, world: World, channel: Channel) -> None:
        self.world = world
        self.channel = channel
        self.resolved: dict[str, dict[str, JSON]] = {}

    def build(self, invocation: Invocation, values: Mapping[str, Any], focused: str | None) -> JSON:
        command = invocation.command
        leaf = self._leaf_options(invocation.leaf_options, values, focused)
        for definition in reversed(invocation.path):
            leaf = [{"name": definition["name"], "type": definition["type"], "options": leaf}]
        data: JSON = {
            "id": command["id"],
            "name": command["name"],
            "type": command["type"],
            "options": leaf,
        }
        if command.get("guild_id") is not None:
            data["guild_id"] = command["guild_id"]
        if self.resolved:
            data["resolved"] = self.resolved
        return data

    def _leaf_options(
        self, definitions: Sequence[JSON], values: Mapping[str, Any], focused: str | None
    ) -> list[JSON]:
        known = {d["name"]: d for d in definitions}
        unknown = set(values) - set(known)
        if unknown:
            raise ActionRefusedError(
                f"unknown options {sorted(unknown)}; the command has {sorted(known)}"
            )
        if focused is not None and focused not in known:
            raise ActionRefusedError(f"focused option {focused!r} is not an option of this command")
        options = []
        for definition in definitions:
            name = definition["name"]
            if name == focused:
                options.append(
                    {
                        "name": name,
                        "type": definition["type"],
                        "value": str(values.get(name, "")),
                        "focused": True,
                    }
                )
            elif name in values:
                options.append(self._option(definition, values[name]))
            elif definition.get("required") and focused is None:
                raise ActionRefusedError(f"missing required option {name!r}")
        return options

    def _option(self, definition: JSON, value: Any) -> JSON:
        kind = definition["type"]
        if kind in (STRING, INTEGER, NUMBER, BOOLEAN):
            converted = _scalar(definition, value)
        else:
            converted = self._resolve(kind, value)
        return {"name": definition["name"], "type": kind, "value": converted}

    def _resolve(self, kind: int, value: Any) -> str:
        if kind == ATTACHMENT:
            attachment = dict(value)
            self.resolved.setdefault("attachments", {})[str(attachment["id"])] = attachment
            return str(attachment["id"])
        if isinstance(value, Role) and kind in (ROLE, MENTIONABLE):
            self.resolved.setdefault("roles", {})[str(value.id)] = role_json(value)
            return str(value.id)
        if isinstance(value, User) and kind in (USER, MENTIONABLE):
            return self._resolve_user(value)
        if isinstance(value, Channel) and kind == CHANNEL:
            data = channel_json(self.world, value)
            data["permissions"] = "0"
            self.resolved.setdefault("channels", {})[str(value.id)] = data
            return str(value.id)
        raise ActionRefusedError(f"option type {kind} cannot take {value!r}")

    def _resolve_user(self, user: User) -> str:
        self.resolved.setdefault("users", {})[str(user.id)] = user_json(user)
        guild_id = self.channel.guild_id
        member = self.world.member(guild_id, user.id) if guild_id is not None else None
        if member is not None:
            permissions = self.world.channel_permissions(self.channel, user.id)
            self.resolved.setdefault("members", {})[str(user.id)] = member_json(
                member, with_user=False, permissions=permissions
            )
        return str(user.id)


def _scalar(definition: JSON, value: Any) -> Any:
    kind = definition["type"]
    converted: Any
    if kind == STRING:
        converted = str(value)
    elif kind == INTEGER:
        converted = int(value)
    elif kind == NUMBER:
        converted = float(value)
    else:
        converted = bool(value)
    choices = definition.get("choices")
    if choices and converted not in [c["value"] for c in choices]:
        raise ActionRefusedError(f"{definition['name']!r} must be one of the command's choices")
    _check_range(definition, converted)
    return converted


def _check_range(definition: JSON, value: Any) -> None:
    name = definition["name"]
    if isinstance(value, str):
        low, high = definition.get("min_length", 0), definition.get("max_length", 6000)
        if not low <= len(value) <= high:
            raise ActionRefusedError(f"{name!r} must be {low}-{high} characters")
    elif not isinstance(value, bool):
        low, high = definition.get("min_value"), definition.get("max_value")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ActionRefusedError(f"{name!r} is out of range")
