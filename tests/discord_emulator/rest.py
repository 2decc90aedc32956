"""REST API v10 routes a bot uses (API notes §5), served by aiohttp.

Responses are `application/json` exactly (no charset) or empty 204s. Bot routes need
`Authorization: Bot <token>`; webhook and interaction routes carry no auth. A middleware
records each request, serves queued failures (`fail_next`) and turns `ApiError` into
Discord's error body. Unknown routes answer 404 and are recorded in `unhandled`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import BodyPartReader, web

from tests.discord_emulator import permissions as perms
from tests.discord_emulator.errors import (
    ApiError,
    FormErrors,
    empty_message,
    missing_access,
    missing_permissions,
    not_found,
    unauthorized,
)
from tests.discord_emulator.mentions import MentionPolicy
from tests.discord_emulator.messages import (
    REPLY,
    SETTABLE_FLAGS,
    Draft,
    apply_edit,
    build_message,
    reactions_json,
    visible_payload,
)
from tests.discord_emulator.payloads import (
    channel_json,
    member_json,
    role_json,
    snowflake_of,
    user_json,
)
from tests.discord_emulator.state import (
    JSON,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    Channel,
    Guild,
    StoredMessage,
    Webhook,
)
from tests.discord_emulator.validation import has_substance, validate_message
from tests.discord_emulator.webhook_rules import (
    allowed_components,
    avatar_image,
    check_name,
    image_hash,
)

if TYPE_CHECKING:
    from tests.discord_emulator.emulator import DiscordEmulator

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 100
BULK_DELETE_RANGE = (2, 100)
THREAD_NAME_LIMIT = 100
UNAUTHENTICATED_PREFIXES = ("/webhooks/", "/interactions/")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Upload:
    """One `files[n]` part of a multipart request."""

    filename: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class RecordedRequest:
    """A request the emulator received (path without the /api/v10 prefix)."""

    method: str
    path: str
    query: dict[str, str]
    authorized: bool


@dataclass
class FailureRule:
    """A queued failure for the next request matching `method` and `pattern`."""

    method: str | None
    pattern: re.Pattern[str]
    status: int
    retry_after: float
    code: int
    message: str
    is_global: bool


@dataclass
class DelayRule:
    """The next request matching `method` and `pattern` is answered `seconds` late."""

    method: str | None
    pattern: re.Pattern[str]
    seconds: float


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON with exactly `application/json` (dpy compares the header string; notes §5.1)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def compile_route_pattern(pattern: str) -> tuple[str | None, re.Pattern[str]]:
    """ "POST /channels/{id}/messages", "/channels/*/typing" or a path: {x} and * match one segment
    or more; query strings are ignored."""
    method, separator, path = pattern.strip().partition(" ")
    if not separator:
        method, path = "", pattern.strip()
    path = path.strip().split("?", 1)[0]
    if path.startswith(API_PREFIX):
        path = path[len(API_PREFIX) :]
    regex = ""
    for piece in re.split(r"(\{[^}]*\}|\*)", path):
        if piece == "*":
            regex += ".*"
        elif piece.startswith("{") and piece.endswith("}"):
            regex += "[^/]+"
        else:
            regex += re.escape(piece)
    return (method.upper() or None), re.compile(f"^{regex}$")


class RestApi:
    """Route handlers over the emulator's world."""

    def __init__(self, emulator: DiscordEmulator) -> None:
        self.emulator = emulator
        self.requests: list[RecordedRequest] = []
        self.downloads: list[int] = []  # attachment ids fetched from the CDN, in order
        self.unhandled: list[RecordedRequest] = []
        self.failures: list[FailureRule] = []
        self.delays: list[DelayRule] = []
        self._nonces: dict[tuple[int, str], int] = {}

    # --- plumbing --------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith(API_PREFIX):
            return await handler(request)
        api_path = path[len(API_PREFIX) :]
        authorized = request.headers.get("Authorization") == f"Bot {self.emulator.token}"
        recorded = RecordedRequest(request.method, api_path, dict(request.query), authorized)
        self.requests.append(recorded)
        self.emulator.events.changed()
        delay = self._take_delay(request.method, api_path)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        failure = self._take_failure(request.method, api_path)
        if failure is not None:
            return self._failure_response(failure)
        if not authorized and not api_path.startswith(UNAUTHENTICATED_PREFIXES):
            return json_response(unauthorized().body(), 401)
        try:
            return await handler(request)
        except ApiError as error:
            return json_response(error.body(), error.status)
        except web.HTTPNotFound:
            log.warning("discord emulator: unhandled %s %s", request.method, api_path)
            self.unhandled.append(recorded)
            return json_response({"message": "404: Not Found", "code": 0}, 404)
        except web.HTTPMethodNotAllowed:
            self.unhandled.append(recorded)
            return json_response({"message": "405: Method Not Allowed", "code": 0}, 405)

    def _take_failure(self, method: str, path: str) -> FailureRule | None:
        for index, rule in enumerate(self.failures):
            if (rule.method in (None, method)) and rule.pattern.match(path):
                return self.failures.pop(index)
        return None

    def _take_delay(self, method: str, path: str) -> DelayRule | None:
        for index, rule in enumerate(self.delays):
            if (rule.method in (None, method)) and rule.pattern.match(path):
                return self.delays.pop(index)
        return None

    @staticmethod
    def _failure_response(rule: FailureRule) -> web.Response:
        if rule.status == 429:
            body = {
                "message": rule.message,
                "retry_after": rule.retry_after,
                "global": rule.is_global,
            }
            headers = {
                "Via": "1.1 google",
                "Retry-After": str(math.ceil(rule.retry_after)),
                "X-RateLimit-Scope": "global" if rule.is_global else "user",
            }
            if rule.is_global:
                headers["X-RateLimit-Global"] = "true"
            return json_response(body, 429, headers)
        return json_response({"message": rule.message, "code": rule.code}, rule.status)

    def routes(self) -> list[web.RouteDef]:
        p = API_PREFIX
        c = p + "/channels/{channel_id}"
        m = c + "/messages/{message_id}"
        hook = p + "/webhooks/{webhook_id}/{token}"
        apps = p + "/applications/{application_id}"
        return [
            web.get(p + "/users/@me", self.get_me),
            web.get(p + "/users/{user_id}", self.get_user),
            web.get(p + "/oauth2/applications/@me", self.get_application),
            web.get(p + "/applications/@me", self.get_application),
            web.get(p + "/gateway", self.get_gateway),
            web.get(p + "/gateway/bot", self.get_gateway_bot),
            web.post(p + "/users/@me/channels", self.create_dm),
            web.get(c, self.get_channel),
            web.get(c + "/messages", self.get_history),
            web.post(c + "/messages", self.create_message),
            web.post(c + "/messages/bulk-delete", self.bulk_delete),
            web.get(m, self.get_message),
            web.patch(m, self.edit_message),
            web.delete(m, self.delete_message),
            web.put(m + "/reactions/{emoji}/@me", self.add_reaction),
            web.delete(m + "/reactions/{emoji}/{user_id}", self.remove_reaction),
            web.post(m + "/threads", self.create_thread_from_message),
            web.post(c + "/threads", self.create_thread),
            web.post(c + "/typing", self.typing),
            web.post(c + "/webhooks", self.create_webhook),
            web.get(c + "/webhooks", self.channel_webhooks),
            web.get(p + "/guilds/{guild_id}", self.get_guild),
            web.get(p + "/guilds/{guild_id}/channels", self.guild_channels),
            web.get(p + "/guilds/{guild_id}/roles", self.guild_roles),
            web.get(p + "/guilds/{guild_id}/members/{user_id}", self.guild_member),
            web.get(p + "/guilds/{guild_id}/webhooks", self.guild_webhooks),
            web.get(apps + "/commands", self.get_commands),
            web.put(apps + "/commands", self.put_commands),
            web.get(apps + "/guilds/{guild_id}/commands", self.get_commands),
            web.put(apps + "/guilds/{guild_id}/commands", self.put_commands),
            web.post(p + "/interactions/{interaction_id}/{token}/callback", self.callback),
            web.get(hook, self.get_webhook_with_token),
            web.post(hook, self.execute_webhook),
            web.get(hook + "/messages/{message_ref}", self.get_webhook_message),
            web.patch(hook + "/messages/{message_ref}", self.edit_webhook_message),
            web.delete(hook + "/messages/{message_ref}", self.delete_webhook_message),
            web.patch(hook, self.modify_webhook_with_token),
            web.delete(hook, self.delete_webhook_with_token),
            web.get(p + "/webhooks/{webhook_id}", self.get_webhook),
            web.patch(p + "/webhooks/{webhook_id}", self.modify_webhook),
            web.delete(p + "/webhooks/{webhook_id}", self.delete_webhook),
            web.get("/attachments/{channel_id}/{attachment_id}/{filename}", self.get_attachment),
        ]

    async def read_body(self, request: web.Request) -> tuple[JSON, list[Upload]]:
        """JSON body, or multipart `payload_json` plus `files[n]` parts (notes §5.1)."""
        if request.content_type.startswith("multipart/"):
            return await self._read_multipart(request)
        raw = await request.read()
        if not raw:
            return {}, []
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, 50109, "The request body contains invalid JSON.") from None
        return (body if isinstance(body, dict) else {"__list__": body}), []

    async def _read_multipart(self, request: web.Request) -> tuple[JSON, list[Upload]]:
        body: JSON = {}
        uploads: list[Upload] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            data = await part.read()
            if part.name == "payload_json":
                body = json.loads(data)
            else:
                content_type = part.headers.get("Content-Type", "application/octet-stream")
                uploads.append(Upload(part.filename or "file", bytes(data), content_type))
        return body, uploads

    # --- lookups and checks ----------------------------------------------------------------
    def _channel(self, request: web.Request) -> Channel:
        channel = self.emulator.world.channels.get(snowflake_of(request.match_info["channel_id"]))
        if channel is None:
            raise not_found(10003, "Channel")
        if not self._bot_can(channel, perms.VIEW_CHANNEL):
            raise missing_access()
        return channel

    def _message(self, channel: Channel, message_id: str) -> StoredMessage:
        stored = self.emulator.world.messages.get(snowflake_of(message_id))
        if stored is None or stored.deleted or stored.channel_id != channel.id or stored.ephemeral:
            raise not_found(10008, "Message")
        return stored

    def _bot_can(self, channel: Channel, required: int) -> bool:
        world = self.emulator.world
        return perms.has(world.channel_permissions(channel, self.emulator.bot_user.id), required)

    def _require(self, channel: Channel, required: int) -> None:
        if not self._bot_can(channel, required):
            raise missing_permissions()

    def _require_send(self, channel: Channel) -> None:
        right = perms.SEND_MESSAGES_IN_THREADS if channel.is_thread else perms.SEND_MESSAGES
        self._require(channel, right)
        if channel.is_thread and (channel.archived or channel.locked):
            raise ApiError(400, 50083, "Thread is archived")

    def _rest_view(self, stored: StoredMessage) -> JSON:
        """Over REST the MESSAGE_CONTENT rule follows the app's portal setting (notes §2)."""
        channel = self.emulator.world.channel(stored.channel_id)
        data = visible_payload(
            stored.payload,
            bot_id=self.emulator.bot_user.id,
            intent=self.emulator.message_content_enabled,
            is_dm=channel.is_dm,
        )
        if stored.reactions:
            data["reactions"] = reactions_json(stored, self.emulator.bot_user.id)
        return data

    def attachments_for(
        self, channel: Channel, body: JSON, files: Sequence[Upload], existing: Sequence[JSON]
    ) -> list[JSON]:
        """Attachment objects: kept existing ones (by id) plus uploaded files (by index)."""
        kept_ids = {str(a.get("id")) for a in body.get("attachments") or []}
        result = [a for a in existing if a["id"] in kept_ids]
        described = {str(a.get("id")): a for a in body.get("attachments") or []}
        for index, upload in enumerate(files):
            meta = described.get(str(index), {})
            result.append(self._store_attachment(channel, upload, meta))
        return result

    def _store_attachment(self, channel: Channel, upload: Upload, meta: JSON) -> JSON:
        emulator = self.emulator
        attachment_id = emulator.ids.next()
        filename = str(meta.get("filename") or upload.filename)
        emulator.world.attachments[attachment_id] = (filename, upload.data, upload.content_type)
        url = f"{emulator.http_url}/attachments/{channel.id}/{attachment_id}/{filename}"
        data: JSON = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(upload.data),
            "url": url,
            "proxy_url": url,
            "content_type": upload.content_type,
        }
        if meta.get("description"):
            data["description"] = meta["description"]
        return data

    # --- users, application, gateway -------------------------------------------------------
    async def get_me(self, request: web.Request) -> web.Response:
        return json_response(self.emulator.bot_user_json())

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.emulator.world.users.get(snowflake_of(request.match_info["user_id"]))
        if user is None:
            raise not_found(10013, "User")
        return json_response(user_json(user))

    async def get_application(self, request: web.Request) -> web.Response:
        return json_response(self.emulator.application_json())

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.emulator.gateway_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        limits = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return json_response(
            {"url": self.emulator.gateway_url, "shards": 1, "session_start_limit": limits}
        )

    async def create_dm(self, request: web.Request) -> web.Response:
        body, _ = await self.read_body(request)
        recipient = body.get("recipient_id")
        user = self.emulator.world.users.get(snowflake_of(recipient)) if recipient else None
        if user is None:
            errors = FormErrors()
            errors.add("recipient_id", "BASE_TYPE_REQUIRED", "Unknown user.")
            errors.raise_if_any()
        assert user is not None
        channel = self.emulator.dm_channel(user)
        return json_response(channel_json(self.emulator.world, channel))

    # --- channels and messages -------------------------------------------------------------
    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(channel_json(self.emulator.world, self._channel(request)))

    async def get_history(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if not self._bot_can(channel, perms.READ_MESSAGE_HISTORY):
            return json_response([])
        query = request.query
        limit = max(1, min(int(query.get("limit", HISTORY_DEFAULT_LIMIT)), HISTORY_MAX_LIMIT))
        history = [m for m in self.emulator.world.channel_history(channel.id) if not m.ephemeral]
        if "before" in query:
            history = [m for m in history if m.id < int(query["before"])][-limit:]
        elif "after" in query:
            history = [m for m in history if m.id > int(query["after"])][:limit]
        elif "around" in query:
            history = _around(history, int(query["around"]), limit)
        else:
            history = history[-limit:]
        return json_response([self._rest_view(m) for m in reversed(history)])

    async def get_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, perms.READ_MESSAGE_HISTORY)
        stored = self._message(channel, request.match_info["message_id"])
        return json_response(self._rest_view(stored))

    async def create_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body, files = await self.read_body(request)
        self._require_send(channel)
        if files:
            self._require(channel, perms.ATTACH_FILES)
        validate_message(body, files=len(files))
        duplicate = self._nonce_duplicate(body)
        if duplicate is not None:
            return json_response(duplicate.payload)
        referenced = self._referenced(channel, body.get("message_reference"))
        stored = build_message(
            self.emulator.world,
            self._draft(channel, body, files, referenced),
            self.emulator.ids.next(),
        )
        self._remember_nonce(body, stored)
        await self.emulator.events.message_created(stored)
        return json_response(stored.payload)

    def _draft(
        self,
        channel: Channel,
        body: JSON,
        files: Sequence[Upload],
        referenced: StoredMessage | None,
    ) -> Draft:
        return Draft(
            channel=channel,
            author=self.emulator.bot_user,
            content=str(body.get("content") or ""),
            type=REPLY if referenced is not None else 0,
            flags=int(body.get("flags") or 0) & SETTABLE_FLAGS,
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            attachments=self.attachments_for(channel, body, files, []),
            nonce=body.get("nonce"),
            tts=bool(body.get("tts", False)),
            referenced=referenced,
            policy=MentionPolicy.from_request(body.get("allowed_mentions")),
        )

    def _nonce_duplicate(self, body: JSON) -> StoredMessage | None:
        nonce = body.get("nonce")
        if nonce is None or not body.get("enforce_nonce"):
            return None
        existing = self._nonces.get((self.emulator.bot_user.id, str(nonce)))
        return self.emulator.world.messages.get(existing) if existing else None

    def _remember_nonce(self, body: JSON, stored: StoredMessage) -> None:
        if body.get("nonce") is not None and body.get("enforce_nonce"):
            self._nonces[(self.emulator.bot_user.id, str(body["nonce"]))] = stored.id

    def _referenced(self, channel: Channel, reference: Any) -> StoredMessage | None:
        """The replied-to message; unknown ones fail unless fail_if_not_exists is false."""
        if not reference:
            return None
        if int(reference.get("type") or 0) != 0:
            _form_error("message_reference.type", "BASE_TYPE_CHOICES", "Forwards are not emulated.")
        if not self._bot_can(channel, perms.READ_MESSAGE_HISTORY):
            raise ApiError(400, 160002, "Cannot reply without permission to read message history")
        target = self.emulator.world.messages.get(snowflake_of(reference.get("message_id", 0)))
        ref_channel = reference.get("channel_id")
        wrong_channel = ref_channel is not None and snowflake_of(ref_channel) != channel.id
        if (
            target is None
            or target.deleted
            or target.ephemeral
            or wrong_channel
            or target.channel_id != channel.id
        ):
            if reference.get("fail_if_not_exists", True) is False:
                return None
            _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
        return target

    async def edit_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        stored = self._message(channel, request.match_info["message_id"])
        body, files = await self.read_body(request)
        if stored.author_id != self.emulator.bot_user.id or stored.payload.get("webhook_id"):
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        return await self._apply_message_edit(stored, body, files, webhook=False)

    async def _apply_message_edit(
        self, stored: StoredMessage, body: JSON, files: list[Upload], *, webhook: bool
    ) -> web.Response:
        """Validate an edit, apply it as Discord would and dispatch MESSAGE_UPDATE."""
        validate_message(body, files=len(files), creating=False)
        changes = dict(body)
        if "attachments" in body or files:
            channel = self.emulator.world.channel(stored.channel_id)
            changes["attachments"] = self.attachments_for(
                channel, body, files, stored.payload.get("attachments") or []
            )
        if not has_substance({**stored.payload, **changes}):
            raise empty_message()
        policy = MentionPolicy.from_request(body.get("allowed_mentions"), webhook=webhook)
        apply_edit(self.emulator.world, stored, changes, policy)
        await self.emulator.events.message_updated(stored)
        return json_response(stored.payload)

    async def delete_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        stored = self._message(channel, request.match_info["message_id"])
        own = stored.author_id == self.emulator.bot_user.id and not stored.payload.get("webhook_id")
        if not own and (channel.is_dm or not self._bot_can(channel, perms.MANAGE_MESSAGES)):
            raise missing_permissions()
        await self.emulator.events.message_deleted(stored)
        return no_content()

    async def bulk_delete(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, perms.MANAGE_MESSAGES)
        body, _ = await self.read_body(request)
        ids = body.get("messages") or []
        low, high = BULK_DELETE_RANGE
        if not low <= len(ids) <= high:
            _form_error(
                "messages", "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length."
            )
        found = [self._message(channel, str(i)) for i in ids]
        await self.emulator.events.messages_bulk_deleted(channel, found)
        return no_content()

    async def typing(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require_send(channel)
        await self.emulator.events.typing_started(channel, self.emulator.bot_user.id)
        return no_content()

    async def add_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, perms.READ_MESSAGE_HISTORY)
        stored = self._message(channel, request.match_info["message_id"])
        emoji = request.match_info["emoji"]
        users = stored.reactions.get(emoji)
        if users is None:
            self._require(channel, perms.ADD_REACTIONS)
            users = stored.reactions.setdefault(emoji, set())
        bot_id = self.emulator.bot_user.id
        if bot_id not in users:
            users.add(bot_id)
            await self.emulator.events.reaction_changed(
                stored, _emoji_json(emoji), bot_id, added=True
            )
        return no_content()

    async def remove_reaction(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        stored = self._message(channel, request.match_info["message_id"])
        emoji = request.match_info["emoji"]
        raw_user = request.match_info["user_id"]
        user_id = self.emulator.bot_user.id if raw_user == "@me" else snowflake_of(raw_user)
        if user_id != self.emulator.bot_user.id:
            self._require(channel, perms.MANAGE_MESSAGES)
        users = stored.reactions.get(emoji, set())
        if user_id in users:
            users.discard(user_id)
            if not users:
                stored.reactions.pop(emoji, None)
            await self.emulator.events.reaction_changed(
                stored, _emoji_json(emoji), user_id, added=False
            )
        return no_content()

    # --- threads ---------------------------------------------------------------------------
    async def create_thread_from_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        stored = self._message(channel, request.match_info["message_id"])
        body, _ = await self.read_body(request)
        self._require(channel, perms.CREATE_PUBLIC_THREADS)
        thread = await self._new_thread(channel, body, PUBLIC_THREAD, thread_id=stored.id)
        return json_response(channel_json(self.emulator.world, thread))

    async def create_thread(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body, _ = await self.read_body(request)
        kind = int(body.get("type") or PRIVATE_THREAD)
        needed = (
            perms.CREATE_PRIVATE_THREADS if kind == PRIVATE_THREAD else perms.CREATE_PUBLIC_THREADS
        )
        self._require(channel, needed)
        thread = await self._new_thread(channel, body, kind, thread_id=None)
        return json_response(channel_json(self.emulator.world, thread))

    async def _new_thread(
        self, parent: Channel, body: JSON, kind: int, thread_id: int | None
    ) -> Channel:
        if parent.is_thread or parent.is_dm:
            _form_error("channel", "CHANNEL_TYPE_INVALID", "Cannot create a thread here.")
        errors = FormErrors()
        errors.length_between("name", body.get("name"), 1, THREAD_NAME_LIMIT)
        errors.raise_if_any()
        thread = self.emulator.add_thread(
            parent,
            str(body["name"]),
            owner=self.emulator.bot_user,
            private=kind == PRIVATE_THREAD,
            thread_id=thread_id,
            auto_archive_duration=int(body.get("auto_archive_duration") or 1440),
        )
        await self.emulator.settle()  # THREAD_CREATE goes out before the response, as on Discord
        return thread

    # --- guilds ----------------------------------------------------------------------------
    def _guild(self, request: web.Request) -> Guild:
        guild = self.emulator.world.guilds.get(snowflake_of(request.match_info["guild_id"]))
        if guild is None or self.emulator.bot_user.id not in guild.members:
            raise not_found(10004, "Guild")
        return guild

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        return json_response(
            {
                "id": str(guild.id),
                "name": guild.name,
                "icon": None,
                "owner_id": str(guild.owner_id),
                "features": [],
                "roles": [role_json(r) for r in guild.roles.values()],
                "emojis": [],
                "stickers": [],
                "preferred_locale": "en-US",
                "verification_level": 0,
                "nsfw_level": 0,
                "premium_tier": 0,
            }
        )

    async def guild_channels(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        world = self.emulator.world
        return json_response(
            [channel_json(world, c) for c in world.guild_channels(guild) if not c.is_thread]
        )

    async def guild_roles(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        return json_response([role_json(r) for r in guild.roles.values()])

    async def guild_member(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        member = guild.members.get(snowflake_of(request.match_info["user_id"]))
        if member is None:
            raise not_found(10007, "Member")
        return json_response(member_json(member))

    # --- application commands --------------------------------------------------------------
    def _command_scope(self, request: web.Request) -> int | None:
        if snowflake_of(request.match_info["application_id"]) != self.emulator.application_id:
            raise ApiError(
                403, 20012, "You are not authorized to perform this action on this application"
            )
        raw_guild = request.match_info.get("guild_id")
        if raw_guild is None:
            return None
        guild = self.emulator.world.guilds.get(snowflake_of(raw_guild))
        if guild is None or self.emulator.bot_user.id not in guild.members:
            raise missing_access()
        return guild.id

    async def get_commands(self, request: web.Request) -> web.Response:
        return json_response(self.emulator.commands.list(self._command_scope(request)))

    async def put_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        body, _ = await self.read_body(request)
        commands = body.get("__list__")
        if not isinstance(commands, list):
            _form_error("_root", "BASE_TYPE_ARRAY", "Must be an array.")
        stored = self.emulator.commands.overwrite(scope, commands)
        self.emulator.events.changed()
        return json_response(stored)

    # --- interactions and webhooks ---------------------------------------------------------
    async def callback(self, request: web.Request) -> web.StreamResponse:
        body, files = await self.read_body(request)
        interaction_id = request.match_info["interaction_id"]
        if not interaction_id.isdigit():
            raise not_found(10062, "interaction")
        result = await self.emulator.interactions.callback(
            int(interaction_id), request.match_info["token"], body, files
        )
        if request.query.get("with_response") in ("1", "true", "True"):
            return json_response(result)
        return no_content()

    def _hook_id(self, request: web.Request) -> int:
        raw = request.match_info["webhook_id"]
        if not raw.isdigit():
            raise not_found(10015, "Webhook")
        return int(raw)

    def _channel_webhook(self, request: web.Request) -> Webhook:
        webhook = self.emulator.world.webhooks.get(self._hook_id(request))
        if webhook is None:
            raise not_found(10015, "Webhook")
        if webhook.token != request.match_info["token"]:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        return webhook

    async def get_webhook_with_token(self, request: web.Request) -> web.Response:
        webhook = self._channel_webhook(request)
        data = self._webhook_json(webhook)
        data.pop("user", None)
        return json_response(data)

    async def execute_webhook(self, request: web.Request) -> web.Response:
        hook_id = self._hook_id(request)
        body, files = await self.read_body(request)
        wait = request.query.get("wait") in ("1", "true", "True")
        interactions = self.emulator.interactions
        if interactions.is_interaction_webhook(hook_id):
            stored = await interactions.followup(hook_id, request.match_info["token"], body, files)
        else:
            stored = await self._execute_channel_webhook(request, body, files)
        return json_response(stored.payload) if wait else no_content()

    async def _execute_channel_webhook(
        self, request: web.Request, body: JSON, files: Sequence[Upload]
    ) -> StoredMessage:
        webhook = self._channel_webhook(request)
        world = self.emulator.world
        channel = world.channel(webhook.channel_id)
        thread_id = request.query.get("thread_id")
        if thread_id is not None:
            thread = world.channels.get(snowflake_of(thread_id))
            if thread is None or thread.parent_id != channel.id:
                raise not_found(10003, "Channel")
            channel = thread
        validate_message(body, files=len(files))
        errors = FormErrors()
        check_name(errors, "username", body.get("username"), required=False)
        errors.raise_if_any()
        components = allowed_components(
            body.get("components") or [], app_owned=webhook.application_id is not None,
            with_components=request.query.get("with_components") in ("1", "true", "True"))
        avatar_url = body.get("avatar_url")
        draft = Draft(
            channel=channel,
            author=self.emulator.bot_user,
            content=str(body.get("content") or ""),
            flags=int(body.get("flags") or 0) & SETTABLE_FLAGS,
            embeds=body.get("embeds") or [],
            components=components,
            attachments=self.attachments_for(channel, body, files, []),
            tts=bool(body.get("tts", False)),
            policy=MentionPolicy.from_request(body.get("allowed_mentions"), webhook=True),
            webhook_id=webhook.id,
            webhook_author={
                "id": str(webhook.id),
                "username": body.get("username") or webhook.name,
                "discriminator": "0000",
                "global_name": None,
                # The face the webhook wears now; later changes leave this message alone.
                "avatar": (image_hash(str(avatar_url).encode()) if avatar_url
                           else webhook.avatar),
                "bot": True,
            },
            application_id=webhook.application_id,
        )
        stored = build_message(world, draft, self.emulator.ids.next())
        stored.author_id = webhook.id
        await self.emulator.events.message_created(stored)
        return stored

    def _webhook_message(self, request: web.Request) -> StoredMessage:
        hook_id = self._hook_id(request)
        token = request.match_info["token"]
        ref = request.match_info["message_ref"]
        interactions = self.emulator.interactions
        if interactions.is_interaction_webhook(hook_id):
            return interactions.message_for(hook_id, token, ref)
        webhook = self._channel_webhook(request)
        stored = self.emulator.world.messages.get(int(ref)) if ref.isdigit() else None
        # Without thread_id Discord looks in the webhook's own channel only.
        where = request.query.get("thread_id")
        channel_id = snowflake_of(where) if where is not None else webhook.channel_id
        if stored is None or stored.deleted or stored.payload.get("webhook_id") != str(webhook.id) \
                or stored.channel_id != channel_id:
            raise not_found(10008, "Message")
        return stored

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        return json_response(self._webhook_message(request).payload)

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        body, files = await self.read_body(request)
        hook_id = self._hook_id(request)
        interactions = self.emulator.interactions
        token, ref = request.match_info["token"], request.match_info["message_ref"]
        if interactions.is_interaction_webhook(hook_id):
            stored = await interactions.edit(hook_id, token, ref, body, files)
            return json_response(stored.payload)
        stored = self._webhook_message(request)
        return await self._apply_message_edit(stored, body, files, webhook=True)

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        stored = self._webhook_message(request)
        await self.emulator.events.message_deleted(stored)
        return no_content()

    async def create_webhook(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if channel.is_thread or channel.is_dm:
            _form_error("channel_id", "CHANNEL_TYPE_INVALID", "Webhooks need a text channel.")
        self._require(channel, perms.MANAGE_WEBHOOKS)
        body, _ = await self.read_body(request)
        name = body.get("name")
        errors = FormErrors()
        check_name(errors, "name", name, required=True)
        image = avatar_image(errors, body.get("avatar"))
        errors.raise_if_any()
        webhook = self.emulator.add_webhook(channel, str(name))
        self._wear(webhook, image)
        return json_response(self._webhook_json(webhook))

    def _wear(self, webhook: Webhook, image: bytes | None) -> None:
        webhook.avatar = None if image is None else image_hash(image)
        if image is not None and webhook.avatar is not None:
            self.emulator.world.images[webhook.avatar] = image

    def _managed_webhook(self, request: web.Request) -> Webhook:
        """A webhook by id alone: bot auth and Manage Webhooks in its channel."""
        webhook = self.emulator.world.webhooks.get(self._hook_id(request))
        if request.headers.get("Authorization") != f"Bot {self.emulator.token}":
            raise ApiError(401, 0, "401: Unauthorized")
        if webhook is None:
            raise not_found(10015, "Webhook")
        self._require(self.emulator.world.channel(webhook.channel_id), perms.MANAGE_WEBHOOKS)
        return webhook

    async def get_webhook(self, request: web.Request) -> web.Response:
        return json_response(self._webhook_json(self._managed_webhook(request)))

    async def modify_webhook(self, request: web.Request) -> web.Response:
        return await self._modify(self._managed_webhook(request), request, with_token=False)

    async def modify_webhook_with_token(self, request: web.Request) -> web.Response:
        return await self._modify(self._channel_webhook(request), request, with_token=True)

    async def _modify(self, webhook: Webhook, request: web.Request, *,
                      with_token: bool) -> web.Response:
        body, _ = await self.read_body(request)
        errors = FormErrors()
        check_name(errors, "name", body.get("name"), required=False)
        image = avatar_image(errors, body.get("avatar"))
        if with_token and "channel_id" in body:  # only bot auth may move a webhook
            errors.add("channel_id", "BASE_TYPE_BAD", "Not allowed with a webhook token")
        errors.raise_if_any()
        if body.get("name") is not None:
            webhook.name = str(body["name"])
        if "avatar" in body:
            self._wear(webhook, image)
        data = self._webhook_json(webhook)
        if with_token:
            data.pop("user", None)
        return json_response(data)

    async def delete_webhook(self, request: web.Request) -> web.Response:
        self.emulator.remove_webhook(self._managed_webhook(request))
        return no_content()

    async def delete_webhook_with_token(self, request: web.Request) -> web.Response:
        self.emulator.remove_webhook(self._channel_webhook(request))
        return no_content()

    async def channel_webhooks(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        self._require(channel, perms.MANAGE_WEBHOOKS)
        hooks = [w for w in self.emulator.world.webhooks.values() if w.channel_id == channel.id]
        return json_response([self._webhook_json(w) for w in hooks])

    async def guild_webhooks(self, request: web.Request) -> web.Response:
        guild = self._guild(request)
        hooks = [w for w in self.emulator.world.webhooks.values() if w.guild_id == guild.id]
        return json_response([self._webhook_json(w) for w in hooks])

    def _webhook_json(self, webhook: Webhook) -> JSON:
        return {
            "id": str(webhook.id),
            "type": 1,
            "guild_id": str(webhook.guild_id),
            "channel_id": str(webhook.channel_id),
            "name": webhook.name,
            "avatar": webhook.avatar,
            "token": webhook.token,
            "application_id": str(webhook.application_id) if webhook.application_id else None,
            "user": user_json(self.emulator.world.user(webhook.creator_id)),
        }

    async def get_attachment(self, request: web.Request) -> web.Response:
        attachment_id = request.match_info["attachment_id"]
        if attachment_id.isdigit():
            self.downloads.append(int(attachment_id))
        found = (
            self.emulator.world.attachments.get(int(attachment_id))
            if attachment_id.isdigit()
            else None
        )
        if found is None:
            return web.Response(status=404)
        _, data, content_type = found
        return web.Response(body=data, content_type=content_type)


def _form_error(path: str, code: str, message: str) -> NoReturn:
    errors = FormErrors()
    errors.add(path, code, message)
    errors.raise_if_any()
    raise AssertionError("unreachable")


def _around(history: list[StoredMessage], pivot: int, limit: int) -> list[StoredMessage]:
    older = [m for m in history if m.id < pivot]
    newer = [m for m in history if m.id >= pivot]
    half = limit // 2
    return (older[-half:] if half else []) + newer[: limit - min(half, len(older))]


def _emoji_json(emoji: str) -> JSON:
    """`name:id` for custom emoji, else the unicode character (notes §5.2)."""
    name, _, emoji_id = emoji.partition(":")
    return {"id": emoji_id or None, "name": name}
