"""`/persona`: list, show, switch, create, edit, delete, import and export the server's
characters. Import and export speak Character Card V2/V3 (see `pygbot.cards`).

Changing characters needs the Manage Server permission. Discord's default permissions can be
changed by any admin in the server's integration settings, so every handler checks the
member's permissions itself.
"""

from __future__ import annotations

import asyncio
import io
import logging

import discord
from discord import app_commands
from discord.ext import commands

from pygbot.cards import (
    CARD_FILE_MAX_BYTES,
    CardError,
    export_png,
    export_v2_json,
    read_character,
    with_card,
)
from pygbot.character_files import file_stem
from pygbot.chat import ChatService
from pygbot.cogs.access import Access, AccessPolicy
from pygbot.cogs.character_webhooks import CharacterWebhooks
from pygbot.cogs.checks import refuse_unless_manager
from pygbot.cogs.posting import DiscordPoster
from pygbot.library import BuiltInPersonaError, PersonaLibrary, UnknownPersonaError
from pygbot.persona import NAME_MAX_CHARS, TEXT_MAX_CHARS, Persona, PersonaError
from pygbot.prompt import PromptCost
from pygbot.roster import AlreadyHereError, NotJoinedError, RosterFullError
from pygbot.store import StoredTurn

log = logging.getLogger(__name__)

AUTOCOMPLETE_CHOICES = 25  # Discord's limit
EMBED_FIELD_LIMIT = 1024
MODAL_TITLE_LIMIT = 45
RETRY_SECONDS = 600.0
MODAL_SECONDS = 1800.0  # long enough to write a character; then the form is forgotten
AVATAR_FILENAME = "avatar.png"
MIB = 1024 * 1024
FORM_FIELDS = ("persona", "scenario", "greeting", "example_dialogue")


