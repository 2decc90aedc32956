"""The quality bench's metrics: pure functions over the posted replies, no model needed.

They are written here, apart from the chat service's own guards (pygbot.prompt,
pygbot.repetition, pygbot.identity), so a guard cannot pass the bench by agreeing with
itself: a label the cutter misses, a repeat the guard lets through or a name the identity
check does not know is still counted. And no single number rewards word salad: long random
text wins distinct-2 and loses on words per reply, lines per reply, replies at the token cap
and pseudo-tags, which are reported next to it.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

RECENT_TURNS = 5  # a reply is compared with the character's last this-many turns
NEAR_DUPLICATE_SIMILARITY = 0.75
# Below this many words a similarity ratio says little ("No." vs "No way." is 0.67): a short
# reply is a repeat when it says word for word what a recent one said.
SHORT_REPLY_WORDS = 4
NEAR_CAP_SHARE = 0.95  # a reply that used this share of max_new_tokens ran into the cap

_WORD = re.compile(r"[\w'’]+")
# Up to four words at the start of a line (after optional markup), then a colon and a space
# or the line's end: "You:", "Captain Reyes:", "your name:", "Coming up next:".
_LABEL = re.compile(r"^\s*[*_~\"'(\[]*\s*([^\W\d_][\w'’.-]*(?:[ \t]+[\w'’.-]+){0,3})\s*:(?=\s|$)")
# Words that make "words + colon" a sentence ("Here's the thing:", "and then:", "I mean:").
_SENTENCE_WORDS = frozenset([
    "a", "an", "the", "and", "but", "or", "so", "then", "if", "because", "i", "i'm", "i've",
    "i'd", "me", "my", "it", "it's", "this", "that", "these", "those", "here", "here's",
    "there", "there's", "what", "what's", "who", "how", "why", "when", "is", "are", "was",
    "were", "be", "been", "am", "have", "has", "had", "do", "does", "did", "will", "would",
    "can", "could", "should", "must", "may", "might", "let", "let's", "he", "she", "we",
    "they", "you", "you're", "we're", "they're", "he's", "she's", "his", "her", "its", "our",
    "their", "of", "in", "on", "at", "to", "for", "with", "as", "like", "just", "well", "oh",
    "ah", "hmm", "yes", "no", "not", "only", "also", "now", "anyway", "guess", "thing",
    "things", "mean",
])
# Markup a model invents: <END>, <END OF CONVERSATION>, </p>, <|im_end|>, [END], [/INST].
_PSEUDO_TAG = re.compile(
    r"<\s*/?\s*[A-Za-z|][^<>\n]{0,40}>|\[\s*/?\s*(?:end|start|inst)\b[^\]\n]*\]", re.IGNORECASE)
# First-person introductions: "my name is X", "call me X", "I'm called X", "I go by X",
# "I'm X." / "I am X, ...".
_INTRODUCTION = re.compile(
    r"\b(?:my name(?:'s|’s| is)|call me|i go by|i(?:'m|’m| am)(?: called| named)?)\s+"
    r"([A-Z][\w'’-]+(?: [A-Z][\w'’-]+)?)"
    r"(?=\s*(?:[.,!?;…]|$|\band\b|\bthe\b|\bfrom\b|\bof\b|\bhere\b))",
    re.IGNORECASE)
# Capitalised words after "I'm" that are not names ("I'm Sorry.", "I am Glad!").
_NOT_NAMES = frozenset([
    "not", "so", "just", "here", "there", "sorry", "glad", "fine", "good", "okay", "ok",
    "happy", "sure", "really", "very", "always", "never", "still", "also", "only", "all", "in",
    "on", "at", "from", "of", "your", "yours", "afraid", "back", "going", "ready", "well",
    "doing", "human", "alive", "real", "right", "done", "home", "busy", "tired", "awake",
    "listening", "thanks", "thank", "yes", "no", "a", "an", "the", "serious", "certain",
    "positive", "confused", "lost", "hungry", "bored", "curious",
])


def words(text: str) -> list[str]:
    return [word.casefold() for word in _WORD.findall(text)]


def is_label_line(line: str) -> bool:
    """Whether `line` opens like a speaker's turn or a heading, in any case: `You:`,
    `She:`, `your name:`, `Coming up next:`; not `Here's the thing: ...` or `12:30`."""
    match = _LABEL.match(line)
    if not match:
        return False
    label = match.group(1).casefold().replace("’", "'").split()
    if len(label) == 1:  # "You:", "She:", "mochi:", "User:": one word and a colon opens a turn
        return True
    return not any(word in _SENTENCE_WORDS for word in label)


def forged_lines(reply: str) -> int:
    """Lines of a posted reply that open somebody's turn or an invented heading."""
    return sum(is_label_line(line) for line in reply.split("\n"))


