"""The model: load a causal LM, count its tokens, generate replies for a batch of prompts.

This is the only module that imports torch and transformers. Everything here is synchronous;
the worker calls `Engine.generate` from a thread so the event loop never waits on the model.

A batch runs `pygbot.decode`'s loop over left-padded prompts: each row's prompt is prefilled
alone, from the KV states its conversation left in the prefix cache (`pygbot.prefix_cache`,
keyed by `GenerationRequest.cache_key`), then all rows decode together. Some pieces are ours
rather than Hugging Face's, because the built-in versions act on the whole batch or prompt:
- `StopOnStrings` stops each row at its own stop strings (the next speaker's turn);
- the penalties of `pygbot.sampling` (DRY and the windowed repetition penalty) look only at
  each row's recent conversation and never punish its turn structure.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
)

from pygbot import decode
from pygbot.config import DEVICES, DTYPES
from pygbot.prefix_cache import PrefixCache
from pygbot.sampling import (
    DryConfig,
    SamplingSetup,
    breaker_token_ids,
    build_logits_processors,
    build_warpers,
    token_mask,
)

log = logging.getLogger(__name__)
DEFAULT_CONTEXT_TOKENS = 2048  # used when a model's config does not say (Pygmalion 1.3B's size)
STRUCTURE_MASKS_KEPT = 64  # breaker sets remembered (one per character and set of names)
# A prefill ahead of time (`Engine.prefill`) checks between slices of this many tokens whether
# a member's request is waiting, which then waits for one slice at most.
AHEAD_SLICE_TOKENS = 128
STOP_TAIL_SLACK_TOKENS = 8  # decoded beyond the longest stop string, for merges at its edges
MAX_REASON_CHARS = 200  # an error's reason is cut here so the startup message stays one line
# PREFIX_CACHE_MB left empty: on CPU this much (about five full 2048-token conversations of
# a 1.3B model in bf16, at 192 KiB per token), or an eighth of the RAM if that is less; on a
# GPU a quarter of the memory still free once the model is loaded, up to GPU_PREFIX_CACHE_MAX_MB.
CPU_PREFIX_CACHE_MB = 2048
GPU_PREFIX_CACHE_SHARE = 0.25
GPU_PREFIX_CACHE_MAX_MB = 8192
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
FIX_MODEL_HINT = (
    "set MODEL to a local folder that holds config.json and the weights (e.g. one made with "
    "`python bot.py --download-model --to models/pygmalion-1.3b`, or "
    "`hf download PygmalionAI/pygmalion-1.3b --local-dir models/pygmalion-1.3b`)"
)


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 160
    temperature: float = 0.7  # <= 0 means greedy
    top_p: float = 0.9
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.1  # 1.0 = off
    min_p: float = 0.0  # keep tokens with >= this share of the top token's probability; 0 = off
    # DRY ("Don't Repeat Yourself", the sequence penalty of llama.cpp / KoboldCpp / Aphrodite):
    # a token that would extend a repeat of an earlier sequence longer than dry_allowed_length
    # is penalised by dry_multiplier * dry_base ** (length - dry_allowed_length). 0 = off.
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    # Generation of THIS row stops once its new text contains one of these (e.g. "\nYou:").
    stop_strings: tuple[str, ...] = ()
    params: GenerationParams = GenerationParams()
    # Character offset into `prompt`: the repetition penalty counts only prompt tokens from here
    # on plus the tokens generated so far, so persona and example dialogue are never penalised.
    penalty_from: int = 0
    # Strings that break a DRY sequence match (line breaks, ":", quotes, the speakers' names), so
    # the turn structure of the conversation is never punished as repetition.
    dry_sequence_breakers: tuple[str, ...] = ()
    # The conversation this prompt continues (e.g. the channel): an engine may keep its KV cache
    # and reuse the longest common token prefix on the next request with the same key.
    cache_key: str | None = None
    # Streaming: called from the generating thread with the reply's text so far (decoded new
    # tokens, not yet cut at the next speaker) as it grows. Never called after generate returns.
    on_text: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class GenerationResult:
    text: str  # decoded new tokens only, special tokens skipped, NOT cut at the stop string
    new_tokens: int
    seconds: float  # wall time of the generate call this result came from
    prompt_tokens: int = 0  # tokens in the prompt
    reused_tokens: int = 0  # of those, taken from the prefix cache rather than computed
    first_token_seconds: float = 0.0  # from the call until the batch's first tokens were picked


class EngineLoadError(Exception):
    """The model could not be loaded; the message is one line that says how to fix it."""


# --- choosing where and how to run ---------------------------------------------------------------

def resolve_device(device: str) -> str:
    """"auto" picks CUDA when torch sees a GPU; asking for CUDA without one is an error."""
    if device not in DEVICES:
        raise EngineLoadError(f"unknown DEVICE {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineLoadError(
            f"DEVICE is cuda but torch {torch.__version__} sees no CUDA GPU; set DEVICE=cpu "
            "(or auto), or install a CUDA build of torch")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """"auto" is float16 on a GPU, bfloat16 on CPUs with native bf16 math, else float32."""
    if dtype not in DTYPES:
        raise EngineLoadError(f"unknown DTYPE {dtype!r}; use one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device == "cuda":
        return "float16"
    return "bfloat16" if _cpu_has_native_bf16() else "float32"


def resolve_prefix_cache_mb(setting: int | None, device: str) -> int:
    """PREFIX_CACHE_MB as given, or the device's default when it was left empty."""
    if setting is not None:
        return setting
    if device == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info()
        return min(GPU_PREFIX_CACHE_MAX_MB, int(free_bytes * GPU_PREFIX_CACHE_SHARE) >> 20)
    return min(CPU_PREFIX_CACHE_MB, _ram_mb() // 8)


def _ram_mb() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    except (AttributeError, ValueError, OSError):  # not a POSIX system: assume enough
        return CPU_PREFIX_CACHE_MB * 8


def configure_cpu_threads(setting: int, cpu_limit_file: Path = CGROUP_CPU_MAX) -> int:
    """Have torch use `setting` threads for CPU math, or with 0 the CPUs this process may run
    on: its affinity mask, capped by a cgroup CPU quota. torch alone counts the host's cores, so
    a container limited to 2 CPUs on a 64-core host would start 64 threads fighting over 2.
    Returns the count."""
    threads = setting or usable_cpus(cpu_limit_file)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def usable_cpus(cpu_limit_file: Path = CGROUP_CPU_MAX) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cpu_limit_file)
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def cgroup_cpu_limit(cpu_limit_file: Path = CGROUP_CPU_MAX) -> float | None:
    """CPUs' worth of time the cgroup (v2) may use, e.g. 2.0 for `docker --cpus=2`; None when
    unlimited or unknown."""
    try:
        quota, period = cpu_limit_file.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _cpu_has_native_bf16() -> bool:
    # Without AVX512-BF16 or AMX, bf16 matmuls are emulated and slower than float32. The probes
    # are private torch helpers, so a torch without them counts as "no".
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


