"""What a member waits for, measured side by side in one run: pygbot's own cost over raw
`model.generate`, the per-channel prefix cache, batching, and streaming.

    python bench/run.py --quick   # under 15 minutes on 2 busy CPU cores (2 of the 24 layers)
    python bench/run.py           # pythia-1.3b's full 24 layers on this CPU (long)
    python bench/run.py --gpu     # on an NVIDIA GPU, fp16 (see bench/gpu.py)

Sections, each a table:
1. overhead: the full bot path (a member's mention on the loopback Discord emulator -> the
   reply posted, through intake, chat, prompt, worker, engine, SQLite and discord.py) against
   raw `model.generate` on the very prompts the bot built, with the same sampling and the same
   number of new tokens. The prefix cache is off here, so both do the same work.
2. prefix cache: one 30-turn conversation through the chat service with the cache on, at the
   2048-token context (the budget is full from about turn 15); after each turn the worker
   settles, as while a member writes, which is when it prefills ahead a prompt start that
   drops history (pygbot.lookahead), and the turn's request runs again without the cache.
   Time to first token (the engine's: call to first token picked) and prompt tokens
   computed while the member waits (and, separately, ahead), at turns 1, 10 and 30 and over
   all 30.
3. batching: 16 channels' first turn (nothing cached), then their next turn (each channel's
   previous prompt and reply cached, as in a running conversation) at 1, 4, 8 and 16
   channels: one at a time vs the batching worker vs one raw padded `model.generate` batch
   (which has no cache), in generated tokens per second. RESULT's batch16 figures are the
   next turn's; the first turn's are printed beside them.
4. streaming, on the bot path: when the first text of a reply is visible against when the
   whole reply is, on SmolLM2-135M-Instruct (bench/smollm2.py): a trained model, so replies
   have real sentences and end at the next speaker as Pygmalion's do.

Models: the tiny test model (overhead only: what pygbot adds in milliseconds) and a GPT-NeoX
with pythia-1.3b's shape (random weights; `--quick` keeps fewer layers and says so) in the
dtype the bot picks on this CPU (DTYPE=auto: bfloat16 where the CPU has native bf16 math,
else float32; printed). Random weights write noise; the bench model's output layer is tilted
towards the ids its small tokenizer can spell, so replies are text, not undecodable ids.

The last line is `RESULT overhead=<bot/raw> batch16_vs_sequential=<x>
batch16_vs_raw_batch=<x> prefix_ttft_ratio=<cached/uncached>
prefix_prefill_fraction=<computed/prompt> first_text_ratio=<first visible/full reply>`;
the prefill fraction counts what is computed while the member waits (the line above it in
section 2 gives it with the tokens prefilled ahead counted too).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import smollm2  # noqa: E402
from pygbot.chat import Author, ChatConfig, ChatService, EmptyReplyError  # noqa: E402
from pygbot.config import Settings  # noqa: E402
from pygbot.discord_text import STREAMING_MARK  # noqa: E402
from pygbot.engine import (  # noqa: E402
    Engine,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    sampling_kwargs,
)
from pygbot.library import PersonaLibrary  # noqa: E402
from pygbot.prefix_cache import PrefixCache  # noqa: E402
from pygbot.store import Store  # noqa: E402
from pygbot.worker import Worker  # noqa: E402
from tests.discord_emulator import DiscordEmulator  # noqa: E402
from tests.discord_harness import Server, bot_settings, bot_with_engine, build_server  # noqa: E402
from tests.model_factory import (  # noqa: E402
    PYTHIA_1_3B_SHAPE,
    build_pythia_shaped_model,
    build_tiny_model,
    training_text,
)

log = logging.getLogger("bench.run")

QUICK_LAYERS = 2  # of pythia-1.3b's 24: same width, vocabulary and attention, 1/12 the depth
CHANNELS = (1, 4, 8, 16)
REPORTED_TURNS = (1, 10, 30)
CONVERSATION_TURNS = 30
# Member messages of a few sentences (~85 tokens; with the reply, each turn adds ~5% to a full
# prompt, as in the chats the cache is for): the 2048-token budget is full from about turn
# 15, and history leaves a chunk at a time three or four times before turn 30.
CONVERSATION_MESSAGE_LINES = 12
PREFIX_CACHE_ON_MB = 1024  # one channel's full 2048-token cache is ~400 MB at 24 layers
BOT_TURNS = 4  # timed mentions per model on the emulator (after one warm-up)
SEED = 7
REPLY_WAIT_S = 1800.0  # a reply on a slow CPU may take minutes; never forever


@dataclass(frozen=True)
class Plan:
    """How big each part of the run is."""

    layers: int
    reply_tokens: int  # MAX_NEW_TOKENS for the bot's replies on the emulator
    conversation_reply_tokens: int  # MAX_NEW_TOKENS in the 30-turn conversation
    batch_tokens: int  # new tokens per request in the batching runs
    batch_prompt_tokens: tuple[int, int]  # shortest and longest prompt in the batching runs
    context_tokens: int = Settings().context_tokens  # CONTEXT_TOKENS of the conversation
    conversation_turns: int = CONVERSATION_TURNS
    bot_turns: int = BOT_TURNS


# --quick is sized for 2 busy CPU cores (other jobs beside it): under 15 minutes in all.
# Its batching runs make replies of 32 tokens, as the full run does: with fewer, the prefill of
# each channel's new message outweighs the decode steps that batching shares.
QUICK = Plan(layers=QUICK_LAYERS, reply_tokens=16, conversation_reply_tokens=8,
             batch_tokens=32, batch_prompt_tokens=(40, 160))
FULL = Plan(layers=PYTHIA_1_3B_SHAPE.layers, reply_tokens=96, conversation_reply_tokens=48,
            batch_tokens=32, batch_prompt_tokens=(500, 1900))


# --- recording what the engine did ---------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One `generate` call the bot made: its requests, results and times."""

    requests: tuple[GenerationRequest, ...]
    results: tuple[GenerationResult, ...]
    started: float
    first_text: tuple[float | None, ...]  # per request: when its first text was heard


