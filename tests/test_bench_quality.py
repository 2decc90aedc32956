"""The quality bench's metrics and its gradio-ui baseline, on hand-written replies (no model).

The bench must not be fooled: word salad may not win, a forged line in any case counts, a
short reply said again counts as a repeat.
"""

from __future__ import annotations

import re

import pytest

from bench import gradio_baseline
from bench.quality import CONTROLS_OFF, QUICK_SYSTEMS, SYSTEMS, chat_config, parse_args, plan
from bench.quality_metrics import (
    ChatLog,
    Reply,
    forged_lines,
    is_label_line,
    measure,
    near_duplicate_flags,
    other_names,
    pseudo_tag_lines,
    result_line,
    says_no_words,
    table,
)
from bench.quality_scripts import BENCH, SCRIPTS, folder
from pygbot.character_files import load_character_dir
from pygbot.persona import Persona

GREETING = "*opens one eye* Oh. You're back. The food bowl is empty, servant."
CAP = 160


def chat(*texts: str | None, tokens: int = 20, character: str = "Mochi") -> ChatLog:
    replies = tuple(Reply(f"line {i}", text, tokens, CAP, 1.0, 0.5)
                    for i, text in enumerate(texts))
    return ChatLog("test", character, GREETING, replies)


WORD_SALAD = (
    "Sunbeam quantum teapot marmalade vortex, the seventh ledger hums.\n"
    "Copyright 2019 all rights reserved to the orbiting walrus council.\n"
    "You walk into the violet kitchen and the spoons recite tax law.\n"
    "<END OF TRANSCRIPT>\n"
    "Coming up next: harbour mice auction obsolete thunder.\n"
    "Granite whispers; a bicycle of moths negotiates with Tuesday.\n"
    "Velvet spreadsheets migrate south for the winter solstice parade.\n"
    "Nine accordions argue about the colour of silence near Reykjavik.\n"
    "Lantern oatmeal, crimson syntax, and a lighthouse made of receipts.")
GOOD = (
    "*stretches* Fine. I suppose you may pet me. Once.",
    "*sniffs the bowl* Tuna? Acceptable, servant.",
    "I napped in the sunbeam, obviously. Very demanding work.",
    "*flicks tail* The string must prove itself worthy first.",
)


# --- forged lines ------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "You: and then?", "you: and then?", "Sam: hi", "She: hello", "Captain Reyes: report!",
    "Your name: Mochi", "your name: mochi", "Coming up next: the weather",
    "coming up next: the weather", "*Mochi: purrs", "User:", "mochi: meow",
])
def test_label_like_lines_count_as_forged_in_any_case(line: str) -> None:
    assert is_label_line(line)
    assert forged_lines(f"*purrs* Fine.\n{line}") == 1


@pytest.mark.parametrize("line", [
    "Here's the thing: the bowl is empty.", "and then: nothing at all", "Look at 12:30 now",
    "I mean: really?", "you know: whatever", "So that's it: a nap.", "Fine. Here it is: tuna",
])
def test_ordinary_text_with_a_colon_is_not_forged(line: str) -> None:
    assert not is_label_line(line)
    assert forged_lines(line) == 0


def test_a_reply_with_several_forged_lines_counts_once_per_reply() -> None:
    metrics = measure([chat("Fine.\nYou: ok\nMochi: meow", "*yawns*")])
    assert metrics.forged == 1


# --- near-duplicates ---------------------------------------------------------------------------

def test_a_short_reply_said_again_is_a_near_duplicate() -> None:
    assert near_duplicate_flags("", ["No.", "No.", "No way.", "Yes!"]) == \
        [False, True, False, False]


def test_a_reply_that_only_changes_a_number_is_a_near_duplicate() -> None:
    assert near_duplicate_flags("", ["30 years younger", "12 years younger", "12 years older"]
                                ) == [False, True, False]


def test_short_replies_that_differ_are_not_duplicates_and_empties_are_skipped() -> None:
    assert near_duplicate_flags("", ["No.", None, "Nope.", "No, thanks."]) == \
        [False, False, False]


