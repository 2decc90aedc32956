"""The quality bench's metrics on hand-written replies (no model is run here)."""

from __future__ import annotations

import math
import re

from bench.quality import (
    SCRIPTS,
    ChatLog,
    Exchange,
    has_forged_turn,
    measure,
    near_duplicate_flags,
    reduction,
    result_line,
    table,
)

THRESHOLD = 0.75
GREETING = "*the intercom chimes* Hello! What's on your mind tonight?"

LOOPING = ChatLog("Aria", GREETING, (
    Exchange("hi", "The rings are lovely tonight. The rings are lovely tonight. The rings."),
    Exchange("ok", "The rings are lovely tonight and the stars are bright."),
    Exchange("tell me more", "The rings are lovely tonight and the stars are bright!"),
    Exchange("haha", None),
    Exchange("what else?", "Sure thing.\nYou: what else?\nAria: more rings"),
))
VARIED = ChatLog("Aria", GREETING, (
    Exchange("hi", "The rings are lovely tonight, catching the starlight."),
    Exchange("ok", "Did you know Saturn's rings are mostly water ice?"),
    Exchange("tell me more", "Some pieces are as small as dust, others as big as houses."),
    Exchange("haha", "I laugh too when I think about ice houses orbiting a planet!"),
    Exchange("what else?", "Shall we plot a course past the northern moon next?"),
))


def test_a_line_opening_another_speakers_turn_counts_as_forged() -> None:
    assert has_forged_turn("Sure.\nYou: and then?", "Aria")
    assert has_forged_turn("Sure.\n  aria: I said so", "Aria")
    assert has_forged_turn("Sure.\nCaptain Reyes: report!", "Aria")
    assert has_forged_turn("You: starts with the member's label", "Aria")


def test_ordinary_replies_and_lower_case_colons_are_not_forged() -> None:
    assert not has_forged_turn("Here's the thing: the rings are ice.", "Aria")
    assert not has_forged_turn("*smiles* and then: nothing at all", "Aria")
    assert not has_forged_turn("Look at 12:30 on the clock", "Aria")


def test_near_duplicates_are_judged_against_the_greeting_and_earlier_replies() -> None:
    chat = ChatLog("Aria", GREETING, (
        Exchange("a", "Hello! What's on your mind tonight, friend?"),
        Exchange("b", "Saturn's rings are mostly made of water ice."),
        Exchange("c", None),
        Exchange("d", "Saturn's rings are mostly made of water ice!"),
    ))
    assert near_duplicate_flags(chat, THRESHOLD) == [True, False, True]


def test_only_the_last_five_turns_count_as_recent_unless_the_window_is_open() -> None:
    first = "The rings of the gas giant shine brightly tonight."
    fillers = [f"Different sentence number {word} about another topic entirely."
               for word in ("one", "two", "three", "four", "five")]
    chat = ChatLog("Aria", "", tuple(Exchange("m", text) for text in [first, *fillers, first]))
    assert near_duplicate_flags(chat, THRESHOLD)[-1] is False
    assert near_duplicate_flags(chat, THRESHOLD, window=None)[-1] is True


def test_metrics_of_a_looping_chat_are_worse_than_a_varied_one() -> None:
    looping, varied = measure([LOOPING], THRESHOLD), measure([VARIED], THRESHOLD)
    assert looping.rep4 > varied.rep4 == 0.0
    assert near_duplicate_flags(LOOPING, THRESHOLD) == [False, False, True, False]
    assert looping.near_duplicates == 1 / 4
    assert varied.near_duplicates == 0.0
    assert looping.distinct2 < varied.distinct2
    assert (looping.forged_count, looping.forged_share) == (1, 1 / 4)
    assert looping.empty_share == 1 / 5
    assert (looping.turns, looping.replies) == (5, 4)


def test_reductions_compare_guard_on_with_guard_off() -> None:
    assert reduction(0.25, 1.0) == 0.75
    assert reduction(0.0, 0.5) == 1.0
    assert math.isnan(reduction(0.0, 0.0))


def test_result_line_is_the_documented_format() -> None:
    off, on = measure([LOOPING], THRESHOLD), measure([VARIED], THRESHOLD)
    line = result_line(off, on)
    pattern = (r"RESULT rep4_reduction=(-?\d+\.\d{3}|nan) neardup_reduction=(-?\d+\.\d{3}|nan) "
               r"distinct2_ratio=(\d+\.\d{3}|nan) forged_turns=(\d+)")
    match = re.fullmatch(pattern, line)
    assert match is not None, line
    assert match.group(1) == "1.000"
    assert match.group(2) == "1.000"
    assert float(match.group(3)) > 1.0
    assert match.group(4) == "0"


def test_table_has_off_on_and_ratio_columns_for_every_metric() -> None:
    rendered = table(measure([LOOPING], THRESHOLD), measure([VARIED], THRESHOLD))
    header, *rows = rendered.splitlines()
    assert header.split() == ["metric", "off", "on", "on/off"]
    assert any(row.startswith("near-duplicate of last 5") for row in rows)
    assert any(row.startswith("near-dup of any earlier") for row in rows)
    assert len(rows) == 9


def test_every_script_has_at_least_twenty_turns_for_the_quick_run() -> None:
    assert set(SCRIPTS) == {"Aria", "Pip", "Rook"}
    assert all(len(lines) >= 20 for lines in SCRIPTS.values())


def test_short_replies_said_again_count_as_near_duplicates() -> None:
    chat = ChatLog("Rook", "", (Exchange("a", "Aye."), Exchange("b", "Aye.")))
    assert near_duplicate_flags(chat, THRESHOLD) == [False, True]
