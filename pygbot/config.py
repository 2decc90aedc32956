"""Settings: the only reader of the environment and `.env`.

Every key, its default and what it allows is listed once, in `_KEYS`, so `.env.example`,
the README table and the error messages cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pygbot.envfile import EnvFileError, read_env_file
from pygbot.prompt import MIN_PROMPT_TOKENS

log = logging.getLogger(__name__)

DEFAULT_MODEL = "PygmalionAI/pygmalion-1.3b"
DEVICES = ("auto", "cuda", "cpu")
DTYPES = ("auto", "float16", "bfloat16", "float32")
SPEAKER_LABEL_MODES = ("you", "names")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENGINES = ("local", "remote")
# The OpenAI-compatible servers whose extra sampling knobs differ (see pygbot.remote_api).
ENGINE_FLAVORS = ("vllm", "sglang", "aphrodite", "koboldcpp", "llamacpp", "transformers")
XTC_FLAVORS = ("aphrodite", "koboldcpp", "llamacpp")  # the servers that have the XTC sampler
MAX_SHARDS = 1000


class ConfigError(ValueError):
    """A setting with a wrong value; `str()` is one line naming the key and what is allowed."""

    def __init__(self, key: str, value: str, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")
        self.key = key


class WordedConfigError(ConfigError):
    """A problem worded in full by the caller (one line), without echoing the value: it may
    be the token, or text that would break the line."""

    def __init__(self, key: str, message: str) -> None:
        ValueError.__init__(self, message)
        self.key = key


class ConflictError(WordedConfigError):
    """Settings that are valid alone but impossible together; `str()` is one line naming
    them and what to change."""


@dataclass(frozen=True)
class Settings:
    discord_token: str = field(default="", repr=False)  # secrets stay out of reprs and logs
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    cpu_threads: int = 0
    db_path: Path = Path("data/pygbot.sqlite3")
    personas_dir: Path = Path("personas")
    default_persona: str = "Aria"
    context_tokens: int = 2048
    max_new_tokens: int = 160
    temperature: float = 0.65
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.0
    min_p: float = 0.05
    dry_multiplier: float = 0.8
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    repetition_window_tokens: int = 1024
    repetition_guard: bool = True
    repetition_retries: int = 2
    near_duplicate_threshold: float = 0.75
    swipe_candidates: int = 1
    queue_max: int = 32
    max_batch: int = 4
    prefix_cache_mb: int | None = None  # None: the device's default (pygbot.engine)
    torch_compile: bool = False
    pending_max: int = 1000
    pending_max_age_s: int = 300
    shutdown_grace_s: float = 8.0
    rate_limit_burst: int = 5
    rate_limit_per_minute: int = 10
    history_max_turns: int = 2000
    history_max_days: int = 0
    speaker_labels: str = "you"
    stream_replies: bool = True
    allow_dms: bool = False
    max_characters_per_channel: int = 3
    dev_guild_id: int | None = None
    discord_api_url: str = ""
    discord_gateway_url: str = ""
    engine: str = "local"
    engine_url: str = ""
    engine_api_key: str = field(default="", repr=False)
    engine_model: str = ""
    engine_flavor: str = "vllm"
    engine_concurrency: int = 8
    engine_timeout_s: float = 120.0
    engine_retries: int = 2
    engine_start_offline: bool = False
    tokenizer: str = ""
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    shard_count: int | None = None
    shard_ids: tuple[int, ...] = ()
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        check_combinations(self)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read `.env` (if present) under the process environment, which wins, and validate.

        Keys in `.env` that are not settings are logged as warnings (with the closest
        setting's name for a misspelling); everything else wrong is a `ConfigError`.
        """
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).exists():
            try:
                env = read_env_file(Path(env_file), _KEY_NAMES)
            except EnvFileError as error:
                raise WordedConfigError(".env", str(error)) from None
            for warning in env.warnings:
                log.warning("%s", warning)
            values.update(env.values)
        values.update(os.environ if environ is None else environ)
        return cls(**{key.field: key.parse(_printable(key.name, values[key.name]))
                      for key in _KEYS if values.get(key.name, "").strip() != ""})

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log: the secrets are never shown."""
        shown = {key.name: getattr(self, key.field) for key in _KEYS}
        shown["DISCORD_TOKEN"] = "<set>" if self.discord_token else "<not set>"
        shown["ENGINE_API_KEY"] = "<set>" if self.engine_api_key else "<not set>"
        return shown

    @property
    def tokenizer_source(self) -> str:
        """Where the token budget's tokenizer comes from: TOKENIZER, else MODEL."""
        return self.tokenizer or self.model