@app_commands.guild_only()
class PersonaCog(commands.GroupCog, group_name="persona",
                 group_description="Choose and edit the character the bot plays"):
    def __init__(self, chat: ChatService, access: AccessPolicy, poster: DiscordPoster,
                 webhooks: CharacterWebhooks) -> None:
        self.chat = chat
        self.library: PersonaLibrary = chat.library
        self.access = access
        self.poster = poster
        self.webhooks = webhooks
        super().__init__()

    @app_commands.command(name="list")
    async def list_(self, interaction: discord.Interaction) -> None:
        """List the characters this server can use."""
        guild_id = interaction.guild_id or 0
        active = (await self.library.active(guild_id, interaction.channel_id)).name
        lines = [f"**{p.name}**{' (playing now)' if p.name == active else ''}"
                 f"{'' if self.library.is_builtin(p.name) else ' · made here'}"
                 for p in await self.library.all(guild_id)]
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @app_commands.command()
    @app_commands.describe(name="Character to show; the active one if left out")
    async def show(self, interaction: discord.Interaction, name: str | None = None) -> None:
        """Show a character's persona, scenario, greeting and example dialogue."""
        guild_id = interaction.guild_id or 0
        persona = await self._named_or_active(interaction, name)
        if persona is None:
            return
        embed = _embed(persona, self.chat.prompt_cost(persona))
        avatar = await self.library.avatar(guild_id, persona.name)
        if avatar is None:
            await interaction.response.send_message(embed=embed, ephemeral=True)
            return
        embed.set_thumbnail(url=f"attachment://{AVATAR_FILENAME}")
        await interaction.response.send_message(
            embed=embed, file=discord.File(io.BytesIO(avatar), AVATAR_FILENAME), ephemeral=True)

    @app_commands.command()
    @app_commands.describe(name="Character to play from now on",
                           channel_only="Only in this channel; the rest of the server keeps "
                                        "its character")
    async def switch(self, interaction: discord.Interaction, name: str,
                     channel_only: bool = False) -> None:
        """Switch the character the bot plays in this server or channel (Manage Server)."""
        if await refuse_unless_manager(interaction):
            return
        guild_id = interaction.guild_id or 0
        channel_id = interaction.channel_id if channel_only else None
        previous = await self.chat.latest_reply(interaction.channel_id or 0)
        try:
            persona = await self.library.switch(guild_id, name, channel_id)
        except UnknownPersonaError as error:
            await interaction.response.send_message(f"{error}.", ephemeral=True)
            return
        where = "in this channel" if channel_only else "in this server"
        await interaction.response.send_message(f"**{persona.name}** takes over {where}.")
        if previous is not None and previous.name != persona.name:
            await self._retire(interaction, previous)  # a new conversation begins
        await self._greet(interaction)

    @app_commands.command()
    async def create(self, interaction: discord.Interaction) -> None:
        """Create a new character for this server (Manage Server)."""
        if await refuse_unless_manager(interaction):
            return
        await interaction.response.send_modal(PersonaModal(self.library, original=None))

    @app_commands.command()
    @app_commands.describe(name="Character to edit")
    async def edit(self, interaction: discord.Interaction, name: str) -> None:
        """Edit a character; editing a built-in saves this server's own copy (Manage Server)."""
        if await refuse_unless_manager(interaction):
            return
        try:
            persona = await self.library.get(interaction.guild_id or 0, name)
        except UnknownPersonaError as error:
            await interaction.response.send_message(f"{error}.", ephemeral=True)
            return
        too_long = [field for field in FORM_FIELDS if len(getattr(persona, field)) > TEXT_MAX_CHARS]
        if too_long:  # the form would cut the text off; saving it would lose the rest
            await interaction.response.send_message(
                f"**{persona.name}**'s {too_long[0].replace('_', ' ')} is longer than Discord's "
                f"form holds ({TEXT_MAX_CHARS:,} characters), so it cannot be edited here "
                "without losing text. Use `/persona export`, edit the card, and "
                "`/persona import` it with `replace: True`.", ephemeral=True)
            return
        await interaction.response.send_modal(PersonaModal(self.library, original=persona))

    @app_commands.command()
    @app_commands.describe(name="Character made in this server to delete")
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        """Delete a character made in this server (Manage Server)."""
        if await refuse_unless_manager(interaction):
            return
        try:
            persona = await self.library.delete(interaction.guild_id or 0, name)
        except (UnknownPersonaError, BuiltInPersonaError) as error:
            await interaction.response.send_message(f"{error}.", ephemeral=True)
            return
        await interaction.response.send_message(f"Deleted **{persona.name}**.", ephemeral=True)

    @app_commands.command(name="import")
    @app_commands.describe(card="A character card: PNG, JSON or CHARX (SillyTavern, TavernAI, "
                                "RisuAI ...)",
                           replace="Replace this server's character of the same name")
    async def import_(self, interaction: discord.Interaction, card: discord.Attachment,
                      replace: bool = False) -> None:
        """Import a character card (PNG, JSON or CHARX) as a server character (Manage Server)."""
        if await refuse_unless_manager(interaction):
            return
        if card.size > CARD_FILE_MAX_BYTES:  # refused before a byte is downloaded
            await interaction.response.send_message(
                f"That file is {card.size / MIB:.1f} MiB; a character card may be at most "
                f"{CARD_FILE_MAX_BYTES // MIB} MiB. Nothing was imported.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            raw = await card.read()
            # Pictures are decoded off the event loop: a large portrait takes a moment.
            character = await asyncio.to_thread(read_character, raw)
        except discord.HTTPException as error:
            await interaction.followup.send(
                f"Could not download the file from Discord ({error.status}); try again. "
                "Nothing was imported.", ephemeral=True)
            return
        except CardError as error:
            await interaction.followup.send(
                f"That card was not imported: {error}.", ephemeral=True)
            return
        guild_id = interaction.guild_id or 0
        persona = character.persona
        if not replace and await self._exists(guild_id, persona.name):
            await interaction.followup.send(
                f"A character named **{persona.name}** already exists. Import again with "
                "`replace: True` to replace it. Nothing was imported.", ephemeral=True)
            return
        await self.library.import_character(guild_id, persona, character.avatar)
        log.info("server %s imported character %r", guild_id, persona.name)
        notes = "".join(f"\nNote: {note}." for note in character.notes)
        await interaction.followup.send(
            f"Imported **{persona.name}**. Use `/persona switch` to play it.\n"
            f"{self.chat.prompt_cost(persona).summary()}{notes}", ephemeral=True)

    @app_commands.command()
    @app_commands.describe(name="Character to export; the active one if left out")
    async def export(self, interaction: discord.Interaction, name: str | None = None) -> None:
        """Export a character as a Character Card V2: a PNG with its picture, and JSON."""
        guild_id = interaction.guild_id or 0
        persona = await self._named_or_active(interaction, name)
        if persona is None:
            return
        avatar = await self.library.avatar(guild_id, persona.name)
        picture = await asyncio.to_thread(export_png, persona, avatar)
        stem = file_stem(persona.name)
        files = [discord.File(io.BytesIO(picture), f"{stem}.png"),
                 discord.File(io.BytesIO(export_v2_json(persona)), f"{stem}.json")]
        await interaction.response.send_message(
            f"**{persona.name}** as a Character Card V2: the PNG carries the card inside its "
            "picture (SillyTavern and most front ends read it); the JSON is the same card.",
            files=files, ephemeral=True)

    @app_commands.command()
    @app_commands.describe(name="Character to bring into this channel beside the one playing")
    async def add(self, interaction: discord.Interaction, name: str) -> None:
        """Bring another character into this channel; members address it by name (Manage
        Server; needs /pygbot webhook on)."""
        if await refuse_unless_manager(interaction):
            return
        channel_id = interaction.channel_id or 0
        if not await self.webhooks.is_on(channel_id):
            await interaction.response.send_message(ADD_NEEDS_WEBHOOK, ephemeral=True)
            return
        try:
            persona = await self.chat.roster.add(interaction.guild_id or 0, channel_id, name)
        except (UnknownPersonaError, AlreadyHereError, RosterFullError) as error:
            await interaction.response.send_message(f"{error}.", ephemeral=True)
            return
        await interaction.response.send_message(
            f"**{persona.name}** joins this channel. Talk to a character by starting with its "
            f"name (\"{persona.name}, ...\") or by replying to its message; otherwise the main "
            "character answers.")

    @app_commands.command()
    @app_commands.describe(name="Character that joined with /persona add")
    async def remove(self, interaction: discord.Interaction, name: str) -> None:
        """Send a character added with /persona add away from this channel (Manage Server)."""
        if await refuse_unless_manager(interaction):
            return
        try:
            gone = await self.chat.roster.remove(interaction.guild_id or 0,
                                                 interaction.channel_id or 0, name)
        except NotJoinedError as error:
            await interaction.response.send_message(f"{error}.", ephemeral=True)
            return
        await interaction.response.send_message(f"**{gone}** leaves this channel.")

    async def _exists(self, guild_id: int, name: str) -> bool:
        try:
            await self.library.get(guild_id, name)
        except UnknownPersonaError:
            return False
        return True

    @show.autocomplete("name")
    @export.autocomplete("name")
    @switch.autocomplete("name")
    @edit.autocomplete("name")
    @delete.autocomplete("name")
    @add.autocomplete("name")
    @remove.autocomplete("name")
    async def _names(self, interaction: discord.Interaction,
                     current: str) -> list[app_commands.Choice[str]]:
        personas = await self.library.all(interaction.guild_id or 0)
        matches = [p.name for p in personas if current.casefold() in p.name.casefold()]
        return [app_commands.Choice(name=name, value=name)
                for name in matches[:AUTOCOMPLETE_CHOICES]]

    async def _retire(self, interaction: discord.Interaction, previous: StoredTurn) -> None:
        """Take the buttons off the previous character's last reply here. (In the server's
        other channels they are refused and taken off at their first click.)"""
        await self.poster.retire(interaction.channel_id or 0, previous)

    async def _greet(self, interaction: discord.Interaction) -> None:
        """Open the new character's conversation in this channel with its greeting."""
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            return
        if await self.access.check(channel) is not Access.ALLOWED:
            return
        greeting = await self.chat.start_conversation(channel.id, interaction.guild_id or 0,
                                                      interaction.user.display_name)
        await self.poster.greeting(channel.id, greeting)

    async def _named_or_active(self, interaction: discord.Interaction,
                               name: str | None) -> Persona | None:
        """The character `name`, or the one playing in this channel when left out; an unknown
        name is told to the member (None)."""
        guild_id = interaction.guild_id or 0
        try:
            return await (self.library.get(guild_id, name) if name
                          else self.library.active(guild_id, interaction.channel_id))
        except UnknownPersonaError as error:
            await interaction.response.send_message(f"{error}.", ephemeral=True)
            return None

class PersonaModal(discord.ui.Modal):
    """Discord's form for a character: five fields, within Discord's modal limits."""

    name: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
        label="Name", custom_id="name", max_length=NAME_MAX_CHARS, placeholder="Aria")
    persona: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
        label="Persona", custom_id="persona",
        style=discord.TextStyle.paragraph, max_length=TEXT_MAX_CHARS,
        placeholder="A few sentences about who the character is and how they talk.")
    scenario: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
        label="Scenario", custom_id="scenario",
        style=discord.TextStyle.paragraph, max_length=TEXT_MAX_CHARS,
        required=False, placeholder="Optional: where and when the conversation happens.")
    greeting: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
        label="Greeting", custom_id="greeting",
        style=discord.TextStyle.paragraph, max_length=TEXT_MAX_CHARS,
        required=False, placeholder="The first thing the character says.")
    example_dialogue: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
        label="Example dialogue", custom_id="example_dialogue",
        style=discord.TextStyle.paragraph, max_length=TEXT_MAX_CHARS,
        required=False, placeholder="You: Hi!\nAria: Oh, hello there!")

    def __init__(self, library: PersonaLibrary, original: Persona | None,
                 values: dict[str, str] | None = None) -> None:
        title = f"Edit {original.name}" if original else "New character"
        super().__init__(title=title[:MODAL_TITLE_LIMIT], timeout=MODAL_SECONDS)
        self.library = library
        self.original = original
        prefill = values or (original.to_dict() if original else {})
        for field in self._fields():
            field.default = prefill.get(_field_key(field), "")[:TEXT_MAX_CHARS] or None

    def _fields(self) -> list[discord.ui.TextInput[PersonaModal]]:
        return [self.name, self.persona, self.scenario, self.greeting, self.example_dialogue]

    def values(self) -> dict[str, str]:
        return {_field_key(field): field.value for field in self._fields()}

    async def on_submit(self, interaction: discord.Interaction) -> None:
        if await refuse_unless_manager(interaction):
            return
        values = self.values()
        guild_id = interaction.guild_id or 0
        try:
            persona = Persona.from_dict(values)
            if self.original is not None:  # an edited card keeps its lorebook and the rest
                persona = with_card(persona, self.original)
            await self._check_name_free(guild_id, persona)
        except PersonaError as error:
            # A modal cannot answer with another modal; a button reopens it with what they
            # typed, so a typo never costs anyone their text.
            await interaction.response.send_message(
                f"That character was not saved: {error}.", ephemeral=True,
                view=RetryView(self.library, self.original, values))
            return
        replacing = self.original.name if self.original else None
        await self.library.save(guild_id, persona, replacing=replacing)
        log.info("server %s saved character %r", guild_id, persona.name)
        await interaction.response.send_message(f"Saved **{persona.name}**. "
                                                f"Use `/persona switch` to play it.",
                                                ephemeral=True)

    async def _check_name_free(self, guild_id: int, persona: Persona) -> None:
        same = self.original is not None and \
            self.original.name.casefold() == persona.name.casefold()
        if same:
            return
        try:
            await self.library.get(guild_id, persona.name)
        except UnknownPersonaError:
            return
        raise PersonaError(f"a character named {persona.name!r} already exists; "
                           f"use /persona edit to change it")


