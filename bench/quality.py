"""Reply quality on a real trained model: the gradio-ui method, pygbot's shipped defaults and
each of pygbot's repetition controls on its own, side by side in one run.

Every system chats with the same characters, the same member lines and the same seeds on
SmolLM2-135M-Instruct (bench/smollm2.py; a small stand-in: Pygmalion's weights cannot be
downloaded here, and what is measured — whether a control punishes the turn structure — does
not depend on the model):

- gradio-ui: the PygmalionAI gradio-ui method, re-implemented (bench/gradio_baseline.py);
- defaults: pygbot as shipped (Settings()), through the real ChatService, store, persona
  library, worker and engine;
- none: pygbot with every repetition control off (token penalty 1.0, DRY 0, min-p 0, guard
  off); the reference for the rows below (full run only);
- dry / min_p / penalty / guard: `none` plus that one control.

Metrics (bench/quality_metrics.py, written apart from the guards they judge): replies with a
forged or invented label line (any case), near-duplicates of the character's last 5 turns
(short replies included), seq-rep-4, distinct-2, median and mean words and lines per reply,
share of replies that ran into the token cap, replies where the character introduces itself by
another name, pseudo-tag lines, empty replies, seconds per reply. Every transcript is written
to the output folder, flagged, for reading: a reply that is not a coherent in-character answer
is a failure whatever the numbers say.

Usage: python bench/quality.py [--quick] [--systems ...] [--jobs N] [--out DIR]
       | --report DIR/chats.json [MORE/chats.json ...]
The last line is
`RESULT forged=<n> neardup=<x> distinct2=<x> words_median=<n> near_cap=<x> other_name=<n>
baseline_neardup=<x> baseline_forged=<n>` (the first six at pygbot's defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/quality.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from bench import gradio_baseline  # noqa: E402
from bench.quality_metrics import (  # noqa: E402
    ChatLog,
    Reply,
    SystemMetrics,
    forged_lines,
    measure,
    near_duplicate_flags,
    other_names,
    pseudo_tag_lines,
    result_line,
    says_no_words,
    table,
)
from bench.quality_scripts import BENCH, SEEDS, SHIPPED, folder, script  # noqa: E402
from pygbot.chat import Author, ChatConfig, ChatService, EmptyReplyError  # noqa: E402
from pygbot.config import Settings  # noqa: E402
from pygbot.engine import GenerationRequest, GenerationResult  # noqa: E402
from pygbot.worker import Worker  # noqa: E402

if TYPE_CHECKING:
    from pygbot.engine import Engine
    from pygbot.persona import Persona

CHANNEL_ID = 1
GUILD_ID = 1
MEMBER = Author(1, "Sam")
DTYPE = "float32"  # this CPU has no native bf16; emulated bf16 was slower
JOBS = 2
QUICK_TURNS = 20
FULL_TURNS = 30
SEED_RANGE = 2**31  # as pygbot.chat draws per-sample seeds
DEFAULT_OUT = ROOT / "bench" / "out" / "quality"
BASELINE = "gradio-ui"
DEFAULTS = "defaults"
# Every repetition control off; each "alone" system switches one of them back on.
CONTROLS_OFF: dict[str, Any] = {"repetition_penalty": 1.0, "dry_multiplier": 0.0,
                                "min_p": 0.0, "repetition_guard": False}
SYSTEMS: dict[str, dict[str, Any] | None] = {
    BASELINE: None,  # not pygbot
    DEFAULTS: {},
    "none": CONTROLS_OFF,
    "dry": {**CONTROLS_OFF, "dry_multiplier": 0.8},
    "min_p": {**CONTROLS_OFF, "min_p": 0.05},
    "penalty": {**CONTROLS_OFF, "repetition_penalty": 1.1},
    "guard": {**CONTROLS_OFF, "repetition_guard": True},
}
# --quick runs what the RESULT line compares; the per-control rows are the full run's (or
# `--systems none dry min_p penalty guard`): on 2 idle cores --quick took 8.8 minutes, and all
# seven systems on its characters and turns 19.9.
QUICK_SYSTEMS = (BASELINE, DEFAULTS)


# --- pygbot through its real chat service ------------------------------------------------------

class RecordingWorker(Worker):
    """The real worker, remembering every result so a reply's token count can be read."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, queue_max=8, max_batch=1)
        self.results: list[tuple[GenerationRequest, GenerationResult]] = []

    async def submit_together(self, requests: Sequence[GenerationRequest]
                              ) -> list[GenerationResult]:
        results = await super().submit_together(requests)  # `submit` comes here too
        self.results.extend(zip(requests, results, strict=True))
        return results


