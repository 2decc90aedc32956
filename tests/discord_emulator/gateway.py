"""The gateway websocket (API notes §1, §2): HELLO, heartbeats, IDENTIFY/RESUME, dispatches.

One `Connection` per websocket (with its own transport-compression stream) and one `Session`
per successful IDENTIFY; sessions outlive connections so a client can RESUME and get the
dispatches it missed replayed with their original sequence numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import WSMsgType, web

from tests.discord_emulator.state import JSON

if TYPE_CHECKING:
    from tests.discord_emulator.emulator import DiscordEmulator

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41_250  # what Discord typically announces in HELLO
API_VERSION = "10"
SEND_LIMIT = 120  # client payloads per window before Discord closes with 4008
SEND_WINDOW_S = 60.0
ZLIB_SUFFIX = b"\x00\x00\xff\xff"
SESSION_ENDING_CLOSE_CODES = frozenset({1000, 1001})  # docs: these end the session
DETACH_POLL_S = 0.01
DETACH_TIMEOUT_S = 10.0

# Opcodes (API notes §1.3).
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE_UPDATE, VOICE_STATE = 0, 1, 2, 3, 4
RESUME, RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11

# Close codes (API notes §1.9).
UNKNOWN_ERROR, SESSION_TIMED_OUT = 4000, 4009  # "reconnect" / "reconnect, start a new session"
UNKNOWN_OPCODE, DECODE_ERROR, NOT_AUTHENTICATED, AUTHENTICATION_FAILED = 4001, 4002, 4003, 4004
ALREADY_AUTHENTICATED, RATE_LIMITED, INVALID_API_VERSION = 4005, 4008, 4012
INVALID_INTENTS, DISALLOWED_INTENTS = 4013, 4014

# Intents (API notes §2).
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_REACTIONS = 1 << 10
GUILD_MESSAGE_TYPING = 1 << 11
DIRECT_MESSAGES = 1 << 12
DIRECT_MESSAGE_REACTIONS = 1 << 13
DIRECT_MESSAGE_TYPING = 1 << 14
MESSAGE_CONTENT = 1 << 15
KNOWN_INTENTS = (1 << 17) - 1 | (1 << 20) | (1 << 21) | (1 << 24) | (1 << 25)

# Application flags that enable privileged intents: intent bit -> (flag, limited flag).
PRIVILEGED_INTENT_FLAGS = {
    GUILD_PRESENCES: (1 << 12, 1 << 13),
    GUILD_MEMBERS: (1 << 14, 1 << 15),
    MESSAGE_CONTENT: (1 << 18, 1 << 19),
}

try:  # zstd-stream is only requested by dpy when this package is importable
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None


class Transport(Protocol):
    """How gateway payloads go over one websocket."""

    async def send(self, ws: web.WebSocketResponse, text: str) -> None: ...


class PlainTransport:
    """Uncompressed text frames."""

    async def send(self, ws: web.WebSocketResponse, text: str) -> None:
        await ws.send_str(text)


class ZlibStreamTransport:
    """One deflate stream per connection, each payload ending in a Z_SYNC_FLUSH (notes §1.2)."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj()

    async def send(self, ws: web.WebSocketResponse, text: str) -> None:
        data = self._compressor.compress(text.encode()) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(ZLIB_SUFFIX)
        await ws.send_bytes(data)


class ZstdStreamTransport:
    """One zstd stream per connection, flushed per payload and never ended (notes §1.2)."""

    def __init__(self) -> None:
        assert zstandard is not None
        self._compressor = zstandard.ZstdCompressor().compressobj()

    async def send(self, ws: web.WebSocketResponse, text: str) -> None:
        assert zstandard is not None
        data = self._compressor.compress(text.encode())
        data += self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        await ws.send_bytes(data)


def make_transport(compress: str | None) -> Transport | None:
    """The transport for a `compress=` query value; None if it is not one Discord supports."""
    if compress is None:
        return PlainTransport()
    if compress == "zlib-stream":
        return ZlibStreamTransport()
    if compress == "zstd-stream" and zstandard is not None:
        return ZstdStreamTransport()
    return None