class Recorder:
    """The engine as the worker sees it, noting every call (everything else passes through)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[Call] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        started = time.perf_counter()
        heard: list[float | None] = [None] * len(requests)
        timed = [replace(request, on_text=_first_heard(request.on_text, heard, index))
                 for index, request in enumerate(requests)]
        results = self.engine.generate(timed)
        self.calls.append(Call(tuple(requests), tuple(results), started, tuple(heard)))
        return results


def _first_heard(listener: Callable[[str], None] | None, heard: list[float | None],
                 index: int) -> Callable[[str], None] | None:
    if listener is None:
        return None

    def on_text(text: str) -> None:
        if heard[index] is None:
            heard[index] = time.perf_counter()
        listener(text)

    return on_text


def computed_tokens(engine: Engine, request: GenerationRequest,
                    result: GenerationResult) -> tuple[int, int]:
    """(prompt tokens, of those computed rather than taken from the prefix cache)."""
    prompt = getattr(result, "prompt_tokens", 0) or engine.count_tokens(request.prompt)
    return prompt, prompt - getattr(result, "reused_tokens", 0)


# --- raw transformers, the yardstick -------------------------------------------------------------

def raw_generate(engine: Engine, prompts: Sequence[str], new_tokens: int,
                 params: GenerationParams) -> float:
    """Seconds for one plain `model.generate` over `prompts` (left-padded), forced to make
    exactly `new_tokens` tokens each, with the same sampling knobs and nothing of pygbot's."""
    model, tokenizer = engine._model, engine._tokenizer  # the very objects the engine runs
    batch = tokenizer(list(prompts), padding=True, return_tensors="pt").to(model.device)
    if params.seed is not None:
        torch.manual_seed(params.seed)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(**batch, max_new_tokens=new_tokens,  # type: ignore[operator]
                       min_new_tokens=new_tokens,
                       pad_token_id=tokenizer.pad_token_id, **sampling_kwargs(params))
    return time.perf_counter() - started


# --- 1. the bot path on the emulator -------------------------------------------------------------

@dataclass
class BotTurn:
    sent: float
    first_visible: float | None = None
    posted: float | None = None
    notice: bool = False
    calls: list[Call] = field(default_factory=list)
    raw_seconds: float = 0.0  # raw `generate` redoing this turn's generations
    new_tokens: int = 0


