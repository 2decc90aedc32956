"""The reply's final text and the part of a growing one that members may already see."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pygbot.reply_text import final_reply, visible_reply

NAME = "Aria"
SPEAKERS = ("You", "Aria", "Bob Smith", "Dr. Who")
# Pieces the model's continuations are made of, including everything that gets cut.
PIECES = ["Hello", " there", " friend", ".", "!", "?", "…", " ", "  ", "\n", "\t", "You",
          "You:", ":", "Bob", " Smith", "Bob Smith:", "Dr.", " Who:", "Aria", "Aria:", "<",
          "START", "<START>", "< start", ">", "sta", "I love you.", " I love you", " so much.",
          "*waves*", '"', "'", ")", "3.5", "ok", " and then: yes", " hi", " a b c d e f",
          "Zed Q:", "\u00e9", "e\u0301", "Your name:", " next:", "</p>", "<END OF>", "---",
          "* *"]
texts = st.lists(st.sampled_from(PIECES), max_size=24).map("".join)


def visible(text: str, trim_loops: bool = True) -> str:
    return visible_reply(text, NAME, SPEAKERS, trim_loops=trim_loops)


def final(text: str, *, hit_token_limit: bool = False, trim_loops: bool = True) -> str:
    return final_reply(text, NAME, SPEAKERS, hit_token_limit=hit_token_limit,
                       trim_loops=trim_loops)


@settings(max_examples=200, deadline=None)
@given(texts, st.booleans(), st.booleans())
def test_what_is_visible_at_any_point_begins_the_final_reply(
    text: str, hit_token_limit: bool, trim_loops: bool,
) -> None:
    stored = final(text, hit_token_limit=hit_token_limit, trim_loops=trim_loops)
    for length in range(len(text) + 1):
        shown = visible(text[:length], trim_loops)
        assert stored.startswith(shown), (text[:length], shown, stored)


def test_the_first_sentence_shows_before_the_reply_is_done() -> None:
    text = " *smiles* Of course I remember you. We met on the night of the comet, by the docks."
    first = next(length for length in range(len(text) + 1) if visible(text[:length]))
    assert visible(text[:first]) == "*smiles*"
    assert first < len(text) // 2
    assert visible(text) == "*smiles* Of course I remember you."  # the rest comes at the end


def test_a_line_that_may_become_a_speakers_turn_is_held_back() -> None:
    said = " Sure thing. I'll be there before the bells ring.\n"
    assert visible(said + "Yo") == "Sure thing."
    # A complete turn line ends the reply: all of it is settled.
    assert visible(said + "You: great, see you. Bye") == said.strip()
    assert visible(said + "and more of it, to be sure. To") == \
        "Sure thing. I'll be there before the bells ring."
    assert visible(said + "and more of it, to be sure. To the docks we go ") == \
        "Sure thing. I'll be there before the bells ring.\nand more of it, to be sure."


def test_the_characters_own_label_and_start_marks_never_show() -> None:
    assert visible(" Ari", trim_loops=False) == ""
    assert visible("Aria: Hello there. How", trim_loops=False) == "Hello there."
    assert visible(" Fine. Thanks. <STA", trim_loops=False) == "Fine."
    assert visible(" Fine. Thanks. <START> You: hi. Aria: ok. ", trim_loops=False) == \
        "Fine. Thanks."  # a complete <START> ends the reply


def test_a_loop_never_shows_even_while_it_grows() -> None:
    loop = " I am here for you. I am here for you. I am here for you."
    for length in range(len(loop) + 1):
        assert visible(loop[:length]) in ("", "I am here for you.")
    assert final(loop) == "I am here for you."


def test_without_the_guard_a_repeat_is_shown_as_it_will_be_stored() -> None:
    loop = " I am here. I am here. I am here. Yes"
    assert visible(loop, trim_loops=False) == "I am here. I am here. I am here."


def test_a_tag_still_being_written_is_not_shown() -> None:
    # Found by the property above: `< start.` showed, then `< start. there>` turned out to be
    # a tag that the final reply is cut at.
    text = "Hi there. < start. there> more"
    assert final(text) == "Hi there."
    assert all(final(text).startswith(visible(text[:length]))
               for length in range(len(text) + 1))
    # (Loop trimming off: it holds back the last few words, which would hide the point.)
    heart = "Hi there. I <3 this old ship, "
    assert visible(heart + "really. ", trim_loops=False) == "Hi there."  # `<` may open a tag
    rest = "every bolt and every star chart in it, truly."
    assert visible(f"{heart}{rest} And", trim_loops=False) == heart + rest  # too long for one
