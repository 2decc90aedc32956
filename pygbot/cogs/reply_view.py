"""The character's reply on Discord, with 🔄 regenerate and ◀ ▶ to browse alternatives.

The buttons use fixed custom ids and the view is registered at start-up without a message,
so they keep working after a restart: every click finds its turn by the message it sits on.
Only the character's newest reply carries live buttons; older ones are retired.
A click is held to the same rule as a mention: in a channel where the character may no
longer talk (no longer age-restricted, or all-channels switched off) it is refused.

With streaming on, 🔄 shows the new alternative growing in the same message (without buttons,
with the streaming cursor) and ends with it as stored; if no alternative comes, the message
shows the reply it showed before.
"""

from __future__ import annotations

import asyncio
import logging

import discord

from pygbot.chat import ChatService, EmptyReplyError, NothingToRegenerateError
from pygbot.cogs.access import Access, AccessPolicy
from pygbot.cogs.outlets import rewrite
from pygbot.discord_text import (
    DISCORD_MESSAGE_LIMIT,
    STREAM_EDIT_INTERVAL_S,
    in_progress,
    split_header,
)
from pygbot.store import StoredTurn
from pygbot.streaming import ThrottledShow
from pygbot.worker import QueueFullError, WorkerClosedError

log = logging.getLogger(__name__)

PREVIOUS_ID = "pygbot:reply:previous"
POSITION_ID = "pygbot:reply:position"
REGENERATE_ID = "pygbot:reply:regenerate"
NEXT_ID = "pygbot:reply:next"
NOT_NEWEST = "Only the character's newest reply can be rerolled or browsed."
# The newest reply shows its buttons a moment before the bot has recorded which message it
# is (the record follows the post, and retiring the older reply's buttons comes between).
# A click on an unrecorded message waits this long for the record, inside Discord's 3 s
# limit for answering an interaction, before it is refused as not the newest.
RECORD_WAIT_S = 2.0
RECORD_POLL_S = 0.05


