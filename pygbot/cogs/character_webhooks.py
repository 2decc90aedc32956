"""Posting as the character: one channel webhook per channel, wearing the character's face.

With `/pygbot webhook on` a channel (and its threads) gets the character's replies through a
webhook the bot creates once and finds again after a restart (by its name and owner, from
`GET /channels/{id}/webhooks`; no webhook token is ever stored). Each message is sent with
the speaking character's name as username. Discord wants a URL for a per-message avatar,
and a character's picture is bytes in the database, so the webhook *itself* wears the
picture: before a character speaks, the webhook's avatar is set to that character's picture
(`PATCH /webhooks/{id}`) unless it already wears it. Messages keep the avatar they were sent
with, so older lines keep their face when another character speaks.

Bot-made webhooks are application-owned, so their messages can carry the 🔄 ◀ ▶ buttons and
the clicks come to this bot like any other.

Without Manage Webhooks the character replies from the bot's account and the channel is told
so once (until a webhook works again).
"""

from __future__ import annotations

import hashlib
import logging

import discord

from pygbot.cogs.outlets import (
    UNKNOWN_WEBHOOK,
    ChannelOutlet,
    Outlet,
    ResilientOutlet,
    WebhookOutlet,
    WebhookTarget,
)
from pygbot.library import PersonaLibrary
from pygbot.store import Store, WebhookPosting

log = logging.getLogger(__name__)

WEBHOOK_NAME = "pygbot"  # how the bot finds its own webhook among a channel's
CANNOT_EDIT_OTHERS = 50005  # Discord's code: the bot edited a message it did not author
MISSING_PERMISSION_NOTICE = (
    "I can't post as the character in this channel: I need the **Manage Webhooks** "
    "permission here. Until I have it, I reply from my own account.")


