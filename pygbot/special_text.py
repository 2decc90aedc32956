"""Special-token text in a prompt bound for a remote server, kept as text.

A member (or a character card) may write "<|endoftext|>". The local engine tokenizes prompts
with `split_special_tokens`, so that reaches the model as characters. A remote server tokenizes
the raw prompt itself and matches special-token text: the member's "<|endoftext|>" would
become the real end-of-text token, which starts a new document without the persona (or tells
the model the text is over). So before a prompt leaves for a server, every special token's
text gets an invisible WORD JOINER after its first character, which no tokenizer matches as
the token; text coming back has it taken out again, so what members see and what is stored
never carries it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

WORD_JOINER = "\u2060"  # invisible, joins rather than breaks: changes no word the model sees


class SpecialTokenText:
    """`plain(text)`: `text` with no tokenizer special-token string left in it.
    `restore(text)`: the reverse, for text the server sends back."""

    def __init__(self, specials: Iterable[str]) -> None:
        # One character cannot be split; a tokenizer whose special token is one character
        # reads that character as the token whatever is done here.
        texts = {text for text in specials if len(text) > 1 and WORD_JOINER not in text}
        self._broken = {_break(text): text for text in texts}
        self._special = _alternatives(texts)
        self._joined = _alternatives(self._broken)

    def plain(self, text: str) -> str:
        # Breaking one token's text can leave another that overlapped it ("ab" broken in
        # "abc" leaves "bc"): go again until none is left. Each pass breaks at least one
        # and a joiner creates none, so this ends.
        while self._special is not None and self._special.search(text):
            text = self._special.sub(lambda match: _break(match.group()), text)
        return text

    def restore(self, text: str) -> str:
        while self._joined is not None and self._joined.search(text):
            text = self._joined.sub(lambda match: self._broken[match.group()], text)
        return text

    def restoring(self, listener: Callable[[str], None]) -> Callable[[str], None]:
        """`listener` hearing restored text (for a streamed reply)."""
        return lambda text: listener(self.restore(text))


def _break(special: str) -> str:
    return special[0] + WORD_JOINER + special[1:]


def _alternatives(texts: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(texts, key=len, reverse=True)  # the longest of overlapping ones wins
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None
