"""Interactions (API notes §7): creating them as a member would, and the bot's side of them —
callbacks (3-second window, single acknowledgement), follow-ups and @original edits.

`InteractionHandle` is what tests hold: it records the bot's callback, the messages it
produced and any modal, and offers bounded waits for them.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tests.discord_emulator.commands import ActionRefusedError
from tests.discord_emulator.errors import ApiError, FormErrors, empty_message, not_found
from tests.discord_emulator.mentions import MentionPolicy
from tests.discord_emulator.messages import (
    CHAT_INPUT_COMMAND,
    CONTEXT_MENU_COMMAND,
    DEFAULT,
    SETTABLE_FLAGS,
    Draft,
    apply_edit,
    build_message,
)
from tests.discord_emulator.payloads import channel_json, member_json, user_json
from tests.discord_emulator.state import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    JSON,
    Channel,
    StoredMessage,
    User,
)
from tests.discord_emulator.validation import (
    has_substance,
    validate_choices,
    validate_message,
    validate_modal,
)

if TYPE_CHECKING:
    from tests.discord_emulator.emulator import DiscordEmulator
    from tests.discord_emulator.rest import Upload

# Interaction types.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
# Callback types.
PONG, CHANNEL_MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE = 1, 4, 5, 6, 7
AUTOCOMPLETE_RESULT, MODAL = 8, 9

CALLBACK_WINDOW_S = 3.0  # the first callback must come within this (docs)
TOKEN_LIFETIME_S = 15 * 60  # follow-ups work this long after the interaction
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # bytes, a server without boosts
DEFAULT_WAIT_S = 5.0
TOKEN_BYTES = 90  # real tokens are long; Webhook.from_url needs 60+ characters

ALLOWED_CALLBACKS = {
    PING: {PONG},
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {CHANNEL_MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, MODAL},
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {CHANNEL_MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE},
}
SELECT_TYPES = frozenset({3, 5, 6, 7, 8})
RADIO_GROUP, CHECKBOX = 21, 23


class InteractionHandle:
    """One interaction a test started; await `response()` for the bot's callback.

    After the callback: `response_type`, `ephemeral`, `message` (the original response as a
    message view), `followups`, `modal` (type-9 data) and `choices` (autocomplete).
    """

    def __init__(
        self,
        service: InteractionService,
        *,
        id: int,
        token: str,
        type: int,
        payload: JSON,
        channel: Channel,
        user: User,
        source_message_id: int | None,
        command: JSON | None,
    ) -> None:
        self._service = service
        self.id = id
        self.token = token
        self.type = type
        self.payload = payload
        self.channel = channel
        self.user = user
        self.source_message_id = source_message_id  # the message a component sits on
        self.command = command
        self.created_at = asyncio.get_running_loop().time()
        self.callbacks: list[JSON] = []
        self.original_message_id: int | None = None
        self.followup_ids: list[int] = []
        self.modal: JSON | None = None
        self.choices: list[JSON] | None = None
        self._acknowledging = False
        self._loading_consumed = False

    def __repr__(self) -> str:
        return f"<InteractionHandle id={self.id} type={self.type} callbacks={len(self.callbacks)}>"

    # --- for tests -------------------------------------------------------------------------
    async def response(self, timeout: float = DEFAULT_WAIT_S) -> JSON:
        """The bot's first callback as `{"type": int, "data": dict}`."""
        await self._service.wait(lambda: self.callbacks, timeout, f"a response to {self!r}")
        return self.callbacks[0]

    @property
    def responded(self) -> bool:
        return bool(self.callbacks)

    @property
    def response_type(self) -> int | None:
        return self.callbacks[0]["type"] if self.callbacks else None

    @property
    def ephemeral(self) -> bool:
        """Whether the bot's response (message or deferral) is visible only to the member."""
        if not self.callbacks:
            return False
        data = self.callbacks[0]["data"]
        return bool(int(data.get("flags") or 0) & FLAG_EPHEMERAL)

    @property
    def message(self) -> JSON | None:
        """The original response message as seen now (after edits), or None."""
        stored = self._service.emulator.world.messages.get(self.original_message_id or 0)
        return stored.view() if stored else None

    @property
    def followups(self) -> list[JSON]:
        messages = self._service.emulator.world.messages
        return [messages[i].view() for i in self.followup_ids]

    async def wait_for_message(
        self, predicate: Callable[[JSON], bool] | None = None, timeout: float = DEFAULT_WAIT_S
    ) -> JSON:
        """The original response once it is no longer "thinking" (and matches `predicate`)."""

        def ready() -> JSON | None:
            view = self.message
            if view is None or view["flags"] & FLAG_LOADING:
                return None
            return view if predicate is None or predicate(view) else None

        return await self._service.wait(ready, timeout, f"the response message of {self!r}")

    async def wait_for_followups(
        self, count: int = 1, timeout: float = DEFAULT_WAIT_S
    ) -> list[JSON]:
        """At least `count` follow-ups (a loading message the first one edited counts)."""

        def enough() -> list[JSON] | None:
            found = self.followups
            if self._loading_consumed and self.message is not None:
                found = [self.message, *found]
            return found if len(found) >= count else None

        return await self._service.wait(enough, timeout, f"{count} follow-ups of {self!r}")

    # --- for the service -------------------------------------------------------------------
    def metadata_json(self) -> JSON:
        """`interaction_metadata` for messages this interaction produced."""
        guild_id = self.channel.guild_id
        data: JSON = {
            "id": str(self.id),
            "type": self.type,
            "user": user_json(self.user),
            "authorizing_integration_owners": {"0": str(guild_id) if guild_id else "0"},
        }
        if self.command is not None:
            data["name"] = self.command["name"]
            data["command_type"] = self.command["type"]
        if self.original_message_id is not None:
            data["original_response_message_id"] = str(self.original_message_id)
        if self.source_message_id is not None:
            data["interacted_message_id"] = str(self.source_message_id)
        return data

    def callback_json(self, kind: int) -> JSON:
        data: JSON = {"id": str(self.id), "type": self.type}
        target = self.original_message_id
        if kind in (DEFERRED_UPDATE, UPDATE_MESSAGE):
            target = self.source_message_id
        if target is not None:
            data["response_message_id"] = str(target)
            data["response_message_loading"] = kind == DEFERRED_MESSAGE
            data["response_message_ephemeral"] = self.ephemeral_for(kind)
        return data

    def ephemeral_for(self, kind: int) -> bool:
        if kind in (CHANNEL_MESSAGE, DEFERRED_MESSAGE):
            stored = self._service.emulator.world.messages.get(self.original_message_id or 0)
            return bool(stored and stored.ephemeral)
        return False


