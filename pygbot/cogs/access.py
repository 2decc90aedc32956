"""Where the character may talk.

The model card warns that Pygmalion can write X-rated text, so by default the bot converses
only in age-restricted channels (and their threads) until a server admin allows every
channel with `/pygbot allow-channels`. Direct messages are off unless ALLOW_DMS is set.
Elsewhere a mention is answered once with a notice saying how to change that.
"""

from __future__ import annotations

import enum

import discord

from pygbot.store import Store

AGE_RESTRICTED_NOTICE = (
    "I only chat in age-restricted channels here, because my language model can write adult "
    "content. A server admin can mark this channel age-restricted (Edit Channel → "
    "Age-Restricted Channel) or let me talk everywhere with `/pygbot allow-channels`.")
DMS_OFF_NOTICE = "Direct messages are turned off for this bot; mention me in a server instead."


class Access(enum.Enum):
    ALLOWED = "allowed"
    AGE_RESTRICTED = "age-restricted"
    DMS_OFF = "dms-off"


class AccessPolicy:
    def __init__(self, store: Store, allow_dms: bool) -> None:
        self._store = store
        self._allow_dms = allow_dms
        self._notified: set[int] = set()  # channels told once since start-up

    async def check(self, channel: discord.abc.Messageable) -> Access:
        if isinstance(channel, discord.DMChannel | discord.GroupChannel):
            return Access.ALLOWED if self._allow_dms else Access.DMS_OFF
        is_nsfw = getattr(channel, "is_nsfw", None)
        if callable(is_nsfw) and is_nsfw():  # threads answer for their parent channel
            return Access.ALLOWED
        guild = getattr(channel, "guild", None)
        if guild is not None and (await self._store.guild_settings(guild.id)).allow_all_channels:
            return Access.ALLOWED
        return Access.AGE_RESTRICTED

    async def notify_once(self, message: discord.Message, verdict: Access) -> None:
        if message.channel.id in self._notified:
            return
        self._notified.add(message.channel.id)
        await message.reply(self.notice(verdict), mention_author=False)

    @staticmethod
    def notice(verdict: Access) -> str:
        """What a member is told when the character may not talk here."""
        return DMS_OFF_NOTICE if verdict is Access.DMS_OFF else AGE_RESTRICTED_NOTICE
