"""The GPU part of bench/run.py (`--gpu`): pythia-1.3b's full shape in float16 on an NVIDIA GPU.

- ms per generated token at batch 1 through pygbot's engine, against the memory-bandwidth
  floor: a decode step reads every weight once, so weight bytes / the GPU's bandwidth (measured
  here with a device-to-device copy) is the least one token can take;
- generated tokens/s with 16 channels asking at once, through the worker;
- the same two figures with TORCH_COMPILE (pygbot's decode steps through `torch.compile` over
  a static KV cache) against eager, on the same loaded weights, to tell whether the setting
  should be on by default on a GPU (it is off until this says it is faster).

Everything printed also goes to bench/results/gpu-<GPU name>.txt, to be committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import torch

from pygbot.chat import ChatConfig
from pygbot.config import Settings
from pygbot.engine import Engine, GenerationRequest
from pygbot.worker import Worker
from tests.model_factory import build_pythia_shaped_model, training_text

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT_TOKENS = 500
DECODE_TOKENS = 128
CHANNELS = 16
COPY_BYTES = 1 << 30


def main() -> int:
    if not torch.cuda.is_available():
        print(f"bench/run.py --gpu needs an NVIDIA GPU with CUDA; torch {torch.__version__} "
              "sees none")
        return 2
    report = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="pygbot-bench-") as folder, \
            contextlib.redirect_stdout(_Tee(sys.stdout, report)):
        run(Path(folder))
    name = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"gpu-{name}.txt").write_text(report.getvalue(), encoding="utf-8")
    return 0


def run(folder: Path) -> None:
    model_dir = build_pythia_shaped_model(folder, dtype="float16", readable=True)
    engine = Engine.load(str(model_dir), "cuda", "float16")
    weight_bytes = sum(p.numel() * p.element_size() for p in engine._model.parameters())
    bandwidth = copy_bandwidth()
    floor_ms = weight_bytes / bandwidth * 1000
    compiled = Engine(engine.model_name, engine._model, engine._tokenizer, "cuda", "float16",
                      torch_compile=True)
    prompt = chat_prompt(engine)
    ms = engine_ms_per_token(engine, prompt)
    tps = asyncio.run(channels_tokens_per_s(engine, prompt))
    compiled_ms = engine_ms_per_token(compiled, prompt)  # its warm-up compiles
    compiled_tps = asyncio.run(channels_tokens_per_s(compiled, prompt))
    print(f"{torch.cuda.get_device_name()}, pythia-1.3b shape (random weights), float16, "
          f"torch {torch.__version__}")
    print(f"weights {weight_bytes / 1e9:.2f} GB; measured copy bandwidth "
          f"{bandwidth / 1e9:.0f} GB/s; floor {floor_ms:.2f} ms/token")
    print(f"pygbot engine, batch 1: {ms:.2f} ms/token ({ms / floor_ms:.2f}x the floor)")
    print(f"pygbot worker, {CHANNELS} channels at once: {tps:.0f} tokens/s")
    print(f"TORCH_COMPILE=true (static cache + torch.compile), batch 1: {compiled_ms:.2f} "
          f"ms/token ({ms / compiled_ms:.2f}x eager); {CHANNELS} channels: "
          f"{compiled_tps:.0f} tokens/s ({compiled_tps / tps:.2f}x eager)")
    print(f"RESULT gpu_ms_per_token={ms:.2f} floor_ms={floor_ms:.2f} "
          f"gpu_tokens_per_s_16={tps:.0f} static_compile_speedup={ms / compiled_ms:.2f}")


def copy_bandwidth() -> float:
    """Bytes per second a device-to-device copy moves (each byte read once, written once)."""
    source = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        target.copy_(source)
    torch.cuda.synchronize()
    return 2 * COPY_BYTES * 10 / (time.perf_counter() - started)


def chat_prompt(engine: Engine) -> str:
    text = "\n".join(training_text())
    words = text.split(" ")
    while engine.count_tokens(" ".join(words)) > PROMPT_TOKENS:
        words = words[: len(words) * 9 // 10]
    return " ".join(words) + "\nAria:"


def _request(prompt: str, new_tokens: int) -> GenerationRequest:
    params = ChatConfig.from_settings(Settings()).params
    return GenerationRequest(prompt, (), params.__class__(**{**params.__dict__,
                                                               "max_new_tokens": new_tokens}))


def engine_ms_per_token(engine: Engine, prompt: str) -> float:
    """Decode time per token: a long run minus a one-token run (the prefill), per token."""
    engine.generate([_request(prompt, 8)])  # warm-up
    short = _timed(lambda: engine.generate([_request(prompt, 1)]))
    long = _timed(lambda: engine.generate([_request(prompt, DECODE_TOKENS)]))
    return (long - short) / (DECODE_TOKENS - 1) * 1000


async def channels_tokens_per_s(engine: Engine, prompt: str) -> float:
    async with Worker(engine, queue_max=CHANNELS, max_batch=CHANNELS) as worker:
        requests = [_request(f"Channel {i}. {prompt}", DECODE_TOKENS) for i in range(CHANNELS)]
        await asyncio.gather(*(worker.submit(r) for r in requests[:2]))  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(*(worker.submit(r) for r in requests))
        return sum(r.new_tokens for r in results) / (time.perf_counter() - started)


def _timed(work: object) -> float:
    assert callable(work)
    torch.cuda.synchronize()
    started = time.perf_counter()
    work()
    torch.cuda.synchronize()
    return time.perf_counter() - started


class _Tee(io.TextIOBase):
    def __init__(self, *streams: TextIO) -> None:
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
        return len(text)