def check_combinations(settings: Settings, context_tokens: int | None = None) -> None:
    """Refuse settings that cannot work together, in one line saying what to change.

    `context_tokens` is the context actually usable (the model's may be smaller than
    CONTEXT_TOKENS); by default CONTEXT_TOKENS itself.
    """
    context = settings.context_tokens if context_tokens is None else context_tokens
    prompt_budget = context - settings.max_new_tokens
    if prompt_budget < MIN_PROMPT_TOKENS:
        source = "CONTEXT_TOKENS" if context_tokens is None else "the model's context"
        raise ConflictError("CONTEXT_TOKENS", (
            f"{source} of {context} tokens minus MAX_NEW_TOKENS={settings.max_new_tokens} "
            f"leaves {prompt_budget} tokens for the prompt, but the persona and the message "
            f"being answered need at least {MIN_PROMPT_TOKENS}: raise CONTEXT_TOKENS to "
            f"{settings.max_new_tokens + MIN_PROMPT_TOKENS} or more, or lower MAX_NEW_TOKENS"))
    if bool(settings.discord_api_url) != bool(settings.discord_gateway_url):
        raise ConflictError("DISCORD_API_URL", (
            "DISCORD_API_URL and DISCORD_GATEWAY_URL go together: set both to use a "
            "Discord-compatible server, or neither to use Discord"))
    _check_engine(settings)
    _check_shards(settings)


def _check_engine(settings: Settings) -> None:
    if settings.engine == "remote" and not settings.engine_url:
        raise ConflictError("ENGINE_URL", (
            "ENGINE=remote needs ENGINE_URL, the server's address (e.g. http://127.0.0.1:8000); "
            "or set ENGINE=local to run the model in the bot"))
    if settings.xtc_probability > 0 and (settings.engine != "remote"
                                         or settings.engine_flavor not in XTC_FLAVORS):
        raise ConflictError("XTC_PROBABILITY", (
            f"XTC_PROBABILITY={settings.xtc_probability} needs ENGINE=remote with "
            f"ENGINE_FLAVOR {', '.join(XTC_FLAVORS)} (the only ones with the XTC sampler); "
            "set XTC_PROBABILITY=0"))


def _check_shards(settings: Settings) -> None:
    if settings.shard_ids and settings.shard_count is None:
        raise ConflictError("SHARD_IDS", (
            "SHARD_IDS needs SHARD_COUNT, the total number of shards across all processes"))
    count = settings.shard_count or 0
    outside = [shard for shard in settings.shard_ids if shard >= count]
    if outside:
        raise ConflictError("SHARD_IDS", (
            f"SHARD_IDS {', '.join(map(str, outside))} not below SHARD_COUNT={count}: shard "
            f"ids run from 0 to {count - 1}"))


# --- parsing -----------------------------------------------------------------------------------

def _printable(key: str, raw: str) -> str:
    """`raw` if it holds no control character and no byte that was not UTF-8 (which the
    environment hands over as a lone surrogate); such a value would reach a file path or a
    header and fail far from here. The value itself is not shown: it may be the token."""
    if any(char != "\t" and unicodedata.category(char) in ("Cc", "Cs") for char in raw):
        raise WordedConfigError(key, f"{key} contains a control character or bytes that are not "
                                 "UTF-8 text; write it again in a plain text editor")
    return raw


def _token(raw: str) -> str:
    """A bot token is printable ASCII without spaces (three dot-separated base64 parts);
    anything else is a bad paste, refused here instead of failing inside the HTTP client."""
    token = raw.strip()
    if not all(char.isascii() and char.isprintable() and not char.isspace() for char in token):
        raise WordedConfigError("DISCORD_TOKEN", (
            "DISCORD_TOKEN contains spaces or characters a bot token never has; copy the "
            "token again from the Developer Portal (Bot → Reset Token)"))
    return token


