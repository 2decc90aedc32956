"""DRY, the windowed repetition penalty and min-p on constructed token sequences."""

from __future__ import annotations

from typing import cast

import pytest
import torch

from pygbot.sampling import (
    DRY_MAX_MATCH_TOKENS,
    Dry,
    DryConfig,
    SamplingSetup,
    WindowedRepetitionPenalty,
    breaker_token_ids,
    build_logits_processors,
    build_warpers,
    match_lengths,
    token_mask,
)

VOCAB = 12
NEWLINE, COLON = 10, 11  # the breakers of these tests
DRY = DryConfig(multiplier=0.8, base=1.75, allowed_length=2)


def breakers(*ids: int, rows: int = 1) -> torch.Tensor:
    return token_mask(VOCAB, ids).expand(rows, VOCAB)


def dry_penalty(sequence: list[int], config: DryConfig = DRY, start: int = 0,
                breaker_ids: tuple[int, ...] = (NEWLINE, COLON)) -> torch.Tensor:
    """How much DRY takes from each token's logit after `sequence` (vocab,)."""
    processor = Dry(config, torch.tensor([start]), breakers(*breaker_ids))
    scores = torch.zeros(1, VOCAB)
    return -processor(torch.tensor([sequence]), scores)[0]


# --- DRY -----------------------------------------------------------------------------------------

def test_a_token_that_would_extend_a_repeat_loses_multiplier_times_base_to_the_excess() -> None:
    # 1 2 3 4 5 ... 1 2 3: emitting 4 would repeat "1 2 3 4"; the match so far is 3 long.
    penalty = dry_penalty([1, 2, 3, 4, 5, 6, 1, 2, 3])
    assert penalty[4].item() == pytest.approx(0.8 * 1.75 ** (3 - 2))
    assert penalty.count_nonzero().item() == 1


def test_a_repeat_as_long_as_the_allowed_length_gets_the_multiplier_itself() -> None:
    penalty = dry_penalty([1, 2, 4, 5, 6, 1, 2])
    assert penalty[4].item() == pytest.approx(0.8)


def test_a_repeat_shorter_than_the_allowed_length_is_free() -> None:
    assert dry_penalty([1, 4, 5, 6, 1]).count_nonzero().item() == 0


def test_the_longest_match_decides_when_a_token_follows_several() -> None:
    # "2 3" then 7 once, "1 2 3" then 7 later: 7 is judged by the 3-long match.
    penalty = dry_penalty([9, 2, 3, 7, 1, 2, 3, 7, 8, 1, 2, 3])
    assert penalty[7].item() == pytest.approx(0.8 * 1.75)


def test_a_breaker_inside_the_sequence_resets_the_match() -> None:
    # "1 : 2 3" seen before; the context ends "1 : 2 3": the match stops at the colon, so it
    # is 2 long ("2 3"), not 4.
    penalty = dry_penalty([1, COLON, 2, 3, 4, 1, COLON, 2, 3])
    assert penalty[4].item() == pytest.approx(0.8)


def test_a_breaker_as_the_last_token_matches_nothing() -> None:
    assert dry_penalty([1, 2, NEWLINE, 5, 1, 2, NEWLINE]).count_nonzero().item() == 0


def test_structure_tokens_are_never_penalised_even_after_a_long_repeat() -> None:
    # Every turn of a chat: "\n 7 : words \n 7 : ..." — the newline after a repeated line and
    # the label tokens are breakers, so ending the turn costs nothing.
    turn = [NEWLINE, 7, COLON, 1, 2, 3, 4]
    penalty = dry_penalty([*turn, *turn, *turn, NEWLINE, 7, COLON, 1, 2, 3, 4])
    assert penalty[NEWLINE].item() == 0.0
    assert penalty[COLON].item() == 0.0
    assert penalty[7].item() == 0.0


def test_matches_before_the_rows_start_do_not_count() -> None:
    sequence = [1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert dry_penalty(sequence, start=5).count_nonzero().item() == 0
    assert dry_penalty(sequence, start=0)[4].item() > 0


def test_only_the_last_range_tokens_are_searched() -> None:
    sequence = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3]
    short = DryConfig(DRY.multiplier, DRY.base, DRY.allowed_length, range_tokens=6)
    assert dry_penalty(sequence, short).count_nonzero().item() == 0
    assert dry_penalty(sequence)[4].item() > 0


