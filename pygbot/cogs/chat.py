"""Talking: a mention or a reply to the character gets an in-character reply.

The cog only decides whether a message is for the character and hands it to the durable
intake (pygbot.intake), which answers it once, in channel order, and posts through
`DiscordPoster`. On every fresh gateway session (start-up, or a session Discord would not
resume) it catches up: it reads the recent history of the channels it converses in and
hands over the messages it never saw, and tidies up replies a crash left half-streamed. It
also keeps memory in step with Discord: an edited message updates its turn, a deleted one is
forgotten or, if not answered yet, withdrawn.
"""

from __future__ import annotations

import datetime
import logging
import re
import sqlite3
import time

import discord
from discord.ext import commands

from pygbot.chat import ChatService
from pygbot.cogs.access import Access, AccessPolicy
from pygbot.cogs.character_webhooks import CharacterWebhooks
from pygbot.cogs.outlets import rewrite
from pygbot.cogs.reply_view import ReplyControls
from pygbot.discord_text import answered_message_id, is_unfinished, render_mentions
from pygbot.intake import BACKLOG_NOTICE, DATABASE_FAILED_NOTICE, Admission, Intake
from pygbot.ratelimit import MemberRateLimiter
from pygbot.roster import Roster
from pygbot.store import IntakeMessage, StoreError

log = logging.getLogger(__name__)

EMPTY_MENTION_TEXT = "*waves*"  # a bare mention still deserves an answer
CATCH_UP_CHANNELS = 100  # the most recently active channels read back after a gap
CATCH_UP_MESSAGES = 100  # per channel, the newest messages within PENDING_MAX_AGE_S
SEEN_LIVE_PRUNE_AT = 10_000  # message ids remembered before those past the age limit go
RATE_LIMITED_NOTICE = ("You're writing faster than I can read, so I'll skip your messages "
                       "for a moment. Mention me again in {seconds} seconds.")