def _choice(key: str, choices: tuple[str, ...], upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in choices:
            raise ConfigError(key, raw, "one of " + ", ".join(choices))
        return value
    return parse


def _number(
    key: str, kind: type[int] | type[float], low: float, high: float
) -> Callable[[str], Any]:
    def parse(raw: str) -> int | float:
        # Python's int() also reads '１２' and '٣'; a setting that looks like a number in one
        # editor and like nothing in another is refused instead.
        allowed = f"{kind.__name__} from {low} to {high}"
        if not raw.strip().isascii():
            raise ConfigError(key, raw, f"{allowed}, written in ASCII digits 0-9")
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ConfigError(key, raw, allowed) from None
        if not low <= value <= high:
            raise ConfigError(key, raw, allowed)
        return value
    return parse


def _flag(key: str) -> Callable[[str], bool]:
    def parse(raw: str) -> bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, raw, "true or false")
    return parse


def _snowflake(key: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not (raw.strip().isascii() and raw.strip().isdigit()):
            raise ConfigError(key, raw, "a Discord server id (digits only)")
        return int(raw.strip())
    return parse


def _url(key: str, schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if not value.startswith(schemes) or len(value) <= len(max(schemes, key=len)):
            raise ConfigError(key, raw, "a URL starting with " + " or ".join(schemes))
        return value.rstrip("/")
    return parse


def _id_list(key: str, limit: int) -> Callable[[str], tuple[int, ...]]:
    def parse(raw: str) -> tuple[int, ...]:
        pieces = [piece.strip() for piece in raw.split(",") if piece.strip()]
        if not all(piece.isascii() and piece.isdigit() and int(piece) < limit
                   for piece in pieces):
            raise ConfigError(key, raw, f"comma-separated numbers from 0 to {limit - 1}")
        return tuple(sorted({int(piece) for piece in pieces}))
    return parse


@dataclass(frozen=True)
class _Key:
    name: str
    field: str
    parse: Callable[[str], Any]
    help: str


def _key(name: str, parse: Callable[[str], Any], help: str) -> _Key:
    return _Key(name, name.lower(), parse, help)


_KEYS: tuple[_Key, ...] = (
    _key("DISCORD_TOKEN", _token, "Bot token from the Developer Portal (secret)"),
    _key("MODEL", str.strip, "Hugging Face model id or a local model folder"),
    _key("DEVICE", _choice("DEVICE", DEVICES), "auto, cuda or cpu"),
    _key("DTYPE", _choice("DTYPE", DTYPES),
         "auto = float16 on GPU, bfloat16 on CPUs that support it, else float32"),
    _key("CPU_THREADS", _number("CPU_THREADS", int, 0, 1024),
         "Threads for the model's CPU math; 0 = the CPUs this process may use (a container's "
         "CPU limit included)"),
    _Key("DB_PATH", "db_path", lambda raw: Path(raw.strip()),
         "SQLite file for memory and settings"),
    _Key("PERSONAS_DIR", "personas_dir", lambda raw: Path(raw.strip()),
         "Folder of built-in character files"),
    _key("DEFAULT_PERSONA", str.strip, "Character used until a server switches"),
    _key("CONTEXT_TOKENS", _number("CONTEXT_TOKENS", int, 256, 32768),
         "Prompt + reply budget in tokens (the model's context)"),
    _key("MAX_NEW_TOKENS", _number("MAX_NEW_TOKENS", int, 1, 1024), "Longest reply, in tokens"),
    _key("TEMPERATURE", _number("TEMPERATURE", float, 0.0, 2.0),
         "Sampling temperature; 0 = greedy"),
    _key("TOP_P", _number("TOP_P", float, 0.0, 1.0), "Nucleus sampling"),
    _key("TOP_K", _number("TOP_K", int, 0, 1000), "Top-k sampling; 0 = off"),
    _key("REPETITION_PENALTY", _number("REPETITION_PENALTY", float, 1.0, 2.0),
         "Token penalty on the recent conversation (line breaks and names exempt); 1.0 = off"),
    _key("MIN_P", _number("MIN_P", float, 0.0, 1.0),
         "Drop tokens below this share of the likeliest token's probability; 0 = off"),
    _key("DRY_MULTIPLIER", _number("DRY_MULTIPLIER", float, 0.0, 10.0),
         "DRY penalty on continuing a repeated sequence (line breaks, ':', quotes, '*' and "
         "names never count); 0 = off"),
    _key("DRY_BASE", _number("DRY_BASE", float, 1.0, 4.0),
         "How fast the DRY penalty grows with each further repeated token"),
    _key("DRY_ALLOWED_LENGTH", _number("DRY_ALLOWED_LENGTH", int, 1, 20),
         "Longest repeated sequence (in tokens) DRY lets pass unpenalised"),
    _key("REPETITION_WINDOW_TOKENS", _number("REPETITION_WINDOW_TOKENS", int, 0, 4096),
         "How many recent conversation tokens the penalty looks at (persona never counts)"),
    _key("REPETITION_GUARD", _flag("REPETITION_GUARD"),
         "Trim loops in a reply and resample near-duplicates of recent replies"),
    _key("REPETITION_RETRIES", _number("REPETITION_RETRIES", int, 0, 5),
         "Resamples allowed when a reply repeats a recent one or the character uses another "
         "name"),
    _key("NEAR_DUPLICATE_THRESHOLD", _number("NEAR_DUPLICATE_THRESHOLD", float, 0.1, 1.0),
         "Similarity to one of the last 5 replies that counts as a repeat"),
    _key("SWIPE_CANDIDATES", _number("SWIPE_CANDIDATES", int, 1, 8),
         "Alternatives one 🔄 generates together (◀ ▶ browse them with no new generation); "
         "each extra one costs time on a CPU"),
    _key("QUEUE_MAX", _number("QUEUE_MAX", int, 1, 10000),
         "Replies generated or waiting for the model at once; more channels wait their turn"),
    _key("MAX_BATCH", _number("MAX_BATCH", int, 1, 64), "Requests generated together in one batch"),
    _key("PREFIX_CACHE_MB", _number("PREFIX_CACHE_MB", int, 0, 1_000_000),
         "Memory (MB) for each conversation's KV cache, so the next turn computes only its new "
         "tokens; least recently used channels leave first; 0 = off; empty = auto (CPU: 2048 "
         "or an eighth of the RAM; GPU: a quarter of the memory free after loading, up to 8192)"),
    _key("TORCH_COMPILE", _flag("TORCH_COMPILE"),
         "GPU: run decode steps through torch.compile over a static KV cache (the first "
         "batches of each size are slow while it compiles); off until a GPU run measures it "
         "faster"),
    _key("PENDING_MAX", _number("PENDING_MAX", int, 1, 1_000_000),
         "Messages waiting for an answer before members are told it will take a while "
         "(they are still answered)"),
    _key("PENDING_MAX_AGE_S", _number("PENDING_MAX_AGE_S", int, 0, 86400),
         "After a restart or a lost connection, messages younger than this (seconds) are "
         "still answered; older ones get a notice"),
    _key("SHUTDOWN_GRACE_S", _number("SHUTDOWN_GRACE_S", float, 0.0, 600.0),
         "On SIGTERM/Ctrl-C, seconds the reply in progress may take to finish and be posted"),
    _key("RATE_LIMIT_BURST", _number("RATE_LIMIT_BURST", int, 1, 1000),
         "Messages a member may send at once before being rate-limited"),
    _key("RATE_LIMIT_PER_MINUTE", _number("RATE_LIMIT_PER_MINUTE", int, 1, 6000),
         "Sustained messages per minute a member may send"),
    _key("HISTORY_MAX_TURNS", _number("HISTORY_MAX_TURNS", int, 10, 10_000_000),
         "Turns of memory kept per channel; older ones are deleted (a prompt uses at most "
         "the newest 1024)"),
    _key("HISTORY_MAX_DAYS", _number("HISTORY_MAX_DAYS", int, 0, 36500),
         "Days a turn is kept before it is deleted; 0 = no age limit"),
    _key("SPEAKER_LABELS", _choice("SPEAKER_LABELS", SPEAKER_LABEL_MODES),
         "you = members appear as 'You'; names = by display name"),
    _key("STREAM_REPLIES", _flag("STREAM_REPLIES"),
         "Show a reply while it is generated: posted at its first sentence, edited about "
         "once a second; false = post it when done"),
    _key("ALLOW_DMS", _flag("ALLOW_DMS"), "Answer direct messages"),
    _key("MAX_CHARACTERS_PER_CHANNEL", _number("MAX_CHARACTERS_PER_CHANNEL", int, 1, 10),
         "Characters one channel can hold at once, counting its main one "
         "(needs /pygbot webhook on; /persona add)"),
    _key("DEV_GUILD_ID", _snowflake("DEV_GUILD_ID"),
         "Sync slash commands to this server only (instant); empty = global"),
    _key("DISCORD_API_URL", _url("DISCORD_API_URL", ("http://", "https://")),
         "REST API base of a Discord-compatible server (e.g. http://127.0.0.1:8080/api/v10); "
         "empty = Discord"),
    _key("DISCORD_GATEWAY_URL", _url("DISCORD_GATEWAY_URL", ("ws://", "wss://")),
         "Gateway websocket of a Discord-compatible server; empty = Discord"),
    _key("ENGINE", _choice("ENGINE", ENGINES),
         "local = run the model in the bot; remote = an OpenAI-compatible server at ENGINE_URL"),
    _key("ENGINE_URL", _url("ENGINE_URL", ("http://", "https://")),
         "Base address of the remote server (e.g. http://127.0.0.1:8000); /v1/completions is "
         "added"),
    _key("ENGINE_API_KEY", str.strip,
         "Bearer key the remote server expects (secret; never logged); empty = none"),
    _key("ENGINE_MODEL", str.strip,
         "Model name to ask the remote server for; empty = the first one it lists"),
    _key("ENGINE_FLAVOR", _choice("ENGINE_FLAVOR", ENGINE_FLAVORS),
         "Which server it is, so each sampling setting reaches it in the form it accepts: "
         + ", ".join(ENGINE_FLAVORS)),
    _key("ENGINE_CONCURRENCY", _number("ENGINE_CONCURRENCY", int, 1, 256),
         "Requests sent to the remote server at once (it batches them)"),
    _key("ENGINE_TIMEOUT_S", _number("ENGINE_TIMEOUT_S", float, 1.0, 3600.0),
         "Longest one remote request may take, in seconds, before it is tried again"),
    _key("ENGINE_RETRIES", _number("ENGINE_RETRIES", int, 0, 10),
         "Further tries after a remote timeout, refused connection or 5xx (with backoff) "
         "before the member is told"),
    _key("ENGINE_START_OFFLINE", _flag("ENGINE_START_OFFLINE"),
         "Start even when the remote server cannot be reached (/pygbot status says so); "
         "false = exit with one line"),
    _key("TOKENIZER", str.strip,
         "Tokenizer for the token budget with ENGINE=remote (tokenizer files only, no "
         "weights); empty = MODEL"),
    _key("XTC_PROBABILITY", _number("XTC_PROBABILITY", float, 0.0, 1.0),
         "XTC sampler (remote aphrodite, koboldcpp, llamacpp only): chance of removing the "
         "top choices; 0 = off"),
    _key("XTC_THRESHOLD", _number("XTC_THRESHOLD", float, 0.0, 1.0),
         "XTC: tokens above this probability may be removed (all but the least likely)"),
    _Key("SHARD_COUNT", "shard_count", _number("SHARD_COUNT", int, 1, MAX_SHARDS),
         "Total Discord shards across all processes; empty = one connection, no sharding"),
    _Key("SHARD_IDS", "shard_ids", _id_list("SHARD_IDS", MAX_SHARDS),
         "Shards this process runs (e.g. 0,1); empty = all of SHARD_COUNT"),
    _key("LOG_LEVEL", _choice("LOG_LEVEL", LOG_LEVELS, upper=True), "Logging verbosity"),
)


_KEY_NAMES = frozenset(key.name for key in _KEYS)


def documented_keys() -> list[tuple[str, str, str]]:
    """(key, default, help) for every setting: the source of `.env.example` and the README table."""
    defaults = Settings()
    rows = []
    for key in _KEYS:
        default = getattr(defaults, key.field)
        shown = "" if default is None else str(default).lower() if isinstance(default, bool) \
            else ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        rows.append((key.name, shown, key.help))
    return rows