@dataclass(frozen=True)
class BotRun:
    turns: tuple[BotTurn, ...]
    bot_seconds: float
    raw_seconds: float
    new_tokens: int

    @property
    def overhead(self) -> float:
        return self.bot_seconds / self.raw_seconds

    @property
    def first_text_ratio(self) -> float:
        shown = [t for t in self.turns if t.first_visible is not None and t.posted is not None]
        if not shown:
            return float("nan")
        return (sum(t.first_visible - t.sent for t in shown if t.first_visible)
                / sum(t.posted - t.sent for t in shown if t.posted))


async def bot_path(engine: Engine, reply_tokens: int, turns: int, *,
                   replay: bool = True) -> BotRun:
    """`turns` mentions after a warm-up one; with `replay`, raw `generate` redoes each turn's
    generations right after it (for the overhead; streaming needs only the bot's times)."""
    recorder = Recorder(engine)
    messages = user_messages(turns + 1)
    with tempfile.TemporaryDirectory(prefix="pygbot-bench-db-") as folder:
        async with DiscordEmulator() as discord:
            server = build_server(discord)
            settings = bot_settings(server, Path(folder) / "bench.sqlite3",
                                    max_new_tokens=reply_tokens, stream_replies=True)
            async with bot_with_engine(server, settings, recorder, seed=SEED):
                await mention(server, messages[0])  # warm-up: greeting, caches, allocator
                timed = []
                for text in messages[1:]:
                    before = len(recorder.calls)
                    turn = await mention(server, text)
                    turn.calls = recorder.calls[before:]
                    if replay:  # right away, so both see the same load from other processes
                        turn.raw_seconds, turn.new_tokens = await asyncio.to_thread(
                            raw_replay, engine, turn)
                    timed.append(turn)
    replies = [t for t in timed if not t.notice and t.posted is not None]
    return BotRun(tuple(timed), sum(t.posted - t.sent for t in replies if t.posted),
                  sum(t.raw_seconds for t in replies), sum(t.new_tokens for t in replies))


async def mention(server: Server, text: str) -> BotTurn:
    """A member mentions the bot; until its reply is posted, whole (or a notice)."""
    discord = server.discord
    turn = BotTurn(time.perf_counter())
    asked = await discord.send_message(server.roleplay, server.member, server.mention(text))

    def answered() -> bool:
        now = time.perf_counter()
        for message in discord.messages(server.roleplay):
            reference = message.get("message_reference") or {}
            if message["author_id"] != server.bot.id or reference.get("message_id") != asked["id"]:
                continue
            if turn.first_visible is None:
                turn.first_visible = now
            if not message["content"].endswith(STREAMING_MARK):
                turn.posted = now
                turn.notice = not message.get("components")  # a reply carries its buttons
                return True
        return False

    await discord.wait_for(answered, timeout=REPLY_WAIT_S)
    return turn


def raw_replay(engine: Engine, turn: BotTurn) -> tuple[float, int]:
    """(seconds, new tokens) of raw `generate` redoing every generation of the turn,
    resamples included."""
    seconds = 0.0
    tokens = 0
    for call in turn.calls:
        for request, result in zip(call.requests, call.results, strict=True):
            if result.new_tokens:
                seconds += raw_generate(engine, [request.prompt], result.new_tokens,
                                        request.params)
                tokens += result.new_tokens
    return seconds, tokens


# --- 2. a long conversation, with and without the prefix cache -----------------------------------

@dataclass(frozen=True)
class ConversationTurn:
    ttft_on_s: float  # the chat's own request, prefix cache on
    ttft_off_s: float  # the very same request again at once, computed whole (no cache key)
    prompt_tokens: int
    computed_tokens: int  # with the cache, while the member waits
    ahead_tokens: int  # prefilled ahead for this turn, while the worker was idle before it


