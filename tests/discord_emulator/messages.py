"""Building, editing and showing message objects (API notes §3).

`build_message` turns a `Draft` into a `StoredMessage` whose payload is the full message object;
`visible_payload` applies the MESSAGE_CONTENT rule for a gateway session that lacks the intent.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.discord_emulator.mentions import MentionPolicy, compute_pings
from tests.discord_emulator.payloads import member_json, user_json
from tests.discord_emulator.snowflake import iso_timestamp
from tests.discord_emulator.state import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    JSON,
    Channel,
    Pings,
    StoredMessage,
    User,
    World,
)

# Message types (API notes §3.1).
DEFAULT = 0
REPLY = 19
CHAT_INPUT_COMMAND = 20
CONTEXT_MENU_COMMAND = 23

EDITABLE_FIELDS = ("content", "embeds", "components", "attachments")
CONTENT_FIELDS = ("content", "embeds", "attachments", "components")
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_IS_COMPONENTS_V2 = 1 << 15
SETTABLE_FLAGS = FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_IS_COMPONENTS_V2


@dataclass(frozen=True)
class Draft:
    """Everything needed to create one message."""

    channel: Channel
    author: User
    content: str = ""
    type: int = DEFAULT
    flags: int = 0
    embeds: Sequence[JSON] = ()
    components: Sequence[JSON] = ()
    attachments: Sequence[JSON] = ()
    nonce: str | int | None = None
    tts: bool = False
    referenced: StoredMessage | None = None
    policy: MentionPolicy = field(default_factory=MentionPolicy)
    extra_mention_ids: Sequence[int] = ()
    webhook_id: int | None = None
    webhook_author: JSON | None = None  # overrides `author` for webhook messages
    application_id: int | None = None
    interaction_metadata: JSON | None = None
    interaction_id: int | None = None


def build_message(world: World, draft: Draft, message_id: int) -> StoredMessage:
    """A new message; pings follow the draft's mention policy."""
    channel = draft.channel
    replied = draft.referenced
    pings = compute_pings(
        world,
        channel,
        draft.author.id,
        draft.content,
        draft.policy,
        # A channel webhook is no user: replying to its message pings no one.
        replied_author_id=replied.author_id if replied and replied.author_id in world.users
        else None,
        extra_user_ids=draft.extra_mention_ids,
    )
    payload: JSON = {
        "id": str(message_id),
        "channel_id": str(channel.id),
        "author": draft.webhook_author or user_json(draft.author),
        "content": draft.content,
        "timestamp": iso_timestamp(),
        "edited_timestamp": None,
        "tts": draft.tts,
        "attachments": list(draft.attachments),
        "embeds": list(draft.embeds),
        "components": list(draft.components),
        "pinned": False,
        "type": draft.type,
        "flags": draft.flags,
    }
    _set_mentions(world, channel, payload, pings)
    _set_origin(world, channel, draft, payload)
    if replied is not None:
        payload["message_reference"] = reference_json(replied, channel)
        payload["referenced_message"] = referenced_json(replied)
    return StoredMessage(
        id=message_id,
        channel_id=channel.id,
        author_id=draft.author.id,
        payload=payload,
        pings=pings,
        ephemeral=bool(draft.flags & FLAG_EPHEMERAL),
        interaction_id=draft.interaction_id,
    )


def _set_origin(world: World, channel: Channel, draft: Draft, payload: JSON) -> None:
    """guild_id/member for guild messages (never for DMs), webhook and interaction keys."""
    ephemeral = bool(draft.flags & FLAG_EPHEMERAL)
    if channel.guild_id is not None and not ephemeral:
        payload["guild_id"] = str(channel.guild_id)
        member = world.member(channel.guild_id, draft.author.id)
        if member is not None and draft.webhook_id is None:
            payload["member"] = member_json(member, with_user=False)
    if draft.nonce is not None:
        payload["nonce"] = draft.nonce
    if draft.webhook_id is not None:
        payload["webhook_id"] = str(draft.webhook_id)
    if draft.application_id is not None:
        payload["application_id"] = str(draft.application_id)
    if draft.interaction_metadata is not None:
        payload["interaction_metadata"] = draft.interaction_metadata


