"""The generation loop: prefill each row's uncached suffix, then decode all rows together.

`model.generate` prefills a left-padded batch as one block, so it can neither start a row from
KV states kept from that conversation's last turn nor avoid computing the pads of short
prompts beside a long one. This loop (after gpt-fast's `prefill` / `decode_one_token`):

1. `prefill`: for each row alone, copy its cached prefix into the batch's KV buffer and run
   the model on the rest of its prompt only (no pads: a row costs its own uncached tokens);
2. `decode`: one step for all rows at a time, as `generate` does (same logits processors,
   stopping criteria and pad handling), so a batch still shares every step's weight reads;
3. a row that finishes leaves the batch at once (`_Slots`), so the rows still generating
   no longer pay for it, as `generate` makes them do until the longest row is done.

The KV buffer is allocated once per batch at its final size (prompt width + max new tokens)
and written in place; a `DynamicCache` would copy the whole cache at every step.

`Compiled` (TORCH_COMPILE, for GPUs) runs the decode steps through `torch.compile` over a
static cache: every step attends over the buffer's whole width, the columns not yet written
masked out, so a step's shapes stay the same from step to step and the compiled graph is
reused rather than traced again for every new length. Prefill stays eager (its lengths vary).
Shapes: B rows, W padded prompt width, H heads, D head size, V vocabulary, C buffer columns.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Cache, LogitsProcessorList, PreTrainedModel, StoppingCriteria
from transformers.cache_utils import DynamicLayer

from pygbot.prefix_cache import CachedPrefix, LayerStates


class KVBuffer:
    """One model layer's keys and values for the whole batch: (B, H, capacity, D) each,
    allocated on the first write (which tells heads, head size, dtype and device)."""

    def __init__(self, batch: int, capacity: int) -> None:
        self.batch = batch
        self.capacity = capacity
        self.keys = torch.empty(0)
        self.values = torch.empty(0)

    def write(self, rows: slice, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put states (rows, H, n, D) at columns start..start+n of `rows`."""
        if self.keys.numel() == 0:
            shape = (self.batch, keys.shape[1], self.capacity, keys.shape[3])
            # Zeros, not empty memory: attention weighs a masked column by 0, and 0 * NaN
            # left over in a pad's column would still be NaN.
            self.keys = keys.new_zeros(shape)
            self.values = values.new_zeros(shape)
        end = start + keys.shape[2]
        self.keys[rows, :, start:end] = keys
        self.values[rows, :, start:end] = values


