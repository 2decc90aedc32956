"""Character cards on Discord: /persona import, export and show, and greeting swipes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pygbot.cards import read_character
from pygbot.cogs.checks import MANAGE_SERVER_REFUSAL
from pygbot.cogs.reply_view import NEXT_ID, PREVIOUS_ID, REGENERATE_ID
from pygbot.store import Store
from tests.card_factory import b64, png_card, v2_card
from tests.discord_emulator import ActionRefusedError
from tests.discord_harness import Server, eventually
from tests.scripted_engine import ScriptedEngine

PNG_TYPE = "image/png"


def upload(server: Server, filename: str, data: bytes) -> dict[str, Any]:
    return server.discord.upload(server.roleplay, filename, data, PNG_TYPE)


async def import_card(server: Server, data: bytes, filename: str = "mira.png",
                      **options: Any) -> str:
    """Run /persona import as the admin; the text the admin sees."""
    handle = await server.discord.run_slash_command(
        server.roleplay, server.admin, "persona import",
        {"card": upload(server, filename, data), **options})
    await handle.response()
    assert handle.ephemeral
    [answer] = await handle.wait_for_followups(1)
    return str(answer["content"])


async def names(server: Server) -> str:
    listing = await server.discord.run_slash_command(server.roleplay, server.member,
                                                     "persona list")
    await listing.response()
    assert listing.message is not None
    return str(listing.message["content"])


async def test_an_imported_png_card_is_saved_with_its_picture_and_its_token_cost(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    card = upload(server, "mira.png", png_card([("chara", b64(v2_card()))]))
    handle = await server.discord.run_slash_command(server.roleplay, server.admin,
                                                    "persona import", {"card": card})
    await handle.response()
    [answer] = await handle.wait_for_followups(1)
    said = answer["content"]
    assert server.discord.downloaded(card)
    assert said.startswith("Imported **Mira**. Use `/persona switch` to play it.\npersona ")
    assert "+ reply 16 of 2,048 tokens; " in said and "left for the conversation" in said
    assert "**Mira** · made here" in await names(server)
    show = await server.discord.run_slash_command(server.roleplay, server.member,
                                                  "persona show", {"name": "Mira"})
    await show.response()
    assert show.message is not None
    [embed] = show.message["embeds"]
    assert embed["thumbnail"]["url"].endswith("avatar.png")
    assert [a["filename"] for a in show.message["attachments"]] == ["avatar.png"]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert fields["Token cost"].startswith("persona ")
    assert fields["From its card"] == "2 alternate greeting(s) (◀ ▶ on the greeting)"
    assert "SECRET CREATOR NOTE" not in json.dumps(show.message)


async def test_a_hostile_or_oversized_card_is_refused_and_nothing_is_stored(
    server: Server, db_path: Any, scripted_bot: ScriptedEngine,
) -> None:
    truncated = png_card([("chara", b64(v2_card()))])[:300]
    said = await import_card(server, truncated)
    assert said == "That card was not imported: the PNG is truncated (a chunk is cut off)."
    bad_types = json.dumps(v2_card(alternate_greetings=[1, 2])).encode()
    said = await import_card(server, bad_types, "mira.json")
    assert said == ("That card was not imported: field 'data.alternate_greetings' must be a "
                    "list of text.")
    huge = upload(server, "huge.png", b"\x89PNG" + b"\0" * (9 * 1024 * 1024))
    handle = await server.discord.run_slash_command(server.roleplay, server.admin,
                                                    "persona import", {"card": huge})
    await handle.response()
    assert handle.message is not None and handle.ephemeral
    assert handle.message["content"] == ("That file is 9.0 MiB; a character card may be at "
                                         "most 8 MiB. Nothing was imported.")
    assert not server.discord.downloaded(huge)  # refused before downloading
    assert "Mira" not in await names(server)


async def test_only_managers_import_and_a_taken_name_needs_replace(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    handle = await server.discord.run_slash_command(
        server.roleplay, server.member, "persona import",
        {"card": upload(server, "mira.png", png_card([("chara", b64(v2_card()))]))})
    await handle.response()
    assert handle.message is not None and handle.message["content"] == MANAGE_SERVER_REFUSAL
    card = png_card([("chara", b64(v2_card(name="Rook")))])
    said = await import_card(server, card)
    assert said == ("A character named **Rook** already exists. Import again with "
                    "`replace: True` to replace it. Nothing was imported.")
    said = await import_card(server, card, replace=True)
    assert said.startswith("Imported **Rook**.")


async def test_export_gives_a_png_and_a_json_card_that_import_back(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    await import_card(server, png_card([("chara", b64(v2_card()))]))
    handle = await server.discord.run_slash_command(server.roleplay, server.member,
                                                    "persona export", {"name": "mira"})
    await handle.response()
    assert handle.message is not None and handle.ephemeral
    files = {a["filename"]: server.discord.attachment_data(a)
             for a in handle.message["attachments"]}
    assert sorted(files) == ["mira.json", "mira.png"]
    assert read_character(files["mira.png"]).persona.card == v2_card()
    assert json.loads(files["mira.json"]) == v2_card()
    exported_picture = read_character(files["mira.png"]).avatar
    assert exported_picture is not None


async def test_a_cards_greeting_swipes_through_its_alternate_greetings(
    server: Server, db_path: Any, scripted_bot: ScriptedEngine,
) -> None:
    discord = server.discord
    await import_card(server, png_card([("chara", b64(v2_card()))]))
    switch = await discord.run_slash_command(server.roleplay, server.admin, "persona switch",
                                             {"name": "Mira"})
    await switch.response()
    greeting = await discord.wait_for_message(
        server.roleplay, lambda m: m["content"] == "Welcome back, Alice!")
    with pytest.raises(ActionRefusedError):  # a greeting is chosen, not generated
        await discord.click_button(greeting, REGENERATE_ID, server.member)
    click = await discord.click_button(greeting, NEXT_ID, server.member)
    await click.response()
    assert discord.message(greeting)["content"] == "Oh! Alice, you're early."
    click = await discord.click_button(greeting, NEXT_ID, server.member)
    await click.response()
    assert discord.message(greeting)["content"] == "*waves* Hi there."
    click = await discord.click_button(greeting, PREVIOUS_ID, server.member)
    await click.response()
    async with await Store.open(db_path) as store:
        [stored] = await store.history(server.roleplay.id)
    assert stored.text == "Oh! Alice, you're early."  # memory follows what members see
    scripted_bot.script(" Same as always?")
    await discord.send_message(server.roleplay, server.member, server.mention("Hi Mira"))
    await discord.wait_for_message(server.roleplay, lambda m: m["content"] == "Same as always?")
    prompt = scripted_bot.requests[-1].prompt
    assert "Mira: Oh! Alice, you're early.\nYou: Mira Hi Mira\nMira:" in prompt
    assert "Mira is a barista who remembers Bob's order." in prompt  # {{user}}: who asks

    async def greeting_retired() -> bool:
        return not discord.message(greeting)["components"]

    await eventually(greeting_retired)


async def test_a_card_too_long_for_the_form_is_not_edited_there(
    server: Server, scripted_bot: ScriptedEngine,
) -> None:
    await import_card(server, png_card([("chara", b64(v2_card(description="x " * 3000)))]))
    edit = await server.discord.run_slash_command(server.roleplay, server.admin, "persona edit",
                                                  {"name": "Mira"})
    await edit.response()
    assert edit.modal is None and edit.message is not None
    assert edit.message["content"].startswith("**Mira**'s persona is longer than Discord's "
                                              "form holds (4,000 characters)")