# --- loading -------------------------------------------------------------------------------------

def _load_error(model: str, error: BaseException) -> EngineLoadError:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = (lines[0] if lines else type(error).__name__)[:MAX_REASON_CHARS].rstrip(" .:;")
    if not isinstance(error, LocalFolderError) and not Path(model).expanduser().exists():
        reason = f"no such local folder, and from the Hugging Face hub: {reason}"
    return EngineLoadError(f"could not load model {model!r} ({reason}); {FIX_MODEL_HINT}")


class LocalFolderError(ValueError):
    """MODEL names a local path that cannot hold a model."""


def _check_local_folder(model: str) -> None:
    """Fail early, with a plain reason, where transformers would blame a hub id or tokenizer."""
    path = Path(model).expanduser()
    if not model.strip():
        raise LocalFolderError("MODEL is empty")
    if path.is_dir() and not (path / "config.json").is_file():
        raise LocalFolderError("the folder holds no config.json")
    if path.exists() and not path.is_dir():
        raise LocalFolderError("that is a file, not a folder")
    if not path.exists() and _looks_like_a_path(model):
        raise LocalFolderError("no such folder")


def _looks_like_a_path(model: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else was meant as a place on disk.
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


def _load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(model)
    if not tokenizer.is_fast:
        # The repetition window is mapped from characters to tokens with offset mappings.
        raise ValueError("the model folder has no fast (tokenizer.json) tokenizer")
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    tokenizer.padding_side = "left"  # new tokens must follow each prompt directly
    # Prompt text is only ever text: "<|endoftext|>" written by a member must reach the model
    # as those characters, never as the end-of-text token that would start a new document
    # without the persona. (Tokenizers match special-token text in input by default.)
    tokenizer.split_special_tokens = True
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # pads are masked out, any id will do
    return tokenizer


ATTENTION = "sdpa"  # torch's fused attention: flash / memory-efficient kernels on a GPU


def _load_model(model: str, device: str, dtype: str) -> PreTrainedModel:
    if device == "cuda":
        # accelerate places the layers (and spills to CPU when the GPU is too small).
        return AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype),
                                                    attn_implementation=ATTENTION,
                                                    device_map="auto")
    return AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype),
                                                attn_implementation=ATTENTION).eval()


