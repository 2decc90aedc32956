"""Talking: a mention or a reply to the character gets an in-character reply.

Also keeps memory in step with Discord: an edited message updates its turn, a deleted one is
forgotten, and deleting a message whose reply is still queued withdraws the request.
"""

from __future__ import annotations

import asyncio
import logging

import discord
from discord.ext import commands

from pygbot.chat import Author, ChatService, EmptyReplyError
from pygbot.cogs.access import Access, AccessPolicy
from pygbot.cogs.reply_view import ReplyControls, post_greeting, send_reply
from pygbot.discord_text import render_mentions
from pygbot.worker import QueueFullError, WorkerClosedError

log = logging.getLogger(__name__)

EMPTY_MENTION_TEXT = "*waves*"  # a bare mention still deserves an answer


class ChatCog(commands.Cog):
    def __init__(self, bot: commands.Bot, chat: ChatService, access: AccessPolicy) -> None:
        self.bot = bot
        self.chat = chat
        self.access = access
        self._pending: dict[int, asyncio.Task[None]] = {}  # triggering message id -> reply

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or not await self._addressed_to_me(message):
            return
        verdict = await self.access.check(message.channel)
        if verdict is not Access.ALLOWED:
            await self.access.notify_once(message, verdict)
            return
        task = asyncio.current_task()
        if task is None:
            return
        self._pending[message.id] = task
        try:
            await self._converse(message)
        except asyncio.CancelledError:
            log.info("reply to deleted message %s withdrawn", message.id)
        finally:
            self._pending.pop(message.id, None)

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
        pending = self._pending.get(payload.message_id)
        if pending is not None:
            pending.cancel()
        if await self.chat.forget_message(payload.message_id):
            log.info("forgot the turn of deleted message %s", payload.message_id)

    async def _addressed_to_me(self, message: discord.Message) -> bool:
        me = self.bot.user
        if me is None:
            return False
        if me in message.mentions or message.guild is None:
            return True
        reference = message.reference
        if reference is None or reference.message_id is None:
            return False
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved.author.id == me.id
        return await self.chat.is_character_message(reference.message_id)

    async def _converse(self, message: discord.Message) -> None:
        guild_id = message.guild.id if message.guild else 0
        channel_id = message.channel.id
        greeting = await self.chat.start_conversation(channel_id, guild_id)
        await post_greeting(message.channel, greeting, self.chat)
        previous = await self.chat.latest_reply(channel_id)
        text = await self._as_text(message) or EMPTY_MENTION_TEXT
        author = Author(message.author.id, message.author.display_name)
        try:
            async with message.channel.typing():
                reply = await self.chat.reply(channel_id, guild_id, author, text, message.id)
        except QueueFullError:
            await self._explain(message, "I'm answering a lot of people right now. "
                                         "Please try again in a minute.")
            return
        except EmptyReplyError:
            await self._explain(message, "I lost my train of thought there. "
                                         "Please say that again.")
            return
        except WorkerClosedError:
            await self._explain(message, "I'm shutting down for a moment. Try again soon.")
            return
        await send_reply(message, reply.turn, self.chat)
        await ReplyControls.retire(message.channel, previous)

    async def _explain(self, message: discord.Message, text: str) -> None:
        await message.reply(text, mention_author=False)

    async def _as_text(self, message: discord.Message) -> str:
        me = self.bot.user
        guild = message.guild
        persona = await self.chat.library.active(guild.id if guild else 0, message.channel.id)
        return render_mentions(
            message.content,
            bot_user_id=me.id if me else 0,
            character_name=persona.name,
            user_names={user.id: user.display_name for user in message.mentions},
            role_names={role.id: role.name for role in message.role_mentions},
            channel_names={channel.id: getattr(channel, "name", "channel")
                           for channel in message.channel_mentions},
        )
