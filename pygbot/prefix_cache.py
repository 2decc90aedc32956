"""Per-conversation KV prefix cache: the keys and values a channel's last prompt left behind.

In a chat, turn N's prompt is turn N-1's prompt plus the reply and the new message (the
prompt module keeps it so, see `HISTORY_CHUNK_SHARE`). Keeping each conversation's token ids
and KV states after its reply lets the next turn reuse the longest common token prefix and
compute only the rest. Entries are kept least-recently-used first out, under a byte cap.

A conversation may also hold a second entry, filled ahead of time (`store_ahead`, see
`pygbot.lookahead`): the prompt its next turn will start with once a chunk of history drops.
A lookup takes whichever of the two shares the longer prefix with the new prompt.

Tensors are only stored and sliced here, never computed: the engine fills and reads them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)
BYTES_PER_MB = 1024 * 1024

# Per model layer: keys and values, each (1, heads, tokens, head_dim).
LayerStates = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class CachedPrefix:
    length: int  # tokens of the new prompt whose states are in `layers`
    layers: Sequence[LayerStates]  # may hold more tokens than `length`; use [..., :length, :]


# A conversation's entry filled ahead of time lives beside its own one under this suffix.
_AHEAD = "\x00ahead"
# An ahead entry ends where the next message's line begins; inside the whole prompt its last
# token or two may merge with that line's first ones, and it has still served its turn.
AHEAD_EDGE_TOKENS = 2


@dataclass
class _Entry:
    token_ids: list[int]
    layers: Sequence[LayerStates]
    nbytes: int


@dataclass(frozen=True)
class PrefixCacheStats:
    entries: int
    nbytes: int
    lookups: int
    hits: int
    reused_tokens: int


class PrefixCache:
    """Conversations' token ids and KV states, least recently used evicted past `capacity_mb`.

    Not thread-safe: the engine uses it from the one thread that generates.
    """

    def __init__(self, capacity_mb: int) -> None:
        self.capacity_bytes = max(0, capacity_mb) * BYTES_PER_MB
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._nbytes = 0
        self._lookups = self._hits = self._reused = 0

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def lookup(self, key: str, token_ids: Sequence[int], *,
               whole: bool = False) -> CachedPrefix | None:
        """The cached states of the longest common prefix of `token_ids` and what `key`
        holds (its last turn's or its ahead entry, whichever shares more); at least the last
        token is left to compute (its logits start the reply), unless `whole`."""
        self._lookups += 1
        limit = len(token_ids) if whole else len(token_ids) - 1
        best: tuple[int, _Entry] | None = None
        for name in (key, key + _AHEAD):
            entry = self._entries.get(name)
            if entry is None:
                continue
            self._entries.move_to_end(name)
            length = min(common_prefix_length(entry.token_ids, token_ids), limit)
            if length > 0 and (best is None or length > best[0]):
                best = (length, entry)
        if best is None:
            return None
        self._hits += 1
        self._reused += best[0]
        return CachedPrefix(best[0], best[1].layers)

    def store(self, key: str, token_ids: Sequence[int], layers: Sequence[LayerStates]) -> None:
        """Remember `layers` (the states of exactly `token_ids`) as `key`'s, replacing what
        it held; evict the least recently used until the cache fits its cap. An ahead entry
        that these tokens now begin with has served its turn and goes."""
        ahead = self._entries.get(key + _AHEAD)
        if ahead is not None and common_prefix_length(
                ahead.token_ids, token_ids) >= len(ahead.token_ids) - AHEAD_EDGE_TOKENS:
            self._remove(key + _AHEAD)
        self._put(key, token_ids, layers)

    def store_ahead(self, key: str, token_ids: Sequence[int],
                    layers: Sequence[LayerStates]) -> None:
        """Remember states computed ahead of `key`'s next turn, beside its own entry."""
        self._put(key + _AHEAD, token_ids, layers)

    def _put(self, name: str, token_ids: Sequence[int], layers: Sequence[LayerStates]) -> None:
        self._remove(name)
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        if not token_ids or nbytes > self.capacity_bytes:
            return
        self._entries[name] = _Entry(list(token_ids), layers, nbytes)
        self._nbytes += nbytes
        while self._nbytes > self.capacity_bytes:
            evicted, entry = self._entries.popitem(last=False)
            self._nbytes -= entry.nbytes
            log.debug("prefix cache: evicted %s (%d tokens)", evicted.replace(_AHEAD, " (ahead)"),
                      len(entry.token_ids))

    def copy(self) -> PrefixCache:
        """A cache with the same cap and entries, sharing their tensors (nothing writes into
        a stored entry's tensors: a store replaces the entry). The original is unchanged by
        what the copy stores or evicts later."""
        twin = PrefixCache(0)
        twin.capacity_bytes = self.capacity_bytes
        twin._entries = OrderedDict(self._entries)
        twin._nbytes = self._nbytes
        return twin

    def discard(self, key: str) -> None:
        """Forget `key`'s entries, its own and the one filled ahead."""
        self._remove(key)
        self._remove(key + _AHEAD)

    def _remove(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._nbytes -= entry.nbytes

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(len(self._entries), self._nbytes, self._lookups, self._hits,
                                self._reused)


def common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    for index, (a, b) in enumerate(zip(first, second, strict=False)):
        if a != b:
            return index
    return min(len(first), len(second))
