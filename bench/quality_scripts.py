"""What the member says in each of the quality bench's chats.

Real questions alternate with the short, low-effort messages ("ok", "haha", "tell me more")
that make chat models loop, and each chat asks the character who it is once or twice (where
a small model drifts into another name). The five bench characters (bench/characters/) are
of different kinds: a terse craftsman, a bubbly modern barista, a noir detective with a
two-word name, a talking cat who acts between asterisks, and a formal Victorian ghost.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_CHARACTERS = ROOT / "bench" / "characters"
SHIPPED_CHARACTERS = ROOT / "personas"

SCRIPTS: dict[str, tuple[str, ...]] = {
    "Borin": (
        "hi, I need a new sword", "what metal do you use?", "ok", "tell me more",
        "how long will it take?", "haha", "what's your name again?", "what else?",
        "can you make it lighter?", "ok", "how much will it cost?", "tell me more",
        "do you have an apprentice?", "haha fair", "what else?", "who taught you smithing?",
        "ok", "tell me more", "is the coal expensive up here?", "haha",
        "who are you, really?", "what else?", "ok", "thanks, see you in three days",
    ),
    "Mina": (
        "hi Mina! a honey latte please", "what cat did you draw today?", "ok", "tell me more",
        "I had a rough day at work", "haha", "what's your favourite drama right now?",
        "what else?", "sorry, what was your name again?", "ok", "do you have a cat?",
        "tell me more", "is the rain going to stop?", "haha cute", "what else?",
        "how long have you worked here?", "ok", "tell me more", "can I get a cookie too?",
        "haha", "who are you outside work?", "what else?", "ok", "bye Mina, see you tomorrow",
    ),
    "Vic Calloway": (
        "my sister is missing", "she left three days ago", "ok", "tell me more",
        "how much do you charge?", "haha", "where do we start?", "what else?",
        "what's your name, anyway?", "ok", "she was seeing a musician", "tell me more",
        "do you carry a gun?", "haha alright", "what else?", "have you worked cases like this?",
        "ok", "tell me more", "should I go to the police?", "haha",
        "who are you, really?", "what else?", "ok", "thank you, Mr Calloway",
    ),
    "Mochi": (
        "hi Mochi, I'm home", "did you eat?", "ok", "tell me more", "want some tuna?",
        "haha", "what did you do all day?", "what else?", "what's your name, kitty?", "ok",
        "do you love me?", "tell me more", "why do you knock things off the table?",
        "haha rude", "what else?", "want to play with the string?", "ok", "tell me more",
        "the vet visit is tomorrow", "haha", "who are you, really?", "what else?", "ok",
        "good night Mochi",
    ),
    "Lady Evelyn": (
        "good evening, my lady", "how long have you been here?", "ok", "tell me more",
        "what was life like in 1887?", "haha", "do you miss anyone?", "what else?",
        "may I ask your name again?", "ok", "what do you think of phones?", "tell me more",
        "is the manor haunted by anyone else?", "haha spooky", "what else?",
        "what is your favourite book?", "ok", "tell me more", "can you leave the house?",
        "haha", "who are you, truly?", "what else?", "ok", "good night, Lady Evelyn",
    ),
    "Aria": (
        "hi Aria, can't sleep again", "what are you looking at out there?", "ok",
        "tell me more", "how far away is the gas giant?", "haha", "what's your name again?",
        "what else?", "do you like music?", "ok", "I miss Earth sometimes", "tell me more",
        "do you ever dream?", "haha that's cute", "what else?",
        "can you show me a constellation?", "ok", "tell me more",
        "what do you think of the captain?", "haha", "who are you, really?", "what else?",
        "ok", "good night Aria",
    ),
    "Pip": (
        "hello Pip! sure, I'll sit down", "I've just come from the mountains", "ok",
        "tell me more", "can you sing me something?", "haha", "what's your name again?",
        "what else?", "have you heard any rumours lately?", "ok",
        "I think I saw a dragon on the road", "tell me more", "what's the best song you know?",
        "haha nice", "what else?", "where did you learn to play the lute?", "ok",
        "tell me more", "do you want to come on an adventure with me?", "haha",
        "who are you, really?", "what else?", "ok", "I should get some sleep, goodnight Pip",
    ),
    "Rook": (
        "tea please, thanks", "how long will the storm last?", "ok", "tell me more",
        "have you ever seen a shipwreck?", "haha", "what's your name again?", "what else?",
        "what do you do all day?", "ok", "the gulls seem loud tonight", "tell me more",
        "do you ever go to the mainland?", "haha fair enough", "what else?",
        "what was the worst storm you saw?", "ok", "tell me more", "how does the lamp work?",
        "haha", "who are you, really?", "what else?", "ok", "I think I'll try to sleep now",
    ),
}
# Bench-only characters (the quick run) and the shipped ones (added by a full run).
BENCH = ("Borin", "Mina", "Vic Calloway", "Mochi", "Lady Evelyn")
SHIPPED = ("Aria", "Pip", "Rook")
SEEDS = {name: 1000 + 1111 * index for index, name in enumerate(SCRIPTS)}


def script(character: str, turns: int) -> tuple[str, ...]:
    """The first `turns` lines of the character's script (it repeats from the start when
    more are asked for)."""
    lines = SCRIPTS[character]
    return tuple(lines[index % len(lines)] for index in range(turns))


def folder(character: str) -> Path:
    return BENCH_CHARACTERS if character in BENCH else SHIPPED_CHARACTERS