def test_near_duplicates_count_against_the_greeting_and_only_the_last_five_turns() -> None:
    first = "The rings of the gas giant shine brightly tonight, friend."
    fillers = [f"Different sentence number {word} about another topic entirely."
               for word in ("one", "two", "three", "four", "five")]
    assert near_duplicate_flags("", [first, *fillers, first])[-1] is False
    assert near_duplicate_flags("", [first, *fillers[:4], first])[-1] is True
    assert near_duplicate_flags(GREETING, [GREETING.replace("empty", "EMPTY")]) == [True]


# --- other names, tags -------------------------------------------------------------------------

@pytest.mark.parametrize("reply", [
    "Hi, I'm Luna!", "My name is Luna Moon.", "call me Luna, please", "I am Bella, the cat.",
    "*purrs* my name's Tom and I rule here", "I'm called Ryk, a master smith.", "I go by Tom.",
])
def test_introducing_oneself_by_another_name_counts(reply: str) -> None:
    assert other_names(reply, "Mochi")


@pytest.mark.parametrize("reply", [
    "I'm Mochi, obviously.", "I'm Glad you came.", "Luna is my sister.", "I'm not sure.",
    "Call me when dinner is ready.", "I am Sorry.",
])
def test_own_name_and_ordinary_sentences_are_not_other_names(reply: str) -> None:
    assert not other_names(reply, "Mochi")


def test_a_name_sharing_a_word_with_the_characters_own_is_its_own() -> None:
    assert not other_names("Call me Calloway.", "Vic Calloway")
    assert other_names("Call me Sam Spade.", "Vic Calloway")


def test_numbers_or_actions_alone_speak_no_words() -> None:
    assert says_no_words("12.50") and says_no_words("*laughs again*") and says_no_words("...")
    assert says_no_words("*looks up from the desk")  # an action left open
    assert not says_no_words("*nods* Twelve fifty.") and not says_no_words("No.")


def test_pseudo_tags_are_counted_per_line() -> None:
    assert pseudo_tag_lines("Fine.\n<END OF CONVERSATION>\n</s> [END]\n<3 you") == 2
    assert pseudo_tag_lines("5 < 6 and 7 > 3") == 0


# --- word salad cannot win ---------------------------------------------------------------------

def test_word_salad_loses_where_it_would_win_distinct_2() -> None:
    salad = measure([chat(WORD_SALAD, tokens=CAP)])
    good = measure([chat(*GOOD)])
    assert salad.distinct2 > 0.95  # the number word salad wins...
    assert salad.near_cap == 1.0 and good.near_cap == 0.0  # ...and what gives it away
    assert salad.lines_mean > 5 * good.lines_mean
    assert salad.words_median > 40 >= good.words_median >= 4
    assert salad.forged == 1 and good.forged == 0
    assert salad.pseudo_tags == 1 and good.pseudo_tags == 0


def test_a_wall_of_text_said_again_is_a_near_duplicate() -> None:
    again = WORD_SALAD.replace("Sunbeam", "Moonbeam")
    assert measure([chat(WORD_SALAD, again, tokens=CAP)]).near_duplicates == 0.5


def test_empty_replies_and_timing_are_reported() -> None:
    metrics = measure([chat("Fine.", None, "*yawns*", None)])
    assert (metrics.turns, metrics.empty) == (4, 0.5)
    assert (metrics.seconds, metrics.cpu_seconds) == (1.0, 0.5)


def test_result_line_is_the_documented_format() -> None:
    defaults = measure([chat(*GOOD)])
    baseline = measure([chat("No.", "No.", "Fine.\nShe: meow", "No.")])
    line = result_line(defaults, baseline)
    pattern = (r"RESULT forged=(\d+) neardup=(\d\.\d{3}) distinct2=(\d\.\d{3}) "
               r"words_median=(\d+) near_cap=(\d\.\d{3}) other_name=(\d+) "
               r"baseline_neardup=(\d\.\d{3}) baseline_forged=(\d+)")
    match = re.fullmatch(pattern, line)
    assert match is not None, line
    assert match.group(1) == "0" and match.group(2) == "0.000"
    assert match.group(7) == "0.500"  # "No." repeated twice in four posted replies
    assert match.group(8) == "1"


