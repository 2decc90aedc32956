"""The Pygmalion prompt as pure text: rendering within a token budget, defusing forged turns,
and cutting the model's continuation down to the character's reply.

No I/O, no clock, no randomness: the token counter is passed in, so every rule here can be
tested with a real tokenizer and nothing else.

    NAME's Persona: a few sentences about the character, then lorebook entries
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

import hashlib
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from pygbot.labels import is_label_char, label_key
from pygbot.lorebook import LoreEntry, fit_entries
from pygbot.persona import Persona

YOU = "You"
START = "<START>"
SCENARIO_LABEL = "Scenario"
PERSONA_LABEL_SUFFIX = "'s Persona"
SPEAKER_LABEL_MAX_CHARS = 32
TRUNCATION_MARK = " …"
# No 2048-token prompt holds more than this many characters of one turn; cutting first keeps
# a hostile multi-megabyte message from costing seconds of tokenizing. (Memory keeps it all.)
TURN_MAX_CHARS = 16_000
# The smallest prompt budget (context minus reply) that always holds the persona and the
# message being answered: the labels alone can cost ~420 tokens when the character's name and
# the member's label are 32 characters of a script the tokenizer spells byte by byte, and
# what is left keeps the start of the persona and of the message. Settings check it.
MIN_PROMPT_TOKENS = 512
# Per-line token counts can differ from the joined prompt's by a token or two per line.
JOIN_SLACK_TOKENS = 8
# Once the conversation outgrows the prompt, old history leaves in chunks of about this share
# of the room for history, not one turn per new turn: every turn that drops nothing keeps the
# prompt's text up to the new message unchanged, so the engine's per-channel prefix cache
# reuses it (a one-turn drop shifts everything after the persona on every turn).
HISTORY_CHUNK_SHARE = 0.25

# In the model's own output, a new turn is a capitalised name of up to three words and a
# colon; lower-case "and then: ..." is kept as part of the reply.
_NAME_LABEL = r"[A-Z][\w'’-]{0,20}(?: [A-Z][\w'’-]{0,20}){0,2}:(?=\s|$)"
# `<START>` in any case or spacing: the model treats it as "a new conversation begins".
_START_MARK = re.compile(r"<\s*start\s*>", re.IGNORECASE)
# Characters that render as nothing or move text around; hostile messages use them to hide
# text from people while the model still sees it.
_INVISIBLE = {"Cf", "Cc", "Co", "Cs", "Cn"}
# Everything a renderer or tokenizer may treat as a line break becomes a plain "\n" first
# (the other control characters Python splits lines at are dropped as invisible).
_LINE_BREAKS = str.maketrans({"\r": "\n", "\v": "\n", "\f": "\n", "\x85": "\n",
                              "\u2028": "\n", "\u2029": "\n"})
# Up to three words at the start of a line, then a colon and a space (or the line's end).
_LABEL = re.compile(r"^\s*([^\W\d_][\w'’-]*(?: [\w'’-]+){0,2})\s*:(?=\s|$)")
# Words that make "words + colon" a sentence rather than a label: articles, pronouns,
# auxiliaries and conjunctions ("Here's the thing:", "I mean:", "So that's it:").
_SENTENCE_WORDS = frozenset([
    "a", "an", "the", "and", "but", "or", "so", "then", "if", "because", "i", "i'm", "i've", "i'd",
    "me", "it", "it's", "this", "that", "these", "those", "here", "here's", "there", "there's",
    "what", "what's", "who", "how", "why", "when", "is", "are", "was", "were", "be", "been", "am",
    "have", "has", "had", "do", "does", "did", "will", "would", "can", "could", "should", "must",
    "may", "might", "let", "let's", "he", "she", "we", "they", "you", "you're", "we're", "they're",
    "he's", "she's", "his", "her", "its", "our", "their", "of", "in", "on", "at", "to", "for",
    "with", "as", "like", "just", "well", "oh", "ah", "hmm", "yes", "no", "not", "only", "also",
    "now", "anyway", "guess", "thing", "things", "one", "mean",
])
# Markup the model invents between or after turns; text from here on is not the reply.
_PSEUDO_TAG = re.compile(
    r"<\s*/[^<>\n]{0,40}>"  # closing tags: </s>, </reply>
    r"|<\|[^<>|\n]{0,40}\|>"  # special-token text: <|im_end|>, <|endoftext|>
    r"|<\s*[A-Z][A-Z0-9 _'-]{1,40}>"  # upper-case tags: <END>, <END OF CONVERSATION>, <BOT>
    r"|(?i:<\s*(?:start|end)\b[^<>\n]{0,40}>)"  # <start>, < End of dialogue >
)
_SEPARATOR_LINE = re.compile(r"^\s*(?:[-=_~#*•]\s*){3,}$")  # "..." alone is a pause, not one
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
    lore_kept: int = 0  # lorebook entries in the prompt


# --- making user text safe ---------------------------------------------------------------------

def clean_text(text: str) -> str:
    """Normalise line breaks and drop invisible characters (keeping newlines and tabs)."""
    text = unicodedata.normalize("NFKC", text.replace("\r\n", "\n")).translate(_LINE_BREAKS)
    return "".join(ch for ch in text
                   if ch in "\n\t" or unicodedata.category(ch) not in _INVISIBLE)


def defuse(text: str) -> str:
    """`text` as the content of one prompt line, so no part of it can start a turn.

    This holds by construction rather than by recognising forgeries: every line break (of
    any kind) becomes a space, so whatever a member, a display name or a persona field
    writes stays on the line the renderer opened with its own label, and a line can only
    ever start with a label the renderer wrote. `<START>` also loses its brackets, so the
    marker appears only where the renderer puts it.
    """
    one_line = " ".join(line.strip() for line in clean_text(text).split("\n") if line.strip())
    return _without_start_marks(one_line)


def _without_start_marks(text: str) -> str:
    # Removing a marker can join its neighbours into a new one ("<<START>>"), so repeat;
    # each pass shortens the text, so this ends.
    while _START_MARK.search(text):
        text = _START_MARK.sub("START", text)
    return text


def speaker_label(display_name: str, character_name: str) -> str:
    """A member's display name as a prompt label: letters, digits, spaces and a few name
    marks only (see pygbot.labels), never the character's name or a header's label."""
    kept = "".join(ch if is_label_char(ch) else " " for ch in clean_text(display_name))
    label = " ".join(kept.split())[:SPEAKER_LABEL_MAX_CHARS].strip()
    if not label or _is_reserved(label, character_name):
        return YOU
    return label


def _is_reserved(label: str, character_name: str) -> bool:
    key = label_key(label)
    return key in (label_key(character_name), label_key(SCENARIO_LABEL)) or \
        key.endswith(label_key(PERSONA_LABEL_SUFFIX).strip("'’"))


# --- rendering ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Line:
    """A prompt line: the renderer's label, then content that holds no line break."""

    label: str
    content: str

    @property
    def text(self) -> str:
        return f"{self.label}: {self.content}" if self.content else f"{self.label}:"


