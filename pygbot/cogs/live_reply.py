"""A reply shown on Discord while it is generated.

The message appears, as a reply to the member, once the first sentence is certain (see
`pygbot.reply_text.visible_reply`) and is edited as more sentences come, at most once per
`STREAM_EDIT_INTERVAL_S` and one request at a time, so a channel stays far inside Discord's
rate limits (discord.py waits out any 429 itself). While it grows it ends with
`STREAMING_MARK` (pygbot.discord_text), a cursor that tells the member more is coming and
tells a restarted bot that the message never became a finished reply. `finish` turns it
into the stored reply; `discard` deletes it when no reply will be posted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord

from pygbot.cogs.outlets import Outlet
from pygbot.discord_text import (
    DISCORD_MESSAGE_LIMIT,
    STREAM_EDIT_INTERVAL_S,
    in_progress,
    split_header,
    split_message,
)
from pygbot.store import StoredTurn
from pygbot.streaming import ThrottledShow

log = logging.getLogger(__name__)


class LiveReply:
    """One reply to message `answering` in channel `channel_id`, shown while it is generated
    through the outlet `open_outlet` gives (asked once, when the first sentence is ready)."""

    def __init__(self, open_outlet: Callable[[], Awaitable[Outlet]], channel_id: int,
                 answering: int, interval_s: float = STREAM_EDIT_INTERVAL_S) -> None:
        self.answering = answering
        self._open_outlet = open_outlet
        self._outlet: Outlet | None = None
        self._channel_id = channel_id
        self._message: discord.Message | None = None
        self._broken = False  # a request failed: show nothing more until the final text
        self._throttle = ThrottledShow(self._show, interval_s)

    def show(self, text: str) -> None:
        """The reply so far (a `PartialListener`: called on the event loop)."""
        self._throttle.push(text)

    async def finish(self, turn: StoredTurn, controls: discord.ui.View) -> int | None:
        """Make the message the stored reply (split to fit, `controls` on the last piece); the
        last piece's id, or None when nothing is shown and the reply must be posted afresh.
        Raises `discord.HTTPException` on a failure worth trying again (nothing is lost: the
        same message is finished on the next try)."""
        await self._throttle.close()
        if self._message is None or self._outlet is None:
            return None
        header, _ = split_header(self._message.content)
        pieces = split_message(turn.text, DISCORD_MESSAGE_LIMIT - len(header))
        try:
            edited = await self._message.edit(
                content=header + pieces[0], view=controls if len(pieces) == 1 else None)
        except discord.NotFound:  # deleted meanwhile (by a moderator): post the reply anew
            log.info("the streamed reply in channel %s was deleted; posting it anew",
                     turn.channel_id)
            self._message = None
            return None
        last = edited
        for index, piece in enumerate(pieces[1:], start=1):
            view = controls if index == len(pieces) - 1 else discord.utils.MISSING
            last = await self._outlet.send(piece, first=False, view=view)
        return last.id

    async def discard(self) -> None:
        """Delete what was shown: no reply will be posted (it failed, or was withdrawn)."""
        await self._throttle.close()
        if self._message is None:
            return
        try:
            await self._message.delete()
        except discord.HTTPException as error:
            log.warning("could not delete an unfinished reply in channel %s: %s",
                        self._channel_id, error)
        self._message = None

    async def _show(self, text: str) -> None:
        if self._broken:
            return
        try:
            if self._message is None:
                self._outlet = self._outlet or await self._open_outlet()
                room = DISCORD_MESSAGE_LIMIT - self._outlet.header_room
                self._message = await self._outlet.send(in_progress(text, room), first=True)
            else:
                header, _ = split_header(self._message.content)
                content = in_progress(text, DISCORD_MESSAGE_LIMIT - len(header))
                self._message = await self._message.edit(content=header + content)
        except discord.HTTPException as error:
            log.warning("stopped streaming a reply in progress: %s", error)
            self._broken = True