async def conversation(engine: Engine, plan: Plan, personas: Path) -> list[ConversationTurn]:
    """`plan.conversation_turns` replies in one channel through the chat service, with the
    engine's prefix cache on. After each turn the first attempt's request is run once more
    without its cache key (prefill and first token only), so both times to first token are
    of the same prompt, moments apart, under the same load from other processes. The time to
    first token is the engine's: from its call until the first token is picked.

    Between turns the worker settles, as it would while the member writes: that is when it
    prefills ahead the start of a prompt that will drop history (pygbot.lookahead); those
    tokens count as the next turn's `ahead_tokens`."""
    recorder = Recorder(engine)
    # One attempt per turn (no resamples by the repetition guard): only the first is measured.
    settings = Settings(max_new_tokens=plan.conversation_reply_tokens,
                        context_tokens=plan.context_tokens, repetition_guard=False)
    turns = plan.conversation_turns
    measured = []
    with tempfile.TemporaryDirectory(prefix="pygbot-bench-db-") as folder:
        async with await Store.open(Path(folder) / "bench.sqlite3") as store, \
                Worker(recorder, settings.queue_max, settings.max_batch) as worker:
            library = PersonaLibrary.from_dir(store, personas, settings.default_persona)
            chat = ChatService(store, worker, library, engine.count_tokens,
                               ChatConfig.from_settings(settings, engine.context_tokens),
                               seed=SEED)
            await chat.start_conversation(1, 1)
            ahead = 0  # tokens prefilled ahead for the coming turn
            for number, text in enumerate(user_messages(turns, CONVERSATION_MESSAGE_LINES),
                                          start=1):
                log.info("conversation turn %d of %d", number, turns)
                before = len(recorder.calls)
                try:
                    await chat.reply(1, 1, Author(1, "Sam"), text, on_partial=lambda _: None)
                except EmptyReplyError:
                    log.info("an empty reply; the conversation goes on")
                call = recorder.calls[before]
                request, result = call.requests[0], call.results[0]
                prompt, computed = computed_tokens(engine, request, result)
                uncached = replace(request, cache_key=None, on_text=None,
                                   params=replace(request.params, max_new_tokens=1))
                measured_ahead = ahead
                idle_from = worker.stats().ahead_tokens
                await worker.settled()  # the member's pause; the prefill ahead runs now
                ahead = worker.stats().ahead_tokens - idle_from
                off = (await asyncio.to_thread(engine.generate, [uncached]))[0]
                measured.append(ConversationTurn(result.first_token_seconds,
                                                 off.first_token_seconds, prompt, computed,
                                                 measured_ahead))
    return measured


def prefix_cached(engine: Engine, megabytes: int) -> Engine:
    """The same loaded model behind an engine whose prefix cache holds `megabytes`."""
    return Engine(engine.model_name, engine._model, engine._tokenizer,
                  engine.device, engine.dtype, prefix_cache_mb=megabytes)


# --- 3. many channels at once --------------------------------------------------------------------

@dataclass(frozen=True)
class BatchRow:
    channels: int
    sequential_tps: float
    worker_tps: float
    raw_tps: float


@dataclass(frozen=True)
class Batching:
    """The first turn of 16 channels (whole prompts computed, nothing cached yet), and their
    next turn at 1, 4, 8 and 16 channels (each channel's previous prompt and reply in the
    prefix cache, as in a running conversation: the bot's steady state)."""

    first_turn: BatchRow
    next_turn: list[BatchRow]


def batching(engine: Engine, plan: Plan) -> Batching:
    """`engine` has a prefix cache. One at a time and the worker run on the same engine from
    the same cache contents; raw `generate` has no cache and computes every prompt whole."""
    first = channel_requests(engine, max(CHANNELS), plan)
    engine.prefix_cache = PrefixCache(PREFIX_CACHE_ON_MB)
    _in_thread(engine.generate, [replace(r, cache_key=None) for r in first[:2]])  # warm-up
    log.info("[3] first turn: one at a time")
    alone = [_timed(engine, request) for request in first]  # leaves each channel cached
    primed = engine.prefix_cache
    engine.prefix_cache = PrefixCache(PREFIX_CACHE_ON_MB)  # the first turn: nothing cached
    log.info("[3] first turn: worker, raw batch")
    first_row = _batch_row(engine, first, alone, plan)
    following = [next_turn(request, results[0].text, index)
                 for index, (request, (_, results)) in enumerate(zip(first, alone, strict=True))]
    rows = []
    for channels in CHANNELS:
        # One at a time right before the worker and raw batch of the same channels, so all
        # three see the same load from other processes (it moves by minutes, not seconds).
        log.info("[3] next turn: %d channels, one at a time, worker, raw batch", channels)
        asked = following[:channels]
        engine.prefix_cache = primed.copy()
        alone_next = [_timed(engine, request) for request in asked]
        engine.prefix_cache = primed.copy()
        rows.append(_batch_row(engine, asked, alone_next, plan))
    return Batching(first_row, rows)


