"""Batching throughput: the same prompts generated one at a time, then in batches, in one run.

The worker batches requests that wait together; this measures what that buys on this machine.
Every mode generates the same N chat prompts (about 300 tokens each, greedy, 32 new tokens)
with the engine's real stop strings and windowed repetition penalty, after one warm-up batch.

    python bench/throughput.py                  # tiny random model: seconds
    python bench/throughput.py --pythia-shape   # pythia-1.3b's shape, random bf16 weights

The last line is `RESULT batch4_speedup=... batch8_speedup=...`: the wall-time ratio of one at
a time to each batch size (above 1 means batching serves the same requests faster).
"""

from __future__ import annotations

import argparse
import logging
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/throughput.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pygbot.engine import (  # noqa: E402
    Engine,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
)
from tests.model_factory import (  # noqa: E402
    build_pythia_shaped_model,
    build_tiny_model,
    training_text,
)

log = logging.getLogger("bench.throughput")

DEFAULT_REQUESTS = 16
DEFAULT_PYTHIA_REQUESTS = 8  # a 1.3B model on a small CPU: keep the run to a few minutes
PROMPT_TOKENS = 300  # about what a short Discord conversation plus persona costs
NEW_TOKENS = 32  # per request
BATCH_SIZES = (4, 8)
REPETITION_PENALTY = 1.1  # the bot's default, so the windowed penalty's cost is included


@dataclass(frozen=True)
class Measurement:
    batch_size: int
    seconds: float  # wall time for all requests (median over rounds)
    new_tokens: int
    texts: tuple[str, ...]

    def requests_per_second(self) -> float:
        return len(self.texts) / self.seconds

    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds


def chat_prompts(engine: Engine, count: int, tokens: int,
                 new_tokens: int) -> list[GenerationRequest]:
    """`count` different Pygmalion prompts of about `tokens` tokens, each ending on the character's
    turn, with the penalty window starting after the persona like the bot's."""
    conversations = training_text()
    requests = []
    for index in range(count):
        persona, _, dialogue = conversations[index % len(conversations)].partition("<START>\n")
        lines = dialogue.splitlines()
        lines = lines[index % len(lines):] + lines[:index % len(lines)]  # differ per request
        header = f"{persona}<START>\n"
        body = ""
        while engine.count_tokens(header + body) < tokens:
            body += lines[len(body.splitlines()) % len(lines)] + "\n"
        name = persona.split("'s Persona")[0]
        prompt = f"{header}{body}You: message {index}, what do you think?\n{name}:"
        params = GenerationParams(max_new_tokens=new_tokens, temperature=0.0,
                                  repetition_penalty=REPETITION_PENALTY)
        requests.append(GenerationRequest(prompt, ("\nYou:", f"\n{name}:"), params,
                                          penalty_from=len(header)))
    return requests


def run_once(engine: Engine, requests: Sequence[GenerationRequest],
             batch_size: int) -> tuple[float, list[GenerationResult]]:
    started = time.perf_counter()
    results = []
    for first in range(0, len(requests), batch_size):
        results += engine.generate(requests[first:first + batch_size])
    return time.perf_counter() - started, results


def measure(engine: Engine, requests: Sequence[GenerationRequest], batch_sizes: Sequence[int],
            rounds: int) -> list[Measurement]:
    """Modes interleaved within each round, so load from other processes hits them alike."""
    timings: dict[int, list[float]] = {size: [] for size in batch_sizes}
    results: dict[int, list[GenerationResult]] = {}
    for _ in range(rounds):
        for size in batch_sizes:
            seconds, results[size] = run_once(engine, requests, size)
            timings[size].append(seconds)
    return [Measurement(size, statistics.median(timings[size]),
                        sum(r.new_tokens for r in results[size]),
                        tuple(r.text for r in results[size])) for size in batch_sizes]


def print_table(measurements: Sequence[Measurement]) -> None:
    alone = measurements[0]
    print(f"{'mode':<12}{'seconds':>10}{'requests/s':>12}{'tokens/s':>10}{'speedup':>9}"
          f"{'same text':>11}")
    for m in measurements:
        same = sum(a == b for a, b in zip(alone.texts, m.texts, strict=True))
        mode = "one at a time" if m.batch_size == 1 else f"batch of {m.batch_size}"
        print(f"{mode:<12}{m.seconds:>10.2f}{m.requests_per_second():>12.2f}"
              f"{m.tokens_per_second():>10.1f}{alone.seconds / m.seconds:>8.2f}x"
              f"{same:>7}/{len(m.texts)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythia-shape", action="store_true",
                        help="pythia-1.3b's shape with random bf16 weights (minutes, ~2.6 GB)")
    parser.add_argument("--requests", type=int, help="prompts per mode (default 16; 8 pythia)")
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)),
                        help="comma-separated, compared with one at a time")
    parser.add_argument("--rounds", type=int, help="timed rounds per mode, median kept "
                        "(default 5; 1 for pythia)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    batch_sizes = tuple(int(size) for size in args.batch_sizes.split(","))
    # `timeout` and Ctrl-C alike: leave through `with`, so the temp model folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    count = args.requests or (DEFAULT_PYTHIA_REQUESTS if args.pythia_shape else DEFAULT_REQUESTS)
    rounds = args.rounds or (1 if args.pythia_shape else 5)
    with tempfile.TemporaryDirectory(prefix="pygbot-bench-") as folder:
        started = time.perf_counter()
        build = build_pythia_shaped_model if args.pythia_shape else build_tiny_model
        model_dir = build(Path(folder))
        log.info("built the model in %.1f s", time.perf_counter() - started)
        engine = Engine.load(str(model_dir), args.device, args.dtype)
        requests = chat_prompts(engine, count, args.prompt_tokens, args.new_tokens)
        lengths = [engine.count_tokens(r.prompt) for r in requests]
        engine.generate(requests[:max(batch_sizes)])  # warm-up: allocator, kernels, caches
        measurements = measure(engine, requests, (1, *batch_sizes), rounds)
    shape = "pythia-1.3b shape (random)" if args.pythia_shape else "tiny GPT-NeoX (random)"
    print(f"\n{shape} on {engine.device}/{engine.dtype}, {torch.get_num_threads()} threads: "
          f"{count} requests, prompts {min(lengths)}-{max(lengths)} tokens, "
          f"up to {args.new_tokens} new tokens, greedy, median of {rounds} round(s)")
    print_table(measurements)
    alone = measurements[0]
    speedups = " ".join(f"batch{m.batch_size}_speedup={alone.seconds / m.seconds:.2f}"
                        for m in measurements[1:])
    print(f"RESULT {speedups} alone_tokens_per_s={alone.tokens_per_second():.1f} "
          f"requests={count} device={engine.device} dtype={engine.dtype}")


if __name__ == "__main__":
    main()
