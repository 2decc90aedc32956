"""The one door to the model: an asyncio queue and a single worker task that owns the engine.

Requests wait in a bounded queue; the worker takes up to `max_batch` of them at a time and
runs them as one batch in a thread, so the event loop (heartbeats, other channels) never
blocks on the model and several channels waiting together cost about one generation.

Several requests that belong together (a 🔄's candidates) are one job: they always go to
the engine in the same batch, so the local engine samples them as rows of one generation and
a remote engine can ask its server for them in one request with `n`.

A burst of mentions reaches the queue a few milliseconds apart (each channel reads its
history first), so an idle worker gathers briefly before it starts: without that, the first
request of every burst ran alone and the rest waited for it (batches of [1, 3]).

While nothing is waiting, the worker prefills ahead (`prefill_when_idle`): the prompt start a
channel's next turn will need once its history drops a chunk (see pygbot.lookahead), so the
member does not wait for it then. A request that arrives meanwhile waits for one slice of
that prefill at most (the engine checks between slices).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pygbot.engine import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)
# An idle worker that gets a request waits while more keep arriving: until the queue has been
# quiet this long, at most BATCH_GATHER_S in all. Both are small beside any generation.
BATCH_QUIET_S = 0.01
BATCH_GATHER_S = 0.05
SETTLED_POLL_S = 0.01


class Generator(Protocol):
    """What the worker needs from an engine (pygbot.engine.Engine, or a test's stand-in).

    An engine that waits on the network rather than computing (pygbot.remote.RemoteEngine)
    also has `agenerate`, a coroutine with the same contract; the worker awaits it on the
    event loop instead of tying up a thread per request."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


@runtime_checkable
class Prefiller(Protocol):
    """An engine that can also compute a prompt's start ahead of time into its prefix cache
    (pygbot.engine.Engine; a remote server keeps its own cache, so RemoteEngine cannot)."""

    @property
    def can_prefill(self) -> bool: ...  # False while it keeps no prefix cache

    def prefill(self, cache_key: str, text: str, should_stop: Callable[[], bool]) -> int: ...


class QueueFullError(RuntimeError):
    """Too many requests are waiting; the member should try again shortly."""


class WorkerClosedError(RuntimeError):
    """The bot is shutting down and takes no more requests."""


@dataclass(frozen=True)
class WorkerStats:
    requests: int
    failures: int
    new_tokens: int
    generation_seconds: float
    ahead_tokens: int = 0  # prompt tokens prefilled ahead of time, while idle

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.generation_seconds if self.generation_seconds else 0.0


@dataclass
class _Job:
    requests: tuple[GenerationRequest, ...]  # never split across batches
    future: asyncio.Future[list[GenerationResult]] = field(repr=False)


class Worker:
    def __init__(self, engine: Generator, queue_max: int = 32, max_batch: int = 4,
                 concurrent_batches: int = 1) -> None:
        """`concurrent_batches` > 1 runs that many batches at once: for a remote server,
        which batches by itself, so a slow or failed request never holds up another."""
        self._engine = engine
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_max)
        self._max_batch = max_batch
        self._batch_slots = asyncio.Semaphore(concurrent_batches)
        self._batches_running = 0
        self._task: asyncio.Task[None] | None = None
        self._held: _Job | None = None  # taken from the queue, first in the next batch
        self._closed = False
        self._live: set[asyncio.Future[list[GenerationResult]]] = set()  # queued or generating
        self._idle = asyncio.Event()
        self._idle.set()
        # Set whenever there may be something new to do: a request, a prefill, a batch done.
        self._wake = asyncio.Event()
        # Set (from the loop) when a request arrives; the prefill thread stops on it.
        self._request_waiting = threading.Event()
        self._prefiller = engine if isinstance(engine, Prefiller) else None
        # Prompt starts to prefill, oldest first, one per cache key; each is rendered once
        # (functools.cache), and a prefill cut short goes on from the same text.
        self._ahead: dict[str, Callable[[], str | None]] = {}
        self._requests = self._failures = self._new_tokens = self._ahead_tokens = 0
        self._seconds = 0.0

    async def __aenter__(self) -> Worker:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name="pygbot-model-worker")

    @property
    def depth(self) -> int:
        """Requests waiting or being generated right now (withdrawn ones do not count)."""
        return len(self._live)

    def stats(self) -> WorkerStats:
        return WorkerStats(self._requests, self._failures, self._new_tokens, self._seconds,
                           self._ahead_tokens)

    def prefill_when_idle(self, cache_key: str, prompt_start: Callable[[], str | None]) -> None:
        """When nothing else is waiting, have the engine compute the states of the text
        `prompt_start()` returns (None: nothing to do) into `cache_key`'s prefix cache. It is
        called then, in the generating thread. A newer ask for the same key replaces one not
        yet done; an engine without `prefill` ignores it."""
        if self._closed or self._prefiller is None or not self._prefiller.can_prefill:
            return
        self._ahead.pop(cache_key, None)
        self._ahead[cache_key] = functools.cache(prompt_start)
        self._wake.set()

    async def settled(self) -> None:
        """Wait until nothing is queued, generating or left to prefill ahead."""
        # Polling: "settled" spans the queue, the running batches and the prefills ahead,
        # and is only waited for by tests and benches (a member's pause between messages).
        while self._live or self._ahead or self._batches_running or not self._queue.empty():
            await asyncio.sleep(SETTLED_POLL_S)

    async def submit(self, request: GenerationRequest) -> GenerationResult:
        """Queue `request` and wait for its result.

        Cancelling the caller (a deleted message, a shutdown) withdraws the request: the worker
        skips jobs whose future is already done.
        """
        [result] = await self.submit_together([request])
        return result

    async def submit_together(self, requests: Sequence[GenerationRequest]
                              ) -> list[GenerationResult]:
        """Queue `requests` as one job that goes to the engine in one batch (even past
        `max_batch`); results in their order. Waits and withdraws as `submit` does."""
        if not requests:
            raise ValueError("submit_together() needs at least one request")
        if self._closed or self._task is None:
            raise WorkerClosedError("the model worker is not running")
        job = _Job(tuple(requests), asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFullError(f"{self._queue.maxsize} requests are already waiting") from None
        self._request_waiting.set()
        self._wake.set()
        for request in requests:
            # That conversation moves on; its reply asks again for what to prefill next.
            if request.cache_key is not None:
                self._ahead.pop(request.cache_key, None)
        self._live.add(job.future)
        job.future.add_done_callback(self._live.discard)
        return await job.future

    async def close(self) -> None:
        """Fail the queued requests, let the batch in progress finish, stop the worker."""
        self._closed = True
        self._ahead.clear()
        self._request_waiting.set()  # a prefill ahead in progress stops at its next slice
        waiting = [self._held] if self._held is not None else []
        self._held = None
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        self._fail(waiting, WorkerClosedError("the bot is shutting down"))
        # The thread running generate() cannot be interrupted; waiting for it keeps the model
        # from being torn down mid-batch and answers the members already being served.
        await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _serve(self) -> None:
        running: set[asyncio.Task[None]] = set()
        while True:
            await self._batch_slots.acquire()
            await self._work_to_do()
            if self._held is None and self._queue.empty():
                await self._prefill_ahead()
                self._batch_slots.release()
                continue
            batch = await self._next_batch()
            if not batch:
                self._batch_slots.release()
                continue
            self._begin_run()
            task = asyncio.create_task(self._run_in_slot(batch))
            running.add(task)  # a reference, so the task is not collected mid-run
            task.add_done_callback(running.discard)

    async def _run_in_slot(self, batch: list[_Job]) -> None:
        try:
            await self._run(batch)
        finally:
            self._batch_slots.release()
            self._end_run()

    def _begin_run(self) -> None:
        """A batch or a prefill ahead starts: the worker is busy, and close() waits for it."""
        self._batches_running += 1
        self._idle.clear()

    def _end_run(self) -> None:
        self._batches_running -= 1
        if self._batches_running == 0:
            self._idle.set()
            self._wake.set()

    async def _work_to_do(self) -> None:
        """Wait for a request, or for a prefill ahead while no batch runs."""
        while True:
            self._wake.clear()
            if self._held is not None or not self._queue.empty():
                return
            if self._ahead and self._batches_running == 0:
                return
            await self._wake.wait()

    async def _prefill_ahead(self) -> None:
        """One channel's prefill ahead (the oldest asked), in the generating thread. It is
        kept for later when a request cut it short."""
        cache_key, ahead = next(iter(self._ahead.items()))
        self._request_waiting.clear()
        self._begin_run()
        finished = True
        try:
            computed, finished = await asyncio.to_thread(self._prefill, cache_key, ahead)
            self._ahead_tokens += computed
        except Exception:  # a lost head start, never a lost reply
            log.exception("prefilling ahead for %s failed", cache_key)
        finally:
            self._end_run()
        if finished and self._ahead.get(cache_key) is ahead:
            del self._ahead[cache_key]

    def _prefill(self, cache_key: str, prompt_start: Callable[[], str | None]
                 ) -> tuple[int, bool]:
        """-> (tokens computed, whether it is done); runs in the generating thread."""
        assert self._prefiller is not None  # only asked for when the engine has `prefill`
        text = prompt_start()
        if text is None:
            return 0, True
        computed = self._prefiller.prefill(cache_key, text, self._request_waiting.is_set)
        return computed, not self._request_waiting.is_set()

    async def _next_batch(self) -> list[_Job]:
        """Jobs for one batch: at most `max_batch` requests, unless one job alone has more
        (a job is never split); a job that would not fit waits for the next batch."""
        first, self._held = self._held, None
        jobs = [first or await self._queue.get()]
        rows = len(jobs[0].requests)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BATCH_GATHER_S
        while rows < self._max_batch:
            if self._queue.empty():
                # Polling rather than wait_for(get()): a timed-out get could race a put.
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(BATCH_QUIET_S)
                if self._queue.empty():
                    break
            job = self._queue.get_nowait()
            if rows + len(job.requests) > self._max_batch:
                self._held = job
                break
            jobs.append(job)
            rows += len(job.requests)
        return [job for job in jobs if not job.future.done()]

    async def _run(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        requests = [request for job in batch for request in job.requests]
        agenerate = getattr(self._engine, "agenerate", None)
        try:
            if agenerate is not None:
                results = await agenerate(requests)
            else:
                results = await asyncio.to_thread(self._engine.generate, requests)
        except asyncio.CancelledError:
            self._fail(batch, WorkerClosedError("the bot is shutting down"))
            raise
        except Exception as error:  # one bad request must not stop the worker
            if len(batch) > 1:
                # Find the culprit: alone, each request fails or succeeds on its own merits.
                for job in batch:
                    await self._run([job])
                return
            log.exception("generation failed")
            self._failures += 1
            self._fail(batch, error)
        else:
            self._record(results, time.perf_counter() - started)
            if len(results) != len(requests):  # an engine's bug: nobody may wait forever
                self._fail(batch, RuntimeError(f"the engine returned {len(results)} results "
                                               f"for {len(requests)} requests"))
                return
            start = 0
            for job in batch:
                end = start + len(job.requests)
                if not job.future.done():
                    job.future.set_result(list(results[start:end]))
                start = end

    def _record(self, results: Sequence[GenerationResult], seconds: float) -> None:
        self._requests += len(results)
        self._new_tokens += sum(result.new_tokens for result in results)
        self._seconds += seconds

    @staticmethod
    def _fail(batch: Sequence[_Job], error: BaseException) -> None:
        for job in batch:
            if not job.future.done():
                job.future.set_exception(error)