def test_table_has_a_column_per_system_and_every_metric() -> None:
    rendered = table({"gradio-ui": measure([chat("No.")]), "defaults": measure([chat(*GOOD)])})
    header, *rows = rendered.splitlines()
    assert header.split() == ["metric", "gradio-ui", "defaults"]
    assert len(rows) == 15
    assert any(row.startswith("near the token cap") for row in rows)


# --- the baseline ------------------------------------------------------------------------------

PERSONA = Persona("Mochi", "A lazy cat.", "On the couch.", "Hi.",
                  "<START>\nYou: a\nMochi: b\n<START>\nYou: c\nMochi: d")


def test_baseline_prompt_keeps_the_last_eight_lines_of_examples_and_history() -> None:
    history = [f"You: h{i}" if i % 2 == 0 else f"Mochi: r{i}" for i in range(6)]
    prompt = gradio_baseline.build_prompt(PERSONA, history, "new")
    lines = prompt.split("\n")
    assert lines[:3] == ["Mochi's Persona: A lazy cat.", "Scenario: On the couch.", "<START>"]
    assert lines[3:11] == ["You: c", "Mochi: d", *history]
    assert lines[11:] == ["You: new", "Mochi:"]


def test_baseline_sampling_is_gradio_uis() -> None:
    request = gradio_baseline.request(PERSONA, [], "hi", seed=7)
    params = request.params
    assert (params.temperature, params.top_p, params.top_k) == (0.5, 0.9, 0)
    assert (params.repetition_penalty, params.max_new_tokens, params.seed) == (1.05, 196, 7)
    assert (params.min_p, params.dry_multiplier, request.penalty_from) == (0.0, 0.0, 0)
    assert request.stop_strings == ("\nYou:",)


def test_baseline_cuts_only_at_you_and_its_own_label() -> None:
    assert gradio_baseline.parse_reply(" Meow.\nYou: hi", "Mochi") == "Meow."
    assert gradio_baseline.parse_reply(" Meow.\nMochi: again", "Mochi") == "Meow."
    assert gradio_baseline.parse_reply(" Meow.\nmochi: again", "Mochi") == "Meow.\nmochi: again"
    assert gradio_baseline.parse_reply(" Meow.\nShe: purrs", "Mochi") == "Meow.\nShe: purrs"


# --- the plan ----------------------------------------------------------------------------------

def test_every_control_alone_switches_one_setting_from_all_off() -> None:
    for name in ("dry", "min_p", "penalty", "guard"):
        overrides = SYSTEMS[name]
        assert overrides is not None
        changed = {key for key, value in overrides.items() if CONTROLS_OFF[key] != value}
        assert len(changed) == 1, name
    assert SYSTEMS["defaults"] == {}
    assert chat_config({}, 8192).params.max_new_tokens == 160  # shipped defaults, untouched


def test_quick_run_compares_the_baseline_and_defaults_over_five_kinds_of_characters() -> None:
    run = plan(parse_args(["--quick"]))
    assert run.systems == QUICK_SYSTEMS == ("gradio-ui", "defaults")
    assert len(run.characters) >= 5 and run.turns >= 20
    assert all(len(SCRIPTS[name]) >= run.turns for name in run.characters)


def test_full_run_has_every_control_alone_and_the_controls_can_run_by_themselves() -> None:
    full = plan(parse_args([]))
    assert {"gradio-ui", "defaults", "none", "dry", "min_p", "penalty", "guard"} == set(
        full.systems)
    assert len(full.characters) >= 8 and full.turns >= 30
    controls = plan(parse_args(["--quick", "--systems", "none", "dry", "guard"]))
    assert controls.systems == ("none", "dry", "guard")


def test_the_baseline_and_the_defaults_run_first_for_every_character() -> None:
    run = plan(parse_args(["--quick"]))
    chats = run.chats()
    assert len(chats) == len(run.characters) * len(run.systems)
    first = {system for _, system in chats[:2 * len(run.characters)]}
    assert first == {"gradio-ui", "defaults"}


def test_bench_characters_load_as_persona_files() -> None:
    for name in BENCH:
        assert name.casefold() in load_character_dir(folder(name))
