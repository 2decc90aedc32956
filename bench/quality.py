"""Reply quality on a real trained model, repetition guard off and on, side by side in one run.

Scripted multi-turn chats with each built-in character run through the real chat service
(store, persona library, worker, engine) on SmolLM2-135M-Instruct, once with the guard off
and once with it on, with the same member lines and seeds. The table shows, per mode:

- seq-rep-4: share of repeated 4-grams within a reply (mean over replies);
- near-duplicates: share of replies at least `near_duplicate_threshold` similar to one of the
  character's last five turns (pygbot.repetition's similarity);
- distinct-2: distinct word bigrams over all replies of the mode;
- forged turns: share of replies with a line that starts another speaker's turn
  ("You:", the character's name and a colon, or any capitalised "Name:" label);
- empty replies: share of member messages answered with nothing (EmptyReplyError).

Usage: python bench/quality.py [--quick] [--verbose]
The last line is `RESULT rep4_reduction=… neardup_reduction=… distinct2_ratio=… forged_turns=…`
(reductions are 1 - on/off; forged_turns counts replies with the guard on).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/quality.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from pygbot.chat import Author, ChatConfig, ChatService, EmptyReplyError  # noqa: E402
from pygbot.config import Settings  # noqa: E402
from pygbot.repetition import RECENT_REPLIES, distinct_n, seq_rep_n, similarity, words  # noqa: E402

if TYPE_CHECKING:
    from pygbot.engine import Engine

PERSONAS_DIR = ROOT / "personas"
CHANNEL_ID = 1
GUILD_ID = 1
MEMBER = Author(1, "Sam")
DTYPE = "bfloat16"  # measured here (AVX512-BF16 CPU): ~1.5x faster than float32 for this model
QUICK_TURNS = 20
FULL_TURNS = 30
QUICK_MAX_NEW_TOKENS = 60  # keeps --quick under 15 minutes on 2 CPU cores
QUEUE_MAX = 8
MAX_BATCH = 1
MODES = ("off", "on")  # the repetition guard, in the order the two chats run

# Fixed per character, the same in both modes: any difference comes from the guard.
SEEDS = {"Aria": 1101, "Pip": 2202, "Rook": 3303}

# Member lines, alternating real questions with the short, low-effort messages ("ok",
# "tell me more", "haha") that make chat models loop in real conversations.
SCRIPTS: dict[str, tuple[str, ...]] = {
    "Aria": (
        "hi Aria, can't sleep again",
        "what are you looking at out there?",
        "ok",
        "tell me more",
        "how far away is the gas giant?",
        "haha",
        "do you like music?",
        "what else?",
        "what's your favourite song?",
        "ok",
        "I miss Earth sometimes",
        "tell me more",
        "do you ever dream?",
        "haha that's cute",
        "what else?",
        "can you show me a constellation?",
        "ok",
        "tell me more",
        "what do you think of the captain?",
        "haha",
        "I should probably try to sleep",
        "what else?",
        "wait, one more question: what's the strangest thing you've seen out here?",
        "ok",
        "tell me more",
        "haha",
        "do you ever get bored?",
        "what else?",
        "ok",
        "good night Aria",
    ),
    "Pip": (
        "hello Pip! sure, I'll sit down",
        "I've just come from the mountains",
        "ok",
        "tell me more",
        "can you sing me something?",
        "haha",
        "that was great",
        "what else?",
        "have you heard any rumours lately?",
        "ok",
        "I think I saw a dragon on the road",
        "tell me more",
        "what's the best song you know?",
        "haha nice",
        "what else?",
        "where did you learn to play the lute?",
        "ok",
        "tell me more",
        "do you want to come on an adventure with me?",
        "haha",
        "what should we pack?",
        "what else?",
        "who is the innkeeper here?",
        "ok",
        "tell me more",
        "haha",
        "can you make up a rhyme about me?",
        "what else?",
        "ok",
        "I should get some sleep, goodnight Pip",
    ),
    "Rook": (
        "tea please, thanks",
        "how long will the storm last?",
        "ok",
        "tell me more",
        "have you ever seen a shipwreck?",
        "haha",
        "do you live here alone?",
        "what else?",
        "what do you do all day?",
        "ok",
        "the gulls seem loud tonight",
        "tell me more",
        "do you ever go to the mainland?",
        "haha fair enough",
        "what else?",
        "what was the worst storm you saw?",
        "ok",
        "tell me more",
        "how does the lamp work?",
        "haha",
        "can I help with anything?",
        "what else?",
        "do you have family?",
        "ok",
        "tell me more",
        "haha",
        "is the cocoa any good?",
        "what else?",
        "ok",
        "I think I'll try to sleep now",
    ),
}

# Start of a line that opens somebody's turn: "You:", "Aria:" or any capitalised label of up
# to three words (the shapes a model uses when it writes the member's next line itself).
_TURN_LABEL = re.compile(r"^\s*[A-Z][\w'’-]*(?: [A-Z][\w'’-]*){0,2}\s*:")


# --- metrics (pure; tested without a model) -----------------------------------------------------

@dataclass(frozen=True)
class Exchange:
    member: str
    reply: str | None  # None: the service raised EmptyReplyError and stored nothing


@dataclass(frozen=True)
class ChatLog:
    persona: str
    greeting: str
    exchanges: tuple[Exchange, ...]

    @property
    def replies(self) -> list[str]:
        return [exchange.reply for exchange in self.exchanges if exchange.reply is not None]


@dataclass(frozen=True)
class ModeMetrics:
    turns: int
    replies: int  # non-empty
    rep4: float
    near_duplicates: float
    near_duplicates_any: float  # diagnostic: against every earlier turn, not just the last five
    distinct2: float
    forged_share: float
    forged_count: int
    empty_share: float
    words_per_reply: float


def has_forged_turn(reply: str, character_name: str) -> bool:
    """Whether a line of the posted reply starts another speaker's turn."""
    own = re.compile(rf"^\s*(?:You|{re.escape(character_name)})\s*:", re.IGNORECASE)
    return any(own.match(line) or _TURN_LABEL.match(line) for line in reply.split("\n"))


