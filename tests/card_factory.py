"""Character card files built the way other front ends write them (SillyTavern, RisuAI):
PNG pictures with the card in text chunks, CHARX zips, JSON."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from typing import Any

from PIL import Image, PngImagePlugin


def v2_card(**data: Any) -> dict[str, Any]:
    fields = {
        "name": "Mira", "description": "{{char}} is a barista who remembers {{user}}'s order.",
        "personality": "Warm, chatty.", "scenario": "A rainy afternoon at the cafe.",
        "first_mes": "Welcome back, {{user}}!", "mes_example":
            "<START>\n{{user}}: The usual?\n{{char}}: Oat latte, coming up.",
        "creator_notes": "SECRET CREATOR NOTE", "system_prompt": "Be Mira.",
        "post_history_instructions": "Stay in character.",
        "alternate_greetings": ["Oh! {{user}}, you're early.", "*waves* Hi there."],
        "tags": ["cafe", "slice of life"], "creator": "someone", "character_version": "1.2",
        "extensions": {"talkativeness": "0.5", "depth_prompt": {"depth": 4, "prompt": "x"},
                       "some_frontend": {"nested": [1, {"deep": True}]}},
    }
    fields.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": fields}


def v3_card(**data: Any) -> dict[str, Any]:
    card = v2_card(**{"nickname": "Mimi", "group_only_greetings": [], "source": ["x"],
                      "creation_date": 1700000000, "assets": [
                          {"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
                      **data})
    return {**card, "spec": "chara_card_v3", "spec_version": "3.0"}


def v1_card(**data: Any) -> dict[str, Any]:
    fields = {"name": "Old", "description": "{{char}} is an old-style card.",
              "personality": "grumpy", "scenario": "", "first_mes": "Hmph. <USER>.",
              "mes_example": "", "an_unknown_key": 7}
    fields.update(data)
    return fields


def b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


def picture(size: tuple[int, int] = (40, 60), colour: tuple[int, int, int] = (200, 30, 30)
            ) -> Image.Image:
    return Image.new("RGB", size, colour)


def png_card(chunks: list[tuple[str, str]], *, itxt: bool = False, compressed: bool = False,
             image: Image.Image | None = None) -> bytes:
    """A PNG with text chunks (keyword, value) in order, as tEXt or iTXt."""
    info = PngImagePlugin.PngInfo()
    for keyword, value in chunks:
        if itxt:
            info.add_itxt(keyword, value, zip=compressed)
        else:
            info.add_text(keyword, value)
    out = io.BytesIO()
    (image or picture()).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def charx(card: dict[str, Any], files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("card.json", json.dumps(card))
        for path, data in files.items():
            archive.writestr(path, data)
    return out.getvalue()


def png_bytes(image: Image.Image | None = None) -> bytes:
    out = io.BytesIO()
    (image or picture()).save(out, format="PNG")
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int, card: dict[str, Any]) -> bytes:
    """A valid little PNG file whose header claims `width`×`height` pixels: a decompression
    bomb's shape without its gigabytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"tEXt", b"chara\0" + b64(card).encode())
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