def build_prompt(
    persona: Persona,
    turns: Sequence[Turn],
    budget_tokens: int,
    count_tokens: CountTokens,
    penalty_window_tokens: int = 256,
) -> RenderedPrompt:
    """Render `turns` (oldest first; the last is the message being answered) for `persona`.

    Priority when the budget is tight: persona and scenario always; then the newest turn
    (truncated if it alone is too big); then the lorebook entries the recent turns switch on
    (within the book's own budget, appended to the persona line); then older history, newest
    first, dropped in chunks (see `_first_kept`) so the prompt's start stays the same for
    most turns; example dialogue only while the whole conversation fits beside it, so it
    goes before any real history. With a budget of at least MIN_PROMPT_TOKENS the persona
    and the newest turn are always there.
    """
    header = _header_lines(persona, budget_tokens // 2, count_tokens)
    suffix = f"{persona.name}:"
    room = budget_tokens - _cost([*header, START, suffix], count_tokens) - JOIN_SLACK_TOKENS
    rendered = [_line(turn.speaker, turn.text[:TURN_MAX_CHARS]) for turn in turns]
    if rendered:
        rendered[-1] = _truncate_line(rendered[-1], room, count_tokens)
    costs = [count_tokens(line + "\n") for line in rendered]
    lore = _fit_lore(persona, turns, budget_tokens, room - (costs[-1] if costs else 0),
                     count_tokens)
    room -= sum(count_tokens(f" {text}") for text in lore)
    history = rendered[_first_kept(costs, rendered, room):]
    examples = _examples_beside(_example_blocks(persona), room, sum(costs),
                                whole_history=len(history) == len(rendered),
                                count_tokens=count_tokens)
    while True:
        text = "\n".join([_with_lore(header[0], lore), *header[1:], *_join_examples(examples),
                          *history, suffix])
        over = count_tokens(text) - budget_tokens
        if over <= 0:
            break
        # Per-line counts can undershoot the joined text; drop the least important piece
        # (never the persona or the message being answered) and measure again, cutting
        # those two shorter only when nothing else is left.
        if examples:
            examples = examples[:-1]
        elif len(history) > 1:
            history = history[1:]
        elif lore:
            lore = lore[:-1]
        elif history and (shorter := _shorten(history[-1], over, count_tokens)):
            history = [shorter]
        elif shorter := _shorten(header[0], over, count_tokens):
            header[0] = shorter
        else:
            break  # a budget under MIN_PROMPT_TOKENS: only the labels are left
    speakers = _speakers(persona, turns)
    return RenderedPrompt(
        text=text,
        stop_strings=(*(f"\n{speaker}:" for speaker in speakers), f"\n{START}"),
        speakers=speakers,
        penalty_from=_window_start(text, history, penalty_window_tokens, count_tokens),
        turns_kept=len(history),
        examples_kept=len(examples),
        lore_kept=len(lore),
    )


@dataclass(frozen=True)
class PromptCost:
    """How much of the context a character takes before anyone speaks."""

    persona: int  # persona and scenario lines, as the prompt renders them
    examples: int  # every example dialogue block
    lorebook: int  # the most the lorebook may add
    reply: int  # reserved for the character's reply
    context: int
    persona_cut: bool  # the persona is longer than the prompt lets it be

    @property
    def conversation(self) -> int:
        return self.context - self.persona - self.examples - self.lorebook - self.reply

    @property
    def cramped(self) -> bool:
        """Less than a quarter of the context is left for the conversation."""
        return self.conversation < self.context / 4

    def summary(self) -> str:
        line = (f"persona {self.persona:,} + examples {self.examples:,} + lorebook ≤ "
                f"{self.lorebook:,} + reply {self.reply:,} of {self.context:,} tokens; "
                f"{max(self.conversation, 0):,} left for the conversation")
        if self.persona_cut:
            line += "\n⚠️ The persona is longer than the prompt holds; its end is cut off."
        if self.cramped:
            line += ("\n⚠️ The conversation gets less than a quarter of the context: the "
                     "character will forget what was said quickly. Shorten the persona or "
                     "the example dialogue.")
        return line


def measure_persona(persona: Persona, context_tokens: int, reply_tokens: int,
                    count_tokens: CountTokens) -> PromptCost:
    """The tokens `persona` costs in every prompt of a `context_tokens` model that keeps
    `reply_tokens` for the reply (examples are counted whole, though a long conversation
    pushes them out)."""
    budget = context_tokens - reply_tokens
    header = _header_lines(persona, budget // 2, count_tokens)
    full = _Line(f"{persona.name}{PERSONA_LABEL_SUFFIX}", defuse(persona.persona)).text
    examples = _example_blocks(persona)
    lore = 0
    if persona.lorebook is not None:
        entries = [e for e in persona.lorebook.entries if e.enabled and e.content
                   and not e.use_regex]
        lore = min(persona.lorebook.budget(budget),
                   sum(count_tokens(f" {defuse(e.content)}") for e in entries))
    return PromptCost(
        persona=_cost(header, count_tokens),
        examples=_cost(_join_examples(examples), count_tokens) if examples else 0,
        lorebook=lore, reply=reply_tokens, context=context_tokens,
        persona_cut=header[0] != full)


def _fit_lore(persona: Persona, turns: Sequence[Turn], budget_tokens: int, room: int,
              count_tokens: CountTokens) -> list[str]:
    """The lorebook entries the recent turns switch on, as defused text in insertion order,
    within the book's budget and `room` (what the persona and the newest turn leave)."""
    book = persona.lorebook
    if book is None or room <= 0:
        return []
    active = book.active([turn.text for turn in turns])

    def cost(entry: LoreEntry) -> int:
        return count_tokens(f" {defuse(entry.content)}")

    kept = fit_entries(active, min(book.budget(budget_tokens), room), cost)
    return [text for text in (defuse(entry.content) for entry in kept) if text]


def _with_lore(persona_line: str, lore: Sequence[str]) -> str:
    """Lore goes on the persona's own line, so it can never open a turn of its own."""
    return "".join([persona_line, *(f" {text}" for text in lore)])


def _shorten(line: str, over: int, count_tokens: CountTokens) -> str | None:
    """`line` cut by about `over` tokens, or None when only its label is left."""
    shorter = _truncate_line(line, count_tokens(line + "\n") - over, count_tokens)
    return shorter if len(shorter) < len(line) else None


def _header_lines(persona: Persona, budget: int, count_tokens: CountTokens) -> list[str]:
    persona_line = _Line(f"{persona.name}{PERSONA_LABEL_SUFFIX}", defuse(persona.persona))
    lines = [_truncate_line(persona_line.text, budget * 2 // 3, count_tokens,
                            len(persona_line.label) + 2)]
    if persona.scenario.strip():
        scenario_line = _Line(SCENARIO_LABEL, defuse(persona.scenario))
        lines.append(_truncate_line(scenario_line.text, budget // 3, count_tokens,
                                    len(SCENARIO_LABEL) + 2))
    return lines


def _line(speaker: str, text: str) -> str:
    return _Line(speaker, defuse(text)).text


def _example_blocks(persona: Persona) -> list[list[str]]:
    """Example dialogue split at `<START>` into blocks of turns; a block is kept or dropped
    whole. Only `You:` and `NAME:` open a turn; any other line continues the turn before it
    (and is dropped if no turn has opened yet), so card text renders like any other text."""
    label = re.compile(rf"^\s*({re.escape(YOU)}|{re.escape(persona.name)})\s*:\s*",
                       re.IGNORECASE)
    blocks = []
    for chunk in _START_MARK.split(clean_text(persona.example_dialogue)):
        turns: list[tuple[str, str]] = []
        for line in chunk.split("\n"):
            opened = label.match(line)
            if opened:
                speaker = YOU if opened.group(1).casefold() == YOU.casefold() else persona.name
                turns.append((speaker, line[opened.end():]))
            elif turns:
                turns[-1] = (turns[-1][0], f"{turns[-1][1]}\n{line}")
        if turns:
            blocks.append([_line(speaker, text) for speaker, text in turns])
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


def _first_kept(costs: Sequence[int], lines: Sequence[str], room: int) -> int:
    """Index of the oldest history line to keep: all of them when they fit; else the oldest
    chunk start from which the rest fits; the newest line always.

    Chunk starts are content-defined (the idea of rsync and restic): a line starts a chunk
    when its hash beats those of every line within half a chunk's tokens of it, so whether
    it does depends only on the lines around it, never on where the loaded history begins.
    The first kept line therefore stays put while new turns arrive (and the oldest leave
    the window the chat loads) until the rest no longer fits; chunk starts are at least
    half a chunk apart and about a chunk (HISTORY_CHUNK_SHARE of `room`) on average.
    """
    tail = sum(costs)
    if tail <= room:
        return 0
    offsets = list(accumulate(costs, initial=0))  # token offset of each line's start
    radius = max(1.0, room * HISTORY_CHUNK_SHARE / 2)
    keys = [_line_key(line) for line in lines]
    fits = next(index for index in range(len(lines))
                if offsets[-1] - offsets[index] <= room or index == len(lines) - 1)
    for index in range(fits, len(lines) - 1):
        if _starts_chunk(index, offsets, keys, radius):
            return index
    return fits  # no chunk start in what fits (rare): the newest lines that fit


def _starts_chunk(index: int, offsets: Sequence[int], keys: Sequence[int],
                  radius: float) -> bool:
    here = offsets[index]
    low = bisect_left(offsets, here - radius, hi=len(keys))
    high = bisect_right(offsets, here + radius, hi=len(keys))
    return all(keys[other] < keys[index] for other in range(low, high) if other != index)


def _line_key(line: str) -> int:
    # blake2b rather than hash(): the same line gets the same key in every process.
    digest = hashlib.blake2b(line.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _examples_beside(blocks: Sequence[list[str]], room: int, history_cost: int, *,
                     whole_history: bool, count_tokens: CountTokens) -> list[list[str]]:
    """The example blocks that fit in `room` on their own, while the whole conversation fits
    beside them; none once it does not. They leave together, once per conversation, rather
    than block by block as it grows: each change there would move everything after them."""
    examples = _fit_in_order(blocks, room, count_tokens)
    if not whole_history or _cost([line for block in examples for line in [START, *block]],
                                  count_tokens) + history_cost > room:
        return []
    return examples


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


def _truncate_line(
    line: str, max_tokens: int, count_tokens: CountTokens, keep_chars: int | None = None
) -> str:
    """Cut `line` to at most `max_tokens`, keeping its start; binary search on characters.

    The label (the first `keep_chars` characters; by default up to ": ") is never cut, even
    if it alone is over `max_tokens`: a line without its label would be nobody's turn.
    """
    if count_tokens(line + "\n") <= max_tokens:
        return line
    if keep_chars is None:
        keep_chars = line.find(": ") + 2 if ": " in line else len(line)
    low, high = keep_chars, len(line)
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
    """The character's reply from the model's continuation: cut where the model leaves the
    character's turn, trimmed of whitespace. That is the first of:
    - a later line that starts anyone's turn (a known speaker, any `Name:` line) or any other
      label-like line, lower-case words included (`Your name:`, `Coming up next:`);
    - a separator line (`---`, `***`, `===`);
    - a pseudo-tag anywhere (`<START>`, `<END OF CONVERSATION>`, `</p>`, `<|im_end|>`).
    Ordinary text with a colon stays: `Here's the thing: ...`, `and then: ...`, `12:30`.

    May return "" — the caller must never post that as a reply.
    """
    text = clean_text(generated)
    tag = _PSEUDO_TAG.search(text)
    if tag:
        text = text[:tag.start()]
    own_label = re.compile(rf"^\s*{re.escape(persona_name)}\s*:\s*", re.IGNORECASE)
    text = own_label.sub("", text, count=1)  # the model sometimes repeats its own label first
    known = "|".join(re.escape(speaker) for speaker in sorted(speakers, key=len, reverse=True))
    known_turn = re.compile(rf"^\s*(?:{known})\s*:", re.IGNORECASE)
    lines = text.split("\n")
    for index, line in enumerate(lines[1:], start=1):
        if known_turn.match(line) or is_label_line(line) or _SEPARATOR_LINE.match(line):
            lines = lines[:index]
            break
    return "\n".join(lines).strip()


def is_label_line(line: str) -> bool:
    """Whether `line` opens with a label of up to three words and a colon — a speaker
    (`Bob Smith:`) or a heading the model invents (`Your name:`, `user:`) — rather than a
    sentence that happens to contain a colon (`Here's the thing: ...`, `and then: ...`)."""
    if re.match(rf"^\s*{_NAME_LABEL}", line):
        return True
    match = _LABEL.match(line)
    if not match:
        return False
    label_words = match.group(1).casefold().replace("’", "'").split()
    return not any(word in _SENTENCE_WORDS for word in label_words)


def trim_unfinished_sentence(text: str) -> str:
    """End a reply that hit the token limit on a finished sentence: drop the trailing half
    sentence, or, when not one sentence finished, mark the cut with an ellipsis."""
    text = text.strip()
    ends = list(_SENTENCE_END.finditer(text))
    if not ends:
        return f"{text.rstrip(' ,;:-–—')}…" if text else text
    return text[: ends[-1].end()].strip()