async def run_pygbot(engine: Engine, config: ChatConfig, system: str, character: str, *,
                     lines: Sequence[str], db_path: Path) -> ChatLog:
    from pygbot.library import PersonaLibrary  # noqa: PLC0415 (keeps --help fast)
    from pygbot.store import Store  # noqa: PLC0415

    async with await Store.open(db_path) as store:
        library = PersonaLibrary.from_dir(store, folder(character), character)
        await library.switch(GUILD_ID, character)
        worker = RecordingWorker(engine)
        async with worker:
            chat = ChatService(store, worker, library, engine.count_tokens, config,
                               seed=SEEDS[character])
            greeting = await chat.start_conversation(CHANNEL_ID, GUILD_ID)
            replies = [await _pygbot_reply(chat, worker, line, config) for line in lines]
    return ChatLog(system, character, greeting.text if greeting else "", tuple(replies))


async def _pygbot_reply(chat: ChatService, worker: RecordingWorker, line: str,
                        config: ChatConfig) -> Reply:
    tried = len(worker.results)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        answer = await chat.reply(CHANNEL_ID, GUILD_ID, MEMBER, line)
        text: str | None = answer.turn.text
    except EmptyReplyError:  # RejectedReplyError too: the member gets a notice, no reply
        text = None
    new_tokens = worker.results[-1][1].new_tokens if len(worker.results) > tried else 0
    return Reply(line, text, new_tokens, config.params.max_new_tokens,
                 time.perf_counter() - wall, time.process_time() - cpu)


def chat_config(overrides: Mapping[str, Any], model_context: int) -> ChatConfig:
    return ChatConfig.from_settings(Settings(**overrides), model_context)


# --- the baseline ------------------------------------------------------------------------------

def run_baseline(engine: Engine, persona: Persona, lines: Sequence[str]) -> ChatLog:
    """gradio-ui keeps the conversation as lines and posts whatever its cut leaves."""
    rng = random.Random(SEEDS[persona.name])  # the seeds pygbot's first samples get
    history = [f"{persona.name}: {persona.greeting}"] if persona.greeting else []
    replies = []
    for line in lines:
        wall, cpu = time.perf_counter(), time.process_time()
        request = gradio_baseline.request(persona, history, line, rng.randrange(SEED_RANGE))
        [result] = engine.generate([request])
        text = gradio_baseline.parse_reply(result.text, persona.name)
        history += [f"{gradio_baseline.YOU}: {line}", f"{persona.name}: {text}"]
        replies.append(Reply(line, text or None, result.new_tokens,
                             request.params.max_new_tokens,
                             time.perf_counter() - wall, time.process_time() - cpu))
    return ChatLog(BASELINE, persona.name, persona.greeting, tuple(replies))


# --- transcripts -------------------------------------------------------------------------------

