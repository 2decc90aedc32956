"""Snowflake IDs and timestamps the way Discord makes them (API notes §9)."""

from __future__ import annotations

import datetime
import itertools
import time

DISCORD_EPOCH_MS = 1_420_070_400_000  # 2015-01-01T00:00:00Z
TIMESTAMP_SHIFT = 22  # bits 63-22 hold milliseconds since the Discord epoch
INCREMENT_MASK = (1 << 12) - 1  # bits 11-0: per-process increment


class SnowflakeFactory:
    """Makes current-time snowflakes that strictly increase, so ids sort in creation order."""

    def __init__(self) -> None:
        self._last = 0
        self._counter = itertools.count()

    def next(self) -> int:
        now_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        candidate = (now_ms << TIMESTAMP_SHIFT) | (next(self._counter) & INCREMENT_MASK)
        self._last = max(candidate, self._last + 1)
        return self._last


def snowflake_time(snowflake: int) -> datetime.datetime:
    """The UTC creation time encoded in a snowflake."""
    ms = (snowflake >> TIMESTAMP_SHIFT) + DISCORD_EPOCH_MS
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)


def iso_timestamp(moment: datetime.datetime | None = None) -> str:
    """An ISO8601 timestamp with offset, as Discord writes them."""
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds")
