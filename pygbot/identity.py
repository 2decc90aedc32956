"""Whether a reply has the character introduce itself under another name, as pure functions.

Small models drift into other characters ("Hi, I'm Luna!") when a persona is short or the
conversation wanders. The chat service resamples such a reply; `bench/quality.py` counts them.
Only first-person introductions count: "my name is X", "my name's X", "call me X", "I'm X."
and "I am X," with a capitalised X that ends the clause. Talking about others ("Luna is my
sister") and adjectives after "I'm" ("I'm Glad you came") are not introductions.
"""

from __future__ import annotations

import re

_NAME = r"([A-Z][\w'’-]{1,20}(?: [A-Z][\w'’-]{1,20})?)"
_INTRODUCTIONS = (
    # "my name is Luna", "My name's Luna Moon", "name's Luna"
    re.compile(rf"\b(?:[Mm]y )?name(?:'s|’s| is) {_NAME}"),
    # "call me Luna", "Call me Luna"
    re.compile(rf"\b[Cc]all me {_NAME}"),
    # "I'm called Ryk", "I am named Luna", "I go by Luna" (seen in the quality bench)
    re.compile(rf"\bI(?:'m|’m| am) (?:called|named) {_NAME}"),
    re.compile(rf"\bI go by {_NAME}"),
    # "I'm Luna." / "I am Luna, ..." / "I'm Luna!" / "I'm Luna and ..." — the name ends the
    # clause, which leaves out "I'm Glad you came" and "I'm Not sure".
    re.compile(rf"\bI(?:'m|’m| am) {_NAME}(?=\s*(?:[.,!?;…]|$| and\b| the\b| from\b| of\b))"),
)
# Capitalised words that follow "I'm"/"my name is" without being a name.
_NOT_NAMES = frozenset([
    "not", "so", "just", "here", "there", "sorry", "glad", "fine", "good", "okay", "ok", "happy",
    "sure", "really", "very", "always", "never", "still", "also", "only", "all", "in", "on", "at",
    "from", "of", "your", "yours", "afraid", "back", "going", "ready", "well", "doing", "human",
    "alive", "real", "right", "done", "home", "busy", "tired", "awake", "listening", "fine",
    "thanks", "thank", "yes", "no",
])


def introduced_names(reply: str) -> list[str]:
    """Names the reply's speaker introduces itself by, in order of appearance."""
    found: list[tuple[int, str]] = []
    for pattern in _INTRODUCTIONS:
        for match in pattern.finditer(reply):
            name = match.group(1)
            if name.split()[0].casefold() not in _NOT_NAMES:
                found.append((match.start(), name))
    return [name for _, name in sorted(found)]


def uses_other_name(reply: str, own_name: str) -> bool:
    """Whether the reply has the character introduce itself by a name that is not its own
    (a name sharing a word with `own_name`, "Rook" for "Old Rook", is its own)."""
    own = {word.casefold() for word in own_name.split()}
    return any(not own & {word.casefold() for word in name.split()}
               for name in introduced_names(reply))