class ChatCog(commands.Cog):
    def __init__(self, bot: commands.Bot, chat: ChatService, access: AccessPolicy, *,
                 intake: Intake, limiter: MemberRateLimiter, max_age_s: float,
                 streaming: bool, webhooks: CharacterWebhooks) -> None:
        self.bot = bot
        self.webhooks = webhooks
        self.chat = chat
        self.access = access
        self.intake = intake
        self.limiter = limiter
        self.max_age_s = max_age_s
        self.streaming = streaming
        # Messages this process got live, whatever became of them (answered, refused by the
        # rate limit): catch-up must not take them again from channel history.
        self._seen_live: set[int] = set()

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if self.intake.stopping or message.author.bot:
            return
        self._note_seen(message.id)
        if not await self._addressed_to_me(message):
            return
        verdict = await self.access.check(message.channel)
        if verdict is not Access.ALLOWED:
            await self.access.notify_once(message, verdict)
            return
        limit = self.limiter.check(message.author.id)
        if not limit.allowed:
            if limit.notify:
                await self._explain(message, RATE_LIMITED_NOTICE.format(
                    seconds=int(limit.retry_after_s)))
            return
        await self._take(message, live=True)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """A fresh session (start-up, or one Discord would not resume): what was sent while
        the bot was away is not replayed, so read it back, then answer."""
        try:
            await self.catch_up()
        finally:
            await self.intake.open()

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        message = payload.message
        if message.author.bot:
            return
        updated = await self.chat.edit_message(message.id, await self._as_text(message))
        if updated is not None:
            log.info("turn %s follows the edit of message %s", updated.id, message.id)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self.intake.withdraw(payload.message_id)
        if await self.chat.forget_message(payload.message_id):
            log.info("forgot the turn of deleted message %s", payload.message_id)

    # --- catching up ----------------------------------------------------------------------------

    async def catch_up(self) -> None:
        since = time.time() - self.max_age_s
        channels = await self.intake.conversing_channels(CATCH_UP_CHANNELS)
        # A member may also have spoken first while the bot was away, in a channel it never
        # talked in: the gateway's guild data says which channels saw messages since.
        channels += [c for c in self._active_since(since) if c not in channels]
        found = 0
        for channel_id in channels:
            try:
                found += await self._catch_up_channel(channel_id, since)
            except (discord.HTTPException, discord.ClientException) as error:
                log.warning("could not read back channel %s: %s", channel_id, error)
        log.info("caught up on %d channel(s): %d message(s) not seen before", len(channels),
                 found)

    def _active_since(self, since: float) -> list[int]:
        """Guild channels and threads whose newest message is younger than `since`, newest
        first (at most CATCH_UP_CHANNELS); whether the character may talk there is checked
        before anything is read."""
        channels: list[discord.TextChannel | discord.Thread] = [
            channel for guild in self.bot.guilds for channel in guild.text_channels]
        channels += [thread for guild in self.bot.guilds for thread in guild.threads]
        recent = [channel for channel in channels
                  if channel.last_message_id is not None
                  and discord.utils.snowflake_time(channel.last_message_id).timestamp() >= since]
        recent.sort(key=lambda channel: channel.last_message_id or 0, reverse=True)
        return [channel.id for channel in recent[:CATCH_UP_CHANNELS]]

    async def _catch_up_channel(self, channel_id: int, since: float) -> int:
        channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
        if not isinstance(channel, discord.abc.Messageable):
            return 0
        guild = getattr(channel, "guild", None)
        if not self.intake.owns_guild(guild.id if guild is not None else 0):
            return 0  # another shard's process reads this one back
        if await self.access.check(channel) is not Access.ALLOWED:
            return 0
        me = self.bot.user
        after = datetime.datetime.fromtimestamp(since, tz=datetime.UTC)
        found = 0
        async for message in channel.history(limit=CATCH_UP_MESSAGES, after=after,
                                             oldest_first=True):
            if (me is not None and message.author.id == me.id) \
                    or await self.webhooks.posted(message) is not None:
                if is_unfinished(message.content):
                    await self._tidy_unfinished(message)
                    continue
                answered = _answered(message)
                if answered is not None:
                    await self.intake.reply_seen(answered, message.id)
            elif (not message.author.bot and message.id not in self._seen_live
                  and await self._addressed_to_me(message)):
                found += await self._take(message, live=False) is Admission.ACCEPTED
        return found

    async def _tidy_unfinished(self, message: discord.Message) -> None:
        """A reply whose streaming a crash cut short: a new one (its messages are answered
        again, or its stored reply posted) is deleted; a regeneration of a stored reply shows
        that reply again."""
        try:
            turn = await self.chat.shown_turn(message.id)
            if turn is None:
                await self.webhooks.delete_posted(message)
                log.info("deleted unfinished reply %s in channel %s", message.id,
                         message.channel.id)
                return
            latest = await self.chat.latest_reply(turn.channel_id)
            controls = (ReplyControls(self.chat, self.access, turn, streaming=self.streaming)
                        if latest is not None and latest.id == turn.id else None)
            await self.webhooks.edit_posted(message, content=rewrite(message.content, turn.text),
                                            view=controls)
        except discord.HTTPException as error:
            log.warning("could not tidy unfinished reply %s: %s", message.id, error)

    # --- internals ------------------------------------------------------------------------------

    async def _take(self, message: discord.Message, live: bool) -> Admission | None:
        """Hand `message` to the intake; None when it could not even be recorded."""
        author = message.author
        character = await self._addressee(message)
        incoming = IntakeMessage(
            message_id=message.id, channel_id=message.channel.id,
            guild_id=message.guild.id if message.guild else 0, author_id=author.id,
            author_name=author.display_name,
            text=await self._as_text(message, character) or EMPTY_MENTION_TEXT,
            created_at=message.created_at.timestamp(), character=character)
        try:
            admission = await self.intake.accept(incoming)
        except (StoreError, sqlite3.Error) as error:
            log.error("could not record message %s: %s", message.id, error)
            await self._explain(message, DATABASE_FAILED_NOTICE)
            return None
        if admission is Admission.BACKLOGGED and live:
            await self._explain(message, BACKLOG_NOTICE)
        return admission

    def _note_seen(self, message_id: int) -> None:
        if len(self._seen_live) >= SEEN_LIVE_PRUNE_AT:  # only catch-up's window matters
            cutoff = time.time() - self.max_age_s
            self._seen_live = {seen for seen in self._seen_live
                               if discord.utils.snowflake_time(seen).timestamp() >= cutoff}
        self._seen_live.add(message_id)

    async def _addressed_to_me(self, message: discord.Message) -> bool:
        me = self.bot.user
        if me is None:
            return False
        if me in message.mentions or message.guild is None:
            return True
        if await self._replies_to_character(message, me.id):
            return True
        # Where several characters talk, naming one of them is enough.
        cast = await self._cast(message)
        return cast is not None and cast.names_someone(self._without_me(message.content))

    async def _replies_to_character(self, message: discord.Message, my_id: int) -> bool:
        reference = message.reference
        if reference is None or reference.message_id is None:
            return False
        resolved = reference.resolved
        if isinstance(resolved, discord.Message) and resolved.author.id == my_id:
            return True
        if isinstance(resolved, discord.Message) and resolved.webhook_id is None:
            return False  # a member's or another bot's message
        # The character's webhook posts, or a message Discord did not send along.
        return await self.chat.is_character_message(reference.message_id)

    async def _cast(self, message: discord.Message) -> Roster | None:
        """The channel's characters where several may answer (posting through a webhook,
        with characters that joined); None where only the main one talks."""
        if message.guild is None or not await self.webhooks.is_on(message.channel.id):
            return None
        roster = await self.chat.roster.roster(message.guild.id, message.channel.id)
        return roster if roster.joined else None

    async def _addressee(self, message: discord.Message) -> str | None:
        """The name of the character `message` addresses (see pygbot.roster); None: the
        channel's main character."""
        cast = await self._cast(message)
        if cast is None:
            return None
        replied_to = None
        reference = message.reference
        if reference is not None and reference.message_id is not None:
            turn = await self.chat.shown_turn(reference.message_id)
            replied_to = turn.name if turn is not None and turn.role == "character" else None
        return cast.addressed(self._without_me(message.content), replied_to).name

    def _without_me(self, content: str) -> str:
        """`content` without mentions of the bot (which speaks for every character)."""
        me = self.bot.user
        return re.sub(rf"<@!?{me.id}>", "", content).strip() if me is not None else content

    async def _explain(self, message: discord.Message, text: str) -> None:
        try:
            await message.reply(text, mention_author=False)
        except discord.HTTPException as error:
            log.warning("could not post a notice in channel %s: %s", message.channel.id, error)

    async def _as_text(self, message: discord.Message, character: str | None = None) -> str:
        """The message as the character reads it: a mention of the bot is the name of the
        character addressed (`character`, else the channel's main one)."""
        me = self.bot.user
        guild = message.guild
        if character is None:
            persona = await self.chat.library.active(guild.id if guild else 0,
                                                     message.channel.id)
            character = persona.name
        return render_mentions(
            message.content,
            bot_user_id=me.id if me else 0,
            character_name=character,
            user_names={user.id: user.display_name for user in message.mentions},
            role_names={role.id: role.name for role in message.role_mentions},
            channel_names={channel.id: getattr(channel, "name", "channel")
                           for channel in message.channel_mentions},
        )


def _answered(message: discord.Message) -> int | None:
    """The member's message a reply of the character's answers: its native reply target, or
    for a webhook post the message its header links to."""
    reference = message.reference
    if reference is not None and reference.message_id is not None:
        return reference.message_id
    return answered_message_id(message.content)
