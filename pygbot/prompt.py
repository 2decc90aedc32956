"""The Pygmalion prompt as pure text: rendering within a token budget, defusing forged turns,
and cutting the model's continuation down to the character's reply.

No I/O, no clock, no randomness: the token counter is passed in, so every rule here can be
tested with a real tokenizer and nothing else.

    NAME's Persona: a few sentences about the character
    Scenario: optional
    <START>
    You: example line
    NAME: example reply
    You: history ...
    NAME: history ...
    You: the new message
    NAME:
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pygbot.persona import Persona

YOU = "You"
START = "<START>"
SPEAKER_LABEL_MAX_CHARS = 32
TRUNCATION_MARK = " …"
# No 2048-token prompt holds more than this many characters of one turn; cutting first keeps
# a hostile multi-megabyte message from costing seconds of tokenizing. (Memory keeps it all.)
TURN_MAX_CHARS = 16_000

# A line in a member's message that looks like the start of somebody's turn: a few words,
# then a colon and a space (or the end of the line). URLs ("https://") do not match.
_TURN_LINE = re.compile(r"^[ \t]*[^\W_][\w .'’-]{0,39}:(?=\s|$)")
# In the model's own output, a new turn is a capitalised name of up to three words and a
# colon; lower-case "and then: ..." is kept as part of the reply.
_NAME_LABEL = r"[A-Z][\w'’-]{0,20}(?: [A-Z][\w'’-]{0,20}){0,2}:(?=\s|$)"
# `<START>` in any case or spacing: the model treats it as "a new conversation begins".
_START_MARK = re.compile(r"<\s*start\s*>", re.IGNORECASE)
# Characters that render as nothing or move text around; hostile messages use them to hide
# a forged turn from people while the model still sees it.
_INVISIBLE = {"Cf", "Cc", "Co", "Cs", "Cn"}
# Everything a renderer or tokenizer may treat as a line break becomes a plain "\n" first,
# so the forged-turn rule sees the same lines the model does.
_LINE_BREAKS = str.maketrans({"\r": "\n", "\v": "\n", "\f": "\n", "\x85": "\n",
                              "\u2028": "\n", "\u2029": "\n"})
_SENTENCE_END = re.compile(r"[.!?…*\"')\]~]+(?=\s|$)")

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class Turn:
    """One line of the conversation: who spoke (as a prompt label) and what they said."""

    speaker: str
    text: str
    is_character: bool = False


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    stop_strings: tuple[str, ...]  # passed to generate so the model stops at the next turn
    speakers: tuple[str, ...]  # every label that starts a turn in this prompt
    penalty_from: int  # character offset where the penalised conversation window begins
    turns_kept: int
    examples_kept: int


# --- making user text safe ---------------------------------------------------------------------

def clean_text(text: str) -> str:
    """Normalise line breaks and drop invisible characters (keeping newlines and tabs)."""
    text = unicodedata.normalize("NFKC", text.replace("\r\n", "\n")).translate(_LINE_BREAKS)
    return "".join(ch for ch in text
                   if ch in "\n\t" or unicodedata.category(ch) not in _INVISIBLE)


def defuse(text: str) -> str:
    """Render `text` so that no part of it reads as another speaker's line.

    A line after the first that starts like a turn (`Name: …`) is joined to the line before
    it, and `<START>` loses its brackets; everything else a member wrote stays as written.
    """
    lines = _START_MARK.sub("START", clean_text(text)).strip().split("\n")
    kept: list[str] = []
    for line in lines:
        kept.append(line)
        # Joining can itself form a turn-like line ("START" + "Aria's Persona: ..."), so
        # keep merging until no continuation line starts like a turn.
        while len(kept) > 1 and _TURN_LINE.match(kept[-1]):
            last = kept.pop()
            kept[-1] = f"{kept[-1]} {last.strip()}".strip()
    return "\n".join(kept).strip()


def speaker_label(display_name: str, character_name: str) -> str:
    """A member's display name as a prompt label: one line, no colon, never the character's."""
    label = re.sub(r"\s+", " ", _START_MARK.sub("", clean_text(display_name)).replace(":", ""))
    label = label.strip()[:SPEAKER_LABEL_MAX_CHARS].strip()
    if not label or label.casefold() == character_name.casefold():
        return YOU
    return label


# --- rendering ---------------------------------------------------------------------------------

def build_prompt(
    persona: Persona,
    turns: Sequence[Turn],
    budget_tokens: int,
    count_tokens: CountTokens,
    penalty_window_tokens: int = 256,
) -> RenderedPrompt:
    """Render `turns` (oldest first; the last is the message being answered) for `persona`.

    Priority when the budget is tight: persona and scenario always; then the newest turn
    (truncated if it alone is too big); then older history, newest first; example dialogue
    only with what is left, so it is dropped before any real history.
    """
    header = _header_lines(persona, budget_tokens // 2, count_tokens)
    suffix = f"{persona.name}:"
    fixed = [*header, START, suffix]
    room = budget_tokens - _cost(fixed, count_tokens)
    rendered = [_line(turn) for turn in turns]
    if rendered:
        rendered[-1] = _truncate_line(rendered[-1], max(room, 1), count_tokens)
    history = _fit_newest(rendered, room, count_tokens)
    room -= _cost(history, count_tokens)
    examples = _fit_in_order(_example_blocks(persona), room, count_tokens)
    while True:
        lines = [*header, *_join_examples(examples), *history, suffix]
        text = "\n".join(lines)
        if count_tokens(text) <= budget_tokens or not (history or examples):
            break
        # Per-line counts can undershoot the joined text by a token or two; drop the least
        # important piece and measure again.
        examples, history = (examples[:-1], history) if examples else (examples, history[1:])
    speakers = _speakers(persona, turns)
    return RenderedPrompt(
        text=text,
        stop_strings=(*(f"\n{speaker}:" for speaker in speakers), f"\n{START}"),
        speakers=speakers,
        penalty_from=_window_start(text, history, penalty_window_tokens, count_tokens),
        turns_kept=len(history),
        examples_kept=len(examples),
    )


def _header_lines(persona: Persona, budget: int, count_tokens: CountTokens) -> list[str]:
    persona_line = f"{persona.name}'s Persona: {defuse(persona.persona)}"
    lines = [_truncate_line(persona_line, budget * 2 // 3, count_tokens)]
    if persona.scenario.strip():
        scenario_line = f"Scenario: {defuse(persona.scenario)}"
        lines.append(_truncate_line(scenario_line, budget // 3, count_tokens))
    return lines


def _line(turn: Turn) -> str:
    return f"{turn.speaker}: {defuse(turn.text[:TURN_MAX_CHARS])}"


def _example_blocks(persona: Persona) -> list[list[str]]:
    """Example dialogue split at `<START>` into blocks; a block is kept or dropped whole."""
    blocks = []
    for chunk in _START_MARK.split(clean_text(persona.example_dialogue)):
        lines = [line.strip() for line in chunk.split("\n") if line.strip()]
        if lines:
            blocks.append(lines)
    return blocks


def _join_examples(blocks: Sequence[Sequence[str]]) -> list[str]:
    """`<START>` opens the dialogue; further example blocks are separated by it too."""
    lines = [START]
    for index, block in enumerate(blocks):
        if index:
            lines.append(START)
        lines.extend(block)
    return lines


def _cost(lines: Sequence[str], count_tokens: CountTokens) -> int:
    return sum(count_tokens(line + "\n") for line in lines)


def _fit_newest(lines: Sequence[str], room: int, count_tokens: CountTokens) -> list[str]:
    kept: list[str] = []
    for line in reversed(lines):
        room -= count_tokens(line + "\n")
        if room < 0:
            break
        kept.append(line)
    return kept[::-1]


def _fit_in_order(
    blocks: Sequence[list[str]], room: int, count_tokens: CountTokens
) -> list[list[str]]:
    kept: list[list[str]] = []
    for block in blocks:
        cost = _cost([START, *block], count_tokens)
        if cost > room:
            break
        room -= cost
        kept.append(block)
    return kept


def _truncate_line(line: str, max_tokens: int, count_tokens: CountTokens) -> str:
    """Cut `line` to at most `max_tokens`, keeping its start; binary search on characters."""
    if count_tokens(line + "\n") <= max_tokens:
        return line
    low, high = 0, len(line)
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(line[:middle] + TRUNCATION_MARK + "\n") <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return line[:low].rstrip() + TRUNCATION_MARK


def _speakers(persona: Persona, turns: Sequence[Turn]) -> tuple[str, ...]:
    names = [YOU, persona.name, *(turn.speaker for turn in turns)]
    return tuple(dict.fromkeys(name for name in names if name))


def _window_start(
    text: str, history: Sequence[str], window_tokens: int, count_tokens: CountTokens
) -> int:
    """Offset of the oldest history line inside the penalty window (the end if the window is 0)."""
    start = len(text)
    used = 0
    position = text.rfind("\n") + 1  # the final `NAME:` line
    for line in reversed(history):
        used += count_tokens(line + "\n")
        if used > window_tokens:
            break
        position = text.rfind(line, 0, position)
        start = position
    return start


# --- reading the reply -------------------------------------------------------------------------

def extract_reply(generated: str, persona_name: str, speakers: Sequence[str]) -> str:
    """The character's reply from the model's continuation: cut at the first line that starts
    anyone's turn (a known speaker, any `Name:` line, or `<START>`), trimmed of whitespace.

    May return "" — the caller must never post that as a reply.
    """
    text = _START_MARK.split(clean_text(generated), maxsplit=1)[0]
    own_label = re.compile(rf"^\s*{re.escape(persona_name)}\s*:\s*", re.IGNORECASE)
    text = own_label.sub("", text, count=1)  # the model sometimes repeats its own label first
    known = "|".join(re.escape(speaker) for speaker in sorted(speakers, key=len, reverse=True))
    known_turn = re.compile(rf"^\s*(?:{known})\s*:", re.IGNORECASE)
    any_turn = re.compile(rf"^\s*{_NAME_LABEL}")
    lines = text.split("\n")
    for index, line in enumerate(lines[1:], start=1):
        if known_turn.match(line) or any_turn.match(line):
            lines = lines[:index]
            break
    return "\n".join(lines).strip()


def trim_unfinished_sentence(text: str) -> str:
    """Drop a trailing half sentence left when generation hit the token limit."""
    ends = list(_SENTENCE_END.finditer(text))
    if not ends or ends[-1].end() == len(text.rstrip()):
        return text.strip()
    return text[: ends[-1].end()].strip()
