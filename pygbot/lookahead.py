"""The start of a channel's next prompt, rendered early so the worker can prefill it while idle.

Turn after turn a prompt is the last one plus the reply and the new message, and the engine's
prefix cache computes only those. Once the conversation outgrows the context, a chunk of old
history leaves (pygbot.prompt, HISTORY_CHUNK_SHARE): everything after the persona moves, and
that turn computes nearly the whole prompt again (at 24 layers on a CPU, tens of seconds the
member waits). Which chunk leaves next is known before the member writes, though. So after a
reply, when a message about as long as the member's last ones would push a chunk out, this
module renders the next prompt's start (the persona, the history from the next chunk on, the
reply) and the worker prefills it while nothing else is waiting (Worker.prefill_when_idle).
The turn that drops the chunk then finds it in the cache. A start prefilled a turn or two
early stays valid: it is the prompt's start until that chunk leaves.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from pygbot.persona import Persona
from pygbot.prompt import HISTORY_CHUNK_SHARE, CountTokens, Turn, build_prompt

# A drop is prepared for when a message this many times as long as the ones just answered
# (and at least MIN_MARGIN_TOKENS) would cause it: prefilling a turn early costs only memory,
# prefilling late costs the member the wait.
MARGIN_MESSAGES = 2
MIN_MARGIN_TOKENS = 32
# Stands in for the next message's words (its cost per word is measured: one token in GPT-2's
# vocabulary, two in others).
_FILLER_WORD = "x"
_FILLER_SAMPLE_WORDS = 32


def expected_message_tokens(answered: Sequence[str], count_tokens: CountTokens) -> int:
    """How long the next message is likely to be: as long as the ones just answered."""
    return max(1, sum(map(count_tokens, answered)))


def next_prompt_start(persona: Persona, turns: Sequence[Turn], budget_tokens: int,
                      count_tokens: CountTokens, *, answered_prompt: str, speaker: str,
                      message_tokens: int) -> str | None:
    """The text the next prompt will begin with, up to the next message's line, if a message
    from `speaker` a little longer than `message_tokens` would move what comes before it (a
    chunk of history or the example dialogue leaving); None while that next prompt would
    continue `answered_prompt`, the one just answered (the cache already holds it).

    `turns`: the conversation as the prompt module takes it, ending with the reply just given.
    """
    # The same history lines are counted in every render below: count each once.
    count_tokens = functools.lru_cache(maxsize=None)(count_tokens)
    per_word = count_tokens(" ".join([_FILLER_WORD] * _FILLER_SAMPLE_WORDS)) / _FILLER_SAMPLE_WORDS

    def start_with(tokens: int) -> str | None:
        filler = " ".join([_FILLER_WORD] * max(1, round(tokens / per_word)))
        text = build_prompt(persona, [*turns, Turn(speaker, filler)], budget_tokens,
                            count_tokens).text
        line_start = text.rfind(f"\n{speaker}: {_FILLER_WORD}")
        # A message line cut to fit leaves nothing sensible to foresee.
        return text[:line_start + 1] if line_start >= 0 else None

    def moved(start: str | None) -> bool:
        return start is not None and not start.startswith(answered_prompt)

    # At most half a chunk: chunk starts are at least that far apart (pygbot.prompt).
    most = max(1, int(budget_tokens * HISTORY_CHUNK_SHARE / 2))
    margin = min(most, max(MIN_MARGIN_TOKENS, MARGIN_MESSAGES * message_tokens))
    if not moved(start_with(margin)):
        return None
    # The start a message like the last one gives, if it drops history already; else the one
    # the smallest message that drops it gives (the next chunk start): as history grows by
    # a turn or two, that is the start a message like the last one will get.
    expected = min(message_tokens, margin)
    if moved(start := start_with(expected)):
        return start
    low, high = expected + 1, margin
    while low < high:
        middle = (low + high) // 2
        if moved(start_with(middle)):
            high = middle
        else:
            low = middle + 1
    return start_with(high)
