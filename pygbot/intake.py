"""The durable intake: nothing a member asks the character is lost.

A message addressed to the character is recorded in SQLite (pending) before any work starts.
Each channel then has one *lane*, a task that works through the channel's open messages in
message order: greeting, history, generation, storing and posting all happen there, so a
channel's replies can never overtake each other, while different channels run side by side.

- Messages that arrive while a channel's reply is being made are answered together by the
  next reply (all of them go into memory, in order; the reply answers the latest).
- Storing a reply marks its messages 'answered' in the same transaction; posting it marks
  them 'done'. A reply that cannot be posted stays stored and is posted on a later try.
- Every failure ends in a short notice to the member, never in silence.
- A reply may be shown while it is generated (`Poster.stream`); posting it finishes what is
  shown, and a reply that fails or is withdrawn has what was shown taken back.
- After a restart the open messages younger than `max_age_s` are answered once; older ones
  get a notice. The Discord edge adds the messages it finds in channel history (catch-up).

This module knows nothing of Discord: it takes ids and text, and posts through a `Poster`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from pygbot.chat import Author, ChatReply, ChatService, EmptyReplyError, Said
from pygbot.config import Settings
from pygbot.engine_errors import EngineUnavailableError
from pygbot.sharding import every_guild
from pygbot.store import IntakeMessage, Store, StoredTurn, StoreError
from pygbot.streaming import PartialListener
from pygbot.worker import WorkerClosedError

log = logging.getLogger(__name__)

ENGINE_FAILED_NOTICE = "Sorry, something went wrong while I was thinking. Please say that again."
ENGINE_UNREACHABLE_NOTICE = ("Sorry, I can't think straight right now: the model server is not "
                             "answering. Please say that again in a few minutes.")
EMPTY_REPLY_NOTICE = "I lost my train of thought there. Please say that again."
DATABASE_FAILED_NOTICE = ("Sorry, I could not save our conversation just now. "
                          "Please say that again in a moment.")
BACKLOG_NOTICE = ("Lots of people are talking to me right now. I have your message and will "
                  "answer as soon as I can.")
MISSED_NOTICE = ("Sorry, I was away and missed this. Mention me again if you'd still like an "
                 "answer.")
# A reply that could not be posted (after discord.py's own retries) is tried again after
# these pauses; after the last one it waits for the next start.
POST_RETRY_DELAYS_S = (2.0, 10.0, 30.0)
LANE_RETRY_S = 5.0  # a lane that failed unexpectedly (e.g. database gone) starts again after this
RETRACT_TIMEOUT_S = 5.0  # taking back a streamed reply while shutting down waits no longer
SECONDS_PER_DAY = 86400.0


class Admission(enum.Enum):
    ACCEPTED = "accepted"
    BACKLOGGED = "backlogged"  # recorded and will be answered, but the backlog is over its size
    DUPLICATE = "duplicate"  # seen before (replayed, or read back from history): not taken again


class Poster(Protocol):
    """How replies reach the members (the Discord cogs implement it)."""

    def typing(self, channel_id: int) -> AbstractAsyncContextManager[None]: ...

    async def greeting(self, channel_id: int, turn: StoredTurn) -> None: ...

    def stream(self, channel_id: int, answering: int, author_id: int,
               character: str | None) -> PartialListener | None:
        """A listener that shows the reply of `character` (None: the channel's main one) to
        `answering` (by member `author_id`) while it is generated, or None when replies are
        not streamed."""
        ...

    async def retract(self, channel_id: int) -> None:
        """Take back what `stream` showed: that reply will not be posted."""
        ...

    async def reply(self, channel_id: int, answering: int, turn: StoredTurn,
                    previous: StoredTurn | None) -> int | None:
        """Post `turn` as the answer to message `answering` (finishing what `stream` showed
        of it); the posted message's id, or None when it could not be posted."""
        ...

    async def notice(self, channel_id: int, answering: int, text: str) -> None: ...

    async def refusal(self, channel_id: int) -> str | None:
        """Why the character may not talk in this channel now, as a notice for the member;
        None when it may. Asked before every reply: a channel can stop being allowed while
        its messages wait (or while the bot was down)."""
        ...


@dataclass(frozen=True)
class IntakeConfig:
    pending_max: int = Settings().pending_max
    max_age_s: float = Settings().pending_max_age_s
    slots: int = Settings().queue_max  # lanes generating or waiting for the model at once

    @classmethod
    def from_settings(cls, settings: Settings) -> IntakeConfig:
        return cls(settings.pending_max, settings.pending_max_age_s, settings.queue_max)


class Intake:
    def __init__(self, store: Store, chat: ChatService, poster: Poster, config: IntakeConfig,
                 clock: Callable[[], float] = time.time, *,
                 owns_guild: Callable[[int], bool] = every_guild) -> None:
        self._store = store
        # Sharded processes share the database: each answers only its own servers.
        self.owns_guild = owns_guild
        self._chat = chat
        self._poster = poster
        self._config = config
        self._clock = clock
        self._lanes: dict[int, asyncio.Task[None]] = {}
        self._woken: set[int] = set()  # channels with news since their lane last looked
        self._open = False  # lanes start only after recovery and catch-up
        self._stopping = False
        self._slots = asyncio.Semaphore(config.slots)
        self._in_flight: dict[int, tuple[frozenset[int], asyncio.Task[ChatReply]]] = {}
        self._withdrawn: set[int] = set()
        self._post_failures: dict[int, int] = {}  # reply turn id -> failed posting attempts
        self._skipped_turns: set[int] = set()  # replies left for the next start
        self._skipped_messages: set[int] = set()  # messages failed but not settled (db down)
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # --- taking messages ------------------------------------------------------------------------

    async def accept(self, message: IntakeMessage) -> Admission:
        """Record `message` (durably, before anything else) and wake its channel's lane."""
        if not await self._store.record_intake(message):
            return Admission.DUPLICATE
        self.wake(message.channel_id)
        if await self._store.intake_backlog() > self._config.pending_max:
            log.warning("intake backlog over PENDING_MAX=%d", self._config.pending_max)
            return Admission.BACKLOGGED
        return Admission.ACCEPTED

    async def withdraw(self, message_id: int) -> None:
        """The member deleted `message_id`: it is not answered (if it still can be helped)."""
        if not await self._store.withdraw_intake(message_id):
            return
        self._withdrawn.add(message_id)
        for ids, task in self._in_flight.values():
            if message_id in ids and ids <= self._withdrawn:
                task.cancel()  # every message of this reply is gone: stop making it

    async def reply_seen(self, answering: int, posted_message_id: int) -> None:
        """Catch-up found the bot's reply to `answering` on Discord: a stored reply that was
        posted just before a crash is not posted twice."""
        if await self._store.reply_seen_on_discord(answering, posted_message_id):
            log.info("reply to message %s was already posted; not posting it again", answering)

    async def conversing_channels(self, limit: int) -> list[int]:
        """The channels to read back after a gap: where the character talks, newest first."""
        return await self._store.recent_channels(limit)

    # --- running --------------------------------------------------------------------------------

    async def open(self) -> None:
        """Start answering: recorded messages first, then whatever arrives. Idempotent."""
        if self._stopping:
            return
        if not self._open:
            pruned = await self._store.prune_intake(self._clock() - self._keep_settled_s())
            if pruned:
                log.info("pruned %d settled intake rows", pruned)
        self._open = True
        for channel_id in await self._store.open_intake_channels():
            if await self._owns_channel(channel_id):
                self.wake(channel_id)

    async def _owns_channel(self, channel_id: int) -> bool:
        if self.owns_guild is every_guild:
            return True
        waiting = await self._store.open_intake(channel_id)
        return bool(waiting) and self.owns_guild(waiting[0].guild_id)

    def wake(self, channel_id: int) -> None:
        """Make sure the channel's lane looks at its open messages (again)."""
        self._woken.add(channel_id)
        if not self._open or self._stopping:
            return
        lane = self._lanes.get(channel_id)
        if lane is None or lane.done():
            self._lanes[channel_id] = asyncio.create_task(
                self._lane(channel_id), name=f"pygbot-lane-{channel_id}")

    async def stop(self, grace_s: float) -> None:
        """Take no new work; let replies in progress finish within `grace_s` and be posted;
        what is left stays recorded for the next start."""
        self._stopping = True
        for timer in self._timers:
            timer.cancel()
        lanes = [lane for lane in self._lanes.values() if not lane.done()]
        if not lanes:
            return
        log.info("waiting up to %.1f s for %d repl(ies) in progress", grace_s, len(lanes))
        _, unfinished = await asyncio.wait(lanes, timeout=grace_s)
        for lane in unfinished:
            lane.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if unfinished:
            log.info("%d repl(ies) left for the next start", len(unfinished))

    async def idle(self) -> None:
        """Until no lane is working (for tests and benches)."""
        while lanes := [lane for lane in self._lanes.values() if not lane.done()]:
            await asyncio.wait(lanes)

    # --- a channel's lane -----------------------------------------------------------------------

    async def _lane(self, channel_id: int) -> None:
        try:
            while not self._stopping:
                self._woken.discard(channel_id)
                backlog = [m for m in await self._store.open_intake(channel_id)
                           if not self._skipped(m)]
                if not backlog:
                    if channel_id in self._woken:
                        continue  # something arrived while we looked
                    return
                if not await self._serve(channel_id, backlog):
                    return  # waiting for a posting retry
        except asyncio.CancelledError:
            raise
        except Exception:  # the lane must never take the bot down; try again shortly
            log.exception("channel %s: answering failed; trying again in %.0f s",
                          channel_id, LANE_RETRY_S)
            self._wake_later(channel_id, LANE_RETRY_S)

    def _skipped(self, message: IntakeMessage) -> bool:
        return message.message_id in self._skipped_messages or (
            message.reply_turn_id is not None and message.reply_turn_id in self._skipped_turns)

    async def _serve(self, channel_id: int, backlog: list[IntakeMessage]) -> bool:
        """One step for the channel's oldest open work; False when the lane should pause."""
        cutoff = self._clock() - self._config.max_age_s
        stale = [m for m in backlog if m.created_at < cutoff]
        if stale:
            await self._expire(channel_id, stale)
            return True
        refusal = await self._poster.refusal(channel_id)
        if refusal is not None:
            await self._refuse(channel_id, backlog, refusal)
            return True
        first = backlog[0]
        if first.state == "answered" and first.reply_turn_id is not None:
            same_reply = [m for m in backlog if m.reply_turn_id == first.reply_turn_id]
            return await self._post_stored(channel_id, first.reply_turn_id, same_reply)
        fresh = [m for m in backlog if m.state == "pending"]
        await self._answer(channel_id, fresh)
        return True

    async def _expire(self, channel_id: int, stale: list[IntakeMessage]) -> None:
        log.info("channel %s: %d message(s) older than PENDING_MAX_AGE_S get a notice",
                 channel_id, len(stale))
        await self._poster.notice(channel_id, stale[-1].message_id, MISSED_NOTICE)
        await self._store.settle_intake([m.message_id for m in stale], "expired")

    async def _refuse(self, channel_id: int, backlog: list[IntakeMessage], notice: str) -> None:
        log.info("channel %s: %d message(s) not answered, the character may no longer talk "
                 "there", channel_id, len(backlog))
        await self._poster.notice(channel_id, backlog[-1].message_id, notice)
        await self._store.settle_intake([m.message_id for m in backlog], "failed")

    async def _answer(self, channel_id: int, fresh: list[IntakeMessage]) -> None:
        latest = fresh[-1]
        greeting = await self._chat.start_conversation(channel_id, latest.guild_id,
                                                       latest.author_name)
        if greeting is not None:
            await self._poster.greeting(channel_id, greeting)
        previous = await self._chat.latest_reply(channel_id)
        said = [Said(Author(m.author_id, m.author_name), m.text, m.message_id) for m in fresh]
        ids = frozenset(m.message_id for m in fresh)
        async with self._slots, self._poster.typing(channel_id):
            # Messages answered together get one reply: from the character the latest one
            # addresses.
            on_partial = self._poster.stream(channel_id, latest.message_id, latest.author_id,
                                             latest.character)
            made = asyncio.create_task(self._chat.answer(channel_id, latest.guild_id, said,
                                                         on_partial=on_partial,
                                                         character=latest.character))
            self._in_flight[channel_id] = (ids, made)
            try:
                await asyncio.wait({made})
            except asyncio.CancelledError:  # shutting down: the messages stay pending
                made.cancel()
                await self._retract_soon(channel_id)
                raise
            finally:
                self._in_flight.pop(channel_id, None)
        if made.cancelled():
            log.info("channel %s: reply withdrawn, its messages were deleted", channel_id)
            await self._poster.retract(channel_id)
            return
        error = made.exception()
        if error is not None:
            await self._poster.retract(channel_id)
            await self._fail(channel_id, fresh, error)
            return
        reply = made.result()
        await self._forget_withdrawn(fresh)
        await self._post(channel_id, latest.message_id, reply.turn, previous)

    async def _retract_soon(self, channel_id: int) -> None:
        """Take back a streamed reply while stopping, within a bound (a restart's catch-up
        removes one left behind)."""
        try:
            await asyncio.wait_for(self._poster.retract(channel_id), RETRACT_TIMEOUT_S)
        except Exception as error:
            log.warning("channel %s: could not take back the reply in progress: %s",
                        channel_id, error)

    async def _post_stored(self, channel_id: int, turn_id: int,
                           answered: list[IntakeMessage]) -> bool:
        turn = await self._store.turn(turn_id)
        if turn is None:  # forgotten meanwhile (/reset): nothing left to show
            await self._store.settle_intake([m.message_id for m in answered], "done")
            return True
        return await self._post(channel_id, answered[-1].message_id, turn, None)

    async def _post(self, channel_id: int, answering: int, turn: StoredTurn,
                    previous: StoredTurn | None) -> bool:
        posted = await self._poster.reply(channel_id, answering, turn, previous)
        if posted is not None:
            self._post_failures.pop(turn.id, None)
            await self._store.reply_posted(turn.id, posted)
            return True
        failures = self._post_failures.get(turn.id, 0) + 1
        self._post_failures[turn.id] = failures
        if failures > len(POST_RETRY_DELAYS_S):
            log.warning("channel %s: reply %s still cannot be posted; it stays stored and is "
                        "posted at the next start", channel_id, turn.id)
            self._skipped_turns.add(turn.id)
            return True
        delay = POST_RETRY_DELAYS_S[failures - 1]
        log.info("channel %s: posting reply %s again in %.0f s", channel_id, turn.id, delay)
        self._wake_later(channel_id, delay)
        return False

    async def _fail(self, channel_id: int, fresh: list[IntakeMessage],
                    error: BaseException) -> None:
        ids = [m.message_id for m in fresh]
        if isinstance(error, WorkerClosedError):
            return  # shutting down: the messages stay pending for the next start
        if isinstance(error, EmptyReplyError):
            notice = EMPTY_REPLY_NOTICE
        elif isinstance(error, EngineUnavailableError):
            log.error("channel %s: %s", channel_id, error)
            notice = ENGINE_UNREACHABLE_NOTICE
        elif isinstance(error, StoreError | sqlite3.Error):
            log.error("channel %s: the database failed: %s", channel_id, error)
            notice = DATABASE_FAILED_NOTICE
        else:
            log.error("channel %s: generating a reply failed", channel_id, exc_info=error)
            notice = ENGINE_FAILED_NOTICE
        await self._poster.notice(channel_id, ids[-1], notice)
        try:
            await self._store.settle_intake(ids, "failed")
        except (StoreError, sqlite3.Error) as settle_error:
            log.error("channel %s: could not record the failure: %s", channel_id, settle_error)
            self._skipped_messages.update(ids)  # told already; not again in this run

    async def _forget_withdrawn(self, fresh: list[IntakeMessage]) -> None:
        for message in fresh:
            if message.message_id in self._withdrawn:
                await self._chat.forget_message(message.message_id)

    def _wake_later(self, channel_id: int, delay_s: float) -> None:
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self.wake(channel_id)

        timer = loop.call_later(delay_s, fire)
        self._timers.add(timer)

    def _keep_settled_s(self) -> float:
        return keep_settled_s(self._config.max_age_s)


def keep_settled_s(max_age_s: float) -> float:
    """How long a settled record (a copy of an answered message) is kept. Settled rows are
    the memory of what was answered: kept well past the age limit so re-reading channel
    history can never answer a message twice."""
    return max(SECONDS_PER_DAY, 2 * max_age_s)
