"""Logits processors that shape sampling: DRY, the windowed repetition penalty and min-p.

Each is a plain `transformers.LogitsProcessor` over `(input_ids, scores)` and keeps no state
between calls, so `model.generate` and any hand-written decode loop (e.g. one that reuses a
KV prefix cache) can run the same list from `build_logits_processors`.

Why DRY and not only a token penalty: a chat is made of turn boundaries — line breaks,
`You:`, the character's own name on every one of its lines. A token-level penalty counts
them all, lowers the chance of ending the turn, and pushes the character away from its own
name (measured with bench/quality.py: walls of word salad). DRY ("Don't Repeat Yourself",
p-e-w's sampler in text-generation-webui, llama.cpp, KoboldCpp and Aphrodite) penalises only
a token that would *extend a repeat of an earlier sequence*, and sequence breakers (line
breaks, `:`, quotes, `*`, the speakers' names) end every match, so the turn structure is
never a repeat.

The DRY rule, as published: let the context end with tokens `... a b c` (the last one `c`).
For every earlier occurrence of `c` that is not the last token, extend the match backwards
while the tokens before both occurrences agree and are not breakers; the match length is
how many tokens agree. The token that followed that earlier occurrence would continue the
repeat. When the longest such match for a following token is at least `allowed_length`,
that token's logit loses `multiplier * base ** (length - allowed_length)`. A following
token that is a breaker is never penalised.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, MinPLogitsWarper

# The last this-many tokens are searched for repeats: a reply and a few turns before it. A
# longer range costs more per step and mostly finds matches in old turns.
DRY_RANGE_TOKENS = 512
# Matches are not followed back further than this: the penalty is already far past any
# logit there (1.75 ** 40 ~ 5e9), and looping text would otherwise cost a step per token.
DRY_MAX_MATCH_TOKENS = 40
NO_TOKEN = -1  # fills positions outside a row's window; no real token id equals it


@dataclass(frozen=True)
class DryConfig:
    multiplier: float  # 0 = off
    base: float
    allowed_length: int
    range_tokens: int = DRY_RANGE_TOKENS


class Dry(LogitsProcessor):
    """DRY over each row's recent tokens (vectorised over batch and positions). It lowers
    the penalised logits in `scores` in place and returns `scores`.

    starts: (batch,) first position a row may match against (the conversation window: pads,
    persona and example dialogue sit before it). breakers: (batch, vocab) bool, True for
    tokens that end every match in that row and are never penalised there.
    """

    def __init__(self, config: DryConfig, starts: torch.Tensor, breakers: torch.Tensor) -> None:
        self._config = config
        self._starts = starts
        self._breakers = breakers

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        window = self._window(input_ids)  # (batch, width), NO_TOKEN outside the window
        breakers = self._breakers.to(window.device)
        rows, tokens, amounts = dry_penalties(window, match_lengths(window, breakers),
                                              self._config, breakers)
        # In place, on the handful of penalised entries: a copy of (batch, vocab) scores would
        # cost more than the rest of this processor.
        inside = tokens < scores.shape[1]
        scores[rows[inside], tokens[inside]] -= amounts[inside].to(scores.dtype)
        return scores

    def _window(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        width = min(seq, self._config.range_tokens)
        window = input_ids[:, seq - width:]  # (batch, width)
        positions = torch.arange(seq - width, seq, device=input_ids.device)  # (width,)
        outside = positions[None, :] < self._starts.to(input_ids.device)[:, None]
        return window.masked_fill(outside, NO_TOKEN)


def match_lengths(window: torch.Tensor, breakers: torch.Tensor) -> torch.Tensor:
    """(batch, width - 1): for each position i, how many tokens ending at i equal the tokens
    ending at the last position, stopping at a breaker (0 where the token at i differs).

    Only the positions holding the last token are followed back, a step at a time, so a
    step costs the number of live matches, not the window's width."""
    batch, width = window.shape
    is_breaker = _breaker_mask(window, breakers)  # (batch, width)
    last = window[:, -1:]  # (batch, 1)
    starts = (window[:, :-1] == last) & (last != NO_TOKEN) & ~is_breaker[:, -1:]
    rows, ends = starts.nonzero(as_tuple=True)  # (candidates,)
    lengths = torch.zeros(batch, width - 1, dtype=torch.long, device=window.device)
    length = torch.zeros_like(ends)
    alive = torch.ones_like(ends, dtype=torch.bool)
    for back in range(min(width - 1, DRY_MAX_MATCH_TOKENS)):
        # The token `back` steps before each candidate end against the token `back` steps
        # before the last one; a match cannot reach before the window's first position.
        earlier = ends - back
        inside = earlier >= 0
        tail = width - 1 - back
        same = window[rows, earlier.clamp(min=0)] == window[rows, tail]
        alive &= inside & same & ~is_breaker[rows, tail]
        if not alive.any():
            break
        length += alive
    lengths[rows, ends] = length
    return lengths