class InteractionService:
    """Creates interactions and serves the callback, follow-up and @original routes."""

    def __init__(self, emulator: DiscordEmulator) -> None:
        self.emulator = emulator
        self.by_id: dict[int, InteractionHandle] = {}
        self.by_token: dict[str, InteractionHandle] = {}

    async def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return await self.emulator.events.wait_for(predicate, timeout, what)

    # --- creating --------------------------------------------------------------------------
    async def create(
        self,
        kind: int,
        channel: Channel,
        user: User,
        data: JSON | None,
        *,
        message: StoredMessage | None = None,
        command: JSON | None = None,
    ) -> InteractionHandle:
        """Build, register and dispatch an interaction; fails if no bot session receives it."""
        self._check_member_can_see(channel, user)
        emulator = self.emulator
        interaction_id = emulator.ids.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(TOKEN_BYTES)
        payload = self._payload(
            interaction_id, token, kind, channel, user, data=data, message=message
        )
        handle = InteractionHandle(
            self,
            id=interaction_id,
            token=token,
            type=kind,
            payload=payload,
            channel=channel,
            user=user,
            source_message_id=message.id if message else None,
            command=command,
        )
        self.by_id[interaction_id] = handle
        self.by_token[token] = handle
        if await emulator.events.interaction_created(payload) == 0:
            raise RuntimeError("no connected bot session received the interaction")
        return handle

    def _check_member_can_see(self, channel: Channel, user: User) -> None:
        world = self.emulator.world
        if channel.is_dm:
            if channel.recipients[0].id != user.id:
                raise ActionRefusedError(f"{user.username} is not in this DM")
            return
        assert channel.guild_id is not None
        if world.member(channel.guild_id, user.id) is None:
            raise ActionRefusedError(f"{user.username} is not a member of this guild")
        if not world.channel_permissions(channel, user.id):
            raise ActionRefusedError(f"{user.username} cannot see #{channel.name}")

    def _payload(
        self,
        interaction_id: int,
        token: str,
        kind: int,
        channel: Channel,
        user: User,
        *,
        data: JSON | None,
        message: StoredMessage | None,
    ) -> JSON:
        emulator = self.emulator
        world = emulator.world
        guild_id = channel.guild_id
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(emulator.application_id),
            "type": kind,
            "token": token,
            "version": 1,
            "channel_id": str(channel.id),
            "channel": self._channel_json(channel, user),
            "app_permissions": str(world.channel_permissions(channel, emulator.bot_user.id)),
            "locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild_id) if guild_id else "0"},
            "context": 0 if guild_id else 1,
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        if data is not None:
            payload["data"] = data
        if guild_id is None:
            payload["user"] = user_json(user)
        else:
            member = world.member(guild_id, user.id)
            assert member is not None
            payload["guild_id"] = str(guild_id)
            payload["guild"] = {"id": str(guild_id), "locale": "en-US", "features": []}
            payload["guild_locale"] = "en-US"
            payload["member"] = member_json(
                member, permissions=world.channel_permissions(channel, user.id)
            )
        if message is not None:
            payload["message"] = copy.deepcopy(message.payload)
        return payload

    def _channel_json(self, channel: Channel, user: User) -> JSON:
        data = channel_json(self.emulator.world, channel)
        if not channel.is_dm:
            data["permissions"] = str(self.emulator.world.channel_permissions(channel, user.id))
        return data

    # --- callbacks -------------------------------------------------------------------------
    async def callback(
        self, interaction_id: int, token: str, body: JSON, files: Sequence[Upload]
    ) -> JSON:
        """POST /interactions/{id}/{token}/callback: 404 10062 late/unknown, 400 40060 twice."""
        handle = self.by_id.get(interaction_id)
        if handle is None or handle.token != token:
            raise not_found(10062, "interaction")
        if handle.callbacks or handle._acknowledging:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        age = asyncio.get_running_loop().time() - handle.created_at
        if age > self.emulator.callback_window:
            raise not_found(10062, "interaction")
        kind = body.get("type")
        data = body.get("data") or {}
        self._check_callback_type(handle, kind)
        handle._acknowledging = True
        try:
            resource = await self._respond(handle, int(kind or 0), data, files)
        finally:
            handle._acknowledging = False
        handle.callbacks.append({"type": kind, "data": data})
        self.emulator.events.changed()
        return {"interaction": handle.callback_json(int(kind or 0)), "resource": resource}

    def _check_callback_type(self, handle: InteractionHandle, kind: Any) -> None:
        allowed = ALLOWED_CALLBACKS.get(handle.type, set())
        needs_message = kind == UPDATE_MESSAGE  # a modal from a command may still defer (6)
        if kind not in allowed or (needs_message and handle.source_message_id is None):
            errors = FormErrors()
            errors.add(
                "type",
                "INTERACTION_RESPONSE_TYPE_INVALID",
                f"Interaction response type {kind} is not valid for interaction type "
                f"{handle.type}.",
            )
            errors.raise_if_any()

    async def _respond(
        self, handle: InteractionHandle, kind: int, data: JSON, files: Sequence[Upload]
    ) -> JSON:
        if kind == CHANNEL_MESSAGE:
            validate_message(data, files=len(files))
            stored = await self._create(handle, data, files, loading=False, followup=False)
            handle.original_message_id = stored.id
            return {"type": kind, "message": stored.payload}
        if kind == DEFERRED_MESSAGE:
            stored = await self._create(handle, data, (), loading=True, followup=False)
            handle.original_message_id = stored.id
            return {"type": kind}
        if kind == UPDATE_MESSAGE:
            validate_message(data, files=len(files), creating=False)
            assert handle.source_message_id is not None
            stored = self.emulator.world.message(handle.source_message_id)
            await self._edit(stored, data, files)
            return {"type": kind, "message": stored.payload}
        if kind == AUTOCOMPLETE_RESULT:
            validate_choices(data.get("choices") or [])
            handle.choices = list(data.get("choices") or [])
        elif kind == MODAL:
            validate_modal(data)
            handle.modal = data
        return {"type": kind}

    async def _create(
        self,
        handle: InteractionHandle,
        data: JSON,
        files: Sequence[Upload],
        *,
        loading: bool,
        followup: bool,
    ) -> StoredMessage:
        emulator = self.emulator
        flags = int(data.get("flags") or 0) & (SETTABLE_FLAGS | FLAG_EPHEMERAL)
        message_id = emulator.ids.next()
        draft = Draft(
            channel=handle.channel,
            author=emulator.bot_user,
            content=str(data.get("content") or ""),
            type=self._message_type(handle, followup),
            flags=flags | (FLAG_LOADING if loading else 0),
            embeds=data.get("embeds") or [],
            components=data.get("components") or [],
            attachments=emulator.rest.attachments_for(handle.channel, data, files, []),
            tts=bool(data.get("tts", False)),
            policy=MentionPolicy.from_request(data.get("allowed_mentions"), webhook=True),
            webhook_id=emulator.application_id,
            application_id=emulator.application_id,
            interaction_metadata=handle.metadata_json(),
            interaction_id=handle.id,
        )
        stored = build_message(emulator.world, draft, message_id)
        await emulator.events.message_created(stored)
        return stored

    @staticmethod
    def _message_type(handle: InteractionHandle, followup: bool) -> int:
        if followup or handle.type != APPLICATION_COMMAND or handle.command is None:
            return DEFAULT
        return CHAT_INPUT_COMMAND if handle.command["type"] == 1 else CONTEXT_MENU_COMMAND

    async def _edit(self, stored: StoredMessage, data: JSON, files: Sequence[Upload]) -> None:
        emulator = self.emulator
        changes = dict(data)
        if "attachments" in data or files:
            channel = emulator.world.channel(stored.channel_id)
            existing = stored.payload.get("attachments") or []
            changes["attachments"] = emulator.rest.attachments_for(channel, data, files, existing)
        if not has_substance({**stored.payload, **changes}):
            raise empty_message()
        policy = MentionPolicy.from_request(data.get("allowed_mentions"), webhook=True)
        apply_edit(emulator.world, stored, changes, policy)
        await emulator.events.message_updated(stored)

    # --- follow-ups and @original ----------------------------------------------------------
    def _by_token(self, application_id: int, token: str) -> InteractionHandle:
        handle = self.by_token.get(token)
        if handle is None or application_id != self.emulator.application_id:
            raise not_found(10015, "Webhook")
        if asyncio.get_running_loop().time() - handle.created_at > TOKEN_LIFETIME_S:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        return handle

    def is_interaction_webhook(self, webhook_id: int) -> bool:
        return webhook_id == self.emulator.application_id

    async def followup(
        self, application_id: int, token: str, body: JSON, files: Sequence[Upload]
    ) -> StoredMessage:
        """POST /webhooks/{app}/{token}; the first after a type-5 defer edits the loading one."""
        handle = self._by_token(application_id, token)
        if not handle.callbacks:
            raise not_found(10015, "Webhook")
        validate_message(body, files=len(files))
        original = self.emulator.world.messages.get(handle.original_message_id or 0)
        if original is not None and original.loading and not handle._loading_consumed:
            handle._loading_consumed = True
            await self._edit(original, body, files)
            return original
        stored = await self._create(handle, body, files, loading=False, followup=True)
        handle.followup_ids.append(stored.id)
        return stored

    def message_for(self, application_id: int, token: str, message_ref: str) -> StoredMessage:
        """The message behind `@original` or a follow-up id, else 404 10008."""
        handle = self._by_token(application_id, token)
        world = self.emulator.world
        if message_ref == "@original":
            target = handle.original_message_id
            if target is None and handle.response_type in (DEFERRED_UPDATE, UPDATE_MESSAGE):
                target = handle.source_message_id
        else:
            wanted = int(message_ref) if message_ref.isdigit() else -1
            known = {handle.original_message_id, *handle.followup_ids}
            target = wanted if wanted in known else None
        stored = world.messages.get(target or 0)
        if stored is None or stored.deleted:
            raise not_found(10008, "Message")
        return stored

    async def edit(
        self, application_id: int, token: str, message_ref: str, body: JSON, files: Sequence[Upload]
    ) -> StoredMessage:
        stored = self.message_for(application_id, token, message_ref)
        validate_message(body, files=len(files), creating=False)
        await self._edit(stored, body, files)
        return stored

    async def delete(self, application_id: int, token: str, message_ref: str) -> None:
        stored = self.message_for(application_id, token, message_ref)
        await self.emulator.events.message_deleted(stored)


