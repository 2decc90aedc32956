"""Getting a model from the Hugging Face Hub into a local folder, with huggingface_hub's own API.

The engine only ever loads local folders. A hub id in MODEL is turned into one here: asked of
the Hub once, with a short timeout and no retries, then downloaded with huggingface_hub's
progress bars; when the Hub cannot be reached the cached copy is used, and without one start-up
ends in one line saying what to do. (Left to transformers, an unreachable Hub costs about a
minute of retries and a screenful of warnings before the same conclusion.)
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 10.0  # one question to the Hub; an unreachable one fails faster (refused/DNS)
# What a causal LM folder needs besides its weights: config, tokenizer, generation config.
SUPPORT_PATTERNS = ("*.json", "*.txt", "*.model", "*.py")
SAFETENSORS = "*.safetensors"
PYTORCH_BIN = "*.bin"  # older repos (Pygmalion 1.3B among them) ship only this format
DOWNLOAD_HINT = "`python bot.py --download-model MODEL --to DIR`"
DOWNLOADS = Path("models")  # --download-model's default parent folder (git-ignored)
TRY_HINT = "`python bot.py --try` chats with a small stand-in model without the Hub"


class HubError(Exception):
    """The model cannot be had from the Hub; `str()` is one line saying what to do."""


def is_hub_id(model: str) -> bool:
    """Whether MODEL names a Hub repository rather than a folder on this machine."""
    if Path(model).expanduser().exists():
        return False
    # Hub ids are "name" or "owner/name"; anything else was meant as a place on disk.
    return not (model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1
                or not model.strip())


def endpoint() -> str:
    return constants.ENDPOINT


def local_folder(model: str) -> str:
    """A local folder holding MODEL: MODEL itself unless it is a hub id; for a hub id the
    Hub's current files (downloaded with progress when missing) or, offline, the cached copy."""
    if not is_hub_id(model):
        return model
    if constants.HF_HUB_OFFLINE:
        return _cached(model, "HF_HUB_OFFLINE is set")
    try:
        files = list_files(model)
    except HubUnreachableError as error:
        return _cached(model, f"cannot reach the Hugging Face Hub at {endpoint()} ({error})")
    return download(model, files=files)


class HubUnreachableError(HubError):
    """No answer from the Hub (network, DNS, firewall, timeout)."""


def list_files(model: str) -> list[str]:
    """The repository's file names: one request, no retries."""
    try:
        info = HfApi().model_info(model, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise HubError(f"MODEL={model} is gated on the Hugging Face Hub: accept its terms on "
                       f"its page, then log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise HubError(f"there is no model {model!r} on the Hugging Face Hub; check MODEL "
                       "(e.g. PygmalionAI/pygmalion-1.3b) or set it to a local folder") from None
    except Exception as error:  # HTTP errors and the hub's HTTP client's transport errors
        raise HubUnreachableError(_first_line(error)) from None
    return [sibling.rfilename for sibling in info.siblings or ()]


def download(model: str, local_dir: Path | None = None, files: Sequence[str] | None = None) -> str:
    """Fetch what pygbot needs of MODEL (into the Hub cache, or `local_dir`) with the Hub's
    progress bars; returns the folder."""
    if files is None:
        files = list_files(model)
    log.info("downloading %s from %s%s", model, endpoint(),
             f" into {local_dir}" if local_dir else " (the first time takes a while)")
    try:
        return str(snapshot_download(model, local_dir=local_dir,
                                     allow_patterns=wanted_patterns(files)))
    except (HfHubHTTPError, OSError) as error:
        raise HubError(f"downloading {model} stopped: {_first_line(error)}; run the same "
                       "command again to resume") from None


def download_for_env(model: str, folder: Path | None = None) -> str:
    """`--download-model`: MODEL into `folder` (default models/NAME); returns the line for
    .env."""
    if not is_hub_id(model):
        raise HubError(f"{model!r} is a folder, not a Hugging Face model id; name one, e.g. "
                       f"`python bot.py --download-model PygmalionAI/pygmalion-1.3b`")
    folder = folder or DOWNLOADS / model.rsplit("/", 1)[-1]
    try:
        download(model, local_dir=folder)
    except HubUnreachableError as error:
        raise HubError(
            f"cannot reach the Hugging Face Hub at {endpoint()} ({error}); check the internet "
            f"connection, or run the same command on a machine that can and copy {folder} "
            f"here") from None
    return f"MODEL={folder.as_posix()}"


def wanted_patterns(files: Sequence[str]) -> list[str]:
    """Config, tokenizer and ONE weight format: safetensors when the repo has them, else .bin
    (many repos carry both, and the second copy is gigabytes nobody loads)."""
    has_safetensors = any(fnmatch.fnmatch(name, SAFETENSORS) for name in files)
    return [*SUPPORT_PATTERNS, SAFETENSORS if has_safetensors else PYTORCH_BIN]


def cached_folder(model: str) -> str | None:
    """The Hub cache's copy of MODEL, without asking the Hub; None when there is none."""
    try:
        return str(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _cached(model: str, why: str) -> str:
    folder = cached_folder(model)
    if folder is None:
        raise HubError(
            f"{why}, and MODEL={model} is not in the local cache; download it where the Hub "
            f"is reachable with {DOWNLOAD_HINT}, copy the folder here and set MODEL to it "
            f"(or {TRY_HINT})")
    log.info("%s; using the cached copy of %s", why, model)
    return folder


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__).rstrip(" .:;")
