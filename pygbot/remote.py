"""The model served by another process: an OpenAI-compatible `/v1/completions` server
(vLLM, SGLang, Aphrodite, llama.cpp, KoboldCpp, `transformers serve`).

`RemoteEngine` is a `Generator` for the worker, so the queue, ordering and durability stay in
pygbot. The worker calls `generate` from its thread; the batch crosses to the event loop,
where aiohttp sends its requests side by side, at most ENGINE_CONCURRENCY at once (the
server batches them and reuses their shared prefixes). Requests that differ only in their
seed (swipes) become one request with `n` choices on servers that honour `n`, and parallel
requests elsewhere. A request with an `on_text` listener is streamed (server-sent events) so
replies grow on screen as with the local engine. A prompt leaves with its special-token text
kept as text (`pygbot.special_text`), as the local engine reads it.

Timeouts, refused connections, 5xx and 429 are tried again with doubling pauses; after the
last try `EngineUnavailableError` reaches the member as a notice. A 4xx is a setting the
server does not accept: it is not retried, and the log says which.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import yarl

from pygbot.config import Settings
from pygbot.engine import GenerationRequest, GenerationResult
from pygbot.engine_errors import EngineRequestError, EngineUnavailableError
from pygbot.remote_api import (
    Choice,
    Sampling,
    ServerReplyError,
    StreamAccumulator,
    choices_of,
    completion_body,
    honours_n,
)
from pygbot.tokenizer import TokenCounter

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5  # pause before the second try; doubles with each further one
BACKOFF_MAX_S = 8.0
PROBE_TIMEOUT_S = 10.0  # the start-up question "who are you?" gets at most this long
MAX_DETAIL_CHARS = 200  # of a server's error text, in the log
_DEFAULTS = Settings()


class _RetryableError(Exception):
    """A failure worth another try: timeout, refused or dropped connection, 5xx, 429."""


@dataclass(frozen=True)
class RemoteConfig:
    # Defaults are the settings' own, stated once in pygbot.config.
    url: str
    flavor: str = _DEFAULTS.engine_flavor
    model: str = _DEFAULTS.engine_model  # empty: the first model the server lists
    api_key: str = field(default=_DEFAULTS.engine_api_key, repr=False)
    concurrency: int = _DEFAULTS.engine_concurrency
    timeout_s: float = _DEFAULTS.engine_timeout_s
    retries: int = _DEFAULTS.engine_retries
    window_tokens: int = _DEFAULTS.repetition_window_tokens
    xtc_probability: float = _DEFAULTS.xtc_probability
    xtc_threshold: float = _DEFAULTS.xtc_threshold
    start_offline: bool = _DEFAULTS.engine_start_offline

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteConfig:
        return cls(url=settings.engine_url, flavor=settings.engine_flavor,
                   model=settings.engine_model, api_key=settings.engine_api_key,
                   concurrency=settings.engine_concurrency, timeout_s=settings.engine_timeout_s,
                   retries=settings.engine_retries,
                   window_tokens=settings.repetition_window_tokens,
                   xtc_probability=settings.xtc_probability,
                   xtc_threshold=settings.xtc_threshold,
                   start_offline=settings.engine_start_offline)

    @property
    def base(self) -> yarl.URL:
        """The server's root: a URL given as .../v1 works too."""
        url = yarl.URL(self.url.rstrip("/"))
        return url.parent if url.name == "v1" else url

    @property
    def host(self) -> str:
        """host:port only: never a path, query or credentials that might be in the URL."""
        return f"{self.base.host}:{self.base.port}"


@dataclass
class ServerState:
    reachable: bool | None = None  # None: not asked yet
    since: float = field(default_factory=time.time)
    reason: str = ""

    def mark(self, reachable: bool, reason: str = "") -> None:
        if reachable != self.reachable:
            self.since = time.time()
            if reachable:
                log.info("the engine server is reachable")
            else:
                log.warning("the engine server is not reachable: %s", reason)
        self.reachable = reachable
        self.reason = reason