# --- what members send ----------------------------------------------------------------------
def find_component(components: Sequence[Any], custom_id: str) -> JSON | None:
    """Search rows, sections (accessory), containers and labels for a custom_id."""
    for component in components:
        if not isinstance(component, dict):
            continue
        if component.get("custom_id") == custom_id:
            return component
        nested = list(component.get("components") or [])
        nested += [
            component[k] for k in ("accessory", "component") if isinstance(component.get(k), dict)
        ]
        found = find_component(nested, custom_id)
        if found is not None:
            return found
    return None


def component_data(component: JSON, values: Sequence[str] | None) -> JSON:
    """`data` of a MESSAGE_COMPONENT interaction; refuses what the Discord client would not send."""
    kind = component["type"]
    if component.get("disabled"):
        raise ActionRefusedError(f"component {component.get('custom_id')!r} is disabled")
    if kind == 2 and component.get("style") in (5, 6):
        raise ActionRefusedError("link and premium buttons send no interaction")
    data: JSON = {"custom_id": component["custom_id"], "component_type": kind}
    if "id" in component:
        data["id"] = component["id"]
    if kind in SELECT_TYPES:
        data["values"] = _select_values(component, list(values or []))
    elif values:
        raise ActionRefusedError("only select menus take values")
    return data


def _select_values(component: JSON, values: list[str]) -> list[str]:
    low, high = component.get("min_values", 1), component.get("max_values", 1)
    if not low <= len(values) <= high:
        raise ActionRefusedError(f"select {component['custom_id']!r} takes {low}-{high} values")
    if component["type"] == 3:
        offered = {o["value"] for o in component.get("options") or []}
        if not set(values) <= offered:
            raise ActionRefusedError(
                f"select {component['custom_id']!r} offers only {sorted(offered)}"
            )
    return values