def _batch_row(engine: Engine, asked: Sequence[GenerationRequest],
               alone: Sequence[tuple[float, list[GenerationResult]]], plan: Plan) -> BatchRow:
    """Tokens/s of `asked` one at a time (`alone`, already run), through the worker all at
    once, and as one raw padded `generate` batch."""
    seq_seconds = sum(seconds for seconds, _ in alone)
    seq_tokens = sum(results[0].new_tokens for _, results in alone)
    worker_seconds, results = asyncio.run(_through_worker(engine, asked))
    worker_tokens = sum(result.new_tokens for result in results)
    raw_seconds = _in_thread(raw_generate, engine, [r.prompt for r in asked],
                             plan.batch_tokens, asked[0].params)
    return BatchRow(len(asked), seq_tokens / seq_seconds, worker_tokens / worker_seconds,
                    len(asked) * plan.batch_tokens / raw_seconds)


def next_turn(request: GenerationRequest, reply: str, index: int) -> GenerationRequest:
    """The channel's next request: its prompt, the reply it got, a new message."""
    name = request.prompt.rsplit("\n", 1)[-1].removesuffix(":")
    message = user_messages(index + 1)[index]
    return replace(request, prompt=f"{request.prompt}{reply}\nYou: {message}\n{name}:")


def _timed(engine: Engine, request: GenerationRequest) -> tuple[float, list[GenerationResult]]:
    return _in_thread(_timed_here, engine, request)


def _timed_here(engine: Engine, request: GenerationRequest
                ) -> tuple[float, list[GenerationResult]]:
    started = time.perf_counter()
    results = engine.generate([request])
    return time.perf_counter() - started, results


_GENERATING_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-generate")


def _in_thread(work: Callable[..., Any], *args: Any) -> Any:
    """Run `work` off the main thread, as the worker runs the bot's generation: torch's CPU
    thread pool is set up per calling thread, and on a busy machine the main thread's ran
    the same request up to 3x slower, which would have flattered every side run here."""
    return _GENERATING_THREAD.submit(work, *args).result()


async def _through_worker(engine: Engine, requests: Sequence[GenerationRequest]
                          ) -> tuple[float, list[GenerationResult]]:
    """All requests submitted at once, as channels asking together do."""
    async with Worker(engine, queue_max=len(requests), max_batch=len(requests)) as worker:
        started = time.perf_counter()
        results = await asyncio.gather(*(worker.submit(r) for r in requests))
        return time.perf_counter() - started, list(results)


def channel_requests(engine: Engine, count: int, plan: Plan) -> list[GenerationRequest]:
    """One chat prompt per channel, lengths spread evenly over the plan's range, with the
    bot's default sampling and the channel as cache key; each makes up to
    `plan.batch_tokens` tokens (no stop strings)."""
    shortest, longest = plan.batch_prompt_tokens
    defaults = ChatConfig.from_settings(Settings()).params
    params = replace(defaults, max_new_tokens=plan.batch_tokens, seed=SEED)
    requests = []
    for index in range(count):
        tokens = shortest + (longest - shortest) * index // max(count - 1, 1)
        requests.append(GenerationRequest(chat_prompt(engine, tokens, index), (), params,
                                          cache_key=f"bench-channel-{index}"))
    return requests


# --- prompts -----------------------------------------------------------------------------------

def chat_prompt(engine: Engine, tokens: int, variant: int) -> str:
    """A Pygmalion-format prompt of about `tokens` tokens, ending on the character's turn."""
    conversations = training_text()
    persona, _, dialogue = conversations[variant % len(conversations)].partition("<START>\n")
    lines = dialogue.splitlines()
    lines = lines[variant % len(lines):] + lines[:variant % len(lines)]
    body = ""
    while engine.count_tokens(persona + body) < tokens:
        body += lines[len(body.splitlines()) % len(lines)] + "\n"
    name = persona.split("'s Persona")[0]
    return f"{persona}<START>\n{body}You: channel {variant}, what now?\n{name}:"


def user_messages(count: int, lines: int = 2) -> list[str]:
    """Chatty member messages that differ: `lines` of the training dialogue's member lines
    and a question (2 lines: two or three sentences, ~30 tokens; 12:
    ~85 tokens; 24: a roleplay paragraph of ~160)."""
    said = [line.removeprefix("You: ") for line in training_text()[0].splitlines()
            if line.startswith("You: ")]
    return [" ".join([said[i % len(said)],
                      *(said[(i * 7 + 3 * k) % len(said)] for k in range(1, lines)),
                      f"And tell me, turn {i}?"])
            for i in range(count)]


