"""Spotting the repetition Pygmalion is known for, as pure functions over text.

Two failure shapes matter to people in a chat:
- a loop inside one reply: the same sentence again, or a long phrase repeated;
- a reply that says nearly what one of the character's last few replies said.
The chat service trims the first and resamples the second; `bench/quality.py` measures both
with the metrics at the bottom of this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher

LOOP_NGRAM_WORDS = 6  # a run of this many words seen twice in one reply is a loop
RECENT_REPLIES = 5  # a new reply is compared with the character's last this-many replies
# Below this many words the word-overlap ratio says little ("No." vs "No way." is 0.67), so a
# short reply counts as a repeat only when it says exactly what a recent reply said: "No."
# ten times in a row is a loop, one "No." is an answer.
MIN_WORDS_FOR_SIMILARITY = 4

_WORD = re.compile(r"[\w'’]+")
_NUMBER = re.compile(r"\d+")
_SENTENCE = re.compile(r"[^.!?…\n]+(?:[.!?…]+[\"'”’)*]*|\n|$)")


def words(text: str) -> list[str]:
    return [word.casefold() for word in _WORD.findall(text)]


def _compared_words(text: str) -> list[str]:
    """`words`, with every number as one placeholder: "12 years younger" after "30 years
    younger" is the same reply said again (a template loop a small model falls into once a
    number has answered), though no two numbers match."""
    return ["#" if _NUMBER.fullmatch(word) else word for word in words(text)]


def sentences(text: str) -> list[str]:
    """Sentences with their closing punctuation, in order; blank pieces dropped."""
    return [piece for piece in _SENTENCE.findall(text) if piece.strip()]


def trim_loop(text: str) -> str:
    """Cut `text` where it starts repeating itself: at the first sentence that repeats an
    earlier one, or at the second occurrence of a run of `LOOP_NGRAM_WORDS` words."""
    cut = min(_repeated_sentence_at(text), _repeated_ngram_at(text))
    if cut >= len(text):
        return text.strip()
    return text[:cut].rstrip(" ,;:-–—\n")


def _repeated_sentence_at(text: str) -> int:
    seen: set[tuple[str, ...]] = set()
    position = 0
    for sentence in sentences(text):
        start = text.index(sentence, position)
        position = start + len(sentence)
        key = tuple(words(sentence))
        if len(key) >= 3 and key in seen:
            return start
        seen.add(key)
    return len(text)


def _repeated_ngram_at(text: str) -> int:
    """Character offset of the word that starts the second copy of a repeated n-gram."""
    matches = list(_WORD.finditer(text))
    folded = [match.group().casefold() for match in matches]
    seen: set[tuple[str, ...]] = set()
    for index in range(len(folded) - LOOP_NGRAM_WORDS + 1):
        gram = tuple(folded[index:index + LOOP_NGRAM_WORDS])
        if gram in seen:
            return matches[index].start()
        seen.add(gram)
    return len(text)


def similarity(first: str, second: str) -> float:
    """0..1 overlap of the two texts' word sequences (difflib's ratio on words; numbers
    count as equal)."""
    a, b = _compared_words(first), _compared_words(second)
    if not a or not b:
        return 0.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def max_similarity(reply: str, earlier: Iterable[str]) -> float:
    """The highest similarity of `reply` to any of `earlier`; for a short reply, 1.0 when it
    repeats one of them word for word (any number for any number) and 0.0 otherwise."""
    said = _compared_words(reply)
    if len(said) < MIN_WORDS_FOR_SIMILARITY:
        return 1.0 if said and any(_compared_words(previous) == said
                                   for previous in earlier) else 0.0
    return max((similarity(reply, previous) for previous in earlier), default=0.0)


def is_near_duplicate(reply: str, recent: Sequence[str], threshold: float) -> bool:
    """Whether `reply` nearly repeats one of the last `RECENT_REPLIES` of `recent`."""
    return max_similarity(reply, recent[-RECENT_REPLIES:]) >= threshold


# --- metrics (used by bench/quality.py) ---------------------------------------------------------

def seq_rep_n(text: str, n: int = 4) -> float:
    """Share of repeated n-grams within one text (Welleck et al. 2019): 1 - unique/total."""
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams across `texts` (Li et al. 2016)."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        tokens = words(text)
        grams.extend(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)
