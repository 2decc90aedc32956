"""Reading the `.env` settings file strictly: every problem is one line naming where it is.

python-dotenv on its own raises a traceback on a file that is not UTF-8 and skips lines it
cannot parse with a warning of its own, so a misplaced quote silently drops a setting. Here
the file is decoded and checked line by line first, then handed to python-dotenv for the
values (quotes, `export`, `${VAR}` expansion work as documented there).

No message quotes a line's content: a line that cannot be read may well be a pasted token.
"""

from __future__ import annotations

import difflib
import io
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

# What a setting's name looks like; only such names are ever repeated back in a warning.
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SUGGESTION_CUTOFF = 0.6  # difflib ratio: MODLE -> MODEL, TEMPRATURE -> TEMPERATURE


class EnvFileError(ValueError):
    """The file cannot be used as it is; `str()` is one line saying where and what to do."""


@dataclass(frozen=True)
class EnvFile:
    values: dict[str, str]
    warnings: tuple[str, ...]  # one line each: keys that are not settings


def read_env_file(path: Path, known_keys: Collection[str]) -> EnvFile:
    """The settings in `path`; raises `EnvFileError` for a file that cannot be trusted."""
    text = _decode(path)
    lines: dict[str, int] = {}  # key -> the line that sets it last
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            raise EnvFileError(f"{path} line {line} is not KEY=value (check its quotes)")
        if binding.key is not None and binding.value is None:
            raise EnvFileError(f"{path} line {line} has a name but no '='; write KEY=value, "
                               "or KEY= to leave a setting at its default")
        if binding.key is not None:
            lines[binding.key] = line
    values = {key: value for key, value in dotenv_values(stream=io.StringIO(text)).items()
              if value is not None}
    return EnvFile(values, tuple(
        f"{path} line {lines[key]}: {_unknown_key_warning(key, known_keys)}"
        for key in values if key not in known_keys))


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise EnvFileError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig")  # an editor's byte-order mark is harmless
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise EnvFileError(f"{path} line {line} is not UTF-8 text (byte "
                           f"0x{data[error.start]:02x}); save the file as UTF-8") from None


def _unknown_key_warning(key: str, known_keys: Collection[str]) -> str:
    close = difflib.get_close_matches(key.upper(), list(known_keys), n=1,
                                      cutoff=_SUGGESTION_CUTOFF)
    hint = f"did you mean {close[0]}?" if close else "it is ignored"
    return f"{_shown(key)} is not a pygbot setting; {hint}"


def _shown(key: str) -> str:
    return key if _SETTING_NAME.fullmatch(key) else "the key"