def near_duplicate_flags(chat: ChatLog, threshold: float,
                         window: int | None = RECENT_REPLIES) -> list[bool]:
    """Per non-empty reply: does it nearly repeat one of the character's last `window` turns
    (all earlier turns when `window` is None)? Earlier turns include the greeting, as they do
    in the chat service's own check. Unlike the guard, short replies are not exempt: "Yes."
    said twice is counted here too."""
    earlier = [chat.greeting] if chat.greeting else []
    flags = []
    for reply in chat.replies:
        recent = earlier[-window:] if window else earlier
        flags.append(any(similarity(reply, previous) >= threshold for previous in recent))
        earlier.append(reply)
    return flags


def measure(chats: Sequence[ChatLog], threshold: float) -> ModeMetrics:
    replies = [reply for chat in chats for reply in chat.replies]
    turns = sum(len(chat.exchanges) for chat in chats)
    flags = [flag for chat in chats for flag in near_duplicate_flags(chat, threshold)]
    flags_any = [flag for chat in chats for flag in near_duplicate_flags(chat, threshold, None)]
    forged = sum(has_forged_turn(reply, chat.persona) for chat in chats for reply in chat.replies)
    return ModeMetrics(
        turns=turns,
        replies=len(replies),
        rep4=_mean([seq_rep_n(reply, 4) for reply in replies]),
        near_duplicates=_mean([float(flag) for flag in flags]),
        near_duplicates_any=_mean([float(flag) for flag in flags_any]),
        distinct2=distinct_n(replies, 2),
        forged_share=forged / len(replies) if replies else 0.0,
        forged_count=forged,
        empty_share=(turns - len(replies)) / turns if turns else 0.0,
        words_per_reply=_mean([float(len(words(reply))) for reply in replies]),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def ratio(on: float, off: float) -> float:
    """on/off; nan when off is 0 (nothing to compare against)."""
    return on / off if off else math.nan


def reduction(on: float, off: float) -> float:
    """1 - on/off: 1.0 means the guard removed all of it; nan when off had none to remove."""
    return 1.0 - ratio(on, off)


TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    # label, ModeMetrics field, format
    ("seq-rep-4 within replies (mean)", "rep4", ".3f"),
    ("near-duplicate of last 5 (share)", "near_duplicates", ".3f"),
    ("near-dup of any earlier (share)", "near_duplicates_any", ".3f"),
    ("distinct-2 (all replies)", "distinct2", ".3f"),
    ("forged speaker turn (share)", "forged_share", ".3f"),
    ("forged speaker turn (count)", "forged_count", "d"),
    ("empty replies (share)", "empty_share", ".3f"),
    ("words per reply (mean)", "words_per_reply", ".1f"),
    ("replies (non-empty)", "replies", "d"),
)