class ReplyControls(discord.ui.View):
    stream_interval_s: float = STREAM_EDIT_INTERVAL_S

    def __init__(self, chat: ChatService, access: AccessPolicy,
                 turn: StoredTurn | None = None, *, streaming: bool,
                 greeting: bool = False) -> None:
        super().__init__(timeout=None)
        self.chat = chat
        self.access = access
        self.streaming = streaming
        # A greeting's alternatives are the card's alternate greetings; none is generated.
        self.regenerate.disabled = greeting
        if turn is not None:
            count = max(len(turn.alternatives), 1)
            self.previous.disabled = turn.chosen <= 0
            self.next.disabled = turn.chosen >= count - 1
            self.position.label = f"{turn.chosen + 1}/{count}"

    @discord.ui.button(emoji="◀", style=discord.ButtonStyle.secondary, custom_id=PREVIOUS_ID)
    async def previous(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await self._browse(interaction, -1)

    @discord.ui.button(label="1/1", style=discord.ButtonStyle.secondary, custom_id=POSITION_ID,
                       disabled=True)
    async def position(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await interaction.response.defer()  # a label, never clickable

    @discord.ui.button(emoji="🔄", style=discord.ButtonStyle.primary, custom_id=REGENERATE_ID)
    async def regenerate(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        current = await self._newest_turn(interaction)
        if current is None:
            return
        await interaction.response.defer()
        channel = interaction.channel
        guild_id = interaction.guild_id or 0
        live = self._live_edits(interaction)
        try:
            assert isinstance(channel, discord.abc.Messageable)
            async with channel.typing():
                turn = await self.chat.regenerate(interaction.channel_id or 0, guild_id,
                                                  on_partial=live.push if live else None)
        except (EmptyReplyError, NothingToRegenerateError, QueueFullError,
                WorkerClosedError) as error:
            if live is not None:  # what streamed is no alternative: show the reply as before
                await live.close()
                await self._show(interaction, current)
            await interaction.followup.send(f"Could not regenerate: {error}.", ephemeral=True)
            return
        if live is not None:
            await live.close()
        await self._show(interaction, turn)

    def _live_edits(self, interaction: discord.Interaction) -> ThrottledShow | None:
        """The clicked message, edited as the new alternative grows (None: not streamed)."""
        if not self.streaming:
            return None

        header, _ = split_header(_content(interaction))

        async def show(text: str) -> None:
            content = header + in_progress(text, DISCORD_MESSAGE_LIMIT - len(header))
            await interaction.edit_original_response(content=content, view=None)

        return ThrottledShow(show, self.stream_interval_s)

    async def _show(self, interaction: discord.Interaction, turn: StoredTurn) -> None:
        await interaction.edit_original_response(content=rewrite(_content(interaction), turn.text),
                                                 view=self.for_turn(turn))

    def for_turn(self, turn: StoredTurn, *, greeting: bool = False) -> ReplyControls:
        """The buttons for `turn`, with this view's access policy and streaming choice."""
        return ReplyControls(self.chat, self.access, turn, streaming=self.streaming,
                             greeting=greeting)

    @discord.ui.button(emoji="▶", style=discord.ButtonStyle.secondary, custom_id=NEXT_ID)
    async def next(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await self._browse(interaction, +1)

    async def _browse(self, interaction: discord.Interaction, step: int) -> None:
        turn = await self._newest_turn(interaction)
        if turn is None:
            return
        index = turn.chosen + step
        if not 0 <= index < len(turn.alternatives):
            await interaction.response.defer()
            return
        chosen = await self.chat.choose_alternative(turn.id, index)
        view = self.for_turn(chosen, greeting=await self.chat.is_greeting(chosen))
        await interaction.response.edit_message(
            content=rewrite(_content(interaction), chosen.text), view=view)

    async def _newest_turn(self, interaction: discord.Interaction) -> StoredTurn | None:
        """The turn under the clicked message if the character may talk in this channel and
        it is the newest reply; else refuse."""
        if not await self._allowed(interaction):
            return None
        message = interaction.message
        latest = await self._recorded_latest(interaction.channel_id or 0, message)
        if message is not None and latest is not None and latest.message_id == message.id \
                and await self._still_playing(interaction, latest):
            return latest
        if message is not None and message.webhook_id is not None:
            # The character's webhook posted it: the bot's own account may not edit it, but
            # the click's answer may (it edits the message the button sits on).
            await interaction.response.edit_message(view=None)
            await interaction.followup.send(NOT_NEWEST, ephemeral=True)
            return None
        await interaction.response.send_message(NOT_NEWEST, ephemeral=True)
        if message is not None:
            await _remove_buttons(message)
        return None

    async def _recorded_latest(self, channel_id: int,
                               message: discord.Message | None) -> StoredTurn | None:
        """The channel's newest reply; if it is still being posted (no message recorded yet)
        and the clicked message shows no turn, that message may be it: wait for the record."""
        latest = await self.chat.latest_reply(channel_id)
        if message is None or latest is None or latest.message_id is not None \
                or await self.chat.shown_turn(message.id) is not None:
            return latest
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECORD_WAIT_S
        while latest is not None and latest.message_id is None and loop.time() < deadline:
            await asyncio.sleep(RECORD_POLL_S)
            latest = await self.chat.latest_reply(channel_id)
        return latest

    async def _still_playing(self, interaction: discord.Interaction, turn: StoredTurn) -> bool:
        """Whether the character of `turn` is still one playing here: after a switch
        (perhaps server-wide, from another channel) its replies belong to an old conversation."""
        roster = await self.chat.roster.roster(interaction.guild_id or 0,
                                               interaction.channel_id or 0)
        return turn.name in roster.names

    async def _allowed(self, interaction: discord.Interaction) -> bool:
        channel = interaction.channel
        verdict = await self.access.check(channel) if isinstance(
            channel, discord.abc.Messageable) else Access.AGE_RESTRICTED
        if verdict is Access.ALLOWED:
            return True
        await interaction.response.send_message(self.access.notice(verdict), ephemeral=True)
        return False


def shown(text: str) -> str:
    """An alternative as one message (an edit cannot add messages), cut to Discord's limit."""
    return text if len(text) <= DISCORD_MESSAGE_LIMIT else text[:DISCORD_MESSAGE_LIMIT - 1] + "…"


def _content(interaction: discord.Interaction) -> str:
    """What the clicked message shows now (its header, if a webhook posted it, is kept)."""
    return interaction.message.content if interaction.message is not None else ""


async def _remove_buttons(message: discord.Message | discord.PartialMessage) -> None:
    try:
        await message.edit(view=None)
    except discord.HTTPException as error:  # deleted meanwhile, or no longer editable
        log.debug("could not retire buttons on message %s: %s", message.id, error)