class RemoteEngine:
    def __init__(self, config: RemoteConfig, counter: TokenCounter) -> None:
        self.config = config
        self.model_name = config.model
        self.context_tokens: int | None = None  # the server's max_model_len, when it says
        self.state = ServerState()
        self._counter = counter
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._in_flight = 0

    # --- life cycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and ask the server what it serves; `EngineUnavailableError` (one line)
        when it cannot be reached or is no completions server."""
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._session = aiohttp.ClientSession(
            headers=self._headers(),
            connector=aiohttp.TCPConnector(limit=self.config.concurrency + 2))
        await self.probe()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RemoteEngine:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _headers(self) -> dict[str, str]:
        # The key travels only in this header, which is never logged.
        if not self.config.api_key:
            return {}
        return {"Authorization": f"Bearer {self.config.api_key}"}

    async def probe(self) -> None:
        """GET /v1/models: learn the model name (unless ENGINE_MODEL says) and context."""
        try:
            listed = await self._get_json("v1/models", min(PROBE_TIMEOUT_S,
                                                             self.config.timeout_s))
        except EngineUnavailableError as error:
            self.state.mark(False, str(error))
            raise
        self.state.mark(True)
        models = [m for m in listed.get("data") or [] if isinstance(m, dict) and m.get("id")]
        if not models:
            raise EngineUnavailableError(
                f"the engine server at {self.config.host} lists no models at /v1/models; "
                "is it an OpenAI-compatible server with a model loaded?")
        chosen = next((m for m in models if m["id"] == self.config.model), models[0])
        if not self.config.model:
            self.model_name = str(chosen["id"])
        context = chosen.get("max_model_len")
        if isinstance(context, int) and context > 0:
            self.context_tokens = context
        log.info("engine server %s serves %s (%s)", self.config.host, self.model_name,
                 f"{context}-token context" if self.context_tokens else "context not said")

    async def _get_json(self, path: str, timeout_s: float) -> dict[str, Any]:
        session = self._require_session()
        where = f"the engine server at {self.config.host}"
        try:
            async with session.get(self.config.base / path,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                if response.status in (401, 403):
                    raise EngineUnavailableError(
                        f"{where} refused ENGINE_API_KEY (HTTP {response.status})")
                if response.status != 200:
                    raise EngineUnavailableError(
                        f"{where} answered HTTP {response.status} at /{path}; is ENGINE_URL "
                        "the address of an OpenAI-compatible server?")
                reply = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise EngineUnavailableError(f"cannot reach {where}: {_describe(error)}") from None
        return reply if isinstance(reply, dict) else {}

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise EngineUnavailableError("the remote engine is not open")
        return self._session

    # --- the Generator protocol ------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return self._counter.count_tokens(text)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """For the worker's thread: runs `agenerate` on the event loop and waits for it."""
        loop = self._loop
        if loop is None:
            raise EngineUnavailableError("the remote engine is not open")
        if _running_loop() is loop:
            raise RuntimeError("generate() blocks: call agenerate() on the event loop")
        return asyncio.run_coroutine_threadsafe(self.agenerate(requests), loop).result()

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Results in request order."""
        started = time.perf_counter()
        if not self.model_name and not self.config.model:
            await self.probe()  # started offline: learn the model name now
        outgoing = [self._for_server(request) for request in requests]
        groups = _swipe_groups(outgoing, honours_n(self.config.flavor))
        answers = await asyncio.gather(*(self._answer([outgoing[i] for i in group])
                                         for group in groups))
        seconds = time.perf_counter() - started
        results: list[GenerationResult | None] = [None] * len(requests)
        for group, choices in zip(groups, answers, strict=True):
            for index, choice in zip(group, choices, strict=True):
                results[index] = self._result(requests[index], choice, seconds)
        return [result for result in results if result is not None]

    def _for_server(self, request: GenerationRequest) -> GenerationRequest:
        """`request` with no text the server's tokenizer would take for a special token
        (a member's "<|endoftext|>" stays characters); its listener hears restored text."""
        special = self._counter.special_text
        return replace(
            request, prompt=special.plain(request.prompt),
            stop_strings=tuple(map(special.plain, request.stop_strings)),
            dry_sequence_breakers=tuple(map(special.plain, request.dry_sequence_breakers)),
            on_text=special.restoring(request.on_text) if request.on_text else None)

    def _result(self, request: GenerationRequest, choice: Choice,
                seconds: float) -> GenerationResult:
        tokens = choice.completion_tokens
        if tokens is None:
            tokens = self.count_tokens(choice.text)
        if choice.finish_reason == "length":  # the chat trims an unfinished last sentence
            tokens = max(tokens, request.params.max_new_tokens)
        return GenerationResult(self._counter.special_text.restore(choice.text), tokens,
                                seconds, prompt_tokens=choice.prompt_tokens or 0)

    # --- one request, with retries ---------------------------------------------------------------

    async def _answer(self, group: Sequence[GenerationRequest]) -> list[Choice]:
        """One completion with len(group) choices for requests alike but for their seed."""
        first = group[0]
        listeners = [request.on_text for request in group]
        body = completion_body(first, self._sampling(), n=len(group),
                               stream=any(listener is not None for listener in listeners))
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            try:
                choices = await self._post(body, listeners)
            except _RetryableError as error:
                reason = str(error)
                log.warning("engine request failed (try %d of %d): %s", attempt + 1,
                            attempts, reason)
                if attempt + 1 < attempts:
                    await asyncio.sleep(min(BACKOFF_FIRST_S * 2 ** attempt, BACKOFF_MAX_S))
                    continue
                self.state.mark(False, reason)
                raise EngineUnavailableError(
                    f"the engine server at {self.config.host} failed {attempts} time(s); "
                    f"last: {reason}") from None
            self.state.mark(True)
            return choices
        raise AssertionError("unreachable")  # the loop returns or raises

    def _sampling(self) -> Sampling:
        return Sampling(model=self.model_name, flavor=self.config.flavor,
                        window_tokens=self.config.window_tokens,
                        xtc_probability=self.config.xtc_probability,
                        xtc_threshold=self.config.xtc_threshold)

    async def _post(self, body: dict[str, Any],
                    listeners: Sequence[Callable[[str], None] | None]) -> list[Choice]:
        session = self._require_session()
        assert self._slots is not None
        async with self._slots:
            self._in_flight += 1
            try:
                async with session.post(
                        self.config.base / "v1/completions", json=body,
                        timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)) as response:
                    if response.status >= 400:
                        await _refuse(response)
                    if body["stream"]:
                        return await _read_stream(response, len(listeners), listeners)
                    return choices_of(await response.json(content_type=None), len(listeners))
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                    TimeoutError, ServerReplyError) as error:
                raise _RetryableError(_describe(error)) from None
            finally:
                self._in_flight -= 1

    # --- /pygbot status --------------------------------------------------------------------------

    def status_lines(self) -> list[str]:
        config = self.config
        state = self.state
        if state.reachable is None:
            server = "not asked yet"
        elif state.reachable:
            server = "reachable"
        else:
            since = time.strftime("%H:%M UTC", time.gmtime(state.since))
            server = f"**not reachable** since {since} ({state.reason[:MAX_DETAIL_CHARS]})"
        return [
            f"**Engine:** remote ({config.flavor}) at {config.host}, up to "
            f"{config.concurrency} requests at once",
            f"**Model:** {self.model_name or 'not known yet'}",
            f"**Server:** {server}; {self._in_flight} request(s) at the server now",
        ]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _swipe_groups(requests: Sequence[GenerationRequest], use_n: bool) -> list[list[int]]:
    """Request indices per completion request: alike-but-for-the-seed requests share one
    (with `n`) where the server honours `n`; elsewhere each goes alone (in parallel)."""
    if not use_n:
        return [[index] for index in range(len(requests))]
    groups: dict[GenerationRequest, list[int]] = {}
    for index, request in enumerate(requests):
        key = replace(request, params=replace(request.params, seed=None), on_text=None)
        groups.setdefault(key, []).append(index)
    return list(groups.values())


