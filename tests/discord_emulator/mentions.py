"""Who a message pings, decided the way Discord does (API notes §5.3 allowed_mentions).

Mention tokens in content only notify when the sender's `allowed_mentions` lets them through;
`@everyone`/`@here` also need MENTION_EVERYONE, role mentions need a mentionable role or that
permission. The reply's author is pinged through `replied_user`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tests.discord_emulator import permissions as perms
from tests.discord_emulator.state import JSON, Channel, Pings, World

USER_TOKEN = re.compile(r"<@!?(\d+)>")
ROLE_TOKEN = re.compile(r"<@&(\d+)>")
EVERYONE_TOKEN = re.compile(r"@(?:everyone|here)")


@dataclass(frozen=True)
class MentionPolicy:
    """The effective allowed_mentions of one message."""

    parse_users: bool = True
    parse_roles: bool = True
    parse_everyone: bool = True
    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()
    replied_user: bool = True

    @classmethod
    def from_request(cls, allowed: JSON | None, *, webhook: bool = False) -> MentionPolicy:
        """Absent: everything for normal messages, only users for webhooks and interactions."""
        if allowed is None:
            if webhook:
                return cls(parse_roles=False, parse_everyone=False, replied_user=False)
            return cls()
        parse = set(allowed.get("parse") or [])
        return cls(
            parse_users="users" in parse,
            parse_roles="roles" in parse,
            parse_everyone="everyone" in parse,
            users=frozenset(int(str(u)) for u in allowed.get("users") or []),
            roles=frozenset(int(str(r)) for r in allowed.get("roles") or []),
            replied_user=bool(allowed.get("replied_user", False)),
        )


def compute_pings(
    world: World,
    channel: Channel,
    author_id: int,
    content: str,
    policy: MentionPolicy,
    *,
    replied_author_id: int | None = None,
    extra_user_ids: Iterable[int] = (),
) -> Pings:
    """The users, roles and @everyone this message notifies."""
    user_ids = {u for u in _user_tokens(content, extra_user_ids) if u in world.users}
    pinged_users = {u for u in user_ids if policy.parse_users or u in policy.users}
    if replied_author_id is not None and policy.replied_user and replied_author_id != author_id:
        pinged_users.add(replied_author_id)
    if channel.is_dm:
        return Pings(user_ids=frozenset(pinged_users))
    may_mention_all = perms.has(
        world.channel_permissions(channel, author_id), perms.MENTION_EVERYONE
    )
    everyone = bool(EVERYONE_TOKEN.search(content)) and policy.parse_everyone and may_mention_all
    return Pings(
        user_ids=frozenset(pinged_users),
        everyone=everyone,
        role_ids=frozenset(_pinged_roles(world, channel, content, policy, may_mention_all)),
    )


def _user_tokens(content: str, extra_user_ids: Iterable[int]) -> list[int]:
    return [int(m) for m in USER_TOKEN.findall(content)] + list(extra_user_ids)


def _pinged_roles(
    world: World, channel: Channel, content: str, policy: MentionPolicy, may_mention_all: bool
) -> set[int]:
    assert channel.guild_id is not None
    guild = world.guild(channel.guild_id)
    pinged: set[int] = set()
    for role_id in (int(m) for m in ROLE_TOKEN.findall(content)):
        role = guild.roles.get(role_id)
        if role is None or not (policy.parse_roles or role_id in policy.roles):
            continue
        if role.mentionable or may_mention_all:
            pinged.add(role_id)
    return pinged