class SlotLayer(DynamicLayer):
    """A cache layer that is a window of a `KVBuffer`: `rows`, columns `start` onwards, of
    which the first `length` are filled. `update` writes after them, never reallocating.
    `static`: attention sees every column to the buffer's end (a mask hides the unwritten
    ones), so the shapes do not change as the window fills."""

    def __init__(self, buffer: KVBuffer, rows: slice, start: int, length: int = 0,
                 static: bool = False) -> None:
        super().__init__()
        self.buffer = buffer
        self.rows = rows
        self.start = start
        self.length = length
        self.static = static
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffer allocates itself on its first write."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.buffer.write(self.rows, self.start + self.length, key_states, value_states)
        self.length += key_states.shape[2]
        end = self.buffer.capacity if self.static else self.start + self.length
        self.keys = self.buffer.keys[self.rows, :, self.start:end]
        self.values = self.buffer.values[self.rows, :, self.start:end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


@dataclass(frozen=True)
class Row:
    """One prompt of the batch: its tokens (no pads) and the cached states of a prefix."""

    token_ids: torch.Tensor  # (L,)
    cached: CachedPrefix | None = None

    @property
    def reused(self) -> int:
        return self.cached.length if self.cached else 0


@dataclass(frozen=True)
class Sampler:
    processors: LogitsProcessorList  # penalties, then (when sampling) the warpers
    do_sample: bool
    pad_token_id: int


class Compiled:
    """The model's decode step compiled with `torch.compile`, over a static cache (see the
    module's docstring). One per model: the compiled graphs are kept between batches."""

    def __init__(self, model: PreTrainedModel, backend: str = "inductor") -> None:
        # dynamic: the batch size and buffer width change between batches (and a batch
        # shrinks as rows finish); sizes stay symbolic instead of one graph per size.
        self.step = torch.compile(model, backend=backend, dynamic=True)


@dataclass(frozen=True)
class Decoded:
    sequences: torch.Tensor  # (B, W + steps): the padded prompts and every step's tokens
    # Per row, when asked for: the states of its prompt and of the reply tokens fed back
    # (all but the last one picked), and how many reply tokens that is.
    states: Sequence[list[LayerStates] | None]
    fed: Sequence[int]
    first_token_at: float  # time.perf_counter() when every row had its first new token


class _Slots:
    """Which rows are still generating, packed at the front of the KV buffers.

    A row that finishes leaves the batch: the last live row's states move into its slot
    (one row's copy), so the model runs on `buffers[:live]`, a view, and stops paying for
    rows that are done (on a CPU a decode step costs about the same per row).
    """

    def __init__(self, buffers: Sequence[KVBuffer], batch: int) -> None:
        self.buffers = buffers
        self.rows = list(range(batch))  # slot -> row, live slots first

    def retire(self, row: int, filled: int) -> None:
        slot, last = self.rows.index(row), len(self.rows) - 1
        if slot != last:
            for buffer in self.buffers:
                buffer.keys[slot, :, :filled] = buffer.keys[last, :, :filled]
                buffer.values[slot, :, :filled] = buffer.values[last, :, :filled]
            self.rows[slot] = self.rows[last]
        self.rows.pop()

    def cache(self, filled: int, static: bool = False) -> Cache:
        live = slice(0, len(self.rows))
        return Cache(layers=[SlotLayer(buffer, live, 0, filled, static)
                             for buffer in self.buffers])

    def states(self, row: int, start: int, end: int) -> list[LayerStates]:
        """Copies of `row`'s states in columns start..end, detached from the buffers."""
        slot = self.rows.index(row)
        return [(buffer.keys[slot:slot + 1, :, start:end].clone(),
                 buffer.values[slot:slot + 1, :, start:end].clone())
                for buffer in self.buffers]


def generate(model: PreTrainedModel, rows: Sequence[Row], input_ids: torch.Tensor,
             sampler: Sampler, stops: StoppingCriteria, *, max_new_tokens: int,
             keep_states: Sequence[bool], compiled: Compiled | None = None) -> Decoded:
    """input_ids: (B, W), each row's tokens left-padded to W. Greedy output is the same as
    `model.generate` on the same batch (up to the rounding of a different operation order).
    Rows with `keep_states` come back with their states (for the prefix cache). With
    `compiled`, decode steps run its compiled model over a static cache."""
    batch, width = input_ids.shape
    device = model.device
    buffers = [KVBuffer(batch, width + max_new_tokens)
               for _ in range(model.config.num_hidden_layers)]
    logits = torch.stack([prefill(model, row, buffers, index, width)
                          for index, row in enumerate(rows)])  # (B, V)
    lengths = torch.tensor([len(row.token_ids) for row in rows], device=device)  # (B,)
    columns = torch.arange(width + max_new_tokens, device=device)  # (W + max_new,)
    mask = columns[None, :] >= (width - lengths)[:, None]  # (B, W + max_new): False on pads
    slots = _Slots(buffers, batch)
    states: list[list[LayerStates] | None] = [None] * batch
    fed = [0] * batch
    sequences = input_ids.to(device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)  # (B,)
    first_token_at = time.perf_counter()
    for step in range(max_new_tokens):
        tokens = next_tokens(sampler, sequences, logits, unfinished)  # (B,)
        if step == 0:
            first_token_at = time.perf_counter()
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        was_unfinished = unfinished.clone()
        unfinished &= ~stops(sequences, None).to(device)
        last_step = step == max_new_tokens - 1 or not unfinished.any()
        leaving = (was_unfinished & ~unfinished) | (was_unfinished & last_step)
        filled = width + step  # columns holding states: the prompt and g_0 .. g_(step-1)
        for row in leaving.nonzero().flatten().tolist():
            fed[row] = step
            if keep_states[row]:
                states[row] = slots.states(row, width - int(lengths[row]), filled)
            if not last_step:
                slots.retire(row, filled)
        if last_step:
            break
        live = torch.tensor(slots.rows, device=device)  # (live,)
        if compiled is None:
            live_logits = decode_one_token(model, slots.cache(filled), tokens[live],
                                           (lengths + step)[live], mask[live, :filled + 1])
        else:
            # (live, 1, 1, C): the row's own columns, up to and including this step's.
            seen = (mask[live] & (columns <= filled))[:, None, None, :]
            live_logits = decode_one_token(compiled.step, slots.cache(filled, static=True),
                                           tokens[live], (lengths + step)[live], seen,
                                           cache_name=cache_argument(model))
        logits = torch.zeros_like(logits).index_copy_(0, live, live_logits)
    return Decoded(sequences, states, fed, first_token_at)


def prefill(model: PreTrainedModel, row: Row, buffers: Sequence[KVBuffer], index: int,
            width: int) -> torch.Tensor:
    """Fill row `index`'s cache from its cached prefix plus its uncached tokens; -> (V,)
    float32 logits for the token after its prompt."""
    layers = [SlotLayer(buffer, slice(index, index + 1), width - len(row.token_ids))
              for buffer in buffers]
    cache = _cache_from(layers, row.cached)
    return _extend(model, cache, row.token_ids, row.reused, len(row.token_ids))[0, -1].float()


def prefill_ahead(model: PreTrainedModel, token_ids: torch.Tensor, cached: CachedPrefix | None,
                  *, slice_tokens: int, should_stop: Callable[[], bool]
                  ) -> tuple[list[LayerStates], int]:
    """The states of `token_ids` (L,), a prompt's start, for the prefix cache: the cached
    prefix copied, the rest computed `slice_tokens` at a time. Between slices
    `should_stop()` may end it early. -> (states of the first n tokens, n)."""
    length = len(token_ids)
    buffers = [KVBuffer(1, length) for _ in range(model.config.num_hidden_layers)]
    cache = _cache_from([SlotLayer(buffer, slice(0, 1), 0) for buffer in buffers], cached)
    done = computed_from = cached.length if cached is not None else 0
    while done < length and not (done > computed_from and should_stop()):
        end = min(length, done + slice_tokens)
        _extend(model, cache, token_ids, done, end)
        done = end
    if done == length:
        return [(buffer.keys, buffer.values) for buffer in buffers], done
    # Copies: a view would keep the whole buffer alive while the cache counts a part of it.
    return [(buffer.keys[:, :, :done].clone(), buffer.values[:, :, :done].clone())
            for buffer in buffers], done


def _cache_from(layers: Sequence[SlotLayer], cached: CachedPrefix | None) -> Cache:
    """A cache over `layers`, holding the `cached` prefix's states (if any) to start with."""
    if cached is not None:
        for layer, (keys, values) in zip(layers, cached.layers, strict=True):
            layer.update(keys[:, :, :cached.length], values[:, :, :cached.length])
    return Cache(layers=list(layers))


def _extend(model: PreTrainedModel, cache: Cache, token_ids: torch.Tensor, start: int,
            end: int) -> torch.Tensor:
    """Run the model on token_ids[start:end] after `cache`, which holds the first `start`
    tokens' states and takes these; -> (1, 1, V) logits of the last of them."""
    device = model.device
    output = model(input_ids=token_ids[start:end].to(device)[None, :],
                   position_ids=torch.arange(start, end, device=device)[None, :],
                   attention_mask=torch.ones(1, end, dtype=torch.long, device=device),
                   **{cache_argument(model): cache}, use_cache=True, logits_to_keep=1)
    return output.logits


def decode_one_token(model: Any, cache: Cache, tokens: torch.Tensor,
                     positions: torch.Tensor, mask: torch.Tensor, *,
                     cache_name: str | None = None) -> torch.Tensor:
    """tokens, positions: (B,); mask: (B, columns so far + 1), or a ready (B, 1, 1, C) bool
    mask (static cache) -> (B, V) float32 logits. `model` may be a compiled model (then
    `cache_name` is its forward's cache argument)."""
    attention_mask = mask if mask.dim() == 4 else mask.long()
    output = model(input_ids=tokens[:, None], position_ids=positions[:, None],
                   attention_mask=attention_mask, **{cache_name or cache_argument(model): cache},
                   use_cache=True, logits_to_keep=1)
    return output.logits[:, -1].float()


@functools.cache
def _forward_parameters(forward: Any) -> frozenset[str]:
    return frozenset(inspect.signature(forward).parameters)


def cache_argument(model: PreTrainedModel) -> str:
    """transformers 5 renames `past_key_values` to `cache` (the old name warns until 5.40)."""
    return "cache" if "cache" in _forward_parameters(type(model).forward) else "past_key_values"


def next_tokens(sampler: Sampler, sequences: torch.Tensor, logits: torch.Tensor,
                unfinished: torch.Tensor) -> torch.Tensor:
    """(B,) the next token per row (pad for rows already finished), as `generate` picks it."""
    scores = sampler.processors(sequences, logits)  # type: ignore[arg-type]  # ids are long
    if sampler.do_sample:
        chosen = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
    else:
        chosen = scores.argmax(dim=-1)
    return torch.where(unfinished, chosen, sampler.pad_token_id)