async def _refuse(response: aiohttp.ClientResponse) -> None:
    detail = " ".join((await response.text()).split())[:MAX_DETAIL_CHARS]
    status = response.status
    if status == 429 or status >= 500:
        raise _RetryableError(f"HTTP {status}: {detail}")
    hint = ("check ENGINE_API_KEY" if status in (401, 403) else
            "check ENGINE_MODEL" if status == 404 else
            "check ENGINE_FLAVOR: the server does not take a field pygbot sent")
    raise EngineRequestError(f"the engine server refused the request (HTTP {status}: "
                             f"{detail}); {hint}")


async def _read_stream(response: aiohttp.ClientResponse, n: int,
                       listeners: Sequence[Callable[[str], None] | None]) -> list[Choice]:
    stream = StreamAccumulator(n)
    listening = list(listeners)
    async for raw in response.content:
        for index in stream.feed(raw.decode("utf-8", errors="replace")):
            listener = listening[index]
            if listener is not None and not _tell(listener, stream.choices[index].text):
                listening[index] = None
        if stream.done:
            break
    if not stream.done and not all(choice.finish_reason for choice in stream.choices):
        raise ServerReplyError("the stream ended before the reply did")
    return stream.choices


def _tell(listener: Callable[[str], None], text: str) -> bool:
    """Whether the listener took the text; one that raises hears no more."""
    try:
        listener(text)
    except Exception:  # a listener's bug must not cost the member the reply
        log.exception("on_text listener failed; it hears no more")
        return False
    return True


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out (ENGINE_TIMEOUT_S)"
    return f"{type(error).__name__}: {error}".rstrip(": ")[:MAX_DETAIL_CHARS]