def transcript(chat: ChatLog) -> str:
    """The chat as a member would read it, each reply flagged with what the metrics saw."""
    out = [f"=== {chat.character} ({chat.system}) ===", f"{chat.character}: {chat.greeting}"]
    flags = iter(near_duplicate_flags(chat.greeting, [reply.text for reply in chat.replies]))
    for number, reply in enumerate(chat.replies, start=1):
        out.append(f"[{number}] Sam: {reply.member}")
        if reply.text is None:
            out.append(f"{chat.character}: <nothing posted>")
            continue
        marks = [name for name, hit in (
            ("NEAR-DUP", next(flags)),
            ("FORGED", forged_lines(reply.text) > 0),
            ("CAP", reply.near_cap),
            ("OTHER-NAME", bool(other_names(reply.text, chat.character))),
            ("TAG", pseudo_tag_lines(reply.text) > 0),
            ("NO-WORDS", says_no_words(reply.text)),
        ) if hit]
        shown = reply.text.replace("\n", "\n    | ")
        out.append(f"{chat.character}: {shown}" + (f"   [{' '.join(marks)}]" if marks else ""))
    return "\n".join(out) + "\n"


def write_transcripts(logs: Mapping[str, Sequence[ChatLog]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for system, chats in logs.items():
        text = "\n".join(transcript(chat) for chat in chats)
        (out / f"{system}.txt").write_text(text, encoding="utf-8")


# --- the run -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    systems: tuple[str, ...]
    characters: tuple[str, ...]
    turns: int

    def chats(self) -> list[tuple[str, str]]:
        """(character, system) in the order they run: the baseline and the defaults first
        (the RESULT line's comparison, so a run cut short still has it in chats.json), then
        each control; within each, every character through every system, so a slower
        stretch of a shared machine touches the systems alike."""
        first = [system for system in self.systems if system in (BASELINE, DEFAULTS)]
        rest = [system for system in self.systems if system not in first]
        return [(character, system) for group in (first, rest)
                for character in self.characters for system in group]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help=f"the {len(BENCH)} bench characters x {QUICK_TURNS} turns, "
                             f"systems {', '.join(QUICK_SYSTEMS)}")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=None)
    parser.add_argument("--characters", nargs="+", choices=[*BENCH, *SHIPPED], default=None)
    parser.add_argument("--turns", type=int, default=None, help="member messages per chat")
    parser.add_argument("--jobs", type=int, default=JOBS,
                        help="chats run at once, each in its own process with one thread "
                             f"(default {JOBS}: one per core of a 2-core machine)")
    parser.add_argument("--dtype", default=DTYPE, choices=("float32", "bfloat16"))
    parser.add_argument("--cache", type=Path, default=None, help="where the model is kept")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the transcripts and chats.json")
    parser.add_argument("--report", type=Path, nargs="+", default=None, metavar="CHATS_JSON",
                        help="print the table of saved runs' chats.json (several: their "
                             "systems side by side); runs no model")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> Plan:
    # Systems named with --systems run alone (a run of the controls need not repeat the
    # baseline); the RESULT line is printed where a report has both the baseline and defaults.
    systems = tuple(args.systems or (QUICK_SYSTEMS if args.quick else SYSTEMS))
    characters = tuple(args.characters or (BENCH if args.quick else (*BENCH, *SHIPPED)))
    turns = args.turns or (QUICK_TURNS if args.quick else FULL_TURNS)
    return Plan(systems, characters, turns)


# One engine per process: loaded once by `_load_engine`, used by every chat the process runs.
_engine: Engine | None = None


def _load_engine(model: str, dtype: str, threads: int) -> None:
    import torch  # noqa: PLC0415

    from pygbot.engine import Engine  # noqa: PLC0415

    global _engine  # noqa: PLW0603 (a process pool's per-process state)
    torch.set_num_threads(threads)
    _engine = Engine.load(model, device="cpu", dtype=dtype)


def run_chat(character: str, system: str, turns: int) -> ChatLog:
    """One scripted chat of `system` with `character`, on this process's engine."""
    from pygbot.character_files import load_character_dir  # noqa: PLC0415

    assert _engine is not None, "_load_engine first"
    persona = load_character_dir(folder(character))[character.casefold()].persona
    lines = script(character, turns)
    overrides = SYSTEMS[system]
    if overrides is None:
        return run_baseline(_engine, persona, lines)
    with tempfile.TemporaryDirectory(prefix="pygbot-quality-") as scratch:
        config = chat_config(overrides, _engine.context_tokens)
        return asyncio.run(run_pygbot(_engine, config, system, character, lines=lines,
                                      db_path=Path(scratch) / "chat.sqlite3"))