def save_dense_from_gguf(gguf: Path, folder: Path) -> None:
    """Dequantise a GGUF model file with transformers (needs the `gguf` package) and save model
    and tokenizer as a plain folder that `Engine.load` reads like any other."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dense after loading; save_pretrained refuses while the model still
    # claims to be quantised.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.eos_token is None:
        raise ValueError(f"the tokenizer in {gguf.name} has no end-of-sequence token")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# --- the per-row pieces of generation ------------------------------------------------------------

class TextStream:
    """Hands each row's reply text so far to its request's `on_text`, as the row grows.

    Any decode loop can use it: call `push(row, new_token_ids)` after every step for the rows
    still generating. Only rows with a callback are decoded (the whole reply each time: a
    reply is at most a few hundred tokens, far cheaper than one model step), and a callback
    hears a text only when it changed. A callback that raises is logged and dropped, so a
    broken listener never fails the batch it rides in.
    """

    def __init__(self, callbacks: Sequence[Callable[[str], None] | None],
                 decode: Callable[[list[int]], str]) -> None:
        self._callbacks = list(callbacks)
        self._decode = decode
        self._sent = [""] * len(self._callbacks)

    @property
    def active(self) -> bool:
        return any(callback is not None for callback in self._callbacks)

    def push(self, row: int, new_token_ids: list[int]) -> None:
        callback = self._callbacks[row]
        if callback is None:
            return
        text = self._decode(new_token_ids)
        if text == self._sent[row]:
            return
        self._sent[row] = text
        try:
            callback(text)
        except Exception:  # a listener's bug must not cost the other rows their replies
            log.exception("on_text callback of row %d failed; it hears no more", row)
            self._callbacks[row] = None


class StopOnStrings(StoppingCriteria):
    """Marks a row done once its new text contains one of its own stop strings, or it emits eos.

    It also remembers how many new tokens each row had when it finished: rows that finish early
    are padded afterwards, and those pads are not part of the reply. Being called after every
    step, it also feeds the rows' reply text to `stream` (streaming replies).
    """

    def __init__(self, stop_strings: Sequence[tuple[str, ...]], prompt_width: int,
                 eos_ids: Collection[int], decode: Callable[[list[int]], str],
                 stream: TextStream | None = None) -> None:
        self._stop_strings = stop_strings
        self._stream = stream
        self._prompt_width = prompt_width  # padded prompt length: new tokens start here
        self._eos_ids = torch.tensor(sorted(eos_ids), dtype=torch.long)
        self._decode = decode
        # A stop string of n bytes spans at most n byte-level tokens.
        self._windows = [max((len(s.encode()) for s in stops), default=0) + STOP_TAIL_SLACK_TOKENS
                         for stops in stop_strings]
        self._done = torch.zeros(len(stop_strings), dtype=torch.bool)  # (batch,)
        self._ends = torch.full((len(stop_strings),), -1, dtype=torch.long)  # (batch,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None,
                 **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self._prompt_width:].cpu()  # (batch, steps)
        was_done = self._done.clone()  # (batch,)
        finished = (self._hits_eos(new) | self._hits_stop_string(new)) & ~self._done  # (batch,)
        self._ends[finished] = new.shape[1]
        self._done |= finished
        self._feed_stream(new, was_done)
        return self._done.to(input_ids.device)  # type: ignore[return-value]

    def _feed_stream(self, new: torch.Tensor, was_done: torch.Tensor) -> None:
        """Rows that were generating before this step, up to their reply's last token."""
        if self._stream is None or not self._stream.active:
            return
        counts = self.new_token_counts(new.shape[1])
        for row in (~was_done).nonzero().flatten().tolist():
            self._stream.push(row, new[row, :counts[row]].tolist())

    def new_token_counts(self, steps: int) -> list[int]:
        """New tokens per row that belong to its reply, given the batch ran `steps` steps."""
        return torch.where(self._done, self._ends, steps).tolist()

    def _hits_eos(self, new: torch.Tensor) -> torch.Tensor:
        return torch.isin(new[:, -1], self._eos_ids)  # (batch,)

    def _hits_stop_string(self, new: torch.Tensor) -> torch.Tensor:
        hits = torch.zeros(new.shape[0], dtype=torch.bool)  # (batch,)
        for row, stops in enumerate(self._stop_strings):
            if stops and not self._done[row]:
                tail = self._decode(new[row, -self._windows[row]:].tolist())
                hits[row] = any(stop in tail for stop in stops)
        return hits