def table(off: ModeMetrics, on: ModeMetrics) -> str:
    lines = [f"{'metric':<34}{'off':>10}{'on':>10}{'on/off':>10}"]
    for label, field, spec in TABLE_ROWS:
        a, b = getattr(off, field), getattr(on, field)
        lines.append(f"{label:<34}{a:>10{spec}}{b:>10{spec}}{ratio(b, a):>10.3f}")
    return "\n".join(lines)


def result_line(off: ModeMetrics, on: ModeMetrics) -> str:
    return (f"RESULT rep4_reduction={reduction(on.rep4, off.rep4):.3f} "
            f"neardup_reduction={reduction(on.near_duplicates, off.near_duplicates):.3f} "
            f"distinct2_ratio={ratio(on.distinct2, off.distinct2):.3f} "
            f"forged_turns={on.forged_count}")


# --- running the chats -------------------------------------------------------------------------

@dataclass
class ModeTiming:
    seconds: float = 0.0
    requests: int = 0
    new_tokens: int = 0

    def add(self, seconds: float, requests: int, new_tokens: int) -> None:
        self.seconds += seconds
        self.requests += requests
        self.new_tokens += new_tokens


async def run_chat(engine: Engine, config: ChatConfig, persona: str, lines: Sequence[str],
                   *, db_path: Path, timing: ModeTiming) -> ChatLog:
    """One scripted conversation through the real service, in a fresh store."""
    from pygbot.library import PersonaLibrary  # noqa: PLC0415 (keeps --help fast)
    from pygbot.store import Store  # noqa: PLC0415
    from pygbot.worker import Worker  # noqa: PLC0415

    async with await Store.open(db_path) as store:
        library = PersonaLibrary.from_dir(store, PERSONAS_DIR, persona)
        await library.switch(GUILD_ID, persona)
        async with Worker(engine, queue_max=QUEUE_MAX, max_batch=MAX_BATCH) as worker:
            chat = ChatService(store, worker, library, engine.count_tokens, config,
                               seed=SEEDS[persona])
            started = time.perf_counter()
            greeting = await chat.start_conversation(CHANNEL_ID, GUILD_ID)
            exchanges = [await _exchange(chat, line) for line in lines]
            stats = worker.stats()
            timing.add(time.perf_counter() - started, stats.requests, stats.new_tokens)
    return ChatLog(persona, greeting.text if greeting else "", tuple(exchanges))


async def _exchange(chat: ChatService, line: str) -> Exchange:
    try:
        answer = await chat.reply(CHANNEL_ID, GUILD_ID, MEMBER, line)
    except EmptyReplyError:
        return Exchange(line, None)
    return Exchange(line, answer.turn.text)


def chat_config(guard: bool, args: argparse.Namespace, model_context: int) -> ChatConfig:
    """The bot's shipped defaults (Settings()) with the guard switched; sampling knobs change
    only when asked for on the command line (to explore settings where the model loops)."""
    config = ChatConfig.from_settings(Settings(), model_context)
    overrides = {
        "max_new_tokens": args.max_new_tokens or (QUICK_MAX_NEW_TOKENS if args.quick else None),
        "temperature": args.temperature,
        "repetition_penalty": args.repetition_penalty,
    }
    params = replace(config.params, **{k: v for k, v in overrides.items() if v is not None})
    window = args.repetition_window_tokens or config.repetition_window_tokens
    return replace(config, repetition_guard=guard, params=params,
                   repetition_window_tokens=window)


