"""What an OpenAI-compatible `/v1/completions` server is sent and what it sends back, as values.

The prompt, stop strings, length, temperature and top-p mean the same on every server. The
other sampling knobs are extensions, and each server family spells them differently or lacks
them (checked against each server's own source/README, see the README's engine table):

- vLLM and SGLang take `top_k`, `min_p`, `repetition_penalty`, `seed` and `n` at the top
  level; they have neither DRY nor XTC. Their repetition penalty counts the whole prompt.
- Aphrodite takes those plus DRY (`dry_*`, `dry_range`) and XTC (`xtc_*`), and honours `n`.
- llama.cpp's server takes `top_k`, `min_p`, `repeat_penalty` + `repeat_last_n`, DRY with
  `dry_penalty_last_n`, XTC; it refuses `n` other than 1, so swipes go as parallel requests.
- KoboldCpp reads `rep_pen` + `rep_pen_range`, DRY, XTC; no `n`. Its defaults are not "off"
  (top_k 100, rep_pen_range 320), so every knob is sent, even when it is off.
- `transformers serve` rejects unknown top-level fields with 422: `top_k`, `min_p` and
  `repetition_penalty` go inside `generation_config`, a JSON string, with `do_sample` (it
  samples only if the model's generation config or the request says so). It ignores `n`.

No I/O here: `pygbot.remote` sends what `completion_body` builds and feeds what arrives to
`StreamAccumulator` or `choices_of`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pygbot.config import Settings
from pygbot.engine import GenerationRequest

N_FLAVORS = frozenset({"vllm", "sglang", "aphrodite"})  # servers that return n choices
DRY_FLAVORS = frozenset({"aphrodite", "koboldcpp", "llamacpp"})
# Servers whose token repetition penalty takes a range (the last N tokens of the context).
WINDOWED_PENALTY_FLAVORS = frozenset({"koboldcpp", "llamacpp"})
SSE_DATA = "data:"
SSE_DONE = "[DONE]"
_DEFAULTS = Settings()


@dataclass(frozen=True)
class Sampling:
    """The engine-wide knobs a request does not carry itself."""

    model: str
    flavor: str
    # The repetition penalty's range, where the server has one. Defaults are the settings'.
    window_tokens: int = _DEFAULTS.repetition_window_tokens
    xtc_probability: float = _DEFAULTS.xtc_probability
    xtc_threshold: float = _DEFAULTS.xtc_threshold


class ServerReplyError(ValueError):
    """The server answered with something that is not a completion."""


def honours_n(flavor: str) -> bool:
    return flavor in N_FLAVORS


def completion_body(request: GenerationRequest, sampling: Sampling, *, n: int = 1,
                    stream: bool = False) -> dict[str, Any]:
    """The JSON body of one `/v1/completions` request for `request`, `n` choices."""
    params = request.params
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "max_tokens": params.max_new_tokens,
        "temperature": max(params.temperature, 0.0),  # 0 is greedy on every server
        "top_p": params.top_p,
        "stream": stream,
    }
    if sampling.model:
        body["model"] = sampling.model
    if request.stop_strings:
        body["stop"] = list(request.stop_strings)
    if params.seed is not None:
        body["seed"] = params.seed
    if stream:
        body["stream_options"] = {"include_usage": True}
    if n > 1:
        if not honours_n(sampling.flavor):
            raise ValueError(f"{sampling.flavor} does not return several choices (n)")
        body["n"] = n
    body.update(_FLAVOR_KNOBS[sampling.flavor](request, sampling))
    return body


def _openai_extensions(request: GenerationRequest, sampling: Sampling) -> dict[str, Any]:
    # Sent only when on: older vLLM releases refuse top_k=0 (their "off" is -1).
    params = request.params
    knobs: dict[str, Any] = {}
    if params.top_k > 0:
        knobs["top_k"] = params.top_k
    if params.min_p > 0:
        knobs["min_p"] = params.min_p
    if params.repetition_penalty != 1.0:
        knobs["repetition_penalty"] = params.repetition_penalty
    return knobs


def _dry(request: GenerationRequest, range_key: str, sampling: Sampling) -> dict[str, Any]:
    params = request.params
    knobs: dict[str, Any] = {"dry_multiplier": params.dry_multiplier}
    if params.dry_multiplier > 0:
        knobs.update(dry_base=params.dry_base, dry_allowed_length=params.dry_allowed_length,
                     dry_sequence_breakers=list(request.dry_sequence_breakers),
                     **{range_key: sampling.window_tokens})
    return knobs


def _xtc(sampling: Sampling) -> dict[str, Any]:
    return {"xtc_probability": sampling.xtc_probability,
            "xtc_threshold": sampling.xtc_threshold}


def _aphrodite(request: GenerationRequest, sampling: Sampling) -> dict[str, Any]:
    return {**_openai_extensions(request, sampling), **_dry(request, "dry_range", sampling),
            **_xtc(sampling)}


def _llamacpp(request: GenerationRequest, sampling: Sampling) -> dict[str, Any]:
    params = request.params
    return {"top_k": params.top_k, "min_p": params.min_p,
            "repeat_penalty": params.repetition_penalty,
            "repeat_last_n": sampling.window_tokens,
            "cache_prompt": True,  # reuse the slot's KV cache for the shared prefix
            **_dry(request, "dry_penalty_last_n", sampling), **_xtc(sampling)}


def _koboldcpp(request: GenerationRequest, sampling: Sampling) -> dict[str, Any]:
    params = request.params
    return {"top_k": params.top_k, "min_p": params.min_p,
            "rep_pen": params.repetition_penalty, "rep_pen_range": sampling.window_tokens,
            **_dry(request, "dry_penalty_last_n", sampling), **_xtc(sampling)}


def _transformers(request: GenerationRequest, sampling: Sampling) -> dict[str, Any]:
    params = request.params
    # do_sample always: the server keeps the model's generation config's (often false, i.e.
    # greedy whatever the temperature). top_k always: that config may say 50; HF's 0 is off.
    config: dict[str, Any] = {"do_sample": params.temperature > 0, "top_k": params.top_k}
    if params.min_p > 0:
        config["min_p"] = params.min_p
    if params.repetition_penalty != 1.0:
        config["repetition_penalty"] = params.repetition_penalty
    return {"generation_config": json.dumps(config)}


_FLAVOR_KNOBS: Mapping[str, Callable[[GenerationRequest, Sampling], dict[str, Any]]] = {
    "vllm": _openai_extensions,
    "sglang": _openai_extensions,
    "aphrodite": _aphrodite,
    "llamacpp": _llamacpp,
    "koboldcpp": _koboldcpp,
    "transformers": _transformers,
}


# --- what comes back -----------------------------------------------------------------------------

@dataclass
class Choice:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None  # from the server's usage, when it is per choice
    prompt_tokens: int | None = None  # from the server's usage: the prompt as it tokenized it


def choices_of(reply: Any, n: int) -> list[Choice]:
    """The `n` choices of a non-streamed completion, in index order."""
    if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list):
        raise ServerReplyError(f"not a completion: {str(reply)[:200]}")
    choices = [Choice() for _ in range(n)]
    for raw in reply["choices"]:
        index = int(raw.get("index", 0))
        if 0 <= index < n:
            choices[index] = Choice(str(raw.get("text") or ""), raw.get("finish_reason"))
    _take_usage(reply, choices)
    return choices


def _take_usage(event: dict[str, Any], choices: list[Choice]) -> None:
    """The token counts of a usage object; completion tokens only when there is one choice
    (a server sums them over all)."""
    usage = event.get("usage") or {}
    tokens, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
    if len(choices) == 1 and isinstance(tokens, int):
        choices[0].completion_tokens = tokens
    if isinstance(prompt, int):
        for choice in choices:
            choice.prompt_tokens = prompt


@dataclass
class StreamAccumulator:
    """Server-sent events of a streamed completion, gathered into its choices.

    `feed(line)` takes one line of the event stream and returns the indices of the choices
    whose text grew; `done` turns true at `data: [DONE]`. An error event raises."""

    n: int
    choices: list[Choice] = field(init=False)
    done: bool = False

    def __post_init__(self) -> None:
        self.choices = [Choice() for _ in range(self.n)]

    def feed(self, line: str) -> list[int]:
        line = line.strip()
        if not line.startswith(SSE_DATA):
            return []  # blank separators, comments, event names
        data = line[len(SSE_DATA):].strip()
        if data == SSE_DONE:
            self.done = True
            return []
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise ServerReplyError(f"unreadable event: {data[:200]}") from None
        if not isinstance(event, dict):
            raise ServerReplyError(f"unreadable event: {data[:200]}")
        if "error" in event:
            raise ServerReplyError(f"the server failed mid-reply: {str(event['error'])[:200]}")
        return self._add(event)

    def _add(self, event: dict[str, Any]) -> list[int]:
        grown = []
        for raw in event.get("choices") or []:
            index = int(raw.get("index", 0))
            if not 0 <= index < self.n:
                continue
            text = raw.get("text") or ""
            if text:
                self.choices[index].text += text
                grown.append(index)
            if raw.get("finish_reason"):
                self.choices[index].finish_reason = raw["finish_reason"]
        _take_usage(event, self.choices)
        return grown


# --- settings a server cannot honour --------------------------------------------------------------

def unsupported_settings(settings: Settings) -> list[str]:
    """One line per sampling setting that does not reach the ENGINE_FLAVOR's server as it
    does the local engine (logged at start-up; the README's engine table says the same)."""
    flavor = settings.engine_flavor
    lines = []
    if settings.dry_multiplier > 0 and flavor not in DRY_FLAVORS:
        lines.append(f"DRY_MULTIPLIER={settings.dry_multiplier} does not reach {flavor}: it has "
                     "no DRY sampler (set DRY_MULTIPLIER=0 to silence this, or use "
                     "REPETITION_PENALTY)")
    if settings.repetition_penalty != 1.0 and flavor not in WINDOWED_PENALTY_FLAVORS:
        lines.append(f"REPETITION_PENALTY on {flavor} counts the whole prompt, persona "
                     "included; REPETITION_WINDOW_TOKENS does not reach it")
    return lines