def penalty_starts(offsets: torch.Tensor, penalty_from: Sequence[int]) -> torch.Tensor:
    """Per row, the first padded position whose token ends after its `penalty_from` character.

    offsets: (batch, seq, 2) character spans from the fast tokenizer, (0, 0) for left pads and
    special tokens, so those never start a window. A window past the prompt's end starts at
    `seq`: only generated tokens count.
    """
    limits = torch.tensor([max(0, offset) for offset in penalty_from])  # (batch,)
    after = offsets[..., 1] > limits[:, None]  # (batch, seq)
    first = after.int().argmax(dim=1)  # (batch,) first True, or 0 when there is none
    return torch.where(after.any(dim=1), first, offsets.shape[1])


def sampling_kwargs(params: GenerationParams) -> dict[str, Any]:
    """`generate` arguments for params; greedy passes no sampling knobs (HF warns about them)."""
    if params.temperature <= 0:
        return {"do_sample": False}
    knobs: dict[str, Any] = {"do_sample": True, "temperature": params.temperature,
                             "top_p": params.top_p,
                             "top_k": params.top_k}  # top_k=0 switches HF's top-k filter off
    if params.min_p > 0:
        knobs["min_p"] = params.min_p
    return knobs


def dry_config(params: GenerationParams) -> DryConfig:
    return DryConfig(multiplier=params.dry_multiplier, base=params.dry_base,
                     allowed_length=params.dry_allowed_length)


