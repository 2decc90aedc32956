"""The persona folder: cards dropped in load at start; `bot.py --import-card` adds one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pygbot.character_files import load_character_dir
from pygbot.library import PersonaLibrary
from pygbot.store import Store
from tests.card_factory import b64, charx, png_bytes, png_card, v2_card, v3_card

REPO = Path(__file__).resolve().parent.parent


def import_card(path: Path, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "bot.py", "--import-card", str(path),
                           "--personas-dir", str(directory)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_png_json_and_charx_cards_in_the_folder_load_with_their_pictures(tmp_path: Path) -> None:
    (tmp_path / "mira.png").write_bytes(png_card([("chara", b64(v2_card()))]))
    (tmp_path / "nova.json").write_text(json.dumps(v3_card(name="Nova")))
    (tmp_path / "kit.charx").write_bytes(charx(v3_card(name="Kit", assets=[
        {"type": "icon", "uri": "embeded://assets/icon/images/main.png", "name": "main",
         "ext": "png"}]), {"assets/icon/images/main.png": png_bytes()}))
    (tmp_path / "notes.txt").write_text("not a character")
    characters = load_character_dir(tmp_path)
    assert sorted(characters) == ["kit", "mira", "nova"]
    assert characters["mira"].avatar and characters["kit"].avatar
    assert characters["nova"].avatar is None


async def test_built_in_card_pictures_are_served_by_the_library(tmp_path: Path) -> None:
    folder = tmp_path / "personas"
    folder.mkdir()
    (folder / "mira.png").write_bytes(png_card([("chara", b64(v2_card()))]))
    async with await Store.open(tmp_path / "db.sqlite3") as store:
        library = PersonaLibrary.from_dir(store, folder, "Mira")
        assert (await library.active(1)).name == "Mira"
        assert await library.avatar(1, "mira") is not None
        assert await library.avatar(1, "Nobody") is None


def test_import_card_writes_a_loadable_card_and_exits_zero(tmp_path: Path) -> None:
    source = tmp_path / "download.png"
    source.write_bytes(png_card([("chara", b64(v2_card()))]))
    target = tmp_path / "personas"
    result = import_card(source, target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported Mira into {target / 'mira.png'}"
    loaded = load_character_dir(target)["mira"]
    assert loaded.persona.card == v2_card()
    assert loaded.avatar is not None


def test_import_card_keeps_a_v3_card_without_picture_as_v3_json(tmp_path: Path) -> None:
    source = tmp_path / "nova.json"
    source.write_text(json.dumps(v3_card(name="Nova")))
    result = import_card(source, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "nova.json").read_text()) == v3_card(name="Nova")


@pytest.mark.parametrize(("content", "reason"), [
    (png_card([("chara", b64(v2_card()))])[:200], "the PNG is truncated"),
    (png_card([("chara", "%%%")]), "not valid base64"),
    (b"{\"spec\": \"chara_card_v2\", \"data\": 5}", "'data' must be an object"),
])
def test_a_broken_card_exits_non_zero_with_one_line_and_writes_nothing(
    tmp_path: Path, content: bytes, reason: str,
) -> None:
    source = tmp_path / "card.png"
    source.write_bytes(content)
    target = tmp_path / "personas"
    result = import_card(source, target)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"pygbot: cannot import {source}: ")
    assert reason in result.stderr
    assert not target.exists() or not any(target.iterdir())


def test_an_unreadable_card_or_a_taken_name_exits_non_zero(tmp_path: Path) -> None:
    target = tmp_path / "personas"
    missing = import_card(tmp_path / "nope.png", target)
    assert missing.returncode != 0 and "cannot read file" in missing.stderr
    source = tmp_path / "mira.json"
    source.write_text(json.dumps(v2_card()))
    assert import_card(source, target).returncode == 0
    again = import_card(source, target)
    assert again.returncode != 0
    assert "already holds a character named 'Mira'" in again.stderr
    assert [p.name for p in target.iterdir()] == ["mira.json"]