@dataclass
class Session:
    """A gateway session: identified intents, sequence numbers and dispatch history."""

    id: str
    intents: int
    shard: list[int] | None = None
    seq: int = 0
    history: list[JSON] = field(default_factory=list)
    connection: Connection | None = None


GUILD_EVENTS_BY_ID = frozenset({"GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"})
SNOWFLAKE_TIMESTAMP_SHIFT = 22


def on_shard(session: Session, guild_id: object) -> bool:
    """Discord's routing: a guild's events go to shard (guild_id >> 22) % num_shards; events
    outside guilds (DMs) only to shard 0. An unsharded session gets everything."""
    if session.shard is None:
        return True
    shard_id, count = session.shard
    if guild_id is None:
        return shard_id == 0
    return (int(str(guild_id)) >> SNOWFLAKE_TIMESTAMP_SHIFT) % count == shard_id


def event_guild_id(event: str, data: JSON) -> object:
    if event in GUILD_EVENTS_BY_ID:
        return data.get("id")
    return data.get("guild_id")


class Connection:
    """One websocket: serialises sends so compression and sequence order stay intact."""

    def __init__(
        self, ws: web.WebSocketResponse, transport: Transport, compress: str | None
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.compress = compress
        self.session: Session | None = None
        self.lock = asyncio.Lock()
        self.server_close_code: int | None = None  # set when the emulator closed it
        self._received: deque[float] = deque()

    async def send(self, payload: JSON) -> None:
        async with self.lock:
            await self._send_unlocked(payload)

    async def _send_unlocked(self, payload: JSON) -> None:
        if self.ws.closed:
            return
        try:
            await self.transport.send(self.ws, json.dumps(payload))
        except (ConnectionError, RuntimeError) as error:
            log.debug("gateway send failed: %s", error)

    async def dispatch(self, session: Session, event: str, data: JSON) -> None:
        """Number the dispatch, keep it for RESUME, and send it if connected."""
        async with self.lock:
            await self._dispatch_unlocked(session, event, data)

    async def _dispatch_unlocked(self, session: Session, event: str, data: JSON) -> None:
        session.seq += 1
        envelope = {"op": DISPATCH, "t": event, "s": session.seq, "d": data}
        session.history.append(envelope)
        await self._send_unlocked(envelope)

    def over_rate_limit(self) -> bool:
        now = time.monotonic()
        self._received.append(now)
        while self._received and self._received[0] < now - SEND_WINDOW_S:
            self._received.popleft()
        return len(self._received) > SEND_LIMIT

    async def close(self, code: int, reason: str = "") -> None:
        self.server_close_code = code
        await self.ws.close(code=code, message=reason.encode())


class GatewayHub:
    """All gateway connections and sessions of the emulator."""

    def __init__(self, emulator: DiscordEmulator) -> None:
        self.emulator = emulator
        self.sessions: dict[str, Session] = {}
        self.connections: set[Connection] = set()
        self.identify_payloads: list[JSON] = []
        self.presence_updates: list[JSON] = []
        self.close_codes: list[int] = []
        self.compressions: list[str | None] = []  # compress= of each connection, in order
        self.heartbeats = 0
        self.ready = asyncio.Event()
        self._admitting = asyncio.Event()  # cleared during an outage: new sockets wait
        self._admitting.set()

    # --- server side actions ---------------------------------------------------------------
    def live_sessions(self) -> list[Session]:
        return list(self.sessions.values())

    async def dispatch(
        self, event: str, intent: int | None, build: Callable[[Session], JSON | None]
    ) -> int:
        """Send `event` to every session having `intent` (None: always); returns how many
        connected sessions were sent it (disconnected ones keep it for RESUME)."""
        delivered = 0
        for session in self.live_sessions():
            if intent is not None and not session.intents & intent:
                continue
            data = build(session)
            if data is None or not on_shard(session, event_guild_id(event, data)):
                continue
            delivered += session.connection is not None
            await self._dispatch(session, event, data)
        return delivered

    async def _dispatch(self, session: Session, event: str, data: JSON) -> None:
        connection = session.connection
        if connection is not None:
            await connection.dispatch(session, event, data)
            return
        session.seq += 1  # disconnected: keep it for the RESUME replay
        session.history.append({"op": DISPATCH, "t": event, "s": session.seq, "d": data})

    async def send_op(self, op: int, data: Any = None) -> None:
        """Send a non-dispatch opcode (7 RECONNECT, 9 INVALID_SESSION, 1 HEARTBEAT) to all."""
        for connection in list(self.connections):
            await connection.send({"op": op, "d": data, "s": None, "t": None})
            if op == INVALID_SESSION and data is False and connection.session is not None:
                self.sessions.pop(connection.session.id, None)

    async def close(self) -> None:
        self._admitting.set()
        for connection in list(self.connections):
            await connection.close(1001, "emulator stopping")

    async def cut(self, *, resumable: bool) -> None:
        """Drop every connection and let none back in until `restore()`.

        Resumable: sessions survive, so dispatches meanwhile are kept and replayed on RESUME
        (close 4000, as after a gateway restart). Not resumable: sessions end (close 4009,
        "session timed out"), so a RESUME gets op 9 d=false, the client must IDENTIFY anew,
        and what happens in between is dispatched to no one, as on Discord.
        """
        self._admitting.clear()
        code = UNKNOWN_ERROR if resumable else SESSION_TIMED_OUT
        for connection in list(self.connections):
            if not resumable and connection.session is not None:
                self.sessions.pop(connection.session.id, None)
            await connection.close(code, "Unknown error." if resumable else "Session timed out.")
        deadline = time.monotonic() + DETACH_TIMEOUT_S
        while any(s.connection is not None for s in self.sessions.values()):
            if time.monotonic() > deadline:
                raise TimeoutError("the client did not let go of its gateway connection")
            await asyncio.sleep(DETACH_POLL_S)

    def restore(self) -> None:
        """End an outage: waiting and new connections get their HELLO."""
        self._admitting.set()

    # --- websocket handling ----------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        await self._admitting.wait()  # an outage: the client keeps trying until it ends
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        compress = request.query.get("compress")
        self.compressions.append(compress)
        transport = make_transport(compress)
        connection = Connection(ws, transport or PlainTransport(), compress)
        self.connections.add(connection)
        try:
            await self._serve(request, connection, transport is not None)
        finally:
            self.connections.discard(connection)
            self._detach(connection, ws.close_code)
        return ws

    def _detach(self, connection: Connection, close_code: int | None) -> None:
        """A client closing with 1000/1001 ends its session; other closes leave it resumable.

        When the emulator closed the connection, the code the client echoes back says nothing
        about the session (aiohttp answers every close with 1000): the server's code counts.
        """
        by_server = connection.server_close_code is not None
        code = connection.server_close_code if by_server else close_code
        if code is not None:
            self.close_codes.append(code)
        session = connection.session
        if session is None or session.connection is not connection:
            return
        session.connection = None
        if not by_server and code in SESSION_ENDING_CLOSE_CODES:
            self.sessions.pop(session.id, None)

    async def _serve(
        self, request: web.Request, connection: Connection, ok_transport: bool
    ) -> None:
        if request.query.get("v", API_VERSION) != API_VERSION:
            await connection.close(INVALID_API_VERSION, "Invalid API version")
            return
        if request.query.get("encoding", "json") != "json" or not ok_transport:
            await connection.close(DECODE_ERROR, "Unsupported encoding or compression")
            return
        await connection.send(
            {"op": HELLO, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}, "s": None, "t": None}
        )
        async for message in connection.ws:
            if message.type is not WSMsgType.TEXT:
                await connection.close(DECODE_ERROR, "Error while decoding payload.")
                return
            if not await self._on_payload(connection, message.data):
                return

    async def _on_payload(self, connection: Connection, text: str) -> bool:
        """Handle one client payload; False once the connection was closed."""
        if connection.over_rate_limit():
            await connection.close(RATE_LIMITED, "You are being rate limited.")
            return False
        try:
            payload = json.loads(text)
            op, data = payload["op"], payload.get("d")
        except (ValueError, KeyError, TypeError):
            await connection.close(DECODE_ERROR, "Error while decoding payload.")
            return False
        handler = {
            HEARTBEAT: self._on_heartbeat,
            IDENTIFY: self._on_identify,
            RESUME: self._on_resume,
            PRESENCE_UPDATE: self._on_presence,
            VOICE_STATE: self._on_ignored,
            REQUEST_MEMBERS: self._on_request_members,
        }.get(op)
        if handler is None:
            await connection.close(UNKNOWN_OPCODE, "Unknown opcode.")
            return False
        if op not in (HEARTBEAT, IDENTIFY, RESUME) and connection.session is None:
            await connection.close(NOT_AUTHENTICATED, "Not authenticated.")
            return False
        return await handler(connection, data)

    async def _on_heartbeat(self, connection: Connection, data: Any) -> bool:
        self.heartbeats += 1
        await connection.send({"op": HEARTBEAT_ACK})
        return True

    async def _on_ignored(self, connection: Connection, data: Any) -> bool:
        return True

    async def _on_presence(self, connection: Connection, data: Any) -> bool:
        self.presence_updates.append(data)
        return True

    async def _on_identify(self, connection: Connection, data: Any) -> bool:
        if connection.session is not None:
            await connection.close(ALREADY_AUTHENTICATED, "You're already authenticated.")
            return False
        self.identify_payloads.append(data)
        problem = self._identify_problem(data)
        if problem is not None:
            code, reason = problem
            await connection.close(code, reason)
            return False
        session = Session(
            id=secrets.token_hex(16), intents=int(data["intents"]), shard=data.get("shard")
        )
        self.sessions[session.id] = session
        session.connection = connection
        connection.session = session
        async with connection.lock:
            await connection._dispatch_unlocked(session, "READY", self._ready_payload(session))
            if session.intents & GUILDS:
                for guild_json in self.emulator.guild_create_payloads(session.intents):
                    if not on_shard(session, guild_json["id"]):
                        continue
                    await connection._dispatch_unlocked(session, "GUILD_CREATE", guild_json)
        self.ready.set()
        return True

    def _identify_problem(self, data: Any) -> tuple[int, str] | None:
        if not isinstance(data, dict) or data.get("token") != self.emulator.token:
            return AUTHENTICATION_FAILED, "Authentication failed."
        intents = data.get("intents")
        if not isinstance(intents, int) or intents & ~KNOWN_INTENTS:
            return INVALID_INTENTS, "Invalid intent(s)."
        for intent, flags in PRIVILEGED_INTENT_FLAGS.items():
            if intents & intent and not self.emulator.application_flags & (flags[0] | flags[1]):
                return DISALLOWED_INTENTS, "Disallowed intent(s)."
        return None

    def _ready_payload(self, session: Session) -> JSON:
        emulator = self.emulator
        data: JSON = {
            "v": 10,
            "user": emulator.bot_user_json(),
            "guilds": [{"id": str(g), "unavailable": True} for g in emulator.bot_guild_ids()
                       if on_shard(session, g)],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": emulator.gateway_url,
            "application": {
                "id": str(emulator.application_id),
                "flags": emulator.application_flags,
            },
            "private_channels": [],
            "presences": [],
            "relationships": [],
            "user_settings": {},
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "_trace": ['["discord-emulator"]'],
        }
        if session.shard is not None:
            data["shard"] = session.shard
        return data

    async def _on_resume(self, connection: Connection, data: Any) -> bool:
        data = data if isinstance(data, dict) else {}
        if data.get("token") != self.emulator.token:
            await connection.close(AUTHENTICATION_FAILED, "Authentication failed.")
            return False
        session = self.sessions.get(str(data.get("session_id")))
        if session is None:
            await connection.send({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return True
        seq = int(data.get("seq") or 0)
        session.connection = connection
        connection.session = session
        async with connection.lock:
            for envelope in session.history:
                if envelope["s"] > seq:
                    await connection._send_unlocked(envelope)
            await connection._dispatch_unlocked(session, "RESUMED", {})
        return True

    async def _on_request_members(self, connection: Connection, data: Any) -> bool:
        session = connection.session
        assert session is not None
        data = data if isinstance(data, dict) else {}
        chunk = self.emulator.member_chunk(data, with_all=bool(session.intents & GUILD_MEMBERS))
        if chunk is not None:
            await connection.dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)
        return True
