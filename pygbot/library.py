"""Which characters a server can use and which one is active.

Built-in characters come from the persona folder and are shared by every server; a server's
admins can add their own (or edit a built-in, which saves a server copy over it). The active
character is stored per server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from pygbot.character_files import load_character_dir
from pygbot.persona import Persona
from pygbot.store import Store

log = logging.getLogger(__name__)


class UnknownPersonaError(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"there is no character named {name!r}")
        self.name = name


class BuiltInPersonaError(PermissionError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is a built-in character and cannot be deleted")


class NoPersonasError(RuntimeError):
    """Nothing to play: the persona folder is empty or missing and no server made its own."""


class PersonaLibrary:
    def __init__(self, store: Store, builtins: Mapping[str, Persona], default_name: str,
                 avatars: Mapping[str, bytes] | None = None) -> None:
        self._store = store
        self._builtins = {name.casefold(): persona for name, persona in builtins.items()}
        self._avatars = {name.casefold(): image for name, image in (avatars or {}).items()}
        self._default_name = default_name
        if not self._builtins:
            raise NoPersonasError("no built-in characters were loaded; add a persona file "
                                  "to the persona folder (PERSONAS_DIR)")
        if default_name.casefold() not in self._builtins:
            fallback = next(iter(self._builtins.values())).name
            log.warning("DEFAULT_PERSONA %r is not a built-in character; using %r",
                        default_name, fallback)
            self._default_name = fallback

    @classmethod
    def from_dir(cls, store: Store, directory: Path, default_name: str) -> PersonaLibrary:
        """Built-in characters from the persona folder: pygbot JSON and character cards."""
        characters = load_character_dir(directory)
        return cls(store, {key: c.persona for key, c in characters.items()}, default_name,
                   {key: c.avatar for key, c in characters.items() if c.avatar})

    @property
    def default(self) -> Persona:
        return self._builtins[self._default_name.casefold()]

    def is_builtin(self, name: str) -> bool:
        return name.casefold() in self._builtins

    async def all(self, guild_id: int) -> list[Persona]:
        """Every character the server can use, server copies replacing built-ins, by name."""
        merged = dict(self._builtins)
        for persona in await self._store.custom_personas(guild_id):
            merged[persona.name.casefold()] = persona
        return sorted(merged.values(), key=lambda persona: persona.name.casefold())

    async def get(self, guild_id: int, name: str) -> Persona:
        for persona in await self.all(guild_id):
            if persona.name.casefold() == name.strip().casefold():
                return persona
        raise UnknownPersonaError(name)

    async def active(self, guild_id: int, channel_id: int | None = None) -> Persona:
        """The channel's own character if it has one, else the server's, else the default."""
        name = await self._store.active_persona(guild_id, channel_id)
        if name is None:
            return self.default
        try:
            return await self.get(guild_id, name)
        except UnknownPersonaError:
            log.warning("active character %r of server %s is gone; using %r",
                        name, guild_id, self.default.name)
            return self.default

    async def switch(self, guild_id: int, name: str, channel_id: int | None = None) -> Persona:
        """Play `name` in the whole server, or with `channel_id` in that channel only."""
        persona = await self.get(guild_id, name)
        await self._store.set_active_persona(guild_id, persona.name, channel_id)
        return persona

    async def avatar(self, guild_id: int, name: str) -> bytes | None:
        """The character's picture: the server copy's own, else the built-in's, else None."""
        image = await self._store.custom_persona_avatar(guild_id, name)
        return image if image is not None else self._avatars.get(name.strip().casefold())

    async def save(self, guild_id: int, persona: Persona, replacing: str | None = None) -> Persona:
        """Create or edit a server character; `replacing` is the name it had before an edit
        (a renamed character keeps its picture)."""
        renamed = replacing is not None and replacing.casefold() != persona.name.casefold()
        if renamed and replacing is not None:
            image = await self._store.custom_persona_avatar(guild_id, replacing)
            await self._store.save_custom_persona(guild_id, persona, image, replace_avatar=True)
            await self._store.delete_custom_persona(guild_id, replacing)
            await self._store.rename_persona_choices(guild_id, replacing, persona.name)
        else:
            await self._store.save_custom_persona(guild_id, persona)
        return persona

    async def import_character(self, guild_id: int, persona: Persona,
                               avatar: bytes | None) -> Persona:
        """Save an imported card as a server character, picture included (replacing the
        picture of a character it replaces)."""
        await self._store.save_custom_persona(guild_id, persona, avatar, replace_avatar=True)
        return persona

    async def delete(self, guild_id: int, name: str) -> Persona:
        """Delete a server character; a server copy of a built-in reverts to the built-in."""
        persona = await self.get(guild_id, name)
        if not await self._store.delete_custom_persona(guild_id, persona.name):
            raise BuiltInPersonaError(persona.name)
        return persona
