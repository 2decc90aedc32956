"""World changes → recorded state + gateway dispatches, and waiting for changes.

Every change goes through `EventBus`: it stores the change in the `World`, wakes anyone in
`wait_for`, and queues the matching dispatch. One task drains the queue, so dispatches reach
the bot in the order the changes happened, whether they came from synchronous world building
(`add_thread` after connecting) or from async actions and REST calls (which await delivery).
Payloads are snapshotted when queued; the MESSAGE_CONTENT rule is applied per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tests.discord_emulator import gateway as gw
from tests.discord_emulator import permissions as perms
from tests.discord_emulator.messages import visible_payload
from tests.discord_emulator.payloads import (
    channel_json,
    guild_create_json,
    member_json,
    role_json,
)
from tests.discord_emulator.state import (
    JSON,
    Channel,
    Guild,
    Member,
    Role,
    StoredMessage,
    TypingEvent,
    World,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Builder = Callable[[gw.Session], JSON | None]
FLUSH_TIMEOUT_S = 10.0
# Predicates may watch the bot's own state (a list its handler appends to), which no emulator
# change signals, so waiters also re-check this often.
RECHECK_INTERVAL_S = 0.02


@dataclass
class _Outgoing:
    event: str
    intent: int | None
    build: Builder
    delivered: asyncio.Future[int] | None


class EventBus:
    """Records changes, notifies waiters and dispatches gateway events in order."""

    def __init__(self, world: World, hub: gw.GatewayHub, bot_id: int) -> None:
        self.world = world
        self.hub = hub
        self.bot_id = bot_id
        self._changed = asyncio.Event()
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._drainer: asyncio.Task[None] | None = None
        self._watched: list[asyncio.Task[object]] = []

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._drainer = asyncio.create_task(self._drain(), name="discord-emulator-outbox")

    async def stop(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await self.flush(timeout=2.0)
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer

    async def _drain(self) -> None:
        while True:
            item = await self._outbox.get()
            try:
                count = await self.hub.dispatch(item.event, item.intent, item.build)
            except Exception as error:  # keep draining; surface it to whoever awaited
                log.exception("dispatching %s failed", item.event)
                if item.delivered is not None and not item.delivered.done():
                    item.delivered.set_exception(error)
            else:
                if item.delivered is not None and not item.delivered.done():
                    item.delivered.set_result(count)
            finally:
                self._outbox.task_done()

    async def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until every queued dispatch has been sent."""
        await asyncio.wait_for(self._outbox.join(), timeout)

    def _emit_soon(self, event: str, intent: int | None, build: Builder) -> None:
        if self.hub.sessions:
            self._outbox.put_nowait(_Outgoing(event, intent, build, None))

    async def _emit(
        self, event: str, intent: int | None, build: Builder, channel: Channel | None = None
    ) -> int:
        """Queue a dispatch and wait until it went out; returns how many sessions got it.

        Events of a `channel` the bot cannot view are not sent at all, as on Discord.
        """
        if not self.hub.sessions:
            return 0
        if channel is not None and not self._bot_sees(channel):
            return 0
        delivered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._outbox.put_nowait(_Outgoing(event, intent, build, delivered))
        return await asyncio.wait_for(delivered, FLUSH_TIMEOUT_S)

    # --- waiting ---------------------------------------------------------------------------
    def watch(self, task: asyncio.Task[object]) -> None:
        """Make `wait_for` fail at once with the task's exception if it crashes (a bot task)."""
        self._watched.append(task)
        task.add_done_callback(lambda _: self.changed())

    def changed(self) -> None:
        """Wake every waiter; each re-checks its predicate."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], T | None], timeout: float, what: str = ""
    ) -> T:
        """The first truthy `predicate()`, re-checked after each change; TimeoutError if none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._raise_if_watched_task_failed()
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, RECHECK_INTERVAL_S))
            except asyncio.TimeoutError:  # the builtin only since 3.11
                continue

    def _raise_if_watched_task_failed(self) -> None:
        for task in self._watched:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"watched task {task.get_name()} crashed") from task.exception()

    # --- messages --------------------------------------------------------------------------
    async def message_created(self, stored: StoredMessage) -> None:
        self.world.store_message(stored)
        self.changed()
        if not stored.ephemeral:
            await self._emit_message("MESSAGE_CREATE", stored)

    async def message_updated(self, stored: StoredMessage) -> None:
        self.changed()
        if not stored.ephemeral:
            await self._emit_message("MESSAGE_UPDATE", stored)

    async def message_deleted(self, stored: StoredMessage) -> None:
        stored.deleted = True
        self.changed()
        if stored.ephemeral:
            return
        channel = self.world.channel(stored.channel_id)
        data: JSON = {"id": str(stored.id), "channel_id": str(channel.id)}
        _add_guild_id(data, channel)
        await self._emit("MESSAGE_DELETE", _message_intent(channel), lambda _: data, channel)

    async def messages_bulk_deleted(self, channel: Channel, stored: list[StoredMessage]) -> None:
        for message in stored:
            message.deleted = True
        self.changed()
        data: JSON = {"ids": [str(m.id) for m in stored], "channel_id": str(channel.id)}
        _add_guild_id(data, channel)
        await self._emit("MESSAGE_DELETE_BULK", _message_intent(channel), lambda _: data, channel)

    async def _emit_message(self, event: str, stored: StoredMessage) -> None:
        channel = self.world.channel(stored.channel_id)
        snapshot = copy.deepcopy(stored.payload)

        def build(session: gw.Session) -> JSON:
            return visible_payload(
                snapshot,
                bot_id=self.bot_id,
                is_dm=channel.is_dm,
                intent=bool(session.intents & gw.MESSAGE_CONTENT),
            )

        await self._emit(event, _message_intent(channel), build, channel)

    # --- typing and reactions --------------------------------------------------------------
    async def typing_started(self, channel: Channel, user_id: int) -> None:
        event = TypingEvent(channel_id=channel.id, user_id=user_id, timestamp=int(time.time()))
        self.world.typing.append(event)
        self.changed()
        data: JSON = {
            "channel_id": str(channel.id),
            "user_id": str(user_id),
            "timestamp": event.timestamp,
        }
        _add_guild_id(data, channel)
        member = self._member_of(channel, user_id)
        if member is not None:
            data["member"] = member_json(member)
        intent = gw.DIRECT_MESSAGE_TYPING if channel.is_dm else gw.GUILD_MESSAGE_TYPING
        await self._emit("TYPING_START", intent, lambda _: data, channel)

    async def reaction_changed(
        self, stored: StoredMessage, emoji: JSON, user_id: int, *, added: bool
    ) -> None:
        self.changed()
        channel = self.world.channel(stored.channel_id)
        data: JSON = {
            "user_id": str(user_id),
            "channel_id": str(channel.id),
            "message_id": str(stored.id),
            "emoji": emoji,
            "burst": False,
            "type": 0,
        }
        _add_guild_id(data, channel)
        if added:
            data["message_author_id"] = str(stored.author_id)
            member = self._member_of(channel, user_id)
            if member is not None:
                data["member"] = member_json(member)
        intent = gw.DIRECT_MESSAGE_REACTIONS if channel.is_dm else gw.GUILD_MESSAGE_REACTIONS
        event = "MESSAGE_REACTION_ADD" if added else "MESSAGE_REACTION_REMOVE"
        await self._emit(event, intent, lambda _: data, channel)

    async def interaction_created(self, payload: JSON) -> int:
        """Deliver INTERACTION_CREATE (no intent needed); returns how many sessions got it."""
        self.changed()
        return await self._emit("INTERACTION_CREATE", None, lambda _: payload)

    # --- guild structure (synchronous: called from world building) ------------------------
    def guild_created(self, guild: Guild) -> None:
        self.changed()
        variants = {
            everyone: guild_create_json(self.world, guild, bot_id=self.bot_id, all_members=everyone)
            for everyone in (False, True)
        }
        for data in variants.values():
            del data["unavailable"]  # without the key dpy treats it as joining a guild

        def build(session: gw.Session) -> JSON:
            return variants[bool(session.intents & gw.GUILD_PRESENCES)]

        self._emit_soon("GUILD_CREATE", gw.GUILDS, build)

    def channel_created(self, channel: Channel) -> None:
        self.changed()
        if channel.is_thread:
            thread = {**channel_json(self.world, channel), "newly_created": True}
            self._emit_soon("THREAD_CREATE", gw.GUILDS, lambda _: thread)
        elif not channel.is_dm:
            data = channel_json(self.world, channel)
            self._emit_soon("CHANNEL_CREATE", gw.GUILDS, lambda _: data)

    def channel_updated(self, channel: Channel) -> None:
        self.changed()
        data = channel_json(self.world, channel)
        event = "THREAD_UPDATE" if channel.is_thread else "CHANNEL_UPDATE"
        self._emit_soon(event, gw.GUILDS, lambda _: data)

    def role_created(self, role: Role) -> None:
        self.changed()
        data = {"guild_id": str(role.guild_id), "role": role_json(role)}
        self._emit_soon("GUILD_ROLE_CREATE", gw.GUILDS, lambda _: data)

    def member_added(self, member: Member) -> None:
        self.changed()
        data = {**member_json(member), "guild_id": str(member.guild_id)}
        self._emit_soon("GUILD_MEMBER_ADD", gw.GUILD_MEMBERS, lambda _: data)

    def _bot_sees(self, channel: Channel) -> bool:
        permissions = self.world.channel_permissions(channel, self.bot_id)
        return perms.has(permissions, perms.VIEW_CHANNEL)

    def _member_of(self, channel: Channel, user_id: int) -> Member | None:
        if channel.guild_id is None:
            return None
        return self.world.member(channel.guild_id, user_id)


def _message_intent(channel: Channel) -> int:
    return gw.DIRECT_MESSAGES if channel.is_dm else gw.GUILD_MESSAGES


def _add_guild_id(data: JSON, channel: Channel) -> None:
    """DM payloads must not carry the key at all (API notes §10.4)."""
    if channel.guild_id is not None:
        data["guild_id"] = str(channel.guild_id)
