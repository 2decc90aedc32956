"""A stand-in for the model where a test needs to know exactly what the model "says".

It has the engine's real interface (`generate`, `count_tokens`, `context_tokens`) and counts
tokens with a real tokenizer, so everything around it — worker, prompt, chat, Discord — runs
for real. Used only where a random tiny model cannot be steered: loops, forged turns,
@everyone, replies longer than Discord's limit.

Like the engine, it streams: a request with `on_text` hears its scripted text grow a word at a
time (the engine's contract: text so far, not yet cut). `pause_after` holds the stream at a
chosen point until the test lets it go, and `step_seconds` makes each step take real time, as
a model's tokens do.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from pygbot.engine import GenerationRequest, GenerationResult

HOLD_LIMIT_S = 30.0  # a test that forgets to resume must fail, not hang
_STEP = re.compile(r"\s*\S+|\s+")  # a word with the space before it, as tokens come


class ScriptedEngine:
    model_name = "scripted"
    device = "cpu"
    dtype = "float32"
    context_tokens = 2048

    def __init__(self, replies: Iterable[str], count_tokens: Callable[[str], int],
                 release: threading.Event | None = None, step_seconds: float = 0.0) -> None:
        self._replies = list(replies)
        self.count_tokens = count_tokens
        self.requests: list[GenerationRequest] = []
        self.batches: list[int] = []  # requests per generate call, in call order
        self._release = release  # when given, generate() waits for it: a "slow" model
        self.step_seconds = step_seconds
        self._pauses: list[tuple[str, threading.Event]] = []

    def script(self, *replies: str) -> None:
        self._replies.extend(replies)

    def pause_after(self, fragment: str) -> threading.Event:
        """Once a streamed text contains `fragment`, generation waits until the returned event
        is set (once; for one request)."""
        resume = threading.Event()
        self._pauses.append((fragment, resume))
        return resume

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if self._release is not None:
            self._release.wait(timeout=HOLD_LIMIT_S)
        self.batches.append(len(requests))
        results = []
        for request in requests:
            self.requests.append(request)
            text = self._replies.pop(0) if self._replies else " ..."
            self._stream(request, text)
            results.append(GenerationResult(text=text, new_tokens=self.count_tokens(text),
                                            seconds=0.001))
        return results

    def _stream(self, request: GenerationRequest, text: str) -> None:
        so_far = ""
        for piece in _STEP.findall(text):
            so_far += piece
            if request.on_text is not None:
                request.on_text(so_far)
            if self.step_seconds:
                time.sleep(self.step_seconds)
            self._maybe_pause(so_far)

    def _maybe_pause(self, so_far: str) -> None:
        for index, (fragment, resume) in enumerate(self._pauses):
            if fragment in so_far:
                del self._pauses[index]
                resume.wait(timeout=HOLD_LIMIT_S)
                return
