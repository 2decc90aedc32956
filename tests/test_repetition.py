"""Loop and near-duplicate detection, and the metrics the quality bench reports."""

from __future__ import annotations

from pygbot.repetition import (
    distinct_n,
    is_near_duplicate,
    max_similarity,
    seq_rep_n,
    similarity,
    trim_loop,
)


def test_a_repeated_sentence_is_trimmed_at_its_second_copy() -> None:
    looping = "I love the stars. They are so bright tonight. I love the stars. They are"
    assert trim_loop(looping) == "I love the stars. They are so bright tonight."


def test_a_repeated_long_phrase_is_trimmed() -> None:
    looping = ("and we walked down to the old harbour together and we walked down to the "
               "old harbour together and we walked")
    assert trim_loop(looping) == "and we walked down to the old harbour together"


def test_a_reply_without_loops_is_kept_whole() -> None:
    reply = "Good evening! The kettle is on. Would you like tea, or would you rather have cocoa?"
    assert trim_loop(reply) == reply


def test_short_repeated_answers_are_not_loops() -> None:
    assert trim_loop("Yes. Yes. I mean it.") == "Yes. Yes. I mean it."


def test_near_duplicates_of_recent_replies_are_detected() -> None:
    recent = ["Oh, hello there! How are you doing today?", "The stars are lovely tonight."]
    assert is_near_duplicate("Oh hello there! How are you doing today?", recent, 0.75)
    assert not is_near_duplicate("I have never seen a comet up close.", recent, 0.75)


def test_a_short_reply_said_word_for_word_again_is_a_near_duplicate() -> None:
    recent = ["The stars are lovely tonight.", "No."]
    assert is_near_duplicate("no!", recent, 0.75)
    assert max_similarity("No.", recent) == 1.0


def test_a_short_reply_that_differs_from_every_recent_one_is_not_a_duplicate() -> None:
    recent = ["No.", "Maybe later, friend."]
    assert not is_near_duplicate("No way.", recent, 0.75)
    assert not is_near_duplicate("Yes.", recent, 0.75)
    assert max_similarity("*nods*", []) == 0.0


def test_a_short_reply_that_only_changes_a_number_is_a_near_duplicate() -> None:
    recent = ["30 years younger", "Not a chance."]
    assert is_near_duplicate("12 years younger", recent, 0.75)
    assert is_near_duplicate("Call it 35 per day, all in.", ["Call it 20 per day, all in."], 0.75)
    assert not is_near_duplicate("12 years older", recent, 0.75)
    assert not is_near_duplicate("1990s music", ["1980s music"], 0.75)


def test_only_the_last_five_replies_count_as_recent() -> None:
    recent = ["The kettle is whistling again, I should go get it."] + [
        f"Unrelated reply number {i} about something else entirely." for i in range(5)]
    assert not is_near_duplicate("The kettle is whistling again, I should go get it.", recent, 0.75)


def test_similarity_is_one_for_the_same_words_and_zero_for_none_shared() -> None:
    assert similarity("The sea is calm.", "the sea is calm") == 1.0
    assert similarity("alpha beta", "gamma delta") == 0.0


def test_seq_rep_4_counts_repeated_four_grams() -> None:
    assert seq_rep_n("a b c d e f g h") == 0.0
    assert seq_rep_n("a b c d a b c d a b c d") > 0.5


def test_distinct_2_is_the_share_of_unique_bigrams() -> None:
    assert distinct_n(["a b c", "d e f"]) == 1.0
    assert distinct_n(["a b a b a b"]) == 2 / 5