def _set_mentions(world: World, channel: Channel, payload: JSON, pings: Pings) -> None:
    mentions = []
    for user_id in sorted(pings.user_ids):
        entry = user_json(world.user(user_id))
        member = world.member(channel.guild_id, user_id) if channel.guild_id else None
        if member is not None:
            entry["member"] = member_json(member, with_user=False)
        mentions.append(entry)
    payload["mentions"] = mentions
    payload["mention_roles"] = [str(r) for r in sorted(pings.role_ids)]
    payload["mention_everyone"] = pings.everyone


def reference_json(target: StoredMessage, channel: Channel) -> JSON:
    data: JSON = {"type": 0, "message_id": str(target.id), "channel_id": str(target.channel_id)}
    if channel.guild_id is not None:
        data["guild_id"] = str(channel.guild_id)
    return data


def referenced_json(target: StoredMessage) -> JSON | None:
    """The replied-to message as embedded in a reply: no nested reply, no member; null if gone."""
    if target.deleted:
        return None
    data = copy.deepcopy(target.payload)
    data.pop("referenced_message", None)
    data.pop("member", None)
    return data


def apply_edit(world: World, stored: StoredMessage, changes: JSON, policy: MentionPolicy) -> None:
    """Edit in place: keep the old payload in `versions`, refresh mentions (edits never ping)."""
    stored.versions.append(copy.deepcopy(stored.payload))
    payload = stored.payload
    for key in EDITABLE_FIELDS:
        if key in changes:
            payload[key] = changes[key] if changes[key] is not None else _empty(key)
    if "flags" in changes and changes["flags"] is not None:
        kept = payload["flags"] & ~SETTABLE_FLAGS
        payload["flags"] = kept | (int(changes["flags"]) & SETTABLE_FLAGS)
    payload["flags"] &= ~FLAG_LOADING
    payload["edited_timestamp"] = iso_timestamp()
    payload["tts"] = False
    channel = world.channel(stored.channel_id)
    fresh = compute_pings(world, channel, stored.author_id, payload["content"], policy)
    _set_mentions(world, channel, payload, fresh)


def _empty(key: str) -> Any:
    return "" if key == "content" else []


def reactions_json(stored: StoredMessage, viewer_id: int) -> list[JSON]:
    """The `reactions` array of a fetched message, from the viewer's point of view."""
    result = []
    for emoji, users in stored.reactions.items():
        name, _, emoji_id = emoji.partition(":")
        result.append(
            {
                "emoji": {"id": emoji_id or None, "name": name},
                "count": len(users),
                "count_details": {"burst": 0, "normal": len(users)},
                "me": viewer_id in users,
                "me_burst": False,
                "burst_colors": [],
            }
        )
    return result


def can_see_content(payload: JSON, *, bot_id: int, intent: bool, is_dm: bool) -> bool:
    """The MESSAGE_CONTENT rule (API notes §2): intent, DM, own message, or the bot is mentioned."""
    if intent or is_dm:
        return True
    if payload.get("author", {}).get("id") == str(bot_id):
        return True
    return any(m.get("id") == str(bot_id) for m in payload.get("mentions", []))


def visible_payload(payload: JSON, *, bot_id: int, intent: bool, is_dm: bool) -> JSON:
    """A copy of a message object as a client with (or without) the intent receives it."""
    data = copy.deepcopy(payload)
    _blank_unless_visible(data, bot_id=bot_id, intent=intent, is_dm=is_dm)
    referenced = data.get("referenced_message")
    if isinstance(referenced, dict):
        _blank_unless_visible(referenced, bot_id=bot_id, intent=intent, is_dm=is_dm)
    return data


def _blank_unless_visible(data: JSON, *, bot_id: int, intent: bool, is_dm: bool) -> None:
    if can_see_content(data, bot_id=bot_id, intent=intent, is_dm=is_dm):
        return
    for key in CONTENT_FIELDS:
        data[key] = _empty(key)
    data.pop("poll", None)
