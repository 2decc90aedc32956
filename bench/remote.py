"""ENGINE=remote overhead and concurrency, measured side by side in one run.

Starts `transformers serve` on 127.0.0.1 with the tiny test model (CPU, offline) and a
pass-through proxy in front of it that records every request body. Then:

1. overhead: a 10-turn conversation through pygbot's whole chat path (prompt, worker,
   RemoteEngine, SQLite) against the same request bodies sent directly with aiohttp to the
   same proxy, interleaved turn by turn: ratio = bot time / direct time (greedy, so both
   generate exactly the same tokens);
2. concurrency: 16 channels answered at once through the chat path (ENGINE_CONCURRENCY=16)
   against the same 16 channels one at a time: speed-up = one-at-a-time / at-once.

`transformers serve` without --continuous-batching generates one request at a time, so (2)
shows pygbot's side only; pass --continuous-batching to let the server batch.

    python bench/remote.py [--turns 10] [--channels 16] [--continuous-batching]

Last line: RESULT overhead=<bot/direct> concurrent16_speedup=<sequential/concurrent>
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pygbot.app import open_services  # noqa: E402
from pygbot.chat import Author, EmptyReplyError  # noqa: E402
from pygbot.config import Settings  # noqa: E402
from tests.completion_server import FaultProxy, TransformersServe  # noqa: E402
from tests.model_factory import build_tiny_model  # noqa: E402

MAX_NEW_TOKENS = 48
QUESTIONS = ("Hello there!", "What do you do all day?", "Tell me about the station.",
             "Do you ever get lonely?", "What is your favourite planet?",
             "How did you get here?", "What's for dinner?", "Can you fix my radio?",
             "Is it cold outside?", "Goodbye for now.")


def settings_for(proxy: FaultProxy, model_dir: Path, db_path: Path,
                 concurrency: int) -> Settings:
    # Greedy and no resamples: the bot and the direct requests generate the same tokens.
    return Settings(engine="remote", engine_url=proxy.url, engine_flavor="transformers",
                    tokenizer=str(model_dir), db_path=db_path,
                    personas_dir=REPO / "personas", max_new_tokens=MAX_NEW_TOKENS,
                    temperature=0.0, dry_multiplier=0.0, repetition_guard=False,
                    repetition_retries=0, engine_concurrency=concurrency,
                    queue_max=max(32, concurrency), engine_timeout_s=600.0)


async def overhead(settings: Settings, proxy: FaultProxy, turns: int) -> tuple[float, float]:
    """Seconds through the bot and directly, interleaved turn by turn so both see the same
    load on a shared machine: each turn's bodies are replayed right after it."""
    bot_s = direct_s = 0.0
    async with open_services(settings) as services, aiohttp.ClientSession() as session:
        for turn in range(turns):
            sent = len(proxy.bodies)
            started = time.perf_counter()
            with contextlib.suppress(EmptyReplyError):  # noise may cut to nothing; still sent
                await services.chat.reply(1, 1, Author(7, "Bob"),
                                          QUESTIONS[turn % len(QUESTIONS)])
            bot_s += time.perf_counter() - started
            for body in proxy.bodies[sent:]:
                started = time.perf_counter()
                async with session.post(f"{proxy.url}/v1/completions", json=body) as answer:
                    answer.raise_for_status()
                    await answer.json()
                direct_s += time.perf_counter() - started
    return bot_s, direct_s


async def channels_at_once(settings: Settings, channels: int, together: bool) -> float:
    async with open_services(settings) as services:
        async def one(channel: int) -> None:
            with contextlib.suppress(EmptyReplyError):
                await services.chat.reply(100 + channel, 1, Author(7, "Bob"), QUESTIONS[0])

        started = time.perf_counter()
        if together:
            await asyncio.gather(*(one(channel) for channel in range(channels)))
        else:
            for channel in range(channels):
                await one(channel)
        return time.perf_counter() - started


async def measure(serve: TransformersServe, model_dir: Path, work: Path,
                  args: argparse.Namespace) -> None:
    async with FaultProxy(serve.url) as proxy:
        base = settings_for(proxy, model_dir, work / "warmup.sqlite3", 1)
        await overhead(base, proxy, 2)  # warm-up: imports, first requests
        proxy.bodies.clear()
        bot_s, direct_s = await overhead(
            dataclasses.replace(base, db_path=work / "overhead.sqlite3"), proxy, args.turns)
        print(f"overhead: {args.turns} turns ({len(proxy.bodies) // 2} requests each way), "
              f"bot path {bot_s:.2f} s, direct {direct_s:.2f} s, ratio {bot_s / direct_s:.3f}")

        wide = settings_for(proxy, model_dir, work / "wide.sqlite3", args.channels)
        timings: dict[bool, list[float]] = {False: [], True: []}
        # ABBA order, fresh channels each time: load from other processes hits both alike.
        for index, together in enumerate((False, True, True, False)):
            timings[together].append(await channels_at_once(
                dataclasses.replace(wide, db_path=work / f"wide{index}.sqlite3"),
                args.channels, together))
        one_s, all_s = min(timings[False]), min(timings[True])
        print(f"{args.channels} channels: one at a time {one_s:.2f} s, at once {all_s:.2f} s "
              f"(best of 2 each), speed-up {one_s / all_s:.2f}x")
    print(f"RESULT overhead={bot_s / direct_s:.3f} "
          f"concurrent{args.channels}_speedup={one_s / all_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--continuous-batching", action="store_true",
                        help="start transformers serve with --continuous-batching")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model_dir = build_tiny_model(work / "tiny")
        serve = TransformersServe(model_dir, work / "serve.log",
                                  extra_args=["--continuous-batching"]
                                  if args.continuous_batching else [])
        print(f"model: tiny GPT-NeoX (tests/model_factory.py), CPU, transformers serve"
              f"{' --continuous-batching' if args.continuous_batching else ''}; "
              f"{MAX_NEW_TOKENS} new tokens, greedy")
        serve.start()
        try:
            asyncio.run(measure(serve, model_dir, work, args))
        finally:
            serve.stop()


if __name__ == "__main__":
    main()