def pseudo_tag_lines(reply: str) -> int:
    return sum(bool(_PSEUDO_TAG.search(line)) for line in reply.split("\n"))


_ACTION = re.compile(r"\*[^*\n]*\*?")  # *looks up*, and an action the reply left open


def says_no_words(reply: str) -> bool:
    """Whether the reply speaks no word: only numbers and punctuation ("12.50"), or only
    actions between asterisks ("*laughs again*"). Neither answers what the member said."""
    return not any(char.isalpha() for char in _ACTION.sub("", reply))


def line_count(reply: str) -> int:
    return sum(1 for line in reply.split("\n") if line.strip())


def other_names(reply: str, own_name: str) -> list[str]:
    """Names the reply's speaker introduces itself by that share no word with its own."""
    own = {word.casefold() for word in own_name.split()}
    found = []
    for match in _INTRODUCTION.finditer(reply):
        name = match.group(1)
        first = name.split()[0].casefold()
        if first in _NOT_NAMES or not name[0].isupper():
            continue
        if not own & {word.casefold() for word in name.split()}:
            found.append(name)
    return found


def _shape(text: str) -> list[str]:
    """The words a reader compares: any number reads as any other ("11 years younger" then
    "14 years younger" is one reply said twice)."""
    return ["<n>" if word.isdigit() else word for word in words(text)]


def similarity(first: str, second: str) -> float:
    a, b = _shape(first), _shape(second)
    if not a or not b:
        return 0.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def repeats(reply: str, earlier: Sequence[str],
            threshold: float = NEAR_DUPLICATE_SIMILARITY) -> bool:
    """Whether `reply` nearly repeats one of `earlier`; a short reply only word for word
    (numbers aside)."""
    said = _shape(reply)
    if not said:
        return False
    if len(said) < SHORT_REPLY_WORDS:
        return any(_shape(previous) == said for previous in earlier)
    return any(similarity(reply, previous) >= threshold for previous in earlier)


def near_duplicate_flags(greeting: str, replies: Sequence[str | None],
                         window: int = RECENT_TURNS) -> list[bool]:
    """Per posted reply (None = nothing posted, skipped): does it repeat one of the
    character's last `window` turns, the greeting included?"""
    earlier = [greeting] if greeting else []
    flags = []
    for reply in replies:
        if reply is None:
            continue
        flags.append(repeats(reply, earlier[-window:]))
        earlier.append(reply)
    return flags