def modal_submit_data(modal: JSON, values: Mapping[str, str | Sequence[str]]) -> JSON:
    """`data` of a MODAL_SUBMIT: rows mirror the modal (legacy action rows or type-18 labels)."""
    ids = _ComponentIds(modal["components"])
    inputs = {c["custom_id"]: c for c in _modal_inputs(modal["components"])}
    unknown = set(values) - set(inputs)
    if unknown:
        raise ActionRefusedError(
            f"the modal has no inputs {sorted(unknown)}; it has {sorted(inputs)}"
        )
    rows: list[JSON] = []
    for child in modal["components"]:
        kind = child["type"]
        if kind == 1:
            rows.append(
                {
                    "type": 1,
                    "id": ids.of(child),
                    "components": [_submitted(c, values, ids) for c in child["components"]],
                }
            )
        elif kind == 18:
            rows.append(
                {
                    "type": 18,
                    "id": ids.of(child),
                    "component": _submitted(child["component"], values, ids),
                }
            )
        else:
            rows.append({"type": kind, "id": ids.of(child)})
    return {"custom_id": modal["custom_id"], "components": rows}


def _modal_inputs(children: Sequence[JSON]) -> list[JSON]:
    found = []
    for child in children:
        if child["type"] == 1:
            found += list(child.get("components") or [])
        elif child["type"] == 18:
            found.append(child["component"])
    return [c for c in found if "custom_id" in c]


