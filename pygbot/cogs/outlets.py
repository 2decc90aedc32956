"""Where a reply's messages go: the channel itself, or a webhook wearing the character.

An outlet sends one piece of a reply and returns the message, whose `edit` and `delete` then
work whichever way it was sent (discord.py's `WebhookMessage` edits through its webhook).
The first piece answers the member's message: natively in the channel, through a webhook
with an `answer_header` line (webhook messages cannot be replies). Edits keep whatever header
the message already has (`rewrite`), so a swipe or a streamed edit never loses it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import discord

from pygbot.discord_text import DISCORD_MESSAGE_LIMIT, answer_header, split_header

log = logging.getLogger(__name__)

UNKNOWN_WEBHOOK = 10015  # Discord's error code: the webhook was deleted


class Outlet(Protocol):
    @property
    def header_room(self) -> int:
        """Characters the first piece gives up to the header."""
        ...

    async def send(self, piece: str, *, first: bool,
                   view: Any = discord.utils.MISSING) -> discord.Message:
        """Post one piece (`first`: the one that answers the member's message)."""
        ...


class ChannelOutlet:
    """The bot's own account: the first piece is a native reply that pings the member."""

    header_room = 0

    def __init__(self, channel: discord.abc.Messageable, channel_id: int,
                 answering: int | None) -> None:
        self._channel = channel
        self._reference = None if answering is None else discord.MessageReference(
            message_id=answering, channel_id=channel_id, fail_if_not_exists=False)

    async def send(self, piece: str, *, first: bool,
                   view: Any = discord.utils.MISSING) -> discord.Message:
        if first and self._reference is not None:
            return await self._channel.send(piece, view=view, reference=self._reference,
                                            mention_author=True)
        return await self._channel.send(piece, view=view)


@dataclass(frozen=True)
class WebhookTarget:
    """A channel webhook of the bot's, and the thread to post into (None: the channel)."""

    webhook: discord.Webhook
    thread: discord.abc.Snowflake | None
    guild_id: int
    channel_id: int  # where the messages appear (the thread, if any)

    @property
    def thread_or_missing(self) -> Any:
        return self.thread if self.thread is not None else discord.utils.MISSING


class WebhookOutlet:
    """The character's own name and face; the first piece of a reply names the member it
    answers and pings only them (the model's text pings nobody). A greeting answers no one."""

    def __init__(self, target: WebhookTarget, username: str, answering: int | None,
                 member_id: int | None) -> None:
        self.target = target
        self._username = username
        self._member_id = member_id
        self._header = "" if answering is None else answer_header(
            member_id, target.guild_id, target.channel_id, answering)

    @property
    def header_room(self) -> int:
        return len(self._header)

    async def send(self, piece: str, *, first: bool,
                   view: Any = discord.utils.MISSING) -> discord.Message:
        pinged = [discord.Object(self._member_id)] if first and self._member_id else False
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=pinged)
        return await self.target.webhook.send(
            self._header + piece if first else piece, username=self._username, view=view,
            thread=self.target.thread_or_missing, wait=True, allowed_mentions=mentions)


class ResilientOutlet:
    """A webhook outlet that never loses a reply: a deleted webhook is made again once
    (`remake`), any other refusal (missing permission, a name Discord rejects) posts the
    piece through the channel instead. Server errors are raised for the poster to retry."""

    def __init__(self, primary: WebhookOutlet,
                 remake: Callable[[], Awaitable[WebhookOutlet | None]],
                 fallback: ChannelOutlet) -> None:
        self._primary: WebhookOutlet | None = primary
        self._remake = remake
        self._fallback = fallback

    @property
    def header_room(self) -> int:
        return self._primary.header_room if self._primary is not None else 0

    async def send(self, piece: str, *, first: bool,
                   view: Any = discord.utils.MISSING) -> discord.Message:
        for remade in (False, True):
            if self._primary is None:
                break
            try:
                return await self._primary.send(piece, first=first, view=view)
            except discord.HTTPException as error:
                if error.status >= 500:
                    raise
                log.warning("could not post through the channel's webhook: %s", error)
                if error.code == UNKNOWN_WEBHOOK and not remade:
                    self._primary = await self._remake()
                    continue
                self._primary = None
        # The channel outlet adds no header: a fallback piece starts as a native reply.
        return await self._fallback.send(piece, first=first, view=view)


def rewrite(current: str, text: str) -> str:
    """New content for a message showing `current`: `text` under the same header, cut to
    Discord's limit."""
    header, _ = split_header(current)
    room = DISCORD_MESSAGE_LIMIT - len(header)
    return header + (text if len(text) <= room else text[:room - 1] + "…")