def dry_penalties(window: torch.Tensor, lengths: torch.Tensor, config: DryConfig,
                  breakers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The penalties as (rows, tokens, amounts): one entry per penalised (row, token), the
    amount to subtract from its logit. Sparse, because a step penalises a handful of the
    vocabulary's tens of thousands of tokens."""
    following = window[:, 1:]  # (batch, width - 1): the token after each candidate end
    counted = (lengths >= max(config.allowed_length, 1)) & (following != NO_TOKEN)
    counted &= ~_breaker_mask(following, breakers)
    rows, positions = counted.nonzero(as_tuple=True)  # (hits,)
    tokens = following[rows, positions]
    if tokens.numel() == 0:
        return rows, tokens, torch.zeros(0, dtype=torch.float64, device=window.device)
    # A token that follows several matches is judged by the longest: keep one entry per
    # (row, token) with the largest length.
    keys, inverse = torch.unique(rows * (int(tokens.max()) + 1) + tokens,
                                 return_inverse=True)
    longest = torch.zeros(keys.shape[0], dtype=torch.long, device=window.device)
    longest.scatter_reduce_(0, inverse, lengths[rows, positions], reduce="amax")
    first = torch.full_like(keys, positions.numel())
    first.scatter_reduce_(0, inverse, torch.arange(positions.numel(), device=window.device),
                          reduce="amin")
    exponent = (longest - config.allowed_length).clamp(min=0).double()
    amounts = config.multiplier * config.base ** exponent
    return rows[first], tokens[first], amounts


def _breaker_mask(tokens: torch.Tensor, breakers: torch.Tensor) -> torch.Tensor:
    """tokens: (batch, n); breakers: (batch, vocab) -> (batch, n) bool. Ids past the mask's
    width (a model's embedding may be wider than its tokenizer) and NO_TOKEN are not breakers."""
    width = breakers.shape[1]
    inside = (tokens >= 0) & (tokens < width)
    return inside & breakers.gather(1, tokens.clamp(0, width - 1))


class WindowedRepetitionPenalty(LogitsProcessor):
    """The CTRL / Hugging Face repetition penalty, counting only each row's recent tokens.

    A token id is penalised in row b when it occurs in `input_ids[b, starts[b]:]`: the prompt
    from that row's penalty window on, plus everything generated so far. Left padding sits
    before every start, so pads never count. Structure tokens (`protected`: line breaks,
    speaker names, end of text) are never penalised: the turn boundaries are in every line
    of a chat, and punishing them keeps the character from ending its turn.
    """

    def __init__(self, penalty: float, starts: torch.Tensor,
                 protected: torch.Tensor | None = None) -> None:
        self._penalty = penalty
        self._starts = starts  # (batch,) first counted position in the padded input
        self._protected = protected  # (batch, vocab) bool, or None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        batch, vocab = scores.shape
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (seq,)
        starts = self._starts.to(input_ids.device)
        counted = positions[None, :] >= starts[:, None]  # (batch, seq)
        # Ids outside the window go to a spare column `vocab`, dropped after the scatter.
        ids = input_ids.masked_fill(~counted, vocab)  # (batch, seq)
        seen = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=scores.device)
        seen = seen.scatter_(1, ids, True)[:, :vocab]  # (batch, vocab)
        if self._protected is not None:
            protected = self._protected.to(scores.device)[:, :vocab]
            seen[:, :protected.shape[1]] &= ~protected
        penalised = torch.where(scores > 0, scores / self._penalty, scores * self._penalty)
        return torch.where(seen, penalised, scores)


@dataclass(frozen=True)
class SamplingSetup:
    """What the processors need besides the params: per-row windows and the token sets."""

    starts: torch.Tensor  # (batch,) first position of each row's conversation window
    breakers: torch.Tensor  # (batch, vocab) bool: DRY sequence breakers per row
    protected: torch.Tensor  # (batch, vocab) bool: tokens the token penalty never touches


def build_logits_processors(
    *, repetition_penalty: float, dry: DryConfig, setup: SamplingSetup,
) -> LogitsProcessorList:
    """The penalties, in the order they run: before temperature, top-p and min-p (which
    generate() adds itself; `build_warpers` gives them to a hand-written decode loop)."""
    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(WindowedRepetitionPenalty(repetition_penalty, setup.starts,
                                                    setup.protected))
    if dry.multiplier > 0:
        processors.append(Dry(dry, setup.starts, setup.breakers))
    return processors


def build_warpers(*, temperature: float, top_p: float, top_k: int,
                  min_p: float) -> LogitsProcessorList:
    """Temperature, top-k, top-p and min-p in generate()'s own order, for a decode loop that
    samples itself (generate() builds these from its keyword arguments)."""
    from transformers import (  # noqa: PLC0415 (only hand-written loops need them)
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p > 0:
        warpers.append(MinPLogitsWarper(min_p))
    return warpers


def token_mask(vocab: int, ids: Iterable[int]) -> torch.Tensor:
    """(vocab,) bool with True at `ids` (ids outside the vocabulary are ignored)."""
    mask = torch.zeros(vocab, dtype=torch.bool)
    kept = [token_id for token_id in ids if 0 <= token_id < vocab]
    if kept:
        mask[torch.tensor(kept, dtype=torch.long)] = True
    return mask


def breaker_token_ids(token_texts: Sequence[str], encodings: Iterable[Sequence[int]],
                      breakers: Collection[str]) -> set[int]:
    """Token ids that break a DRY match: every token whose text contains a breaker (so
    "\\n\\n" and " Aria:" count as well as "\\n" and ":"), plus the tokens a breaker is
    written with when it spans several (a name split into pieces)."""
    wanted = [breaker for breaker in breakers if breaker]
    ids = {index for index, text in enumerate(token_texts)
           if any(breaker in text for breaker in wanted)}
    for encoded in encodings:
        ids.update(encoded)
    return ids
