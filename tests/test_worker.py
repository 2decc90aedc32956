"""The one door to the model: queue, batching, busy, failures, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import pytest

from pygbot.engine import Engine, GenerationParams, GenerationRequest, GenerationResult
from pygbot.worker import QueueFullError, Worker, WorkerClosedError
from tests.scripted_engine import ScriptedEngine

GREEDY = GenerationParams(max_new_tokens=8, temperature=0.0)


def request(text: str, params: GenerationParams = GREEDY) -> GenerationRequest:
    return GenerationRequest(prompt=f"Aria's Persona: kind.\n<START>\nYou: {text}\nAria:",
                             stop_strings=("\nYou:",), params=params)


async def test_fifty_concurrent_submissions_are_all_answered(tiny_engine: Engine) -> None:
    async with Worker(tiny_engine, queue_max=64, max_batch=8) as worker:
        results = await asyncio.gather(*(worker.submit(request(f"message {i}"))
                                         for i in range(50)))
    assert len(results) == 50
    assert all(0 < result.new_tokens <= 8 for result in results)
    assert worker.stats().requests == 50


async def test_batched_replies_match_replies_generated_alone(tiny_engine: Engine) -> None:
    prompts = [request("hi"), request("a much longer message about the stars and the sea")]
    async with Worker(tiny_engine, max_batch=1) as alone:
        expected = [await alone.submit(p) for p in prompts]
    async with Worker(tiny_engine, max_batch=8) as batched:
        together = await asyncio.gather(*(batched.submit(p) for p in prompts))
    assert [r.text for r in together] == [r.text for r in expected]


async def test_event_loop_keeps_ticking_during_generation(tiny_engine: Engine) -> None:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    long_reply = GenerationParams(max_new_tokens=200, temperature=0.0)
    async with Worker(tiny_engine) as worker:
        beating = asyncio.create_task(heartbeat())
        await asyncio.sleep(0)
        before = ticks
        await worker.submit(request("tell me a long story", long_reply))
        during = ticks - before
        beating.cancel()
    assert during >= 3  # a blocked loop would not have ticked at all while generating


async def test_a_full_queue_answers_busy(tiny_engine: Engine) -> None:
    async with Worker(tiny_engine, queue_max=2, max_batch=1) as worker:
        submissions = [asyncio.ensure_future(worker.submit(request(str(i)))) for i in range(4)]
        outcomes = await asyncio.gather(*submissions, return_exceptions=True)
    busy = [o for o in outcomes if isinstance(o, QueueFullError)]
    assert len(busy) == 2
    assert "already waiting" in str(busy[0])
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 2


async def test_an_engine_error_fails_only_that_request(tiny_engine: Engine) -> None:
    broken = GenerationParams(max_new_tokens=8, temperature=0.7, top_p=-1.0)  # rejected by HF
    async with Worker(tiny_engine, max_batch=8) as worker:
        outcomes = await asyncio.gather(
            worker.submit(request("fine one")), worker.submit(request("broken", broken)),
            worker.submit(request("fine two")), return_exceptions=True)
        after = await worker.submit(request("still serving"))
    assert isinstance(outcomes[1], Exception)
    assert not isinstance(outcomes[0], BaseException)
    assert not isinstance(outcomes[2], BaseException)
    assert after.new_tokens > 0
    assert worker.stats().failures == 1


async def test_a_cancelled_request_is_never_generated(tiny_engine: Engine) -> None:
    release = threading.Event()
    engine = ScriptedEngine([" one", " two", " three"], tiny_engine.count_tokens, release)
    async with Worker(engine, max_batch=1) as worker:
        first = asyncio.ensure_future(worker.submit(request("first")))
        withdrawn = asyncio.ensure_future(worker.submit(request("withdrawn")))
        third = asyncio.ensure_future(worker.submit(request("third")))
        await asyncio.sleep(0.05)
        withdrawn.cancel()
        release.set()
        assert (await first).text == " one"
        assert (await third).text == " two"
    assert [r.prompt.split("You: ")[1].split("\n")[0] for r in engine.requests] == \
        ["first", "third"]


async def test_shutdown_finishes_the_batch_in_progress_and_refuses_the_rest(
    tiny_engine: Engine,
) -> None:
    release = threading.Event()
    engine = ScriptedEngine([" finished"], tiny_engine.count_tokens, release)
    worker = Worker(engine, max_batch=1)
    worker.start()
    in_progress = asyncio.ensure_future(worker.submit(request("first")))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(worker.submit(request("second")))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(worker.close())
    await asyncio.sleep(0.05)
    release.set()
    await closing
    assert (await in_progress).text == " finished"
    with pytest.raises(WorkerClosedError):
        await queued
    with pytest.raises(WorkerClosedError):
        await worker.submit(request("too late"))


class HeldEngine:
    """An engine that waits on the network (like RemoteEngine): its requests wait until the
    test lets them go, and it counts how many wait at once."""

    def __init__(self) -> None:
        self.waiting = 0
        self.most = 0
        self.release = asyncio.Event()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        raise AssertionError("an engine with agenerate is awaited, not run in a thread")

    async def agenerate(self, requests: Sequence[GenerationRequest]
                        ) -> list[GenerationResult]:
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        await self.release.wait()
        self.waiting -= 1
        return [GenerationResult(f"re: {r.prompt}", 1, 0.0) for r in requests]


async def test_concurrent_batches_are_in_flight_side_by_side() -> None:
    engine = HeldEngine()
    async with Worker(engine, max_batch=1, concurrent_batches=3) as worker:
        replies = [asyncio.create_task(worker.submit(GenerationRequest(f"p{i}")))
                   for i in range(4)]
        while engine.waiting < 3:
            await asyncio.sleep(0.01)
        assert worker.depth == 4 and engine.most == 3  # the fourth waits for a slot
        engine.release.set()
        results = await asyncio.gather(*replies)
    assert [r.text for r in results] == [f"re: p{i}" for i in range(4)]
    assert engine.most == 3


async def test_a_burst_arriving_milliseconds_apart_is_one_batch(tiny_engine: Engine) -> None:
    engine = ScriptedEngine([], tiny_engine.count_tokens)
    async with Worker(engine, max_batch=8) as worker:
        submissions = []
        for i in range(4):
            submissions.append(asyncio.ensure_future(worker.submit(request(f"burst {i}"))))
            await asyncio.sleep(0.002)  # each channel reads its history before it submits
        await asyncio.gather(*submissions)
    assert engine.batches == [4]


async def test_requests_submitted_together_are_one_batch_never_split(
    count_tokens: Callable[[str], int],
) -> None:
    engine = ScriptedEngine([" a", " b", " c", " d", " e"], count_tokens)
    async with Worker(engine, max_batch=2) as worker:
        alone, together, later = await asyncio.gather(
            worker.submit(request("one")),
            worker.submit_together([request("swipe")] * 3),  # more than max_batch
            worker.submit(request("two")))
    # The job of 3 did not fit beside the first request: it waited and went whole.
    assert engine.batches == [1, 3, 1]
    assert alone.text == " a" and later.text == " e"
    assert [result.text for result in together] == [" b", " c", " d"]


async def test_shutdown_refuses_a_job_held_back_for_the_next_batch(
    count_tokens: Callable[[str], int],
) -> None:
    release = threading.Event()
    engine = ScriptedEngine([" finished"], count_tokens, release)
    worker = Worker(engine, max_batch=2)
    worker.start()
    first = asyncio.ensure_future(worker.submit(request("first")))
    held = asyncio.ensure_future(worker.submit_together([request("swipe")] * 2))
    await asyncio.sleep(0.2)  # the worker took both; the pair waits for the next batch
    closing = asyncio.ensure_future(worker.close())
    await asyncio.sleep(0.05)
    release.set()
    await closing
    assert (await first).text == " finished" and engine.batches == [1]
    with pytest.raises(WorkerClosedError):
        await held