def print_chat(mode: str, chat: ChatLog, threshold: float) -> None:
    print(f"\n--- {chat.persona}, guard {mode} ---")
    print(f"{chat.persona} (greeting): {chat.greeting}")
    flags = iter(near_duplicate_flags(chat, threshold))
    flags_any = iter(near_duplicate_flags(chat, threshold, None))
    for exchange in chat.exchanges:
        print(f"Sam: {exchange.member}")
        if exchange.reply is None:
            print(f"{chat.persona}: <EMPTY>")
            continue
        marks = []
        recent, anywhere = next(flags), next(flags_any)
        if recent:
            marks.append("NEAR-DUP")
        elif anywhere:
            marks.append("DUP-OLDER")
        if seq_rep_n(exchange.reply, 4) > 0:
            marks.append(f"rep4={seq_rep_n(exchange.reply, 4):.2f}")
        if has_forged_turn(exchange.reply, chat.persona):
            marks.append("FORGED")
        shown = exchange.reply.replace("\n", "\n    | ")
        print(f"{chat.persona}: {shown}" + (f"   [{' '.join(marks)}]" if marks else ""))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_TURNS} turns per chat, {QUICK_MAX_NEW_TOKENS} new tokens")
    parser.add_argument("--verbose", action="store_true", help="print every chat")
    parser.add_argument("--personas", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    parser.add_argument("--turns", type=int, default=None, help="member messages per chat")
    parser.add_argument("--dtype", default=DTYPE, choices=("float32", "bfloat16"))
    parser.add_argument("--cache", type=Path, default=None, help="where the model is kept")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None,
                        help="override the shipped default (both modes)")
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help="override the shipped default (both modes)")
    parser.add_argument("--repetition-window-tokens", type=int, default=None,
                        help="override the guard's penalty window (guard on only)")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    from bench.smollm2 import DEFAULT_CACHE, model_folder  # noqa: PLC0415
    from pygbot.engine import Engine, GenerationParams, GenerationRequest  # noqa: PLC0415

    folder = model_folder(args.cache or DEFAULT_CACHE)
    started = time.perf_counter()
    engine = Engine.load(str(folder), device="cpu", dtype=args.dtype)
    print(f"model: SmolLM2-135M-Instruct ({folder}), {engine.device} {engine.dtype}, "
          f"loaded in {time.perf_counter() - started:.1f}s")
    # Warm up once so the first mode does not pay for it.
    engine.generate([GenerationRequest("Hello", params=GenerationParams(max_new_tokens=4))])
    configs = {mode: chat_config(mode == "on", args, engine.context_tokens) for mode in MODES}
    turns = args.turns or (QUICK_TURNS if args.quick else FULL_TURNS)
    print_setup(configs["on"], args.personas, turns)
    logs, timings = await run_all_chats(engine, configs, args.personas, turns, args.verbose)
    report(logs, timings, configs["on"].near_duplicate_threshold)


def print_setup(config: ChatConfig, personas: Sequence[str], turns: int) -> None:
    params = config.params
    print(f"chats: {', '.join(personas)} x {turns} turns x guard off/on; "
          f"context {config.context_tokens}, max_new_tokens {params.max_new_tokens}, "
          f"temperature {params.temperature}, top_p {params.top_p}, "
          f"repetition_penalty {params.repetition_penalty}, "
          f"guard window {config.repetition_window_tokens} tokens")


def script(persona: str, turns: int) -> tuple[str, ...]:
    lines = SCRIPTS[persona]
    return tuple(lines[index % len(lines)] for index in range(turns))


async def run_all_chats(
    engine: Engine, configs: dict[str, ChatConfig], personas: Sequence[str], turns: int,
    verbose: bool,
) -> tuple[dict[str, list[ChatLog]], dict[str, ModeTiming]]:
    """Each character's chat in both modes, one after the other, so both share the machine."""
    logs: dict[str, list[ChatLog]] = {mode: [] for mode in MODES}
    timings = {mode: ModeTiming() for mode in MODES}
    threshold = configs["on"].near_duplicate_threshold
    with tempfile.TemporaryDirectory(prefix="pygbot-quality-") as scratch:
        for persona in personas:
            for mode in MODES:
                db = Path(scratch) / f"{persona}-{mode}.sqlite3"
                chat = await run_chat(engine, configs[mode], persona, script(persona, turns),
                                      db_path=db, timing=timings[mode])
                logs[mode].append(chat)
                print(f"  {persona:<5} guard {mode:<3} {len(chat.replies)}/{turns} replies "
                      f"in {timings[mode].seconds:.0f}s (mode total)", flush=True)
                if verbose:
                    print_chat(mode, chat, threshold)
    return logs, timings


def report(logs: dict[str, list[ChatLog]], timings: dict[str, ModeTiming],
           threshold: float) -> None:
    off, on = measure(logs["off"], threshold), measure(logs["on"], threshold)
    print()
    print(table(off, on))
    print()
    for mode, timing in timings.items():
        rate = timing.new_tokens / timing.seconds if timing.seconds else 0.0
        print(f"guard {mode:<3}: {timing.seconds:7.1f}s, {timing.requests} generate calls, "
              f"{timing.new_tokens} new tokens ({rate:.1f} tokens/s end to end)")
    print(f"time ratio on/off: {ratio(timings['on'].seconds, timings['off'].seconds):.2f}")
    print(result_line(off, on))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("pygbot.chat").setLevel(logging.INFO)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
