"""The character's reply as text: the final version, and the part of one in progress that a
member may already see.

Pure functions over `str`. `final_reply` is what is stored: the continuation cut at the next
speaker, a half sentence at the token limit dropped, a loop trimmed. `visible_reply` is for
streaming: of a continuation that is still growing, the longest run of whole sentences that
is certain to begin the final reply, whatever text comes next. So a member never sees a line
that later turns out to be another speaker's, a `<START>`, the character's own label, a loop
or a half sentence that the final reply drops (tests/test_reply_text.py checks this on every
prefix of many generated texts).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from pygbot.prompt import clean_text, extract_reply, trim_unfinished_sentence
from pygbot.repetition import LOOP_NGRAM_WORDS, trim_loop

log = logging.getLogger(__name__)

# The tail of a text that may still grow into `<START>` (any case, any spacing, as
# prompt._START_MARK reads it).
_START_IN_PROGRESS = re.compile(r"<\s*(?:s(?:t(?:a(?:r(?:t\s*)?)?)?)?)?\Z", re.IGNORECASE)
# The tail of a text that may still grow into any of the tags extract_reply cuts at (prompt's
# _PSEUDO_TAG: `</p>`, `<|endoftext|>`, `<END OF>`, `< start. there>`: a `<` closed by `>` at
# most ~46 characters later on the same line).
_TAG_IN_PROGRESS = re.compile(r"<\s*[^<>\n]{0,46}\Z")
# A line that may still grow into a `Name:` turn as extract_reply reads one: up to three
# capitalised words (a trailing space waits for the next word).
_NAME_IN_PROGRESS = re.compile(r"\s*(?:[A-Z][\w'’-]{0,20}(?: [A-Z][\w'’-]{0,20}){0,2} ?)?")
# Where a sentence ends for good: closing punctuation already followed by whitespace (the same
# characters as prompt.trim_unfinished_sentence counts).
_SETTLED_SENTENCE_END = re.compile(r"[.!?…*\"')\]~]+(?=\s)")
_WORD = re.compile(r"[\w'’]+")  # as repetition.words counts them
# Text that changes any reply still open (it extends the last word or line, and breaks a
# `Name:` label that only the end of the text completed): if it changes nothing, the reply
# was already cut at the next turn or a `<START>`, and later text cannot touch it.
_PROBE = "x"
_WORD_AT_END = re.compile(r"[\w'’]\Z")  # the last word may still grow


def final_reply(generated: str, persona_name: str, speakers: Sequence[str], *,
                hit_token_limit: bool, trim_loops: bool) -> str:
    """The reply to store from the model's whole continuation ("" when nothing is usable)."""
    text = extract_reply(generated, persona_name, speakers)
    if hit_token_limit:
        text = trim_unfinished_sentence(text)
    if trim_loops:
        trimmed = trim_loop(text)
        if trimmed != text:
            log.info("trimmed a loop from a reply (%d -> %d chars)", len(text), len(trimmed))
            text = trim_unfinished_sentence(trimmed) or trimmed
    return text


def has_no_words(reply: str) -> bool:
    """Whether the reply has not one letter: numbers and punctuation only ("12.50", "..."),
    which a small model falls into once a number has answered (a pattern no repeat check
    sees, since every number differs). Actions (`*nods*`) are words and pass."""
    return not any(char.isalpha() for char in reply)


def visible_reply(generated: str, persona_name: str, speakers: Sequence[str], *,
                  trim_loops: bool) -> str:
    """Whole sentences of a continuation still being generated that the final reply will
    begin with ("" until the first sentence is settled)."""
    settled = _settled_text(clean_text(generated), persona_name, speakers)
    reference = extract_reply(settled, persona_name, speakers)  # begins the final reply
    over = extract_reply(settled + _PROBE, persona_name, speakers) == reference
    if not trim_loops:
        limit = len(reference)
    elif over:
        limit = len(trim_loop(reference))
    else:
        limit = _loop_safe_length(reference, _WORD_AT_END.search(settled) is None)
    ends = [m.end() for m in _SETTLED_SENTENCE_END.finditer(reference + (" " if over else ""))]
    ends = [end for end in ends if end <= limit]
    return reference[:ends[-1]] if ends else ""


def _settled_text(text: str, persona_name: str, speakers: Sequence[str]) -> str:
    """`text` without a tail that later text could still turn into the end of the reply."""
    for in_progress in (_START_IN_PROGRESS, _TAG_IN_PROGRESS):
        start = in_progress.search(text)
        if start is not None:
            text = text[:start.start()]
    if _may_become_label(text, persona_name):
        return ""  # the character's own label, which extract_reply removes, is not complete
    last_break = text.rfind("\n")
    if last_break >= 0 and _may_become_turn(text[last_break + 1:], speakers):
        return text[:last_break + 1]  # the line break stays: it settles the sentence before
    return text


def _may_become_label(text: str, label: str) -> bool:
    """Whether more text could make `text` start with `label` and a colon (spacing and case
    as extract_reply allows), while it does not yet."""
    begun = text.lstrip().lower()
    wanted = label.lower()
    if wanted.startswith(begun):
        return True
    return begun.startswith(wanted) and not begun[len(wanted):].strip()


def _may_become_turn(line: str, speakers: Sequence[str]) -> bool:
    """Whether more text could make this unfinished line start somebody's turn."""
    if _NAME_IN_PROGRESS.fullmatch(line):
        return True
    return any(_may_become_label(line, speaker) for speaker in speakers)


def _loop_safe_length(text: str, last_word_done: bool) -> int:
    """How much of `text` no loop trim of the final reply can reach: before the loop that
    trim_loop finds now, and before the last words, where a repeat of LOOP_NGRAM_WORDS words
    may have begun that only later text completes."""
    words = list(_WORD.finditer(text))
    held = LOOP_NGRAM_WORDS - 1 if last_word_done else LOOP_NGRAM_WORDS
    if len(words) < held:
        return 0
    return min(len(trim_loop(text)), words[-held].start())