def _submitted(
    component: JSON, values: Mapping[str, str | Sequence[str]], ids: _ComponentIds
) -> JSON:
    custom_id = component["custom_id"]
    data: JSON = {"type": component["type"], "id": ids.of(component), "custom_id": custom_id}
    kind = component["type"]
    if kind == 4:
        value = values.get(custom_id, component.get("value") or "")
        data["value"] = _checked_text(component, str(value))
    elif kind == RADIO_GROUP:
        data["value"] = values.get(custom_id)
    elif kind == CHECKBOX:
        data["value"] = bool(values.get(custom_id, False))
    elif kind in SELECT_TYPES:
        data["values"] = _select_values(component, list(values.get(custom_id, [])))
    else:  # checkbox group, file upload (attachment ids; `resolved` is not emulated)
        data["values"] = list(values.get(custom_id, []))
    return data


def _checked_text(component: JSON, value: str) -> str:
    """The Discord client enforces required/min_length/max_length before it submits."""
    custom_id = component["custom_id"]
    if component.get("required", True) and not value:
        raise ActionRefusedError(f"text input {custom_id!r} is required")
    low, high = component.get("min_length") or 0, component.get("max_length") or 4000
    if value and not low <= len(value) <= high:
        raise ActionRefusedError(f"text input {custom_id!r} takes {low}-{high} characters")
    return value


class _ComponentIds:
    """Discord numbers modal components that came without an `id`, in order."""

    def __init__(self, components: Sequence[JSON]) -> None:
        self._assigned: dict[int, int] = {}
        used = {c["id"] for c in _walk(components) if isinstance(c.get("id"), int)}
        self._free = (n for n in itertools.count(1) if n not in used)

    def of(self, component: JSON) -> int:
        if isinstance(component.get("id"), int):
            return int(component["id"])
        key = id(component)
        if key not in self._assigned:
            self._assigned[key] = next(self._free)
        return self._assigned[key]


def _walk(components: Sequence[JSON]) -> list[JSON]:
    found: list[JSON] = []
    for component in components:
        found.append(component)
        found += _walk(component.get("components") or [])
        if isinstance(component.get("component"), dict):
            found += _walk([component["component"]])
    return found