def _run_chat(task: tuple[str, str, int]) -> ChatLog:
    return run_chat(*task)


def run(args: argparse.Namespace) -> None:
    from bench.smollm2 import DEFAULT_CACHE, model_folder  # noqa: PLC0415

    started = time.perf_counter()
    the_plan = plan(args)
    model = str(model_folder(args.cache or DEFAULT_CACHE))
    defaults = chat_config({}, 2**16)
    print(f"model: SmolLM2-135M-Instruct, cpu {args.dtype}, {args.jobs} processes x 1 thread")
    print(f"{len(the_plan.characters)} characters x {the_plan.turns} turns x systems "
          f"{', '.join(the_plan.systems)}\ndefaults: {defaults.params}, "
          f"guard {defaults.repetition_guard}", flush=True)
    tasks = [(character, system, the_plan.turns) for character, system in the_plan.chats()]
    logs: dict[tuple[str, str], ChatLog] = {}
    with _chat_runner(args.jobs, model, args.dtype) as run_all:
        for chat in run_all(tasks):
            logs[(chat.character, chat.system)] = chat
            save(_by_system(logs, the_plan), args.out)  # a run cut short keeps what it did
            print(f"  {chat.character:<12} {chat.system:<10} {len(chat.posted)}/"
                  f"{the_plan.turns} posted in {sum(r.seconds for r in chat.replies):5.0f}s "
                  f"(run {time.perf_counter() - started:5.0f}s)", flush=True)
    report(_by_system(logs, the_plan), args.out, time.perf_counter() - started)


def _by_system(logs: Mapping[tuple[str, str], ChatLog], the_plan: Plan) -> dict[
        str, list[ChatLog]]:
    return {system: [logs[(character, system)] for character in the_plan.characters
                     if (character, system) in logs]
            for system in the_plan.systems}


@contextlib.contextmanager
def _chat_runner(jobs: int, model: str, dtype: str) -> Iterator[
        Callable[[list[tuple[str, str, int]]], Iterator[ChatLog]]]:
    """Runs chats in this process (jobs=1) or in a pool of one-thread processes."""
    if jobs <= 1:
        _load_engine(model, dtype, 1)
        yield lambda tasks: map(_run_chat, tasks)
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch
    with context.Pool(jobs, initializer=_load_engine, initargs=(model, dtype, 1)) as pool:
        yield lambda tasks: pool.imap_unordered(_run_chat, tasks)


def save(logs: Mapping[str, Sequence[ChatLog]], out: Path) -> None:
    """Transcripts to read, and chats.json to report again (`--report`) without a model."""
    write_transcripts(logs, out)
    data = {system: [dataclasses.asdict(chat) for chat in chats] for system, chats in logs.items()}
    (out / "chats.json").write_text(json.dumps(data, indent=1), encoding="utf-8")


def load(path: Path) -> dict[str, list[ChatLog]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {system: [ChatLog(chat["system"], chat["character"], chat["greeting"],
                             tuple(Reply(**reply) for reply in chat["replies"]))
                     for chat in chats]
            for system, chats in data.items()}


def report(logs: Mapping[str, Sequence[ChatLog]], out: Path, seconds: float | None) -> None:
    metrics: dict[str, SystemMetrics] = {system: measure(chats) for system, chats in logs.items()
                                         if chats}
    print()
    print(table(metrics))
    print(f"\ntranscripts: {out}/<system>.txt"
          + (f"; whole run {seconds:.0f}s ({seconds / 60:.1f} min)" if seconds else ""))
    if DEFAULTS in metrics and BASELINE in metrics:
        print(result_line(metrics[DEFAULTS], metrics[BASELINE]))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report:
        logs: dict[str, list[ChatLog]] = {}
        for path in args.report:
            logs.update(load(path))
        report(logs, args.report[0].parent, None)
    else:
        run(args)


if __name__ == "__main__":
    main()