# --- output ------------------------------------------------------------------------------------

def print_streaming(label: str, run: BotRun) -> None:
    replies = [t for t in run.turns if not t.notice and t.posted is not None]
    print(f"\n[4] streaming on {label}, {len(replies)} replies")
    for index, turn in enumerate(replies, start=1):
        assert turn.first_visible is not None and turn.posted is not None
        print(f"    reply {index}: first text visible after {turn.first_visible - turn.sent:.2f} s,"
              f" whole reply after {turn.posted - turn.sent:.2f} s")
    print(f"    first visible / whole reply {run.first_text_ratio:.3f}")


def print_overhead(label: str, run: BotRun) -> None:
    replies = [t for t in run.turns if not t.notice and t.posted is not None]
    print(f"\n[1] {label}: bot path vs raw generate, {len(replies)} replies "
          f"({len(run.turns) - len(replies)} notices), {run.new_tokens} new tokens")
    print(f"    bot path (mention -> reply posted) {run.bot_seconds:8.2f} s")
    print(f"    raw model.generate, same prompts   {run.raw_seconds:8.2f} s")
    per_reply_ms = (run.bot_seconds - run.raw_seconds) / max(len(replies), 1) * 1000
    print(f"    overhead {run.overhead:.3f}x  ({per_reply_ms:+.0f} ms per reply)")


