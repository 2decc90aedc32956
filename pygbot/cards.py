"""Character cards, the files role-play communities trade: reading and writing them.

Formats read (the first bytes decide, never the file name):
- JSON: Character Card V1 (flat `name`, `description`, `first_mes` ...), V2
  (`spec: chara_card_v2`, fields under `data`), V3 (`spec: chara_card_v3`), and pygbot's own
  persona files (`name`, `persona`, ...; TavernAI's `char_name`, `char_persona` ...);
- PNG: the card as base64 JSON in a `tEXt`, `zTXt` or `iTXt` chunk named `ccv3` (preferred)
  or `chara`, keywords compared case-insensitively; the picture becomes the avatar;
- CHARX: a zip with `card.json` at its root and the main icon among its assets.

A card becomes a `Persona`: description + personality → persona, scenario → scenario,
mes_example → example dialogue, first_mes → greeting, alternate_greetings → the greeting's
swipes, character_book → lorebook. `{{char}}`/`<BOT>` become the name (V3: the nickname),
`{{user}}`/`<USER>` is filled in per member. creator_notes never reaches the prompt. The whole
card stays with the persona (`Persona.card`), so an export gives back every field, unknown
ones and `extensions` included.

Everything read is hostile until checked: sizes are bounded before anything is decoded or
decompressed, the picture's pixel count is checked before its pixels are, and every field the
bot uses is type-checked; anything wrong is one `CardError` that says what.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, PngImagePlugin

from pygbot.labels import is_label_char, label_key
from pygbot.lorebook import Lorebook
from pygbot.persona import (
    CARD_TEXT_MAX_CHARS,
    NAME_MAX_CHARS,
    PERSONA_FILE_MAX_DEPTH,
    Persona,
    PersonaError,
    json_depth,
    normalize_placeholders,
)

# --- limits: what an honest card never comes near --------------------------------------------
CARD_FILE_MAX_BYTES = 8 * 1024 * 1024  # an upload or file: PNG with a large portrait
CARD_JSON_MAX_BYTES = 2 * 1024 * 1024  # the card's JSON, big lorebooks included
LOREBOOK_MAX_ENTRIES = 1000
LORE_KEYS_MAX = 100  # keys (and secondary keys) per entry
LORE_KEY_MAX_CHARS = 200
AVATAR_MAX_PIXELS = 4096 * 4096  # checked from the header, before any pixel is decoded
AVATAR_MAX_SIDE = 1024  # the stored avatar is scaled down to this
CHARX_MAX_ENTRIES = 2000
DEFAULT_IMAGE_SIZE = (400, 600)  # the usual card portrait shape
DEFAULT_IMAGE_COLOUR = (88, 101, 242)  # a plain picture when a character has none

SPEC_V2 = "chara_card_v2"
SPEC_V3 = "chara_card_v3"
SPEC_V1 = "chara_card_v1"  # not written in files; how a flat V1 card is named here
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"
_CARD_KEYWORDS = ("ccv3", "chara")  # in order of preference
_TEXT_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
_V2_DEFAULTS: dict[str, Any] = {
    "name": "", "description": "", "personality": "", "scenario": "", "first_mes": "",
    "mes_example": "", "creator_notes": "", "system_prompt": "", "post_history_instructions": "",
    "alternate_greetings": [], "tags": [], "creator": "", "character_version": "",
    "extensions": {},
}
_CHAR_LABEL_LINE = re.compile(r"^(\s*)(?:\{\{\s*char\s*\}\}|<\s*(?:bot|char)\s*>)(\s*:)",
                              re.IGNORECASE | re.MULTILINE)


class CardError(PersonaError):
    """A card that cannot be imported; the message says what is wrong in one line."""


@dataclass(frozen=True)
class Character:
    """What a card file holds, ready to use: the persona (with the card inside it), its
    picture as PNG bytes, and notes for the person importing it."""

    persona: Persona
    avatar: bytes | None = None
    notes: tuple[str, ...] = ()


# --- reading ------------------------------------------------------------------------------------

def read_character(raw: bytes) -> Character:
    """The character in a card file of any supported format; `CardError` if there is none."""
    if len(raw) > CARD_FILE_MAX_BYTES:
        raise CardError(f"the file is larger than {CARD_FILE_MAX_BYTES // (1024 * 1024)} MiB")
    if raw.startswith(_PNG_SIGNATURE):
        return _read_png(raw)
    if raw.startswith(_ZIP_SIGNATURE):
        return _read_charx(raw)
    return character_from_json(_parse_json(raw))


def character_from_json(document: Mapping[str, Any], avatar: bytes | None = None,
                        notes: tuple[str, ...] = ()) -> Character:
    """A character from a parsed card (or pygbot persona) JSON object."""
    spec = document.get("spec")
    if spec == "lorebook_v3":
        raise CardError("this is a lorebook, not a character card")
    if spec is not None and spec not in (SPEC_V2, SPEC_V3):
        raise CardError(f"unknown card format {str(spec)[:40]!r} (expected {SPEC_V2} "
                        f"or {SPEC_V3})")
    if spec is None and _is_pygbot_persona(document):
        return Character(Persona.from_dict(document).with_placeholders_filled(), avatar, notes)
    notes = (*notes, *_version_notes(document))
    return Character(persona_from_card(document), avatar, notes)


def persona_from_card(document: Mapping[str, Any]) -> Persona:
    """Map a V1/V2/V3 card onto the Pygmalion persona, keeping the card itself."""
    data = _card_data(document)
    name = label_safe_name(data["name"])
    nickname = data.get("nickname") if document.get("spec") == SPEC_V3 else None
    char = nickname.strip() if isinstance(nickname, str) and nickname.strip() else name

    def text(value: str, examples: bool = False) -> str:
        value = value.replace("\r\n", "\n").strip()
        if examples:  # a `{{char}}:` line is the character's turn: its label is the name
            value = _CHAR_LABEL_LINE.sub(rf"\g<1>{name}\g<2>", value)
        return normalize_placeholders(value, char)

    book = data.get("character_book")
    persona_text = "\n".join(part for part in (text(data["description"]),
                                               text(data["personality"])) if part)
    try:
        return Persona(
            name=name, persona=persona_text, scenario=text(data["scenario"]),
            greeting=text(data["first_mes"]), example_dialogue=text(data["mes_example"], True),
            alternate_greetings=tuple(t for t in (text(g) for g in data["alternate_greetings"])
                                      if t),
            lorebook=Lorebook.from_dict(book).with_text(text) if book else None,
            card=copy.deepcopy(dict(document)),
        )
    except CardError:
        raise
    except PersonaError as error:
        raise CardError(str(error)) from None


def label_safe_name(name: str) -> str:
    """A card's name as a prompt label: characters a label may not hold become spaces, and
    it is cut to NAME_MAX_CHARS ("Aria ♡ (v2)" → "Aria v2")."""
    kept = "".join(ch if is_label_char(ch) else " " for ch in name)
    label = " ".join(kept.split())[:NAME_MAX_CHARS].strip()
    if not label:
        raise CardError("the card's name has no letters or digits")
    if label_key(label) == "you":
        raise CardError("the card's name is 'You', which is the label for members in the "
                        "prompt; rename the character")
    return label


def _parse_json(raw: bytes) -> Mapping[str, Any]:
    if len(raw) > CARD_JSON_MAX_BYTES:
        raise CardError(f"the card's JSON is larger than {CARD_JSON_MAX_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CardError("not a character card: the file is neither PNG, CHARX nor UTF-8 "
                        "JSON") from None
    if json_depth(text) > PERSONA_FILE_MAX_DEPTH:  # measured without recursing
        raise CardError(f"JSON nested more than {PERSONA_FILE_MAX_DEPTH} levels deep")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise CardError(f"not valid JSON: {error.msg} at line {error.lineno}") from None
    if not isinstance(document, dict):
        raise CardError("the card's JSON must be an object")
    return document


def _is_pygbot_persona(document: Mapping[str, Any]) -> bool:
    return "persona" in document or "char_name" in document or "char_persona" in document


def _version_notes(document: Mapping[str, Any]) -> tuple[str, ...]:
    if document.get("spec") != SPEC_V3:
        return ()
    try:
        newer = float(str(document.get("spec_version", "3.0"))) > 3.0
    except ValueError:
        newer = False
    return ("this card was made for a newer card version; its new features are kept but "
            "not used",) if newer else ()


# --- checking a card's fields -------------------------------------------------------------------

def _card_data(document: Mapping[str, Any]) -> dict[str, Any]:
    """The card's fields with the ones the bot uses type-checked; missing texts are ""."""
    if document.get("spec") in (SPEC_V2, SPEC_V3):
        data = document.get("data")
        if not isinstance(data, dict):
            raise CardError("field 'data' must be an object")
        where = "data."
    else:
        data, where = dict(document), ""
    checked = dict(data)
    for key in _TEXT_FIELDS:
        value = data.get(key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise CardError(f"field '{where}{key}' must be text, not {_type(value)}")
        if len(value) > CARD_TEXT_MAX_CHARS:
            raise CardError(f"field '{where}{key}' is longer than {CARD_TEXT_MAX_CHARS} "
                            "characters")
        checked[key] = value
    if not checked["name"].strip():
        raise CardError(f"field '{where}name' is missing or empty")
    checked["alternate_greetings"] = _text_list(data.get("alternate_greetings"),
                                                f"{where}alternate_greetings",
                                                CARD_TEXT_MAX_CHARS)
    if data.get("nickname") is not None and not isinstance(data.get("nickname"), str):
        raise CardError(f"field '{where}nickname' must be text, not {_type(data['nickname'])}")
    book = data.get("character_book")
    if book is not None:
        _check_book(book, f"{where}character_book")
    return checked


def _check_book(book: Any, where: str) -> None:
    if not isinstance(book, dict):
        raise CardError(f"field '{where}' must be an object, not {_type(book)}")
    for key in ("scan_depth", "token_budget"):
        _optional(book, key, where, _is_number, "a number")
    entries = book.get("entries")
    if not isinstance(entries, list):
        raise CardError(f"field '{where}.entries' must be a list, not {_type(entries)}")
    if len(entries) > LOREBOOK_MAX_ENTRIES:
        raise CardError(f"the lorebook has more than {LOREBOOK_MAX_ENTRIES} entries")
    for index, entry in enumerate(entries):
        _check_entry(entry, f"{where}.entries[{index}]")


def _check_entry(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise CardError(f"field '{where}' must be an object, not {_type(entry)}")
    content = entry.get("content")
    if not isinstance(content, str):
        raise CardError(f"field '{where}.content' must be text, not {_type(content)}")
    if len(content) > CARD_TEXT_MAX_CHARS:
        raise CardError(f"field '{where}.content' is longer than {CARD_TEXT_MAX_CHARS} "
                        "characters")
    _text_list(entry.get("keys"), f"{where}.keys", LORE_KEY_MAX_CHARS, LORE_KEYS_MAX)
    _text_list(entry.get("secondary_keys"), f"{where}.secondary_keys", LORE_KEY_MAX_CHARS,
               LORE_KEYS_MAX)
    for key in ("enabled", "case_sensitive", "constant", "selective", "use_regex"):
        _optional(entry, key, where, lambda v: isinstance(v, bool), "true or false")
    for key in ("insertion_order", "priority"):
        _optional(entry, key, where, _is_number, "a number")


def _optional(data: Mapping[str, Any], key: str, where: str, ok: Any, kind: str) -> None:
    value = data.get(key)
    if value is not None and not ok(value):
        raise CardError(f"field '{where}.{key}' must be {kind}, not {_type(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        abs(value) < 2**53  # beyond this a JSON number is not an exact integer anywhere


def _text_list(value: Any, where: str, max_chars: int, max_items: int | None = None
               ) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CardError(f"field '{where}' must be a list of text")
    if max_items is not None and len(value) > max_items:
        raise CardError(f"field '{where}' has more than {max_items} items")
    if any(len(item) > max_chars for item in value):
        raise CardError(f"field '{where}' has an item longer than {max_chars} characters")
    return value


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false",
            type(None): "null"}.get(type(value), "a number")


# --- PNG ----------------------------------------------------------------------------------------

def _read_png(raw: bytes) -> Character:
    texts = _png_card_texts(raw)
    for keyword in _CARD_KEYWORDS:
        if keyword in texts:
            document = _parse_json(_decode_base64(texts[keyword], keyword))
            return character_from_json(document, avatar=avatar_from_image(raw))
    raise CardError("this PNG holds no character card (no 'chara' or 'ccv3' text chunk)")


def _png_card_texts(raw: bytes) -> dict[str, str]:
    """The text of every card chunk, by lower-cased keyword; the first of each wins."""
    texts: dict[str, str] = {}
    for kind, data in _png_chunks(raw):
        if kind not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        keyword, _, rest = data.partition(b"\0")
        key = keyword.decode("latin-1").strip().lower()
        if key in _CARD_KEYWORDS and key not in texts:
            texts[key] = _chunk_text(kind, rest)
    return texts


def _png_chunks(raw: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, data) of each chunk up to IEND, checking lengths and checksums."""
    position = len(_PNG_SIGNATURE)
    while True:
        if position + 8 > len(raw):
            raise CardError("the PNG is truncated (it ends before its last chunk)")
        length, kind = struct.unpack(">I4s", raw[position:position + 8])
        end = position + 12 + length
        if end > len(raw):
            raise CardError("the PNG is truncated (a chunk is cut off)")
        data = raw[position + 8:end - 4]
        if zlib.crc32(kind + data) != int.from_bytes(raw[end - 4:end], "big"):
            raise CardError("the PNG is damaged (a chunk fails its checksum)")
        yield kind, data
        if kind == b"IEND":
            return
        position = end


def _chunk_text(kind: bytes, rest: bytes) -> str:
    limit = CARD_JSON_MAX_BYTES * 4 // 3 + 1024  # base64 of the largest card we take
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":
        return _inflate(rest[1:], limit).decode("latin-1")
    # iTXt: compression flag, method, language tag \0, translated keyword \0, UTF-8 text
    if len(rest) < 2:
        raise CardError("the PNG's card chunk is damaged")
    compressed = rest[0] == 1
    _, _, after_language = rest[2:].partition(b"\0")
    _, _, text = after_language.partition(b"\0")
    if compressed:
        text = _inflate(text, limit)
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise CardError("the PNG's card chunk is not UTF-8 text") from None


def _inflate(data: bytes, limit: int) -> bytes:
    """zlib-decompress at most `limit` bytes: a compressed chunk cannot become a bomb."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit)
    except zlib.error:
        raise CardError("the PNG's card chunk does not decompress") from None
    if inflater.unconsumed_tail:
        raise CardError("the PNG's card chunk decompresses to more than "
                        f"{CARD_JSON_MAX_BYTES // 1024} KiB")
    return out


def _decode_base64(text: str, keyword: str) -> bytes:
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise CardError(f"the PNG's '{keyword}' chunk is not valid base64") from None


def avatar_from_image(raw: bytes) -> bytes:
    """A picture as the stored avatar: decoded (pixel count checked first), scaled down to
    AVATAR_MAX_SIDE and saved as a plain PNG with no text chunks."""
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > AVATAR_MAX_PIXELS:
                raise Image.DecompressionBombError(f"{width}×{height}")
            image.load()
            picture = image.convert("RGBA" if "A" in image.getbands() or
                                    "transparency" in image.info else "RGB")
    except Image.DecompressionBombError:  # Pillow's own check, at open, or ours
        raise CardError(f"the picture is too large (more than "
                        f"{AVATAR_MAX_PIXELS // 1_000_000} million pixels)") from None
    except (OSError, ValueError, SyntaxError, EOFError, zlib.error, struct.error) as error:
        raise CardError(f"the picture cannot be read ({_short(error)})") from None
    picture.thumbnail((AVATAR_MAX_SIDE, AVATAR_MAX_SIDE))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _short(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:120]


# --- CHARX --------------------------------------------------------------------------------------

def _read_charx(raw: bytes) -> Character:
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            if len(archive.infolist()) > CHARX_MAX_ENTRIES:
                raise CardError(f"the CHARX holds more than {CHARX_MAX_ENTRIES} files")
            document = _parse_json(_zip_member(archive, "card.json", CARD_JSON_MAX_BYTES))
            avatar, skipped = _charx_icon(archive, document)
    except CardError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error,
            NotImplementedError, RuntimeError, ValueError) as error:
        raise CardError(f"the CHARX (zip) file is damaged ({_short(error)})") from None
    notes = (f"{skipped} embedded asset(s) besides the portrait were not kept",) if skipped \
        else ()
    return character_from_json(document, avatar=avatar, notes=notes)


def _zip_member(archive: zipfile.ZipFile, path: str, limit: int) -> bytes:
    try:
        info = archive.getinfo(path)
    except KeyError:
        raise CardError(f"the CHARX has no {path}") from None
    if info.flag_bits & 0x1:
        raise CardError(f"the CHARX's {path} is encrypted")
    if info.file_size > limit:
        raise CardError(f"the CHARX's {path} unpacks to more than {limit // 1024} KiB")
    with archive.open(info) as member:
        data = member.read(limit + 1)  # never more than the header promised, plus one
    if len(data) > limit:
        raise CardError(f"the CHARX's {path} unpacks to more than {limit // 1024} KiB")
    return data


def _charx_icon(archive: zipfile.ZipFile, document: Mapping[str, Any]
                ) -> tuple[bytes | None, int]:
    """The main icon's picture, and how many other embedded assets are not kept."""
    data = document.get("data")
    assets = data.get("assets") if isinstance(data, dict) else None
    if not isinstance(assets, list):
        return None, 0
    embedded = [a for a in assets if isinstance(a, dict) and isinstance(a.get("uri"), str)
                and a["uri"].startswith(("embeded://", "embedded://"))]
    icons = [a for a in embedded if a.get("type") == "icon"]
    icon = next((a for a in icons if a.get("name") == "main"), icons[0] if icons else None)
    if icon is None:
        return None, len(embedded)
    path = icon["uri"].split("://", 1)[1]
    picture = _zip_member(archive, path, CARD_FILE_MAX_BYTES)
    return avatar_from_image(picture), len(embedded) - 1


# --- writing ------------------------------------------------------------------------------------

def card_document(persona: Persona) -> dict[str, Any]:
    """The persona as a card object: its own card with what was edited here written back,
    or a new V2 card for a persona made here. V1 cards become V2."""
    if persona.card is None:
        return {"spec": SPEC_V2, "spec_version": "2.0",
                "data": {**copy.deepcopy(_V2_DEFAULTS), **_edited_fields(persona, None)}}
    document = copy.deepcopy(dict(persona.card))
    if document.get("spec") not in (SPEC_V2, SPEC_V3):
        document = {"spec": SPEC_V2, "spec_version": "2.0",
                    "data": {**copy.deepcopy(_V2_DEFAULTS), **document}}
    document["data"].update(_edited_fields(persona, persona_from_card(persona.card)))
    return document


def _edited_fields(persona: Persona, imported: Persona | None) -> dict[str, Any]:
    """Card fields for what differs from the card as imported (everything, when new)."""
    fields: dict[str, Any] = {}
    if imported is None or persona.name != imported.name:
        fields["name"] = persona.name
    if imported is None or persona.persona != imported.persona:
        fields.update(description=persona.persona, personality="")
    for key, value, before in (
        ("scenario", persona.scenario, imported and imported.scenario),
        ("first_mes", persona.greeting, imported and imported.greeting),
        ("mes_example", persona.example_dialogue, imported and imported.example_dialogue),
    ):
        if imported is None or value != before:
            fields[key] = value
    if imported is None or persona.alternate_greetings != imported.alternate_greetings:
        fields["alternate_greetings"] = list(persona.alternate_greetings)
    return fields


def export_v2_json(persona: Persona) -> bytes:
    """A Character Card V2 JSON file (V3-only fields ride along inside `data`)."""
    return (json.dumps(_as_v2(card_document(persona)), indent=2, ensure_ascii=False) + "\n"
            ).encode("utf-8")


def export_png(persona: Persona, avatar: bytes | None) -> bytes:
    """A V2 PNG card: the avatar (or a plain picture) with the card in a `chara` chunk, and
    for a V3 card the V3 object in a `ccv3` chunk too, so V3 readers lose nothing."""
    document = card_document(persona)
    info = PngImagePlugin.PngInfo()
    info.add_text("chara", _base64_json(_as_v2(document)))
    if document.get("spec") == SPEC_V3:
        info.add_text("ccv3", _base64_json(document))
    picture = Image.open(io.BytesIO(avatar)) if avatar else \
        Image.new("RGB", DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_COLOUR)
    out = io.BytesIO()
    picture.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _as_v2(document: Mapping[str, Any]) -> dict[str, Any]:
    if document.get("spec") == SPEC_V2:
        return dict(document)
    return {**document, "spec": SPEC_V2, "spec_version": "2.0"}


def _base64_json(document: Mapping[str, Any]) -> str:
    return base64.b64encode(json.dumps(document, ensure_ascii=False).encode("utf-8")).decode(
        "ascii")


def with_card(persona: Persona, card_from: Persona) -> Persona:
    """`persona` (e.g. edited in Discord's form) keeping the card, lorebook and alternate
    greetings of the persona it was edited from, so an export still has them."""
    return replace(persona, card=card_from.card, lorebook=card_from.lorebook,
                   alternate_greetings=persona.alternate_greetings or
                   card_from.alternate_greetings)
