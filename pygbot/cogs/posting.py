"""Posting to Discord: the one place the character's replies, greetings and notices leave.

`DiscordPoster` is what the intake posts through (`pygbot.intake.Poster`). Every way of
showing a reply keeps the contract: post the turn as the answer to a message and return the
posted message's id, or None when Discord would not take it (the intake then keeps the reply
stored and tries again later).

With streaming on, the reply is already on screen when it is stored (`stream` hands the chat
a listener that drives a `LiveReply`): posting it then means finishing that message, on
every try, so a retried reply never appears twice.

Where a channel posts as the character (`pygbot.cogs.character_webhooks`), replies and
greetings go through its webhook outlet; buttons are retired through whichever account
posted the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import discord

from pygbot.chat import ChatService
from pygbot.cogs.access import Access, AccessPolicy
from pygbot.cogs.character_webhooks import CharacterWebhooks
from pygbot.cogs.live_reply import STREAM_EDIT_INTERVAL_S, LiveReply
from pygbot.cogs.outlets import Outlet
from pygbot.cogs.reply_view import ReplyControls
from pygbot.discord_text import DISCORD_MESSAGE_LIMIT, split_message
from pygbot.store import StoredTurn
from pygbot.streaming import PartialListener

log = logging.getLogger(__name__)


class DiscordPoster:
    # discord.py already waits out 429s and retries 500/502/504 itself; a reply that still
    # fails (503, an outage) is tried again after these pauses before the intake takes over.
    retry_delays_s: tuple[float, ...] = (1.0, 3.0)
    stream_interval_s: float = STREAM_EDIT_INTERVAL_S

    def __init__(self, bot: discord.Client, chat: ChatService, access: AccessPolicy,
                 webhooks: CharacterWebhooks, *, streaming: bool) -> None:
        self._bot = bot
        self._chat = chat
        self._access = access
        self._webhooks = webhooks
        self._streaming = streaming
        self._live: dict[int, LiveReply] = {}  # channel id -> its reply on screen, unfinished

    def channel(self, channel_id: int) -> discord.abc.Messageable:
        """The channel from the cache, or a partial one that can still post (DMs, threads
        not cached after a restart)."""
        channel = self._bot.get_channel(channel_id)
        if isinstance(channel, discord.abc.Messageable):
            return channel
        return self._bot.get_partial_messageable(channel_id)

    @contextlib.asynccontextmanager
    async def typing(self, channel_id: int) -> AsyncIterator[None]:
        """"… is typing" while the reply is made; a failure to show it changes nothing."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.channel(channel_id).typing())
            except discord.HTTPException as error:
                log.debug("no typing indicator in channel %s: %s", channel_id, error)
            yield

    async def greeting(self, channel_id: int, turn: StoredTurn | None) -> None:
        """Post a new conversation's greeting (if any), split to fit, with ◀ ▶ on the last
        piece when it has alternate greetings, and remember which message shows it."""
        if turn is None:
            return
        try:
            outlet = await self._outlet(channel_id, None, turn.name)
            pieces = split_message(turn.text)
            sent: discord.Message | None = None
            for index, piece in enumerate(pieces):
                swipeable = index == len(pieces) - 1 and len(turn.alternatives) > 1
                # Greetings are never regenerated, so nothing of theirs streams.
                view = ReplyControls(self._chat, self._access, turn, streaming=False,
                                     greeting=True) if swipeable else discord.utils.MISSING
                sent = await outlet.send(piece, first=index == 0, view=view)
            assert sent is not None  # a stored greeting is never empty
            await self._chat.attach_message(turn.id, sent.id)
        except discord.HTTPException as error:  # the greeting stays in memory regardless
            log.warning("could not post the greeting in channel %s: %s", channel_id, error)

    async def retire(self, channel_id: int, turn: StoredTurn | None) -> None:
        """Take the buttons off an older reply once a newer one is posted (or the
        conversation ended)."""
        if turn is None or turn.message_id is None:
            return
        try:
            await self._webhooks.remove_buttons(channel_id, turn.message_id)
        except (discord.HTTPException, discord.ClientException) as error:
            log.debug("could not retire buttons on message %s: %s", turn.message_id, error)

    def stream(self, channel_id: int, answering: int, author_id: int,
               character: str | None) -> PartialListener | None:
        """A listener that shows the reply of `character` (None: the main one) to
        `answering` (by member `author_id`) while it is generated (None when STREAM_REPLIES
        is off); `reply` or `retract` ends it."""
        if not self._streaming:
            return None

        async def open_outlet() -> Outlet:
            speaker = await self._speaker(channel_id, character)
            return await self._outlet(channel_id, answering, speaker, author_id)

        live = LiveReply(open_outlet, channel_id, answering, self.stream_interval_s)
        self._live[channel_id] = live
        return live.show

    async def _speaker(self, channel_id: int, addressed: str | None) -> str:
        """The character that answers: the one addressed if it is still in the channel,
        else the channel's main one (as `ChatService.answer` decides)."""
        guild = getattr(self.channel(channel_id), "guild", None)
        roster = await self._chat.roster.roster(guild.id if guild else 0, channel_id)
        return (roster.get(addressed) or roster.main).name

    async def _outlet(self, channel_id: int, answering: int | None, character: str,
                      member_id: int | None = None) -> Outlet:
        """Where `character`'s message goes; `member_id` None: the author of `answering`,
        as stored."""
        channel = self.channel(channel_id)
        if answering is not None and member_id is None:
            answered = await self._chat.shown_turn(answering)
            member_id = answered.author_id if answered is not None else None
        return await self._webhooks.outlet(channel, channel_id, answering, character,
                                           member_id)

    async def retract(self, channel_id: int) -> None:
        """Delete the reply in progress shown in the channel, if any: it will not be posted."""
        live = self._live.pop(channel_id, None)
        if live is not None:
            await live.discard()

    async def reply(self, channel_id: int, answering: int, turn: StoredTurn,
                    previous: StoredTurn | None) -> int | None:
        """Post `turn` as the answer to message `answering` (finishing the message that
        streamed it, if there is one), retrying server errors."""
        live = self._live.get(channel_id)
        if live is not None and live.answering != answering:
            await self.retract(channel_id)  # cannot happen while lanes are serial; be safe
            live = None
        for pause in (*self.retry_delays_s, None):
            try:
                posted = await self._show_reply(channel_id, live, answering, turn)
            except discord.HTTPException as error:
                log.warning("could not post the reply in channel %s: %s", channel_id, error)
                if pause is None or not _worth_retrying(error):
                    return None
                await asyncio.sleep(pause)
                continue
            self._live.pop(channel_id, None)
            await self.retire(channel_id, previous)
            return posted
        return None

    async def _show_reply(self, channel_id: int, live: LiveReply | None,
                          answering: int, turn: StoredTurn) -> int:
        controls = ReplyControls(self._chat, self._access, turn, streaming=self._streaming)
        if live is not None:
            finished = await live.finish(turn, controls)
            if finished is not None:
                return finished
        outlet = await self._outlet(channel_id, answering, turn.name)
        return await send_reply(outlet, turn, controls)

    async def refusal(self, channel_id: int) -> str | None:
        """The access notice when the character may not talk in the channel, else None."""
        channel = self._bot.get_channel(channel_id)
        if channel is None:  # not cached (a DM or an archived thread after a restart)
            try:
                channel = await self._bot.fetch_channel(channel_id)
            except discord.HTTPException as error:
                log.warning("could not look up channel %s: %s", channel_id, error)
                return None  # posting will fail or succeed on its own; nothing is lost
        if not isinstance(channel, discord.abc.Messageable):
            return None
        verdict = await self._access.check(channel)
        return None if verdict is Access.ALLOWED else AccessPolicy.notice(verdict)

    async def notice(self, channel_id: int, answering: int, text: str) -> None:
        """A short plain message to the member, as a reply to their message."""
        reference = discord.MessageReference(message_id=answering, channel_id=channel_id,
                                             fail_if_not_exists=False)
        try:
            await self.channel(channel_id).send(text, reference=reference,
                                                mention_author=False)
        except discord.HTTPException as error:
            log.warning("could not post a notice in channel %s: %s", channel_id, error)


async def send_reply(outlet: Outlet, turn: StoredTurn, controls: discord.ui.View) -> int:
    """Post `turn` split to fit, the first piece answering the member's message (which they
    may have deleted meanwhile) and `controls` on the last; returns the last piece's id."""
    pieces = split_message(turn.text, DISCORD_MESSAGE_LIMIT - outlet.header_room)
    sent: discord.Message | None = None
    for index, piece in enumerate(pieces):
        view = controls if index == len(pieces) - 1 else discord.utils.MISSING
        sent = await outlet.send(piece, first=index == 0, view=view)
    assert sent is not None  # a stored reply is never empty
    return sent.id


def _worth_retrying(error: discord.HTTPException) -> bool:
    """Server trouble may pass; a refusal (missing permissions, a deleted channel) will not."""
    return isinstance(error, discord.DiscordServerError) or error.status >= 500
