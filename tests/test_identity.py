"""Spotting a character that introduces itself under another name."""

from __future__ import annotations

from pygbot.identity import introduced_names, uses_other_name


def test_introductions_under_another_name_are_found() -> None:
    assert uses_other_name("Hi there! I'm Luna, the ship's cook.", "Aria")
    assert uses_other_name("*waves* My name is Captain Reyes.", "Aria")
    assert uses_other_name("Well, call me Bob if you like", "Rook")
    assert uses_other_name("Hello, I am Sarah and I work here.", "Pip")
    assert uses_other_name("The name's Jack.", "Rook")
    assert uses_other_name("I'm called Ryk, I'm a master swordsmith.", "Borin")
    assert uses_other_name("I am named Luna.", "Aria")
    assert uses_other_name("Around here I go by Red.", "Rook")


def test_the_characters_own_name_is_not_another_name() -> None:
    assert not uses_other_name("I'm Aria, the navigation AI.", "Aria")
    assert not uses_other_name("Call me Rook. Everyone does.", "Old Rook")
    assert not uses_other_name("My name is Pip of the Copper Kettle!", "Pip")
    assert not uses_other_name("I'm called Borin, son of Dain.", "Borin")


def test_talking_about_others_and_capitalised_words_after_im_are_not_introductions() -> None:
    for reply in ("Luna is my sister.", "I'm Glad you came!", "I'm Not sure about that.",
                  "I'm going to Mars.", "I am so tired.", "Sam, what is your name?",
                  "I'm Fine, thanks."):
        assert not uses_other_name(reply, "Aria"), reply


def test_names_come_back_in_order_of_appearance() -> None:
    assert introduced_names("Call me Max. Well, my name is Maximilian.") == ["Max", "Maximilian"]