def test_rows_of_a_batch_are_penalised_independently() -> None:
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 1, 2, 3],
                              [6, 6, 9, 8, 7, 1, 2, 3]])
    processor = Dry(DRY, torch.tensor([0, 0]), breakers(NEWLINE, rows=2))
    penalty = -processor(input_ids, torch.zeros(2, VOCAB))
    assert penalty[0, 4].item() == pytest.approx(0.8 * 1.75)
    assert penalty[1].count_nonzero().item() == 0


def test_a_loop_longer_than_the_match_cap_still_gets_a_finite_large_penalty() -> None:
    sequence = [1, 2, 3, 4] * 30
    penalty = dry_penalty(sequence)
    assert penalty[1].item() == pytest.approx(0.8 * 1.75 ** (DRY_MAX_MATCH_TOKENS - 2))


def test_a_single_token_context_is_left_alone() -> None:
    assert dry_penalty([3]).count_nonzero().item() == 0


def test_match_lengths_count_back_to_the_first_difference() -> None:
    window = torch.tensor([[5, 1, 2, 3, 1, 2, 3]])
    lengths = match_lengths(window, breakers(NEWLINE))
    # The last token is 3, so only the earlier 3 (position 3) is a candidate end; "5 1 2 3"
    # and "3 1 2 3" differ four tokens back.
    assert lengths.tolist() == [[0, 0, 0, 3, 0, 0]]


def test_breaker_ids_include_every_token_that_contains_a_breaker() -> None:
    texts = ["\n", "\n\n", "a", " Aria", "b:", "Ar", "ia", "x"]
    ids = breaker_token_ids(texts, [[5, 6]], ["\n", ":", "Aria"])
    assert ids == {0, 1, 3, 4, 5, 6}


# --- the windowed repetition penalty -------------------------------------------------------------

def test_penalty_touches_only_tokens_inside_each_rows_window() -> None:
    input_ids = torch.tensor([[1, 2, 3, 4],    # window from position 2: tokens 3, 4
                              [5, 5, 1, 2]])   # window from position 0: tokens 5, 1, 2
    scores = torch.tensor([[2.0, 2.0, 2.0, 2.0, -2.0, 2.0],
                           [2.0, 2.0, -2.0, 2.0, 2.0, 2.0]])
    processor = WindowedRepetitionPenalty(2.0, starts=torch.tensor([2, 0]))

    penalised = processor(input_ids, scores.clone())

    assert penalised.tolist() == [[2.0, 2.0, 2.0, 1.0, -4.0, 2.0],   # 1, 2 before the window
                                  [2.0, 1.0, -4.0, 2.0, 2.0, 1.0]]


def test_a_window_past_the_prompt_leaves_every_prompt_token_alone() -> None:
    input_ids = torch.tensor([[0, 1, 2, 3]])
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    processor = WindowedRepetitionPenalty(3.0, starts=torch.tensor([4]))
    assert torch.equal(processor(input_ids, scores.clone()), scores)


def test_the_token_penalty_never_touches_protected_structure_tokens() -> None:
    input_ids = torch.tensor([[NEWLINE, 7, COLON, 1, NEWLINE, 7, COLON]])
    scores = torch.full((1, VOCAB), 2.0)
    protected = breakers(NEWLINE, COLON, 7)
    penalised = WindowedRepetitionPenalty(2.0, torch.tensor([0]), protected)(input_ids, scores)
    assert penalised[0, NEWLINE].item() == penalised[0, COLON].item() == 2.0
    assert penalised[0, 7].item() == 2.0
    assert penalised[0, 1].item() == 1.0


# --- building the lists --------------------------------------------------------------------------

def test_processors_are_built_only_for_controls_that_are_on() -> None:
    setup = SamplingSetup(torch.tensor([0]), breakers(NEWLINE), breakers(NEWLINE))
    off = DryConfig(0.0, 1.75, 2)
    assert len(build_logits_processors(repetition_penalty=1.0, dry=off, setup=setup)) == 0
    both = build_logits_processors(repetition_penalty=1.1, dry=DRY, setup=setup)
    assert [type(p) for p in both] == [WindowedRepetitionPenalty, Dry]


def test_min_p_drops_tokens_below_its_share_of_the_top_probability() -> None:
    warpers = build_warpers(temperature=1.0, top_p=1.0, top_k=0, min_p=0.2)
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    no_tokens = cast(torch.LongTensor, torch.zeros(1, 1, dtype=torch.long))
    kept = warpers(no_tokens, cast(torch.FloatTensor, probabilities.log()))
    assert torch.isfinite(kept).tolist() == [[True, True, True, False]]