class RetryView(discord.ui.View):
    def __init__(self, library: PersonaLibrary, original: Persona | None,
                 values: dict[str, str]) -> None:
        super().__init__(timeout=RETRY_SECONDS)
        self.library = library
        self.original = original
        self.values = values

    @discord.ui.button(label="Edit again", style=discord.ButtonStyle.primary)
    async def edit_again(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await interaction.response.send_modal(
            PersonaModal(self.library, self.original, self.values))


def _field_key(field: discord.ui.TextInput[PersonaModal]) -> str:
    return field.custom_id  # each field's custom id is its Persona key


def _embed(persona: Persona, cost: PromptCost) -> discord.Embed:
    embed = discord.Embed(title=persona.name, description=_clip(persona.persona, 4096))
    for label, text in (("Scenario", persona.scenario), ("Greeting", persona.greeting),
                        ("Example dialogue", persona.example_dialogue)):
        if text:
            embed.add_field(name=label, value=_clip(text, EMBED_FIELD_LIMIT), inline=False)
    extras = [f"{len(persona.alternate_greetings)} alternate greeting(s) (◀ ▶ on the greeting)"
              if persona.alternate_greetings else "",
              f"lorebook of {len(persona.lorebook.entries)} entries"
              if persona.lorebook and persona.lorebook.entries else ""]
    if any(extras):
        embed.add_field(name="From its card", value=" · ".join(e for e in extras if e),
                        inline=False)
    embed.add_field(name="Token cost", value=_clip(cost.summary(), EMBED_FIELD_LIMIT),
                    inline=False)
    return embed


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


ADD_NEEDS_WEBHOOK = ("Several characters need their own names and pictures: turn on "
                     "`/pygbot webhook state: on` in this channel first (Manage Server).")
