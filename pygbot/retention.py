"""How long memory is kept: old turns are pruned now and then, and the space is given back.

Each channel keeps its newest HISTORY_MAX_TURNS turns and, with HISTORY_MAX_DAYS, nothing
older than that many days. The intake's settled records (copies of answered messages) are
pruned by the same task on the intake's own schedule. Pruning runs at start-up and then
every `PRUNE_INTERVAL_S`; deleted rows are overwritten and their pages returned to the file
system (see `Store.reclaim_space`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from pygbot.config import Settings
from pygbot.store import Store, StoreError

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 3600.0
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class RetentionPolicy:
    max_turns_per_channel: int
    max_age_days: int  # 0 = no age limit
    intake_keep_s: float  # settled intake records older than this are deleted

    @classmethod
    def from_settings(cls, settings: Settings, intake_keep_s: float) -> RetentionPolicy:
        return cls(settings.history_max_turns, settings.history_max_days, intake_keep_s)

    def turn_cutoff(self, now: float) -> float | None:
        """Turns stored before this (unix seconds) are too old; None without an age limit."""
        return now - self.max_age_days * SECONDS_PER_DAY if self.max_age_days else None


class Retention:
    """Runs the policy in the background while open (`async with`)."""

    def __init__(self, store: Store, policy: RetentionPolicy, *,
                 interval_s: float = PRUNE_INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._policy = policy
        self._interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def prune_once(self) -> int:
        """Apply the policy now; the number of turns deleted."""
        now = self._clock()
        policy = self._policy
        turns = await self._store.prune_turns(policy.max_turns_per_channel,
                                              policy.turn_cutoff(now))
        records = await self._store.prune_intake(now - policy.intake_keep_s)
        if turns or records:
            await self._store.reclaim_space()
            log.info("retention: deleted %d old turns and %d settled intake records",
                     turns, records)
        return turns

    async def __aenter__(self) -> Retention:
        self._task = asyncio.create_task(self._run(), name="retention")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.prune_once()
            except (StoreError, sqlite3.Error) as error:  # tried again next time
                log.warning("retention: could not prune old memory: %s", error)
            await asyncio.sleep(self._interval_s)
