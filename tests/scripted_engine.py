"""A stand-in for the model where a test needs to know exactly what the model "says".

It has the engine's real interface (`generate`, `count_tokens`, `context_tokens`) and counts
tokens with a real tokenizer, so everything around it — worker, prompt, chat, Discord — runs
for real. Used only where a random tiny model cannot be steered: loops, forged turns,
@everyone, replies longer than Discord's limit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from pygbot.engine import GenerationRequest, GenerationResult


class ScriptedEngine:
    model_name = "scripted"
    device = "cpu"
    dtype = "float32"
    context_tokens = 2048

    def __init__(self, replies: Iterable[str], count_tokens: Callable[[str], int],
                 release: threading.Event | None = None) -> None:
        self._replies = list(replies)
        self.count_tokens = count_tokens
        self.requests: list[GenerationRequest] = []
        self._release = release  # when given, generate() waits for it: a "slow" model

    def script(self, *replies: str) -> None:
        self._replies.extend(replies)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if self._release is not None:
            self._release.wait(timeout=30)
        results = []
        for request in requests:
            self.requests.append(request)
            text = self._replies.pop(0) if self._replies else " ..."
            results.append(GenerationResult(text=text, new_tokens=self.count_tokens(text),
                                            seconds=0.001))
        return results