def group_by_params(requests: Sequence[GenerationRequest]) -> dict[GenerationParams, list[int]]:
    """Request indices per distinct sampling params, in first-seen order: one generate call
    each. Seeds do not split a batch (the chat gives every request its own, and one seed
    per call would end batching); a batch is seeded with its first request's seed."""
    groups: dict[GenerationParams, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(replace(request.params, seed=None), []).append(index)
    return {replace(key, seed=requests[indices[0]].params.seed): indices
            for key, indices in groups.items()}


# --- the engine ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Encoded:
    input_ids: torch.Tensor  # (batch, seq), left-padded
    attention_mask: torch.Tensor  # (batch, seq), 0 on pads
    penalty_starts: torch.Tensor  # (batch,)
    structure: torch.Tensor  # (batch, vocab) bool: DRY breakers, never penalised


class Engine:
    def __init__(self, model_name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 device: str, dtype: str, *, prefix_cache_mb: int = 0,
                 torch_compile: bool = False, compile_backend: str = "inductor") -> None:
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.prefix_cache = PrefixCache(prefix_cache_mb)
        self.context_tokens: int = (getattr(model.config, "max_position_embeddings", None)
                                    or DEFAULT_CONTEXT_TOKENS)
        self._model = model
        # TORCH_COMPILE: decode steps compiled over a static cache (pygbot.decode.Compiled).
        self._compiled = decode.Compiled(model, compile_backend) if torch_compile else None
        self._tokenizer = tokenizer
        # The Rust tokenizer refuses ("Already borrowed") when one thread changes its padding
        # while another encodes; count_tokens runs on the event loop while generate() runs in
        # the worker thread.
        self._tokenizer_lock = threading.Lock()
        self._eos_ids = _eos_ids(model, tokenizer)
        self._token_texts: list[str] | None = None  # every token's text, decoded on first use
        self._structure_masks: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def load(cls, model: str, device: str = "auto", dtype: str = "auto",
             name: str | None = None, prefix_cache_mb: int | None = None, *,
             torch_compile: bool = False, compile_backend: str = "inductor") -> Engine:
        """Load a hub id or local folder; any failure is an `EngineLoadError` with a fix.
        `name` is what the model is called in status and logs (e.g. its hub id when `model`
        is the cache folder it was downloaded to). `prefix_cache_mb`: the per-conversation KV
        cache's cap; None = the device's default, 0 = no cache (every prompt computed whole).
        `torch_compile`: decode steps through `torch.compile` over a static cache (meant for
        GPUs; the first batches of each size are slow while it compiles). `compile_backend`:
        torch.compile's backend (tests use dynamo's "eager": the same graph capture and
        static cache, without inductor's code generation, which takes minutes on a CPU)."""
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        log.info("loading %s on %s as %s (this can take a minute)", name or model, device, dtype)
        started = time.perf_counter()
        try:
            _check_local_folder(model)
            tokenizer = _load_tokenizer(model)
            language_model = _load_model(model, device, dtype)
        except (OSError, ValueError, KeyError, ImportError) as error:
            raise _load_error(model, error) from error
        cache_mb = resolve_prefix_cache_mb(prefix_cache_mb, device)
        log.info("loaded %s in %.1f s; prefix cache %d MB%s", name or model,
                 time.perf_counter() - started, cache_mb,
                 "; decode steps compiled (torch.compile, static cache)" if torch_compile else "")
        return cls(name or model, language_model, tokenizer, device, dtype,
                   prefix_cache_mb=cache_mb, torch_compile=torch_compile,
                   compile_backend=compile_backend)

    @property
    def compiled(self) -> bool:
        """Whether decode steps run through torch.compile (TORCH_COMPILE)."""
        return self._compiled is not None

    def count_tokens(self, text: str) -> int:
        return len(self.token_ids(text))

    def token_ids(self, text: str) -> list[int]:
        """`text` as the model receives it inside a prompt."""
        with self._tokenizer_lock:
            return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Results in request order; one `model.generate` call per distinct params."""
        results: list[GenerationResult | None] = [None] * len(requests)
        for params, indices in group_by_params(requests).items():
            batch = [requests[index] for index in indices]
            for index, result in zip(indices, self._generate_batch(batch, params), strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    @property
    def can_prefill(self) -> bool:
        """Whether `prefill` can keep anything (PREFIX_CACHE_MB is not 0)."""
        return self.prefix_cache.enabled

    def prefill(self, cache_key: str, text: str,
                should_stop: Callable[[], bool] = lambda: False) -> int:
        """Compute ahead of time the states of `text`, the start of `cache_key`'s next
        prompt, and keep them in the prefix cache beside its last turn's (see
        pygbot.lookahead); only what the cache does not hold is computed. `should_stop()`,
        asked between slices, ends it early: what is done is kept, and a later call goes on
        from there. -> how many tokens were computed."""
        if not self.prefix_cache.enabled:
            return 0
        token_ids = self._prompt_ids(text)
        cached = self.prefix_cache.lookup(cache_key, token_ids, whole=True)
        reused = cached.length if cached is not None else 0
        if reused == len(token_ids):
            return 0
        with torch.inference_mode():
            states, done = decode.prefill_ahead(self._model, torch.tensor(token_ids), cached,
                                                slice_tokens=AHEAD_SLICE_TOKENS,
                                                should_stop=should_stop)
        self.prefix_cache.store_ahead(cache_key, token_ids[:done], states)
        return done - reused

    def _prompt_ids(self, text: str) -> list[int]:
        """`text`'s token ids as `generate` encodes a prompt (special tokens included)."""
        with self._tokenizer_lock:
            return list(self._tokenizer(text)["input_ids"])

    def _generate_batch(self, requests: Sequence[GenerationRequest],
                        params: GenerationParams) -> list[GenerationResult]:
        started = time.perf_counter()
        encoded = self._encode(requests)
        prompt_width = encoded.input_ids.shape[1]
        rows = [self._row(request, ids[mask.bool()]) for request, ids, mask
                in zip(requests, encoded.input_ids, encoded.attention_mask, strict=True)]
        stream = TextStream([r.on_text for r in requests], self._decode)
        stops = StopOnStrings([r.stop_strings for r in requests], prompt_width, self._eos_ids,
                              self._decode, stream)
        keep = [self.prefix_cache.enabled and r.cache_key is not None for r in requests]
        decoded = self._run_model(encoded, rows, params, stops, keep)
        new_ids = decoded.sequences[:, prompt_width:].cpu()  # (batch, steps)
        counts = stops.new_token_counts(new_ids.shape[1])
        self._remember(requests, rows, decoded, prompt_width)
        texts = [self._decode(row[:count].tolist()) for row, count in zip(new_ids, counts,
                                                                          strict=True)]
        seconds = time.perf_counter() - started
        first = decoded.first_token_at - started
        return [GenerationResult(text, count, seconds, len(row.token_ids), row.reused, first)
                for text, count, row in zip(texts, counts, rows, strict=True)]

    def _row(self, request: GenerationRequest, token_ids: torch.Tensor) -> decode.Row:
        if request.cache_key is None or not self.prefix_cache.enabled:
            return decode.Row(token_ids)
        return decode.Row(token_ids, self.prefix_cache.lookup(request.cache_key,
                                                              token_ids.tolist()))

    def _remember(self, requests: Sequence[GenerationRequest], rows: Sequence[decode.Row],
                  decoded: decode.Decoded, width: int) -> None:
        """Keep each keyed row's states for its prompt and the reply tokens fed back, for
        that conversation's next turn."""
        for index, (request, row) in enumerate(zip(requests, rows, strict=True)):
            states = decoded.states[index]
            if request.cache_key is None or states is None:
                continue
            fed = decoded.sequences[index, width:width + decoded.fed[index]].tolist()
            self.prefix_cache.store(request.cache_key, [*row.token_ids.tolist(), *fed], states)

    def _encode(self, requests: Sequence[GenerationRequest]) -> _Encoded:
        with self._tokenizer_lock:
            batch = self._tokenizer([r.prompt for r in requests], padding=True,
                                    return_offsets_mapping=True, return_tensors="pt")
        if batch["input_ids"].shape[1] == 0 or not batch["attention_mask"].any(dim=1).all():
            # A row of nothing but pads has nothing to attend to.
            raise ValueError("cannot generate from an empty prompt")
        starts = penalty_starts(batch["offset_mapping"], [r.penalty_from for r in requests])
        structure = torch.stack([self._structure_mask(r.dry_sequence_breakers)
                                 for r in requests])
        return _Encoded(batch["input_ids"], batch["attention_mask"], starts, structure)

    def _structure_mask(self, breakers: tuple[str, ...]) -> torch.Tensor:
        """(vocab,) bool: the tokens that carry `breakers`, plus end of text."""
        mask = self._structure_masks.get(breakers)
        if mask is None:
            with self._tokenizer_lock:
                if self._token_texts is None:
                    self._token_texts = self._tokenizer.batch_decode(
                        [[index] for index in range(len(self._tokenizer))])
                texts = self._token_texts
                encodings = [self._tokenizer(text, add_special_tokens=False)["input_ids"]
                             for breaker in breakers for text in (breaker, f" {breaker}")]
            ids = breaker_token_ids(texts, encodings, breakers) | self._eos_ids
            mask = token_mask(len(texts), ids)
            if len(self._structure_masks) >= STRUCTURE_MASKS_KEPT:
                self._structure_masks.pop(next(iter(self._structure_masks)))
            self._structure_masks[breakers] = mask
        return mask

    def _run_model(self, encoded: _Encoded, rows: Sequence[decode.Row],
                   params: GenerationParams, stops: StopOnStrings,
                   keep_states: Sequence[bool]) -> decode.Decoded:
        setup = SamplingSetup(encoded.penalty_starts, encoded.structure, encoded.structure)
        processors: LogitsProcessorList = build_logits_processors(
            repetition_penalty=params.repetition_penalty, dry=dry_config(params), setup=setup)
        do_sample = params.temperature > 0
        if do_sample:  # after the penalties, in generate()'s order
            processors.extend(build_warpers(temperature=params.temperature, top_p=params.top_p,
                                            top_k=params.top_k, min_p=params.min_p))
        self._warn_if_over_context(encoded.input_ids.shape[1] + params.max_new_tokens)
        sampler = decode.Sampler(processors, do_sample, int(self._tokenizer.pad_token_id))
        with torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)  # the same seed gives the same text
            return decode.generate(self._model, rows, encoded.input_ids, sampler, stops,
                                   max_new_tokens=params.max_new_tokens,
                                   keep_states=keep_states, compiled=self._compiled)

    def _decode(self, token_ids: list[int]) -> str:
        with self._tokenizer_lock:
            return str(self._tokenizer.decode(token_ids, skip_special_tokens=True,
                                              clean_up_tokenization_spaces=False))

    def _warn_if_over_context(self, tokens: int) -> None:
        if tokens > self.context_tokens:
            log.warning("prompt + reply is %d tokens, past the model's %d-token context",
                        tokens, self.context_tokens)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every id that ends a reply: the tokenizer's eos and the model's generation config's."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {int(token_id) for token_id in ids if token_id is not None}
