"""Character cards: V1/V2/V3 in JSON, PNG and CHARX, mapped onto the Pygmalion persona,
exported and imported again without losing a field; hostile files refused in one line."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
from PIL import Image

from pygbot.cards import (
    CARD_FILE_MAX_BYTES,
    CardError,
    card_document,
    export_png,
    export_v2_json,
    read_character,
    with_card,
)
from pygbot.persona import Persona
from pygbot.prompt import Turn, build_prompt
from tests.card_factory import (
    b64,
    bomb_png,
    charx,
    picture,
    png_bytes,
    png_card,
    v1_card,
    v2_card,
    v3_card,
)


def count_words(text: str) -> int:
    return len(text.split()) + text.count("\n")


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def prompt_for(persona: Persona, member: str = "Bob", message: str = "hello") -> str:
    return build_prompt(persona.for_member(member), [Turn("You", message)], 1500,
                        count_words).text


# --- mapping ------------------------------------------------------------------------------------

def test_a_v2_card_maps_onto_the_pygmalion_prompt() -> None:
    persona = read_character(json.dumps(v2_card()).encode()).persona
    assert persona.name == "Mira"
    assert persona.persona == "Mira is a barista who remembers {{user}}'s order.\nWarm, chatty."
    assert persona.scenario == "A rainy afternoon at the cafe."
    assert persona.alternate_greetings == ("Oh! {{user}}, you're early.", "*waves* Hi there.")
    prompt = prompt_for(persona)
    assert prompt.startswith("Mira's Persona: Mira is a barista who remembers Bob's order. "
                             "Warm, chatty.\nScenario: A rainy afternoon at the cafe.\n<START>\n"
                             "You: The usual?\nMira: Oat latte, coming up.\n")
    assert "SECRET CREATOR NOTE" not in prompt
    assert persona.for_member("Bob").greeting == "Welcome back, Bob!"


def test_placeholders_are_found_in_any_case_and_spelling() -> None:
    card = v2_card(description="{{Char}} and <bot> meet {{USER}} and <User>.",
                   mes_example="<START>\n<USER>: hi\n<BOT>: hey")
    persona = read_character(json.dumps(card).encode()).persona.for_member("Ann")
    assert persona.persona.startswith("Mira and Mira meet Ann and Ann.")
    assert persona.example_dialogue == "<START>\nYou: hi\nMira: hey"


def test_a_v3_card_uses_its_nickname_for_char_and_keeps_its_name_as_the_label() -> None:
    persona = read_character(json.dumps(v3_card()).encode()).persona
    assert persona.name == "Mira"
    assert persona.persona.startswith("Mimi is a barista")
    # the character's own example lines still open with its prompt label
    assert persona.example_dialogue.endswith("Mira: Oat latte, coming up.")


def test_a_v1_card_loads_with_its_unknown_keys_kept() -> None:
    persona = read_character(json.dumps(v1_card()).encode()).persona
    assert persona.persona == "Old is an old-style card.\ngrumpy"
    assert persona.for_member("Zed").greeting == "Hmph. Zed."
    exported = json.loads(export_v2_json(persona))
    assert exported["spec"] == "chara_card_v2"
    assert exported["data"]["an_unknown_key"] == 7


def test_a_name_a_label_cannot_hold_is_made_safe() -> None:
    persona = read_character(json.dumps(v2_card(name="Aria ♡: the AI (v2)")).encode()).persona
    assert persona.name == "Aria the AI v2"


def test_our_own_persona_json_imports_too() -> None:
    document = {"name": "Rook", "persona": "A lighthouse keeper.", "greeting": "Tea?"}
    character = read_character(json.dumps(document).encode())
    assert character.persona == Persona("Rook", "A lighthouse keeper.", greeting="Tea?")


# --- PNG and CHARX ------------------------------------------------------------------------------

@pytest.mark.parametrize("itxt", [False, True])
def test_a_png_card_reads_its_chunk_and_keeps_the_picture(itxt: bool) -> None:
    raw = png_card([("chara", b64(v2_card()))], itxt=itxt, compressed=itxt)
    character = read_character(raw)
    assert character.persona.name == "Mira"
    assert character.avatar is not None
    with Image.open(io.BytesIO(character.avatar)) as avatar:
        assert avatar.size == (40, 60)
        assert avatar.convert("RGB").getpixel((0, 0)) == (200, 30, 30)
        assert not avatar.info.get("chara")  # the stored picture carries no card text


@pytest.mark.parametrize("order", [("chara", "ccv3"), ("ccv3", "chara")])
def test_ccv3_is_preferred_over_chara_whatever_the_order(order: tuple[str, str]) -> None:
    documents = {"chara": v2_card(name="Backfill"), "ccv3": v3_card(name="Real")}
    raw = png_card([(keyword, b64(documents[keyword])) for keyword in order])
    assert read_character(raw).persona.name == "Real"


def test_chunk_keywords_are_compared_case_insensitively() -> None:
    raw = png_card([("Chara", b64(v2_card(name="Backfill"))),
                    ("CCV3", b64(v3_card(name="Upper")))])
    assert read_character(raw).persona.name == "Upper"


def test_a_charx_reads_card_json_and_its_main_icon() -> None:
    icon = png_bytes(picture((30, 30), (10, 200, 10)))
    card = v3_card(assets=[
        {"type": "icon", "uri": "embeded://assets/icon/images/main.png", "name": "main",
         "ext": "png"},
        {"type": "emotion", "uri": "embeded://assets/emotion/images/happy.png",
         "name": "happy", "ext": "png"}])
    raw = charx(card, {"assets/icon/images/main.png": icon,
                       "assets/emotion/images/happy.png": icon})
    character = read_character(raw)
    assert character.persona.name == "Mira"
    assert character.avatar is not None
    with Image.open(io.BytesIO(character.avatar)) as avatar:
        assert avatar.convert("RGB").getpixel((0, 0)) == (10, 200, 10)
    assert character.notes == ("1 embedded asset(s) besides the portrait were not kept",)


# --- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [v2_card, v3_card])
def test_import_export_import_keeps_every_field(make: Any) -> None:
    original = make()
    persona = read_character(json.dumps(original).encode()).persona
    again = read_character(export_v2_json(persona)).persona
    exported = json.loads(export_v2_json(again))
    assert exported["data"] == original["data"]  # unknown extensions included
    from_png = read_character(export_png(persona, None))
    assert card_document(from_png.persona) == original  # V3 comes back as V3 (ccv3 chunk)
    assert from_png.persona == persona
    assert from_png.avatar is not None  # a plain default picture keeps it a valid card


def test_export_png_keeps_the_avatar() -> None:
    character = read_character(png_card([("chara", b64(v2_card()))]))
    again = read_character(export_png(character.persona, character.avatar))
    assert again.avatar == character.avatar


def test_edits_made_here_are_exported_and_the_rest_of_the_card_kept() -> None:
    imported = read_character(json.dumps(v2_card()).encode()).persona
    edited = with_card(Persona("Mira", "A new description.", greeting="Hi!"), imported)
    data = json.loads(export_v2_json(edited))["data"]
    assert data["description"] == "A new description."
    assert data["personality"] == ""
    assert data["first_mes"] == "Hi!"
    assert data["extensions"] == v2_card()["data"]["extensions"]
    assert data["alternate_greetings"] == v2_card()["data"]["alternate_greetings"]


def test_a_persona_made_here_exports_as_a_v2_card() -> None:
    persona = Persona("Rook", "A keeper.", scenario="A storm.", greeting="Tea?",
                      example_dialogue="<START>\nYou: hi\nRook: hm")
    document = json.loads(export_v2_json(persona))
    assert document["spec"] == "chara_card_v2"
    assert document["data"]["description"] == "A keeper."
    assert read_character(export_png(persona, None)).persona.name == "Rook"


# --- hostile files ------------------------------------------------------------------------------

def test_a_truncated_png_is_refused_at_any_cut() -> None:
    raw = png_card([("chara", b64(v2_card()))])
    for cut in range(8, len(raw), 7):
        with pytest.raises(CardError):
            read_character(raw[:cut])


@pytest.mark.parametrize(("raw", "message"), [
    (png_card([("chara", "not base64 at all!")]), "not valid base64"),
    (png_card([("chara", b64([1, 2]))]), "must be an object"),
    (png_bytes(), "holds no character card"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "damaged"),
    (json.dumps(v2_card(name=None)).encode(), "'data.name' is missing"),
    (json.dumps(v2_card(description=42)).encode(), "'data.description' must be text"),
    (json.dumps(v2_card(alternate_greetings="hi")).encode(), "must be a list of text"),
    (json.dumps({"spec": "chara_card_v2", "data": []}).encode(), "'data' must be an object"),
    (json.dumps(v2_card(character_book={"entries": [{"keys": "x", "content": "y"}]})).encode(),
     "entries[0].keys' must be a list of text"),
    (json.dumps(v2_card(character_book={"entries": [
        {"keys": ["x"], "content": "y", "enabled": "yes"}]})).encode(),
     "entries[0].enabled' must be true or false"),
    (json.dumps(v2_card(description="x" * 40_000)).encode(), "longer than 32000"),
    (json.dumps({"spec": "lorebook_v3", "data": {}}).encode(), "lorebook, not a character"),
    (json.dumps({"spec": "chara_card_v9", "data": {}}).encode(), "unknown card format"),
    (b"[" * 100_000 + b"]" * 100_000, "nested more than 20 levels"),
    (json.dumps(v2_card(extensions={"a": nested(40)})).encode(), "nested more than 20 levels"),
    (b"\xff\xfe garbage", "neither PNG, CHARX nor UTF-8 JSON"),
    (b"{not json", "not valid JSON"),
])
def test_hostile_cards_are_refused_with_a_clear_reason(raw: bytes, message: str) -> None:
    with pytest.raises(CardError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_character(raw)


@pytest.mark.parametrize("side", [5000, 50_000])  # under and over Pillow's own limit
def test_a_decompression_bomb_picture_is_refused_before_decoding(side: int) -> None:
    with pytest.raises(CardError, match=r"too large \(more than 16 million pixels\)"):
        read_character(bomb_png(side, side, v2_card()))


def test_a_zip_bomb_card_json_is_refused_unread() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("card.json", b" " * (3 * 1024 * 1024))  # compresses to a few KiB
    raw = out.getvalue()
    assert len(raw) < 64 * 1024
    with pytest.raises(CardError, match="unpacks to more than"):
        read_character(raw)


def test_a_zip_that_lies_about_its_size_is_cut_off() -> None:
    honest = charx(v2_card(), {})
    # Shrink the declared size of card.json in both headers: the reader stops there and the
    # checksum no longer matches, so the damaged file is refused.
    archive = zipfile.ZipFile(io.BytesIO(honest))
    size = archive.getinfo("card.json").file_size
    lying = honest.replace(size.to_bytes(4, "little"), (10).to_bytes(4, "little"))
    with pytest.raises(CardError):
        read_character(lying)


def test_an_oversized_file_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(CardError, match="larger than 8 MiB"):
        read_character(b"{" + b" " * CARD_FILE_MAX_BYTES + b"}")


def test_a_charx_without_card_json_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(CardError, match=r"has no card\.json"):
        read_character(out.getvalue())
