"""`DiscordEmulator`: a loopback Discord (REST v10 + gateway) for the unmodified discord.py client.

    async with DiscordEmulator() as discord:          # serves 127.0.0.1:<ephemeral port>
        guild = discord.add_guild("Test")             # world building, before or after connecting
        general = discord.add_text_channel(guild, "general", nsfw=True)
        alice = discord.add_member(guild, "alice")
        async with connected(bot, discord):           # fixtures.connected: start, wait for on_ready
            await discord.send_message(general, alice, f"{discord.bot_user.mention} hi")
            reply = await discord.wait_for_message(general)

By default entering the context also points discord.py at the emulator (`Route.BASE` and
`DiscordWebSocket.DEFAULT_GATEWAY`) and restores both on exit. Nothing else is contacted.
World-building methods are synchronous; member actions are async and return once the bot's
gateway session has been sent the event. Everything a member would see is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from aiohttp import web

from tests.discord_emulator import permissions as perms
from tests.discord_emulator.commands import (
    MESSAGE_COMMAND,
    USER_COMMAND,
    ActionRefusedError,
    CommandRegistry,
    OptionBuilder,
    check_may_invoke,
)
from tests.discord_emulator.events import EventBus
from tests.discord_emulator.gateway import GUILD_MEMBERS as INTENT_GUILD_MEMBERS
from tests.discord_emulator.gateway import GUILD_PRESENCES as INTENT_GUILD_PRESENCES
from tests.discord_emulator.gateway import MESSAGE_CONTENT as INTENT_MESSAGE_CONTENT
from tests.discord_emulator.gateway import PRIVILEGED_INTENT_FLAGS, GatewayHub
from tests.discord_emulator.interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    InteractionHandle,
    InteractionService,
    component_data,
    find_component,
    modal_submit_data,
)
from tests.discord_emulator.mentions import MentionPolicy
from tests.discord_emulator.messages import REPLY, Draft, apply_edit, build_message
from tests.discord_emulator.payloads import (
    application_json,
    channel_json,
    guild_create_json,
    member_json,
    user_json,
)
from tests.discord_emulator.permissions import Overwrite
from tests.discord_emulator.rest import (
    DelayRule,
    FailureRule,
    RecordedRequest,
    RestApi,
    compile_route_pattern,
)
from tests.discord_emulator.snowflake import SnowflakeFactory
from tests.discord_emulator.state import (
    DM,
    GUILD_CATEGORY,
    GUILD_TEXT,
    JSON,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    Channel,
    Guild,
    Member,
    Role,
    StoredMessage,
    TypingEvent,
    User,
    Webhook,
    World,
)

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.emulator.loopback-discord-token"
DEFAULT_WAIT_S = 10.0
SHUTDOWN_TIMEOUT_S = 2.0
AUTOCOMPLETE_WAIT_S = 5.0

MessageRef = StoredMessage | Mapping[str, Any] | int
Where = Channel | Guild


class DiscordEmulator:
    """A fake Discord on 127.0.0.1 that the real discord.py client talks to.

    Args:
        token: the bot token the client must log in with (others get 401 / close 4004).
        bot_name: the bot user's username; its id is also the application id.
        message_content_enabled: whether the app's portal enables MESSAGE_CONTENT (flag 1<<19);
            if not, identifying with that intent closes the gateway with 4014.
        members_intent_enabled / presence_intent_enabled: the same for the other two.
        callback_window: seconds the bot has for its first interaction callback (Discord: 3).
        patch: point discord.py at this emulator while the context is entered.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        bot_name: str = "testbot",
        message_content_enabled: bool = True,
        members_intent_enabled: bool = True,
        presence_intent_enabled: bool = False,
        callback_window: float = 3.0,
        patch: bool = True,
    ) -> None:
        self.ids = SnowflakeFactory()
        self.token = token
        self.bot_user = User(id=self.ids.next(), username=bot_name, bot=True)
        self.app_owner = User(id=self.ids.next(), username="app-owner")
        self.application_id = self.bot_user.id
        self.application_flags = _application_flags(
            message_content_enabled, members_intent_enabled, presence_intent_enabled
        )
        self.callback_window = callback_window
        self.world = World(self.ids, self.bot_user.id)
        self.world.users[self.bot_user.id] = self.bot_user
        self.world.users[self.app_owner.id] = self.app_owner
        self.hub = GatewayHub(self)
        self.events = EventBus(self.world, self.hub, self.bot_user.id)
        self.rest = RestApi(self)
        self.commands = CommandRegistry(self.ids, self.application_id)
        self.interactions = InteractionService(self)
        self.port = 0
        self._patch = patch
        self._runner: web.AppRunner | None = None
        self._exit_stack = contextlib.ExitStack()

    # --- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        if self._patch:
            self._exit_stack.enter_context(self.patch_discord_py())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._exit_stack.close()
        await self.stop()

    async def start(self) -> None:
        """Serve on an ephemeral port of 127.0.0.1 (REST under /api/v10, gateway at /gateway)."""
        app = web.Application(middlewares=[self.rest.middleware])
        app.add_routes(self.rest.routes())
        app.add_routes([web.get("/gateway", self.hub.handle), web.get("/", self.hub.handle)])
        self._runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.events.start()
        log.info("discord emulator listening on %s", self.http_url)

    async def stop(self) -> None:
        await self.events.stop()
        await self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """What `discord.http.Route.BASE` must be."""
        return f"{self.http_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """What `DiscordWebSocket.DEFAULT_GATEWAY` must be (also READY's resume_gateway_url)."""
        return f"ws://{HOST}:{self.port}/gateway"

    @contextlib.contextmanager
    def patch_discord_py(self) -> Iterator[None]:
        """Point discord.py's two knobs at this emulator; restore them afterwards."""
        import discord.gateway  # noqa: PLC0415 - only tests that use the emulator need discord
        import discord.http  # noqa: PLC0415
        import yarl  # noqa: PLC0415

        route, websocket = discord.http.Route, discord.gateway.DiscordWebSocket
        saved = route.BASE, websocket.DEFAULT_GATEWAY
        route.BASE = self.base_url
        websocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            route.BASE, websocket.DEFAULT_GATEWAY = saved

    @property
    def message_content_enabled(self) -> bool:
        flags = PRIVILEGED_INTENT_FLAGS[INTENT_MESSAGE_CONTENT]
        return bool(self.application_flags & (flags[0] | flags[1]))

    # --- world building --------------------------------------------------------------------
    def add_user(
        self, username: str, display_name: str | None = None, *, bot: bool = False
    ) -> User:
        """A Discord user who is in no guild yet (`display_name` is the global name)."""
        user = User(id=self.ids.next(), username=username, global_name=display_name, bot=bot)
        self.world.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str,
        owner_id: int | None = None,
        *,
        everyone_permissions: int = perms.DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int = perms.DEFAULT_BOT_PERMISSIONS,
    ) -> Guild:
        """A guild with @everyone (id == guild id), the bot (via a managed role) and an owner.

        `owner_id` must be a user from `add_user`; by default a user "<name>-owner" is made.
        """
        owner = (
            self.world.user(owner_id) if owner_id is not None else self.add_user(f"{name}-owner")
        )
        guild = Guild(id=self.ids.next(), name=name, owner_id=owner.id)
        guild.roles[guild.id] = Role(
            id=guild.id, guild_id=guild.id, name="@everyone", permissions=everyone_permissions
        )
        bot_role = self._new_role(guild, self.bot_user.username, bot_permissions, managed=True)
        guild.members[self.bot_user.id] = Member(self.bot_user, guild.id, [bot_role.id])
        guild.members[owner.id] = Member(owner, guild.id)
        self.world.guilds[guild.id] = guild
        self.events.guild_created(guild)
        return guild

    def add_role(
        self, guild: Guild, name: str, permissions: int = 0, *, mentionable: bool = False
    ) -> Role:
        role = self._new_role(guild, name, permissions, mentionable=mentionable)
        return role

    def _new_role(
        self,
        guild: Guild,
        name: str,
        permissions: int,
        *,
        managed: bool = False,
        mentionable: bool = False,
    ) -> Role:
        role = Role(
            id=self.ids.next(),
            guild_id=guild.id,
            name=name,
            permissions=permissions,
            position=len(guild.roles),
            managed=managed,
            mentionable=mentionable,
        )
        guild.roles[role.id] = role
        if guild.id in self.world.guilds:  # roles made inside add_guild ride in GUILD_CREATE
            self.events.role_created(role)
        return role

    def add_member(
        self,
        guild: Guild,
        username: str | User,
        display_name: str | None = None,
        permissions: int | None = None,
        bot: bool = False,
        *,
        roles: Sequence[Role] = (),
        nick: str | None = None,
    ) -> User:
        """Add a member (a new user from `username`, or an existing `User`).

        `permissions` (bits) puts the member in a role of their own with exactly those
        permissions on top of @everyone's; `roles` adds existing roles.
        """
        user = (
            username
            if isinstance(username, User)
            else self.add_user(username, display_name, bot=bot)
        )
        role_ids = [r.id for r in roles]
        if permissions is not None:
            role_ids.append(self._new_role(guild, f"{user.username} permissions", permissions).id)
        member = Member(user, guild.id, role_ids, nick=nick)
        guild.members[user.id] = member
        self.events.member_added(member)
        return user

    def add_category(self, guild: Guild, name: str) -> Channel:
        return self._add_channel(guild, name, GUILD_CATEGORY)

    def add_text_channel(
        self,
        guild: Guild,
        name: str,
        nsfw: bool = False,
        *,
        topic: str | None = None,
        category: Channel | None = None,
        overwrites: Sequence[Overwrite] = (),
    ) -> Channel:
        """A text channel; `nsfw=True` makes it age-restricted."""
        return self._add_channel(
            guild,
            name,
            GUILD_TEXT,
            nsfw=nsfw,
            topic=topic,
            parent_id=category.id if category else None,
            overwrites=overwrites,
        )

    def _add_channel(self, guild: Guild, name: str, kind: int, **fields: Any) -> Channel:
        overwrites = list(fields.pop("overwrites", ()))
        channel = Channel(
            id=self.ids.next(),
            type=kind,
            name=name,
            guild_id=guild.id,
            position=len(guild.channel_ids),
            overwrites=overwrites,
            **fields,
        )
        self.world.channels[channel.id] = channel
        guild.channel_ids.append(channel.id)
        self.events.channel_created(channel)
        return channel

    def set_permissions(
        self, channel: Channel, target: Role | User, *, allow: int = 0, deny: int = 0
    ) -> None:
        """Add or replace a channel overwrite for a role or a member."""
        kind = 0 if isinstance(target, Role) else 1
        channel.overwrites = [o for o in channel.overwrites if (o.type, o.id) != (kind, target.id)]
        channel.overwrites.append(Overwrite(target.id, kind, allow, deny))
        self.events.channel_updated(channel)

    def set_age_restricted(self, channel: Channel, nsfw: bool) -> None:
        """Tick or untick Edit Channel → Age-Restricted Channel (sends CHANNEL_UPDATE)."""
        channel.nsfw = nsfw
        self.events.channel_updated(channel)

    def add_thread(
        self,
        parent: Channel,
        name: str,
        owner: User | None = None,
        *,
        private: bool = False,
        thread_id: int | None = None,
        auto_archive_duration: int = 1440,
    ) -> Channel:
        """A public (type 11) or private (12) thread; THREAD_CREATE if the bot is connected."""
        if parent.guild_id is None or parent.type != GUILD_TEXT:
            raise ValueError("threads live under guild text channels")
        guild = self.world.guild(parent.guild_id)
        thread = Channel(
            id=thread_id or self.ids.next(),
            type=PRIVATE_THREAD if private else PUBLIC_THREAD,
            name=name,
            guild_id=guild.id,
            parent_id=parent.id,
            owner_id=(owner or self.bot_user).id,
            auto_archive_duration=auto_archive_duration,
        )
        self.world.channels[thread.id] = thread
        guild.channel_ids.append(thread.id)
        self.events.channel_created(thread)
        return thread

    def upload(self, channel: Channel, filename: str, data: bytes,
               content_type: str = "application/octet-stream") -> JSON:
        """A file a member attaches (to a slash command's attachment option): stored and
        served at its `url` the way Discord's CDN serves attachments."""
        attachment_id = self.ids.next()
        self.world.attachments[attachment_id] = (filename, data, content_type)
        url = f"{self.http_url}/attachments/{channel.id}/{attachment_id}/{filename}"
        return {"id": str(attachment_id), "filename": filename, "size": len(data), "url": url,
                "proxy_url": url, "content_type": content_type}

    def downloaded(self, attachment: Mapping[str, Any]) -> bool:
        """Whether anyone fetched this attachment's file."""
        return int(attachment["id"]) in self.rest.downloads

    def attachment_data(self, attachment: Mapping[str, Any]) -> bytes:
        """The bytes of an attachment (one the bot uploaded, as members download it)."""
        return self.world.attachments[int(attachment["id"])][1]

    def dm_channel(self, user: User) -> Channel:
        """The DM channel between the bot and `user` (made on first use, like Discord)."""
        channel = self.world.find_dm(user.id)
        if channel is None:
            channel = Channel(
                id=self.ids.next(), type=DM, name=None, guild_id=None, recipients=[user]
            )
            self.world.channels[channel.id] = channel
        return channel

    def add_webhook(self, channel: Channel, name: str) -> Webhook:
        """A channel webhook owned by the bot (what POST /channels/{id}/webhooks makes)."""
        assert channel.guild_id is not None
        webhook = Webhook(
            id=self.ids.next(),
            token=_webhook_token(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            name=name,
            avatar=None,
            creator_id=self.bot_user.id,
            application_id=self.application_id,
        )
        self.world.webhooks[webhook.id] = webhook
        return webhook

    def remove_webhook(self, webhook: Webhook) -> None:
        """An admin deletes the webhook (Server Settings → Integrations): its messages stay,
        executing it answers 404 Unknown Webhook."""
        self.world.webhooks.pop(webhook.id, None)

    def webhooks(self, channel: Channel) -> list[Webhook]:
        return [w for w in self.world.webhooks.values() if w.channel_id == channel.id]

    def avatar_image(self, author: Mapping[str, Any]) -> bytes | None:
        """The picture members see beside a message's `author` (None: the default one)."""
        avatar = author.get("avatar")
        return self.world.images.get(avatar) if isinstance(avatar, str) else None

    # --- members act -----------------------------------------------------------------------
    async def send_message(
        self,
        channel: Channel,
        author: User,
        content: str,
        reply_to: MessageRef | None = None,
        mentions: Sequence[User] | None = None,
        *,
        mention_author: bool = True,
    ) -> JSON:
        """A member posts `content` (a reply if `reply_to`); returns the message view.

        `<@id>`/`<@!id>`, `<@&role>` and `@everyone` in content ping as Discord decides;
        `mentions` adds users to ping, `mention_author=False` is a reply without the ping.
        """
        self._check_can_post(channel, author)
        referenced = self._stored(reply_to) if reply_to is not None else None
        if referenced is not None and referenced.channel_id != channel.id:
            raise ActionRefusedError("a reply must be in the same channel as its message")
        draft = Draft(
            channel=channel,
            author=author,
            content=content,
            type=REPLY if referenced is not None else 0,
            referenced=referenced,
            policy=MentionPolicy(replied_user=mention_author),
            extra_mention_ids=[u.id for u in mentions or ()],
        )
        stored = build_message(self.world, draft, self.ids.next())
        await self.events.message_created(stored)
        return stored.view()

    def _check_can_post(self, channel: Channel, author: User) -> None:
        if channel.is_dm:
            if channel.recipients[0].id != author.id:
                raise ActionRefusedError(f"{author.username} is not in this DM")
            return
        if not self.world.can_send(channel, author.id):
            raise ActionRefusedError(f"{author.username} cannot post in #{channel.name}")

    async def edit_message(self, message: MessageRef, new_content: str) -> JSON:
        """The author edits their message; the bot gets a full MESSAGE_UPDATE."""
        stored = self._stored(message)
        apply_edit(self.world, stored, {"content": new_content}, MentionPolicy())
        await self.events.message_updated(stored)
        return stored.view()

    async def delete_message(self, message: MessageRef) -> None:
        """The message disappears; the bot gets MESSAGE_DELETE."""
        await self.events.message_deleted(self._stored(message))

    async def start_typing(self, channel: Channel, user: User) -> None:
        """A member starts typing (TYPING_START)."""
        self._check_can_post(channel, user)
        await self.events.typing_started(channel, user.id)

    async def add_reaction(self, message: MessageRef, user: User, emoji: str) -> None:
        """A member reacts with a unicode emoji (or "name:id")."""
        stored = self._stored(message)
        users = stored.reactions.setdefault(emoji, set())
        if user.id not in users:
            users.add(user.id)
            name, _, emoji_id = emoji.partition(":")
            await self.events.reaction_changed(
                stored, {"id": emoji_id or None, "name": name}, user.id, added=True
            )

    # --- interactions ----------------------------------------------------------------------
    async def run_slash_command(
        self, where: Where, member: User, name: str, options: Mapping[str, Any] | None = None
    ) -> InteractionHandle:
        """Invoke a synced slash command ("persona switch" for subcommands) as `member`.

        Option values: str/int/float/bool, or `User`/`Role`/`Channel` objects (resolved),
        or an attachment dict. Raises `ActionRefusedError` where Discord's client would refuse.
        """
        channel = self._channel_of(where)
        invocation = self.commands.find(name, guild_id=channel.guild_id)
        check_may_invoke(self.world, invocation.command, channel, member.id)
        data = OptionBuilder(self.world, channel).build(invocation, options or {}, None)
        return await self.interactions.create(
            APPLICATION_COMMAND, channel, member, data, command=invocation.command
        )

    async def run_autocomplete(
        self,
        where: Where,
        member: User,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        focused: str,
        timeout: float = AUTOCOMPLETE_WAIT_S,
    ) -> list[JSON]:
        """Type into option `focused` (its partial text in `options`); returns the bot's choices."""
        channel = self._channel_of(where)
        invocation = self.commands.find(name, guild_id=channel.guild_id)
        check_may_invoke(self.world, invocation.command, channel, member.id)
        data = OptionBuilder(self.world, channel).build(invocation, options or {}, focused)
        handle = await self.interactions.create(
            AUTOCOMPLETE, channel, member, data, command=invocation.command
        )
        response = await handle.response(timeout)
        if response["type"] != 8:
            raise AssertionError(f"autocomplete answered with callback type {response['type']}")
        return list(handle.choices or [])

    async def run_user_command(
        self, where: Where, member: User, name: str, target: User
    ) -> InteractionHandle:
        """A user context-menu command on `target`."""
        channel = self._channel_of(where)
        invocation = self.commands.find(name, guild_id=channel.guild_id, kind=USER_COMMAND)
        check_may_invoke(self.world, invocation.command, channel, member.id)
        resolved: JSON = {"users": {str(target.id): user_json(target)}}
        member_of_target = self.world.member(channel.guild_id or 0, target.id)
        if member_of_target is not None:
            resolved["members"] = {str(target.id): member_json(member_of_target, with_user=False)}
        return await self._context_command(channel, member, invocation.command, target.id, resolved)

    async def run_message_command(
        self, where: Where, member: User, name: str, message: MessageRef
    ) -> InteractionHandle:
        """A message context-menu command on `message` (its content is always visible)."""
        channel = self._channel_of(where)
        invocation = self.commands.find(name, guild_id=channel.guild_id, kind=MESSAGE_COMMAND)
        check_may_invoke(self.world, invocation.command, channel, member.id)
        stored = self._stored(message)
        resolved = {"messages": {str(stored.id): dict(stored.payload)}}
        return await self._context_command(channel, member, invocation.command, stored.id, resolved)

    async def _context_command(
        self, channel: Channel, member: User, command: JSON, target_id: int, resolved: JSON
    ) -> InteractionHandle:
        data: JSON = {
            "id": command["id"],
            "name": command["name"],
            "type": command["type"],
            "target_id": str(target_id),
            "resolved": resolved,
        }
        if command.get("guild_id") is not None:
            data["guild_id"] = command["guild_id"]
        return await self.interactions.create(
            APPLICATION_COMMAND, channel, member, data, command=command
        )

    async def click_button(
        self, message: MessageRef, custom_id: str, member: User
    ) -> InteractionHandle:
        """Click a button on a message (type-3 interaction carrying the full message)."""
        return await self.use_component(message, custom_id, member)

    async def use_component(
        self, message: MessageRef, custom_id: str, member: User, values: Sequence[str] | None = None
    ) -> InteractionHandle:
        """Click a button or choose `values` in a select menu."""
        stored = self._stored(message)
        component = find_component(stored.payload.get("components") or [], custom_id)
        if component is None:
            raise ActionRefusedError(f"message {stored.id} has no component {custom_id!r}")
        if stored.ephemeral and self._interaction_user(stored) != member.id:
            raise ActionRefusedError("only the invoking member can see this ephemeral message")
        channel = self.world.channel(stored.channel_id)
        return await self.interactions.create(
            MESSAGE_COMPONENT, channel, member, component_data(component, values), message=stored
        )

    async def submit_modal(
        self,
        modal: InteractionHandle | Mapping[str, Any],
        member: User,
        values: Mapping[str, str | Sequence[str]],
    ) -> InteractionHandle:
        """Fill in and submit a modal the bot sent (pass the handle that got it, or its data)."""
        origin = self._modal_origin(modal)
        assert origin.modal is not None
        if origin.user.id != member.id:
            raise ActionRefusedError("only the member the modal was shown to can submit it")
        source = self.world.messages.get(origin.source_message_id or 0)
        return await self.interactions.create(
            MODAL_SUBMIT,
            origin.channel,
            member,
            modal_submit_data(origin.modal, values),
            message=source,
        )

    def _modal_origin(self, modal: InteractionHandle | Mapping[str, Any]) -> InteractionHandle:
        if isinstance(modal, InteractionHandle):
            if modal.modal is None:
                raise ActionRefusedError(f"{modal!r} did not answer with a modal")
            return modal
        for handle in reversed(list(self.interactions.by_id.values())):
            if handle.modal is not None and handle.modal.get("custom_id") == modal.get("custom_id"):
                return handle
        raise ActionRefusedError(f"no modal {modal.get('custom_id')!r} was shown")

    def _interaction_user(self, stored: StoredMessage) -> int | None:
        handle = self.interactions.by_id.get(stored.interaction_id or 0)
        return handle.user.id if handle else None

    # --- what members see ------------------------------------------------------------------
    def messages(self, channel: Channel) -> list[JSON]:
        """Visible (non-ephemeral, undeleted) messages of a channel, oldest first, as views.

        A view is the full message payload plus `author_id`, `pinged_user_ids`,
        `pinged_everyone`, `pinged_role_ids` (ints), `ephemeral` and `deleted`.
        """
        return [m.view() for m in self.world.channel_history(channel.id) if not m.ephemeral]

    def message(self, message: MessageRef) -> JSON:
        """The current view of one message (also after it was deleted)."""
        return self._stored(message, allow_deleted=True).view()

    def message_versions(self, message: MessageRef) -> list[JSON]:
        """Every version of a message's payload, oldest first, the current one last."""
        stored = self._stored(message, allow_deleted=True)
        return [*stored.versions, dict(stored.payload)]

    def deleted_messages(self, channel: Channel) -> list[JSON]:
        ids = self.world.channel_messages.get(channel.id, [])
        return [self.world.messages[i].view() for i in ids if self.world.messages[i].deleted]

    def ephemeral_messages(self, user: User | None = None) -> list[JSON]:
        """Ephemeral interaction messages, optionally only those shown to `user`."""
        found = [m for m in self.world.messages.values() if m.ephemeral and not m.deleted]
        if user is not None:
            found = [m for m in found if self._interaction_user(m) == user.id]
        return [m.view() for m in found]

    def typing_events(self, channel: Channel) -> list[TypingEvent]:
        return [t for t in self.world.typing if t.channel_id == channel.id]

    def reactions(self, message: MessageRef) -> dict[str, set[int]]:
        return {k: set(v) for k, v in self._stored(message, allow_deleted=True).reactions.items()}

    def synced_commands(self, guild: Guild | None = None) -> list[JSON]:
        """Commands as stored after the bot's last sync (global when `guild` is None)."""
        return self.commands.list(guild.id if guild else None)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every REST request received, in order (paths without the /api/v10 prefix)."""
        return list(self.rest.requests)

    @property
    def unhandled_requests(self) -> list[RecordedRequest]:
        """REST requests no emulated route served (they got 404)."""
        return list(self.rest.unhandled)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = DEFAULT_WAIT_S) -> Any:
        """The first truthy `predicate()`, re-checked on every change; TimeoutError otherwise."""
        return await self.events.wait_for(predicate, timeout)

    async def wait_for_message(
        self,
        channel: Channel,
        predicate: Callable[[JSON], bool] | None = None,
        timeout: float = DEFAULT_WAIT_S,
        *,
        after: MessageRef | None = None,
        from_bot: bool = True,
    ) -> JSON:
        """The first visible message in `channel` newer than `after` matching `predicate`.

        With `from_bot` (default) only the bot's messages count (its own, its webhooks' and
        its interaction responses); "thinking" placeholders are skipped until edited.
        """
        after_id = self._stored(after, allow_deleted=True).id if after is not None else 0

        def find() -> JSON | None:
            for stored in self.world.channel_history(channel.id):
                if stored.id <= after_id or stored.ephemeral or stored.loading:
                    continue
                if from_bot and not self._is_bots(stored):
                    continue
                view = stored.view()
                if predicate is None or predicate(view):
                    return view
            return None

        return await self.events.wait_for(find, timeout, f"a message in #{channel.name}")

    def _is_bots(self, stored: StoredMessage) -> bool:
        if stored.author_id == self.bot_user.id:
            return True
        webhook = self.world.webhooks.get(stored.author_id)
        return webhook is not None and webhook.creator_id == self.bot_user.id

    async def wait_until_connected(self, timeout: float = DEFAULT_WAIT_S) -> None:
        """Until a client has identified (READY sent)."""
        await self.events.wait_for(self.hub.ready.is_set, timeout, "a gateway IDENTIFY")

    async def settle(self, timeout: float = DEFAULT_WAIT_S) -> None:
        """Until every queued gateway dispatch (e.g. from world building) has been sent."""
        await self.events.flush(timeout)

    # --- knobs -----------------------------------------------------------------------------
    def fail_next(
        self,
        route: str,
        status: int = 429,
        retry_after: float = 0.1,
        *,
        code: int = 0,
        message: str | None = None,
        times: int = 1,
        is_global: bool = False,
    ) -> None:
        """Answer the next `times` matching REST requests with an error instead.

        `route`: "POST /channels/{channel_id}/messages", "/channels/*/typing" or an exact
        path. 429s carry `Via: 1.1 google` and `{message, retry_after, global}` as Discord's do.
        """
        method, pattern = compile_route_pattern(route)
        text = message or ("You are being rate limited." if status == 429 else f"{status}: Error")
        for _ in range(times):
            self.rest.failures.append(
                FailureRule(method, pattern, status, retry_after, code, text, is_global)
            )

    def delay_next(self, route: str, seconds: float, *, times: int = 1) -> None:
        """Answer the next `times` matching REST requests `seconds` late (a slow Discord);
        the request is recorded on arrival. `route` as for `fail_next`."""
        method, pattern = compile_route_pattern(route)
        for _ in range(times):
            self.rest.delays.append(DelayRule(method, pattern, seconds))

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT; the client resumes on resume_gateway_url."""
        await self.hub.send_op(7)

    async def invalidate_session(self, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; with `resumable=False` the client identifies afresh."""
        await self.hub.send_op(9, resumable)

    @contextlib.asynccontextmanager
    async def gateway_outage(self, *, resumable: bool) -> AsyncIterator[None]:
        """The bot's gateway connection drops on entry and cannot come back before the exit.

        What members do inside the block happens in the gap. `resumable=True`: the session
        survives and the bot's RESUME replays the gap's events. `resumable=False`: the session
        is gone, RESUME is answered with op 9 INVALID_SESSION d=false, the bot identifies anew
        and gets nothing from the gap; only the channel history (REST) still has it.
        """
        await self.hub.cut(resumable=resumable)
        try:
            yield
        finally:
            self.hub.restore()

    @property
    def identify_count(self) -> int:
        """How many gateway sessions the bot has started (IDENTIFY sent)."""
        return len(self.hub.identify_payloads)

    # --- helpers for the gateway and REST --------------------------------------------------
    def bot_user_json(self) -> JSON:
        data = user_json(self.bot_user)
        data.update({"verified": True, "mfa_enabled": False, "flags": 0, "email": None})
        return data

    def application_json(self) -> JSON:
        return application_json(self.bot_user, self.app_owner, self.application_flags)

    def bot_guild_ids(self) -> list[int]:
        return [g.id for g in self.world.guilds.values() if self.bot_user.id in g.members]

    def guild_create_payloads(self, intents: int) -> list[JSON]:
        all_members = bool(intents & INTENT_GUILD_PRESENCES)
        return [
            guild_create_json(
                self.world, self.world.guilds[g], bot_id=self.bot_user.id, all_members=all_members
            )
            for g in self.bot_guild_ids()
        ]

    def member_chunk(self, request: JSON, *, with_all: bool) -> JSON | None:
        """GUILD_MEMBERS_CHUNK for an op-8 request (listing everyone needs GUILD_MEMBERS)."""
        guild = self.world.guilds.get(int(str(request.get("guild_id", 0))))
        if guild is None:
            return None
        wanted_ids = {int(str(u)) for u in request.get("user_ids") or []}
        query = str(request.get("query") or "").lower()
        if wanted_ids:
            members = [m for m in guild.members.values() if m.user.id in wanted_ids]
        else:
            members = [
                m for m in guild.members.values() if m.user.username.lower().startswith(query)
            ]
            if not with_all:
                members = [m for m in members if m.user.id == self.bot_user.id]
        limit = int(request.get("limit") or 0)
        chunk: JSON = {
            "guild_id": str(guild.id),
            "members": [member_json(m) for m in members[: limit or None]],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if wanted_ids:
            found = {m.user.id for m in members}
            chunk["not_found"] = [str(u) for u in wanted_ids - found]
        if request.get("nonce") is not None:
            chunk["nonce"] = request["nonce"]
        return chunk

    def _channel_of(self, where: Where) -> Channel:
        if isinstance(where, Channel):
            return where
        for channel in self.world.guild_channels(where):
            if channel.type == GUILD_TEXT:
                return channel
        raise ActionRefusedError(f"guild {where.name!r} has no text channel")

    def _stored(self, ref: MessageRef, *, allow_deleted: bool = False) -> StoredMessage:
        if isinstance(ref, StoredMessage):
            stored: StoredMessage | None = ref
        elif isinstance(ref, int):
            stored = self.world.messages.get(ref)
        else:
            stored = self.world.messages.get(int(str(ref["id"])))
        if stored is None or (stored.deleted and not allow_deleted):
            raise ActionRefusedError(f"no such message {ref!r}")
        return stored

    def channel_json(self, channel: Channel) -> JSON:
        return channel_json(self.world, channel)


def _application_flags(message_content: bool, members: bool, presences: bool) -> int:
    """Use the "limited" flags (bots in < 100 servers), as a test app would have."""
    flags = 0
    for intent, enabled in (
        (INTENT_MESSAGE_CONTENT, message_content),
        (INTENT_GUILD_MEMBERS, members),
        (INTENT_GUILD_PRESENCES, presences),
    ):
        if enabled:
            flags |= PRIVILEGED_INTENT_FLAGS[intent][1]
    return flags


def _webhook_token() -> str:
    return secrets.token_urlsafe(51)  # 68 characters, what Webhook.from_url expects