def seq_rep_n(text: str, n: int = 4) -> float:
    """Share of repeated n-grams within one text (Welleck et al. 2019): 1 - unique/total."""
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams across `texts` (Li et al. 2016)."""
    grams = [tuple(tokens[i:i + n]) for tokens in map(words, texts)
             for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# --- per system --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    member: str  # the line it answers
    text: str | None  # as posted; None when nothing was posted (empty or every sample refused)
    new_tokens: int  # of the sample that was posted (or the last one tried)
    max_new_tokens: int
    seconds: float  # wall time of the whole answer, resamples included
    cpu_seconds: float  # process CPU time of the same

    @property
    def near_cap(self) -> bool:
        return self.new_tokens >= NEAR_CAP_SHARE * self.max_new_tokens


@dataclass(frozen=True)
class ChatLog:
    system: str
    character: str
    greeting: str
    replies: tuple[Reply, ...]

    @property
    def posted(self) -> list[str]:
        return [reply.text for reply in self.replies if reply.text is not None]


@dataclass(frozen=True)
class SystemMetrics:
    turns: int
    forged: int  # replies with at least one label-like line
    near_duplicates: float  # share of posted replies repeating one of the last 5 turns
    seq_rep4: float
    distinct2: float
    words_median: float
    words_mean: float
    lines_mean: float
    near_cap: float  # share of turns whose reply ran into max_new_tokens
    other_name: int  # replies where the character introduces itself by another name
    no_words: int  # replies that speak no word: numbers or actions only
    pseudo_tags: int  # lines with a pseudo-tag, over all replies
    empty: float  # share of turns answered with nothing
    seconds: float  # wall seconds per reply
    cpu_seconds: float


def measure(chats: Sequence[ChatLog]) -> SystemMetrics:
    replies = [reply for chat in chats for reply in chat.replies]
    posted = [text for chat in chats for text in chat.posted]
    flags = [flag for chat in chats
             for flag in near_duplicate_flags(chat.greeting, [r.text for r in chat.replies])]
    counts = [len(words(text)) for text in posted]
    return SystemMetrics(
        turns=len(replies),
        forged=sum(forged_lines(text) > 0 for text in posted),
        near_duplicates=_mean([float(flag) for flag in flags]),
        seq_rep4=_mean([seq_rep_n(text, 4) for text in posted]),
        distinct2=distinct_n(posted, 2),
        words_median=float(statistics.median(counts)) if counts else 0.0,
        words_mean=_mean([float(count) for count in counts]),
        lines_mean=_mean([float(line_count(text)) for text in posted]),
        near_cap=_mean([float(reply.near_cap) for reply in replies]),
        other_name=sum(bool(other_names(text, chat.character))
                       for chat in chats for text in chat.posted),
        no_words=sum(says_no_words(text) for text in posted),
        pseudo_tags=sum(pseudo_tag_lines(text) for text in posted),
        empty=_mean([float(reply.text is None) for reply in replies]),
        seconds=_mean([reply.seconds for reply in replies]),
        cpu_seconds=_mean([reply.cpu_seconds for reply in replies]),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    # label, SystemMetrics field, format
    ("forged speaker lines (replies)", "forged", "d"),
    ("near-dup of last 5 (share)", "near_duplicates", ".3f"),
    ("seq-rep-4 within reply (mean)", "seq_rep4", ".3f"),
    ("distinct-2 (all replies)", "distinct2", ".3f"),
    ("words per reply (median)", "words_median", ".0f"),
    ("words per reply (mean)", "words_mean", ".1f"),
    ("lines per reply (mean)", "lines_mean", ".2f"),
    ("near the token cap (share)", "near_cap", ".3f"),
    ("calls itself another name", "other_name", "d"),
    ("no word spoken (replies)", "no_words", "d"),
    ("pseudo-tag lines", "pseudo_tags", "d"),
    ("empty / not posted (share)", "empty", ".3f"),
    ("seconds per reply (wall)", "seconds", ".2f"),
    ("CPU seconds per reply", "cpu_seconds", ".2f"),
    ("turns", "turns", "d"),
)


def table(metrics: dict[str, SystemMetrics]) -> str:
    """Metrics as rows, systems as columns."""
    width = max(12, *(len(name) + 2 for name in metrics))
    lines = [f"{'metric':<32}" + "".join(f"{name:>{width}}" for name in metrics)]
    for label, field, spec in TABLE_ROWS:
        cells = "".join(f"{getattr(m, field):>{width}{spec}}" for m in metrics.values())
        lines.append(f"{label:<32}{cells}")
    return "\n".join(lines)


def result_line(defaults: SystemMetrics, baseline: SystemMetrics) -> str:
    return (f"RESULT forged={defaults.forged} neardup={defaults.near_duplicates:.3f} "
            f"distinct2={defaults.distinct2:.3f} words_median={defaults.words_median:.0f} "
            f"near_cap={defaults.near_cap:.3f} other_name={defaults.other_name} "
            f"baseline_neardup={baseline.near_duplicates:.3f} "
            f"baseline_forged={baseline.forged}")
