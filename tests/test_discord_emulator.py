"""The loopback Discord emulator works with the real, unmodified discord.py client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.discord_emulator import (
    ActionRefusedError,
    Channel,
    DiscordEmulator,
    Guild,
    Overwrite,
    User,
    connected,
)
from tests.discord_emulator.permissions import MANAGE_GUILD, VIEW_CHANNEL

ACTIVE_COMPRESSION = discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE  # "zlib-stream"
SetupStep = Callable[[commands.Bot], Awaitable[None]]


class EmulatedBot(commands.Bot):
    """A commands.Bot whose setup_hook runs the steps a test hands it (e.g. a guild sync)."""

    def __init__(
        self,
        *,
        message_content: bool = True,
        members: bool = False,
        setup: Sequence[SetupStep] = (),
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        intents.members = members
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.1)
        self._setup_steps = list(setup)

    async def setup_hook(self) -> None:
        for step in self._setup_steps:
            await step(self)


@dataclass(frozen=True)
class Server:
    guild: Guild
    channel: Channel
    alice: User


@pytest.fixture
def server(discord_emulator: DiscordEmulator) -> Server:
    guild = discord_emulator.add_guild("Tavern")
    channel = discord_emulator.add_text_channel(guild, "roleplay", nsfw=True)
    alice = discord_emulator.add_member(guild, "alice", "Alice")
    return Server(guild, channel, alice)


def sync_to(guild: Guild) -> SetupStep:
    async def sync(bot: commands.Bot) -> None:
        await bot.tree.sync(guild=discord.Object(id=guild.id))

    return sync


def text_channel(bot: commands.Bot, channel: Channel) -> discord.TextChannel:
    found = bot.get_channel(channel.id)
    assert isinstance(found, discord.TextChannel)
    return found


# --- connecting ---------------------------------------------------------------------------
async def test_bot_connects_and_becomes_ready_over_zlib_stream(discord_emulator, server):
    bot = EmulatedBot()
    async with connected(bot, discord_emulator):
        assert bot.user is not None and bot.user.id == discord_emulator.bot_user.id
        assert bot.application_id == discord_emulator.bot_user.id
        guild = bot.get_guild(server.guild.id)
        assert guild is not None and guild.me is not None
        assert text_channel(bot, server.channel).is_nsfw()
        assert guild.default_role.id == guild.id
    # dpy asks for zlib-stream unless `zstandard` is installed; either is served compressed
    assert discord_emulator.hub.compressions == [ACTIVE_COMPRESSION]
    assert discord_emulator.hub.heartbeats >= 1


async def test_wrong_token_fails_login(discord_emulator, server):
    with pytest.raises(discord.LoginFailure):
        async with connected(EmulatedBot(), discord_emulator, token="not-the-token"):
            pass


async def test_asking_for_a_privileged_intent_the_app_lacks_is_refused():
    async with DiscordEmulator(message_content_enabled=False) as emulator:
        emulator.add_guild("Tavern")
        with pytest.raises(discord.PrivilegedIntentsRequired):
            async with connected(EmulatedBot(message_content=True), emulator):
                pass


async def test_reconnect_resumes_the_session_and_replays_what_was_missed(discord_emulator, server):
    bot = EmulatedBot()
    contents: list[str] = []

    @bot.event
    async def on_message(message: discord.Message) -> None:
        contents.append(message.content)

    async with connected(bot, discord_emulator):
        await discord_emulator.request_reconnect()
        await discord_emulator.send_message(server.channel, server.alice, "while away")
        await discord_emulator.wait_for(lambda: contents)
        await discord_emulator.send_message(server.channel, server.alice, "after resume")
        await discord_emulator.wait_for(lambda: len(contents) == 2)
    assert contents == ["while away", "after resume"]
    assert len(discord_emulator.hub.identify_payloads) == 1  # resumed, not re-identified
    assert discord_emulator.hub.compressions == [ACTIVE_COMPRESSION] * 2


async def test_a_resumable_outage_replays_what_was_sent_in_the_gap_once(discord_emulator, server):
    bot = EmulatedBot()
    contents: list[str] = []

    @bot.event
    async def on_message(message: discord.Message) -> None:
        contents.append(message.content)

    async with connected(bot, discord_emulator):
        async with discord_emulator.gateway_outage(resumable=True):
            await discord_emulator.send_message(server.channel, server.alice, "in the gap")
            await asyncio.sleep(0.2)
            assert contents == []  # the bot is away
        await discord_emulator.wait_for(lambda: contents)
        await discord_emulator.send_message(server.channel, server.alice, "after resume")
        await discord_emulator.wait_for(lambda: len(contents) == 2)
    assert contents == ["in the gap", "after resume"]
    assert discord_emulator.identify_count == 1  # resumed, not re-identified


async def test_an_outage_that_cannot_be_resumed_needs_a_new_identify_and_replays_nothing(
    discord_emulator, server
):
    bot = EmulatedBot()
    contents: list[str] = []
    ready_count = 0

    @bot.event
    async def on_message(message: discord.Message) -> None:
        contents.append(message.content)

    @bot.event
    async def on_ready() -> None:
        nonlocal ready_count
        ready_count += 1

    async with connected(bot, discord_emulator):
        async with discord_emulator.gateway_outage(resumable=False):
            gap = await discord_emulator.send_message(server.channel, server.alice, "in the gap")
        await discord_emulator.wait_for(lambda: ready_count == 2)  # a fresh session
        await discord_emulator.send_message(server.channel, server.alice, "after")
        await discord_emulator.wait_for(lambda: contents)
        history = [m async for m in text_channel(bot, server.channel).history(limit=10)]
    assert contents == ["after"]  # the gap was not replayed
    assert discord_emulator.identify_count == 2
    assert gap["id"] in {str(m.id) for m in history}  # only the channel history has it
    assert discord_emulator.hub.close_codes[0] == 4009


async def test_members_intent_gets_the_member_list_by_chunking(discord_emulator, server):
    bot = EmulatedBot(members=True)
    async with connected(bot, discord_emulator):
        guild = bot.get_guild(server.guild.id)
        assert guild is not None
        member = guild.get_member(server.alice.id)
    assert member is not None and member.display_name == "Alice"


# --- messages -----------------------------------------------------------------------------
async def test_member_message_arrives_with_content_and_the_reply_is_recorded(
    discord_emulator, server
):
    bot = EmulatedBot()
    received: list[discord.Message] = []

    @bot.event
    async def on_message(message: discord.Message) -> None:
        if message.author.bot:
            return
        received.append(message)
        async with message.channel.typing():
            await message.reply(f"you said: {message.content}")

    async with connected(bot, discord_emulator):
        sent = await discord_emulator.send_message(server.channel, server.alice, "hello there")
        reply = await discord_emulator.wait_for_message(server.channel, after=sent)

    assert received[0].content == "hello there"
    assert isinstance(received[0].author, discord.Member)
    assert received[0].author.display_name == "Alice"
    assert reply["content"] == "you said: hello there"
    assert reply["type"] == 19 and reply["message_reference"]["message_id"] == sent["id"]
    assert reply["pinged_user_ids"] == [server.alice.id]  # a plain reply pings its author
    typing = discord_emulator.typing_events(server.channel)
    assert [event.user_id for event in typing] == [discord_emulator.bot_user.id]


async def test_bot_gets_no_events_from_a_channel_it_cannot_view(discord_emulator, server):
    guild_id, alice = server.guild.id, server.alice
    staff = discord_emulator.add_text_channel(
        server.guild,
        "staff",
        overwrites=[
            Overwrite(guild_id, 0, deny=VIEW_CHANNEL),  # @everyone, the bot included
            Overwrite(alice.id, 1, allow=VIEW_CHANNEL),
        ],
    )
    bot = EmulatedBot()
    contents: list[str] = []

    @bot.event
    async def on_message(message: discord.Message) -> None:
        contents.append(message.content)

    async with connected(bot, discord_emulator):
        await discord_emulator.send_message(staff, alice, "staff only")
        await discord_emulator.send_message(server.channel, alice, "for everyone")
        await discord_emulator.wait_for(lambda: contents)
        with pytest.raises(discord.Forbidden):  # 403 Missing Access
            await text_channel(bot, staff).send("can I post here?")
    assert contents == ["for everyone"]


async def test_content_over_2000_characters_is_rejected_with_50035(discord_emulator, server):
    bot = EmulatedBot()
    async with connected(bot, discord_emulator):
        channel = text_channel(bot, server.channel)
        with pytest.raises(discord.HTTPException) as caught:
            await channel.send("x" * 2001)
        await channel.send("y" * 2000)
    assert caught.value.status == 400 and caught.value.code == 50035
    assert "Must be 2000 or fewer in length." in caught.value.text
    assert [m["content"] for m in discord_emulator.messages(server.channel)] == ["y" * 2000]


async def test_without_message_content_intent_content_is_blank_unless_the_bot_is_mentioned(
    discord_emulator, server
):
    bot = EmulatedBot(message_content=False)
    contents: list[str] = []

    @bot.event
    async def on_message(message: discord.Message) -> None:
        contents.append(message.content)

    mention = discord_emulator.bot_user.mention
    async with connected(bot, discord_emulator):
        await discord_emulator.send_message(server.channel, server.alice, "secret plans")
        await discord_emulator.send_message(server.channel, server.alice, f"{mention} hello")
        await discord_emulator.wait_for(lambda: len(contents) == 2)
    assert contents == ["", f"{mention} hello"]


async def test_member_edit_and_delete_reach_the_bot(discord_emulator, server):
    bot = EmulatedBot()
    edits: list[str] = []
    deletions: list[int] = []

    @bot.event
    async def on_raw_message_edit(payload: discord.RawMessageUpdateEvent) -> None:
        edits.append(payload.message.content)

    @bot.event
    async def on_raw_message_delete(payload: discord.RawMessageDeleteEvent) -> None:
        deletions.append(payload.message_id)

    async with connected(bot, discord_emulator):
        sent = await discord_emulator.send_message(server.channel, server.alice, "frist")
        await discord_emulator.edit_message(sent, "first")
        await discord_emulator.delete_message(sent)
        await discord_emulator.wait_for(lambda: deletions)
    assert edits == ["first"]
    assert deletions == [int(sent["id"])]
    assert [v["content"] for v in discord_emulator.message_versions(sent)] == ["frist", "first"]
    assert discord_emulator.messages(server.channel) == []


async def test_rate_limited_send_is_retried_transparently(discord_emulator, server):
    bot = EmulatedBot()
    async with connected(bot, discord_emulator):
        discord_emulator.fail_next("POST /channels/{channel_id}/messages", 429, retry_after=0.05)
        await text_channel(bot, server.channel).send("after a rate limit")
    path = f"/channels/{server.channel.id}/messages"
    posts = [r for r in discord_emulator.requests if (r.method, r.path) == ("POST", path)]
    assert len(posts) == 2
    assert [m["content"] for m in discord_emulator.messages(server.channel)] == [
        "after a rate limit"
    ]


async def test_allowed_mentions_none_means_everyone_pings_nobody(discord_emulator, server):
    bot = EmulatedBot()
    async with connected(bot, discord_emulator):
        channel = text_channel(bot, server.channel)
        quiet = await channel.send(
            "@everyone hello", allowed_mentions=discord.AllowedMentions.none()
        )
        loud = await channel.send("@everyone hello")
        no_users = await channel.send(
            f"{server.alice.mention} hi", allowed_mentions=discord.AllowedMentions(users=False)
        )
    seen = {int(m["id"]): m for m in discord_emulator.messages(server.channel)}
    assert not seen[quiet.id]["pinged_everyone"] and not quiet.mention_everyone
    assert seen[loud.id]["pinged_everyone"] and loud.mention_everyone
    assert seen[no_users.id]["pinged_user_ids"] == [] and no_users.mentions == []


async def test_parse_users_together_with_a_users_list_is_a_form_error(discord_emulator, server):
    bot = EmulatedBot()
    async with connected(bot, discord_emulator):
        route = discord.http.Route(
            "POST", "/channels/{channel_id}/messages", channel_id=server.channel.id
        )
        body = {
            "content": "hi",
            "allowed_mentions": {"parse": ["users"], "users": [server.alice.id]},
        }
        with pytest.raises(discord.HTTPException) as caught:
            await bot.http.request(route, json=body)
    assert caught.value.code == 50035


async def test_dm_message_has_no_guild_id_and_the_bot_answers(discord_emulator, server):
    bot = EmulatedBot(message_content=False)  # DMs keep their content without the intent
    received: list[discord.Message] = []

    @bot.event
    async def on_message(message: discord.Message) -> None:
        if not message.author.bot:
            received.append(message)
            await message.channel.send(f"psst: {message.content}")

    dm = discord_emulator.dm_channel(server.alice)
    async with connected(bot, discord_emulator):
        await discord_emulator.send_message(dm, server.alice, "hello in private")
        reply = await discord_emulator.wait_for_message(dm)
        session = next(iter(discord_emulator.hub.sessions.values()))
        creates = [e["d"] for e in session.history if e["t"] == "MESSAGE_CREATE"]
    assert received[0].guild is None and isinstance(received[0].channel, discord.DMChannel)
    assert reply["content"] == "psst: hello in private"
    assert creates and all("guild_id" not in d for d in creates)


async def test_thread_messages_arrive_with_the_thread_as_channel(discord_emulator, server):
    bot = EmulatedBot()
    received: list[discord.Message] = []
    created: list[discord.Thread] = []

    @bot.event
    async def on_thread_create(thread: discord.Thread) -> None:
        created.append(thread)

    @bot.event
    async def on_message(message: discord.Message) -> None:
        if not message.author.bot:
            received.append(message)
            await message.channel.send("in the thread")

    async with connected(bot, discord_emulator):
        thread = discord_emulator.add_thread(server.channel, "side story", owner=server.alice)
        await discord_emulator.send_message(thread, server.alice, "hi in thread")
        reply = await discord_emulator.wait_for_message(thread)
    assert [t.id for t in created] == [thread.id]
    channel = received[0].channel
    assert isinstance(channel, discord.Thread)
    assert channel.id == thread.id and channel.parent_id == server.channel.id
    assert reply["channel_id"] == str(thread.id)
    assert discord_emulator.messages(server.channel) == []


async def test_webhook_posts_in_character_and_reactions_are_recorded(discord_emulator, server):
    bot = EmulatedBot()
    async with connected(bot, discord_emulator):
        channel = text_channel(bot, server.channel)
        webhook = await channel.create_webhook(name="Aria")
        posted = await webhook.send("Hello, traveller.", username="Aria", wait=True)
        await posted.add_reaction("👋")
        shown = await discord_emulator.wait_for_message(server.channel)
    assert shown["author"]["username"] == "Aria" and shown["webhook_id"] == str(webhook.id)
    assert shown["content"] == "Hello, traveller."
    assert discord_emulator.reactions(shown) == {"👋": {discord_emulator.bot_user.id}}


async def test_webhook_avatars_threads_and_deletion_follow_discords_rules(
    discord_emulator, server,
):
    bot = EmulatedBot()
    png = b"\x89PNG\r\n\x1a\n"  # discord.py reads the image type from the magic bytes
    face, other_face = png + b"first face", png + b"second face"
    thread = discord_emulator.add_thread(server.channel, "side")
    async with connected(bot, discord_emulator):
        channel = text_channel(bot, server.channel)
        webhook = await channel.create_webhook(name="pygbot", avatar=face)
        first = await webhook.send("one", username="Aria", wait=True)
        webhook = await webhook.edit(avatar=other_face)  # PATCH /webhooks/{id}, bot auth
        second = await webhook.send("two", username="Pip", wait=True,
                                    thread=discord.Object(thread.id))
        with pytest.raises(discord.NotFound):  # in a thread, edits need its thread_id
            await webhook.edit_message(second.id, content="lost")
        await webhook.edit_message(second.id, content="two, edited",
                                   thread=discord.Object(thread.id))
        with pytest.raises(discord.HTTPException) as named:
            await webhook.send("x", username="Discord Staff", wait=True)
        await webhook.delete()
        with pytest.raises(discord.NotFound) as gone:
            await webhook.send("three", wait=True)
    shown_first = discord_emulator.message(first.id)
    shown_second = discord_emulator.message(second.id)
    # Each message keeps the face the webhook wore when it was sent.
    assert discord_emulator.avatar_image(shown_first["author"]) == face
    assert discord_emulator.avatar_image(shown_second["author"]) == other_face
    assert shown_second["channel_id"] == str(thread.id)
    assert shown_second["content"] == "two, edited"
    assert named.value.status == 400
    assert gone.value.code == 10015  # Unknown Webhook
    assert discord_emulator.webhooks(server.channel) == []


# --- interactions -------------------------------------------------------------------------
def persona_group() -> app_commands.Group:
    persona = app_commands.Group(name="persona", description="Choose who the bot plays")

    @persona.command(name="switch", description="Play another character")
    @app_commands.describe(name="The character's name")
    async def switch(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(f"Now playing {name}.", ephemeral=True)

    @switch.autocomplete("name")
    async def names(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=n, value=n)
            for n in ("Aria", "Pip", "Rook")
            if n.lower().startswith(current.lower())
        ]

    return persona


async def test_slash_command_group_syncs_to_the_guild_and_answers_ephemerally(
    discord_emulator, server
):
    bot = EmulatedBot(setup=[sync_to(server.guild)])
    bot.tree.add_command(persona_group(), guild=discord.Object(id=server.guild.id))
    async with connected(bot, discord_emulator):
        handle = await discord_emulator.run_slash_command(
            server.channel, server.alice, "persona switch", {"name": "Aria"}
        )
        response = await handle.response()
        choices = await discord_emulator.run_autocomplete(
            server.channel, server.alice, "persona switch", {"name": "r"}, focused="name"
        )
    assert response["type"] == 4 and handle.ephemeral
    assert handle.message is not None and handle.message["content"] == "Now playing Aria."
    assert discord_emulator.messages(server.channel) == []  # ephemeral: nobody else sees it
    assert [c["name"] for c in choices] == ["Rook"]
    [stored] = discord_emulator.synced_commands(server.guild)
    assert stored["guild_id"] == str(server.guild.id) and stored["options"][0]["name"] == "switch"


async def test_member_lacking_default_member_permissions_cannot_invoke(discord_emulator, server):
    bot = EmulatedBot(setup=[sync_to(server.guild)])

    @app_commands.command(name="reset", description="Forget this channel")
    @app_commands.default_permissions(manage_guild=True)
    async def reset(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("Forgotten.")

    bot.tree.add_command(reset, guild=discord.Object(id=server.guild.id))
    admin = discord_emulator.add_member(server.guild, "mod", permissions=MANAGE_GUILD)
    async with connected(bot, discord_emulator):
        with pytest.raises(ActionRefusedError):
            await discord_emulator.run_slash_command(server.channel, server.alice, "reset")
        handle = await discord_emulator.run_slash_command(server.channel, admin, "reset")
        await handle.response()
        shown = await discord_emulator.wait_for_message(server.channel)
    assert shown["content"] == "Forgotten." and shown["type"] == 20
    assert shown["interaction_metadata"]["user"]["id"] == str(admin.id)


async def test_deferred_command_follow_up_replaces_the_thinking_message(discord_emulator, server):
    bot = EmulatedBot(setup=[sync_to(server.guild)])

    @app_commands.command(name="think", description="Take a moment")
    async def think(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("Done thinking.")

    bot.tree.add_command(think, guild=discord.Object(id=server.guild.id))
    async with connected(bot, discord_emulator):
        handle = await discord_emulator.run_slash_command(server.channel, server.alice, "think")
        message = await handle.wait_for_message()
    assert handle.response_type == 5 and not handle.ephemeral
    assert message["content"] == "Done thinking."
    assert [m["content"] for m in discord_emulator.messages(server.channel)] == ["Done thinking."]


async def test_callbacks_after_the_window_or_twice_are_refused():
    async with DiscordEmulator(callback_window=0.2) as emulator:
        guild = emulator.add_guild("Slow")
        channel = emulator.add_text_channel(guild, "general")
        alice = emulator.add_member(guild, "alice")
        errors: list[int] = []
        bot = EmulatedBot(setup=[sync_to(guild)])

        @app_commands.command(name="slow", description="Answer too late")
        async def slow(interaction: discord.Interaction) -> None:
            await asyncio.sleep(0.4)
            try:
                await interaction.response.send_message("late")
            except discord.NotFound as error:
                errors.append(error.code)

        @app_commands.command(name="quick", description="Answer in time")
        async def quick(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("on time")

        bot.tree.add_command(slow, guild=discord.Object(id=guild.id))
        bot.tree.add_command(quick, guild=discord.Object(id=guild.id))
        async with connected(bot, emulator):
            await emulator.run_slash_command(channel, alice, "slow")
            await emulator.wait_for(lambda: errors)
            handle = await emulator.run_slash_command(channel, alice, "quick")
            await handle.response()
            url = f"{emulator.base_url}/interactions/{handle.id}/{handle.token}/callback"
            async with (
                aiohttp.ClientSession() as session,
                session.post(url, json={"type": 4, "data": {"content": "again"}}) as resp,
            ):
                second = (resp.status, (await resp.json())["code"])
    assert errors == [10062]
    assert second == (400, 40060)


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    thoughts: discord.ui.TextInput[discord.ui.Modal] = discord.ui.TextInput(
        label="Your thoughts", custom_id="thoughts", max_length=200
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"Thanks: {self.thoughts.value}", ephemeral=True)


class RenameModal(discord.ui.Modal, title="Rename"):
    name: discord.ui.Label[discord.ui.Modal] = discord.ui.Label(
        text="New name", component=discord.ui.TextInput(custom_id="new-name", max_length=32)
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        assert isinstance(self.name.component, discord.ui.TextInput)
        await interaction.response.send_message(f"Renamed to {self.name.component.value}")


@pytest.mark.parametrize(
    ("modal_type", "field", "expected"),
    [
        (FeedbackModal, "thoughts", "Thanks: great"),  # legacy action row
        (RenameModal, "new-name", "Renamed to great"),  # type-18 label
    ],
)
async def test_modal_round_trip(discord_emulator, server, modal_type, field, expected):
    bot = EmulatedBot(setup=[sync_to(server.guild)])

    @app_commands.command(name="form", description="Open a form")
    async def form(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(modal_type())

    bot.tree.add_command(form, guild=discord.Object(id=server.guild.id))
    async with connected(bot, discord_emulator):
        opened = await discord_emulator.run_slash_command(server.channel, server.alice, "form")
        assert (await opened.response())["type"] == 9
        with pytest.raises(ActionRefusedError):  # the client enforces max_length
            await discord_emulator.submit_modal(opened, server.alice, {field: "x" * 201})
        submitted = await discord_emulator.submit_modal(opened, server.alice, {field: "great"})
        await submitted.response()
    assert opened.modal is not None and opened.modal["title"] == modal_type.title
    assert submitted.message is not None and submitted.message["content"] == expected


class LikeView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)
        self.clicks = 0

    @discord.ui.button(label="Like", custom_id="persistent:like", style=discord.ButtonStyle.primary)
    async def like(
        self, interaction: discord.Interaction, button: discord.ui.Button[LikeView]
    ) -> None:
        self.clicks += 1
        await interaction.response.send_message(f"Liked {self.clicks}", ephemeral=True)


async def test_persistent_button_survives_a_restart_and_gets_the_click(discord_emulator, server):
    first = EmulatedBot()
    async with connected(first, discord_emulator):
        posted = await text_channel(first, server.channel).send("Like this?", view=LikeView())

    persistent = LikeView()

    async def register(bot: commands.Bot) -> None:
        bot.add_view(persistent)

    second = EmulatedBot(setup=[register])
    async with connected(second, discord_emulator):
        handle = await discord_emulator.click_button(posted.id, "persistent:like", server.alice)
        await handle.response()
    assert persistent.clicks == 1
    assert handle.message is not None and handle.message["content"] == "Liked 1"
    assert handle.payload["message"]["id"] == str(posted.id)
