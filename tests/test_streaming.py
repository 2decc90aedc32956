"""ThrottledShow: the newest text, at most once per interval, one call at a time."""

from __future__ import annotations

import asyncio
import itertools

from pygbot.streaming import ThrottledShow

INTERVAL_S = 0.05


class Screen:
    """A slow `show` that records what it showed and when each call started."""

    def __init__(self, seconds: float = 0.0, fail_on: str | None = None) -> None:
        self.shown: list[str] = []
        self.started: list[float] = []
        self.running = 0
        self.most_running = 0
        self._seconds = seconds
        self._fail_on = fail_on

    async def show(self, text: str) -> None:
        self.started.append(asyncio.get_running_loop().time())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self._seconds)
            if text == self._fail_on:
                raise RuntimeError("the server said no")
            self.shown.append(text)
        finally:
            self.running -= 1


async def test_the_first_text_shows_at_once_and_later_ones_wait_for_the_interval() -> None:
    screen = Screen()
    throttle = ThrottledShow(screen.show, INTERVAL_S)
    for word in ("One.", "One. Two.", "One. Two. Three."):
        throttle.push(word)
        await asyncio.sleep(0)
    await asyncio.sleep(INTERVAL_S * 3)
    await throttle.close()
    assert screen.shown == ["One.", "One. Two. Three."]  # the middle one was replaced
    assert screen.started[1] - screen.started[0] >= INTERVAL_S


async def test_calls_never_overlap_and_each_starts_an_interval_after_the_last() -> None:
    screen = Screen(seconds=INTERVAL_S / 2)
    throttle = ThrottledShow(screen.show, INTERVAL_S)
    for count in range(1, 30):
        throttle.push("word " * count)
        await asyncio.sleep(INTERVAL_S / 5)
    await throttle.close()
    assert screen.most_running == 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(screen.started)]
    assert len(screen.shown) >= 3 and min(gaps) >= INTERVAL_S


async def test_close_waits_for_the_call_in_progress_and_drops_what_waits() -> None:
    screen = Screen(seconds=INTERVAL_S)
    throttle = ThrottledShow(screen.show, 10.0)
    throttle.push("being posted")
    await asyncio.sleep(0)
    throttle.push("would wait ten seconds")
    await throttle.close()
    assert screen.shown == ["being posted"]
    throttle.push("after the end")
    await asyncio.sleep(INTERVAL_S)
    assert screen.shown == ["being posted"]


async def test_a_failed_call_does_not_stop_the_next() -> None:
    screen = Screen(fail_on="first")
    throttle = ThrottledShow(screen.show, 0.0)
    throttle.push("first")
    await asyncio.sleep(0.01)
    throttle.push("second")
    await asyncio.sleep(0.01)
    await throttle.close()
    assert screen.shown == ["second"]