class CharacterWebhooks:
    def __init__(self, bot: discord.Client, store: Store, library: PersonaLibrary) -> None:
        self._bot = bot
        self._store = store
        self._library = library
        self._hooks: dict[int, discord.Webhook] = {}  # parent channel id -> its webhook
        self._wearing: dict[int, str] = {}  # webhook id -> key of the picture it wears
        # Parent channel id -> its setting as stored: every message in every channel asks
        # whether it may address several characters, so the answer is kept in memory. Only
        # this process changes the settings of its servers' channels.
        self._settings: dict[int, WebhookPosting | None] = {}

    # --- the setting ---------------------------------------------------------------------------

    async def enable(self, channel_id: int, guild_id: int, *, told_missing: bool) -> None:
        self._settings.pop(channel_id, None)
        await self._store.set_webhook_posting(channel_id, guild_id, True,
                                              told_missing=told_missing)

    async def disable(self, channel_id: int, guild_id: int) -> None:
        self._settings.pop(channel_id, None)
        await self._store.set_webhook_posting(channel_id, guild_id, False)

    async def is_on(self, channel_id: int) -> bool:
        parent = await self._parent_id(channel_id)
        return parent is not None and await self._setting(parent) is not None

    # --- posting -------------------------------------------------------------------------------

    async def outlet(self, channel: discord.abc.Messageable, channel_id: int,
                     answering: int | None, character: str, member_id: int | None) -> Outlet:
        """Where a reply of `character` to message `answering` (None: a greeting) goes: the
        webhook when the channel posts through one and it can be had, else the channel."""
        fallback = ChannelOutlet(channel, channel_id, answering)
        target = await self.target(channel_id)
        if target is None:
            return fallback

        async def remake() -> WebhookOutlet | None:
            self.forget(target)
            again = await self.target(channel_id)
            if again is None:
                return None
            await self._dress(again, character)
            return WebhookOutlet(again, character, answering, member_id)

        await self._dress(target, character)
        return ResilientOutlet(WebhookOutlet(target, character, answering, member_id), remake,
                               fallback)

    async def target(self, channel_id: int) -> WebhookTarget | None:
        """The webhook to post into `channel_id` with, if the channel posts through one and
        the bot may manage webhooks there (else the channel is told once)."""
        channel = await self._channel(channel_id)
        if channel is None:
            return None
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        if not isinstance(parent, discord.TextChannel):
            return None  # DMs, forums, voice chats: no channel webhook to use
        posting = await self._setting(parent.id)
        if posting is None:
            return None
        try:
            webhook = await self._webhook(parent)
        except discord.Forbidden:
            if not posting.told_missing:
                await self._tell_missing(channel, parent.id)
            return None
        except discord.HTTPException as error:
            log.warning("no webhook in channel %s: %s", parent.id, error)
            return None
        if posting.told_missing:  # it works again: a later loss is worth saying again
            await self._note_told(parent.id, False)
        thread = channel if isinstance(channel, discord.Thread) else None
        return WebhookTarget(webhook, thread, parent.guild.id, channel.id)

    def forget(self, target: WebhookTarget) -> None:
        """Drop a webhook Discord no longer knows (deleted by an admin)."""
        if self._hooks.get(target.webhook.channel_id or 0) is target.webhook:
            del self._hooks[target.webhook.channel_id or 0]
        self._wearing.pop(target.webhook.id, None)

    # --- editing and deleting the character's messages -----------------------------------------

    async def remove_buttons(self, channel_id: int, message_id: int) -> None:
        """Take the buttons off a message of the character's, whether the bot or its webhook
        posted it. Raises `discord.HTTPException` when neither can."""
        channel = self._bot.get_partial_messageable(channel_id)
        try:
            await channel.get_partial_message(message_id).edit(view=None)
            return
        except discord.Forbidden as error:
            if error.code != CANNOT_EDIT_OTHERS:
                raise
        target = await self._existing_target(channel_id)
        if target is None:
            raise discord.ClientException(f"message {message_id} is no longer editable")
        await target.webhook.edit_message(message_id, view=None,
                                          thread=target.thread_or_missing)

    async def posted(self, message: discord.Message) -> WebhookTarget | None:
        """The bot's webhook that posted `message`, None when no webhook of the bot's did
        (messages posted through it stay editable after webhook posting is switched off)."""
        if message.webhook_id is None:
            return None
        target = await self._existing_target(message.channel.id)
        return target if target is not None and target.webhook.id == message.webhook_id \
            else None

    async def edit_posted(self, message: discord.Message, content: str,
                          view: discord.ui.View | None) -> None:
        """Edit a message the bot posted, itself or through its webhook."""
        target = await self.posted(message)
        if target is None:
            await message.edit(content=content, view=view)
            return
        await target.webhook.edit_message(message.id, content=content, view=view,
                                          thread=target.thread_or_missing)

    async def delete_posted(self, message: discord.Message) -> None:
        """Delete a message the bot posted, itself or through its webhook."""
        target = await self.posted(message)
        if target is None:
            await message.delete()
            return
        await target.webhook.delete_message(message.id, thread=target.thread_or_missing)

    # --- internals -----------------------------------------------------------------------------

    async def _existing_target(self, channel_id: int) -> WebhookTarget | None:
        channel = await self._channel(channel_id)
        if channel is None:
            return None
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        if not isinstance(parent, discord.TextChannel):
            return None
        webhook = self._hooks.get(parent.id)
        if webhook is None:
            try:
                webhook = await self._own_webhook(parent)
            except discord.HTTPException as error:
                log.debug("cannot list the webhooks of channel %s: %s", parent.id, error)
                return None
            if webhook is None:
                return None
            self._hooks[parent.id] = webhook
        thread = channel if isinstance(channel, discord.Thread) else None
        return WebhookTarget(webhook, thread, parent.guild.id, channel.id)

    async def _webhook(self, parent: discord.TextChannel) -> discord.Webhook:
        cached = self._hooks.get(parent.id)
        if cached is not None:
            return cached
        webhook = await self._own_webhook(parent)
        if webhook is None:
            webhook = await parent.create_webhook(name=WEBHOOK_NAME,
                                                  reason="pygbot: posting as the character")
            log.info("created the character webhook of channel %s", parent.id)
        self._hooks[parent.id] = webhook
        return webhook

    async def _own_webhook(self, parent: discord.TextChannel) -> discord.Webhook | None:
        me = self._bot.user
        for webhook in await parent.webhooks():
            owner = webhook.user
            if webhook.name == WEBHOOK_NAME and webhook.token and me is not None \
                    and owner is not None and owner.id == me.id:
                return webhook
        return None

    async def _dress(self, target: WebhookTarget, character: str) -> None:
        """Give the webhook `character`'s picture unless it wears it already. A failure only
        costs the face: the name is sent with every message."""
        picture = await self._library.avatar(target.guild_id, character)
        key = character.casefold() + ":" + (hashlib.sha256(picture).hexdigest()
                                            if picture else "none")
        webhook = target.webhook
        if self._wearing.get(webhook.id) == key:
            return
        try:
            await webhook.edit(avatar=picture, reason=f"pygbot: {character} speaks")
        except discord.HTTPException as error:
            if error.code == UNKNOWN_WEBHOOK:
                return  # posting finds out too, and makes the webhook again
            log.warning("could not give the webhook %s's picture: %s", character, error)
            return
        self._wearing[webhook.id] = key

    async def _tell_missing(self, channel: discord.abc.Messageable, parent_id: int) -> None:
        try:
            await channel.send(MISSING_PERMISSION_NOTICE)
        except discord.HTTPException as error:
            log.warning("could not say that Manage Webhooks is missing: %s", error)
            return
        await self._note_told(parent_id, True)

    async def _setting(self, parent_id: int) -> WebhookPosting | None:
        if parent_id not in self._settings:
            self._settings[parent_id] = await self._store.webhook_posting(parent_id)
        return self._settings[parent_id]

    async def _note_told(self, parent_id: int, told: bool) -> None:
        self._settings.pop(parent_id, None)
        await self._store.note_webhook_notice(parent_id, told)

    async def _parent_id(self, channel_id: int) -> int | None:
        channel = await self._channel(channel_id)
        if isinstance(channel, discord.Thread):
            return channel.parent_id
        return channel.id if isinstance(channel, discord.TextChannel) else None

    async def _channel(self, channel_id: int) -> discord.TextChannel | discord.Thread | None:
        channel = self._bot.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self._bot.fetch_channel(channel_id)
            except discord.HTTPException as error:
                log.debug("could not look up channel %s: %s", channel_id, error)
                return None
        return channel if isinstance(channel, discord.TextChannel | discord.Thread) else None