def print_conversation(turns: list[ConversationTurn], plan: Plan) -> None:
    print(f"\n[2] {len(turns)}-turn conversation through the chat service, "
          f"CONTEXT_TOKENS={plan.context_tokens}, replies up to {plan.conversation_reply_tokens}"
          f" tokens, PREFIX_CACHE_MB={PREFIX_CACHE_ON_MB}, REPETITION_GUARD=false; each turn's "
          "request again at once without the cache")
    print(f"    {'turn':>4} {'prompt':>7} {'ttft off':>9} {'ttft on':>8} {'computed off':>13}"
          f" {'computed on':>12} {'ahead':>6}")
    for turn in REPORTED_TURNS:
        if turn > len(turns):
            continue
        t = turns[turn - 1]
        print(f"    {turn:>4} {t.prompt_tokens:>7} {t.ttft_off_s:>8.2f}s {t.ttft_on_s:>7.2f}s "
              f"{t.prompt_tokens:>13} {t.computed_tokens:>12} {t.ahead_tokens:>6}")
    full = [n for n, t in enumerate(turns, start=1) if t.computed_tokens > t.prompt_tokens // 2]
    ahead = [n for n, t in enumerate(turns, start=1) if t.ahead_tokens]
    shrank = [n for n in range(2, len(turns) + 1)
              if turns[n - 1].prompt_tokens < turns[n - 2].prompt_tokens]
    print(f"    the example dialogue or a chunk of history left the prompt at turns "
          f"{', '.join(map(str, shrank)) or 'none'}")
    print(f"    all {len(turns)}: time to first token {ttft_ratio(turns):.3f} of uncached, "
          f"{prefill_fraction(turns):.3f} of the prompt tokens computed while the member "
          f"waits; {prefill_fraction(turns, with_ahead=True):.3f} with the tokens prefilled "
          "ahead (in the idle time between turns) counted too")
    print(f"    computed mostly whole at turns {', '.join(map(str, full)) or 'none'}; "
          f"prefilled ahead before turns {', '.join(map(str, ahead)) or 'none'} "
          f"({sum(t.ahead_tokens for t in turns)} tokens: each history chunk's drop, and "
          "the example dialogue's, foreseen)")
    reused = [t for n, t in enumerate(turns, start=1) if n not in full]
    if reused:
        print(f"    the {len(reused)} turns not computed whole: time to first token "
              f"{ttft_ratio(reused):.3f} of uncached, {prefill_fraction(reused):.3f} of the "
              "prompt tokens computed")


def ttft_ratio(turns: Sequence[ConversationTurn]) -> float:
    return sum(t.ttft_on_s for t in turns) / sum(t.ttft_off_s for t in turns)


def prefill_fraction(turns: Sequence[ConversationTurn], *, with_ahead: bool = False) -> float:
    computed = sum(t.computed_tokens + (t.ahead_tokens if with_ahead else 0) for t in turns)
    return computed / sum(t.prompt_tokens for t in turns)


def print_batching(batching: Batching, plan: Plan) -> None:
    low, high = plan.batch_prompt_tokens
    print(f"\n[3] channels asking at once, prompts of {low}-{high} tokens, up to "
          f"{plan.batch_tokens} new tokens each; generated tokens/s")
    print(f"    {'channels':>8} {'one at a time':>14} {'worker':>8} {'raw batch':>10}"
          f" {'worker/seq':>11} {'worker/raw':>11}")
    print("    first turn (nothing cached):")
    _print_batch_row(batching.first_turn)
    print("    next turn (each channel's previous turn cached; raw generate has no cache):")
    for row in batching.next_turn:
        _print_batch_row(row)


def _print_batch_row(row: BatchRow) -> None:
    print(f"    {row.channels:>8} {row.sequential_tps:>14.1f} {row.worker_tps:>8.1f} "
          f"{row.raw_tps:>10.1f} {row.worker_tps / row.sequential_tps:>10.2f}x "
          f"{row.worker_tps / row.raw_tps:>10.2f}x")


# --- running -----------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_LAYERS} of the 24 layers, shorter prompts and replies")
    parser.add_argument("--gpu", action="store_true", help="the GPU run (bench/gpu.py)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.gpu:
        from bench import gpu  # noqa: PLC0415 (its own CUDA-only world)
        sys.exit(gpu.main())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # leave through `with`: temp dirs go
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)  # progress, on stderr
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pygbot-bench-") as folder:
        results = run(plan, Path(folder))
    print(f"\n(whole run {time.perf_counter() - started:.0f} s)")
    print(results)


def run(plan: Plan, folder: Path) -> str:
    personas = ROOT / "personas"
    tiny = Engine.load(str(build_tiny_model(folder / "tiny")), "cpu", "float32",
                       prefix_cache_mb=0)
    pythia_dir = build_pythia_shaped_model(folder / "pythia", layers=plan.layers, readable=True)
    pythia = Engine.load(str(pythia_dir), "cpu", "auto", prefix_cache_mb=0)
    print(f"pythia-1.3b shape (random weights): {plan.layers} of 24 layers"
          + (" (--quick)" if plan.layers < PYTHIA_1_3B_SHAPE.layers else "")
          + f", {pythia.device}/{pythia.dtype}, {torch.get_num_threads()} threads; "
          f"replies up to {plan.reply_tokens} tokens")

    # The prefix cache is off for [1]: the bot then does the work raw generate does.
    print_overhead("tiny test model", asyncio.run(bot_path(tiny, plan.reply_tokens,
                                                             plan.bot_turns)))
    log.info("[1] the bot path, pythia shape")
    bot = asyncio.run(bot_path(pythia, plan.reply_tokens, plan.bot_turns))
    print_overhead("pythia shape, PREFIX_CACHE_MB=0", bot)

    cached = prefix_cached(pythia, PREFIX_CACHE_ON_MB)
    log.info("[2] the conversation")
    turns = asyncio.run(conversation(cached, plan, personas))
    print_conversation(turns, plan)

    log.info("[3] channels at once")
    batched = batching(cached, plan)
    print_batching(batched, plan)

    log.info("[4] streaming")
    smol = Engine.load(str(smollm2.model_folder()), "cpu", "auto")
    streamed = asyncio.run(bot_path(smol, Settings().max_new_tokens, plan.bot_turns,
                                    replay=False))
    print_streaming("SmolLM2-135M-Instruct", streamed)

    cold, sixteen = batched.first_turn, batched.next_turn[-1]
    print(f"\nbatch16 figures below are the next turn's (prefix cache on); the first turn's: "
          f"worker/seq {cold.worker_tps / cold.sequential_tps:.2f}, "
          f"worker/raw {cold.worker_tps / cold.raw_tps:.2f}")
    return (f"RESULT overhead={bot.overhead:.3f} "
            f"batch16_vs_sequential={sixteen.worker_tps / sixteen.sequential_tps:.2f} "
            f"batch16_vs_raw_batch={sixteen.worker_tps / sixteen.raw_tps:.2f} "
            f"prefix_ttft_ratio={ttft_ratio(turns):.3f} "
            f"prefix_prefill_fraction={prefill_fraction(turns):.3f} "
            f"first_text_ratio={streamed.first_text_ratio:.3f}")


if __name__ == "__main__":
    main()
