"""Which characters a speaker label may hold: the one rule shared by persona names and the
labels made from members' display names.

A label is what starts a turn in the prompt (`NAME: ...`), so it is built from an allow-list
rather than by removing the characters known to be dangerous: letters, marks and digits of
any script, spaces, and a few punctuation marks people use in names. Nothing else — no
colon or anything that looks like one (fullwidth, ratio, modifier letter colons ...), no
brackets, no line break of any kind, nothing invisible — can ever be part of a label.
"""

from __future__ import annotations

import unicodedata

LABEL_PUNCTUATION = frozenset(" '’-._")
_LABEL_CATEGORIES = ("L", "M", "N")  # letters, combining marks, digits of any script


def is_label_char(char: str) -> bool:
    """Whether `char` may appear in a speaker label, also after NFKC normalisation (which
    turns e.g. a fullwidth colon into ':')."""
    for form in {char, unicodedata.normalize("NFKC", char)}:
        for part in form:
            if part not in LABEL_PUNCTUATION and \
                    not unicodedata.category(part).startswith(_LABEL_CATEGORIES):
                return False
    return True


def label_key(label: str) -> str:
    """How two labels are compared: 'ＡＲＩＡ' and 'aria' are the same speaker."""
    return unicodedata.normalize("NFKC", label).casefold().strip()
