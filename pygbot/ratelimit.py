"""Per-member rate limit: a token bucket, so a burst is fine and a flood is slowed down.

Each member has `burst` tokens that refill at `per_minute`; a message takes one. A member who
runs dry is told once (the first refused message of a streak says so); the rest of the
streak is refused quietly, so the notice itself cannot become a flood.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

SECONDS_PER_MINUTE = 60.0
# Buckets that have been full this long are forgotten, so memory stays bounded by activity.
FORGET_FULL_BUCKETS_AFTER_S = 600.0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    notify: bool = False  # the first refusal of a streak: tell the member once
    retry_after_s: float = 0.0  # when the next message would be allowed


@dataclass
class _Bucket:
    tokens: float
    updated: float
    notified: bool = False


class MemberRateLimiter:
    def __init__(self, burst: int, per_minute: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = float(burst)
        self._rate = per_minute / SECONDS_PER_MINUTE  # tokens per second
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}

    def check(self, member_id: int) -> Verdict:
        """Take a token for one message of `member_id`, or say why not."""
        now = self._clock()
        self._forget_idle(now)
        bucket = self._buckets.setdefault(member_id, _Bucket(self._burst, now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.notified = False
            return Verdict(allowed=True)
        notify = not bucket.notified
        bucket.notified = True
        wait = math.ceil((1.0 - bucket.tokens) / self._rate)
        return Verdict(allowed=False, notify=notify, retry_after_s=wait)

    def _forget_idle(self, now: float) -> None:
        idle = [member for member, bucket in self._buckets.items()
                if now - bucket.updated > FORGET_FULL_BUCKETS_AFTER_S
                and bucket.tokens + (now - bucket.updated) * self._rate >= self._burst]
        for member in idle:
            del self._buckets[member]
