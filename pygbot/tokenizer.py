"""The model's tokenizer alone (tokenizer files, no weights), for the prompt's token budget
when another process runs the model (ENGINE=remote)."""

from __future__ import annotations

import threading
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pygbot.special_text import SpecialTokenText

MAX_REASON_CHARS = 200


class TokenizerLoadError(Exception):
    """The tokenizer could not be loaded; the message is one line that says how to fix it."""


class TokenCounter:
    def __init__(self, source: str, tokenizer: PreTrainedTokenizerBase) -> None:
        self.source = source
        self._tokenizer = tokenizer
        # What the server must never read as a special token (see pygbot.special_text).
        self.special_text = SpecialTokenText([
            *tokenizer.all_special_tokens,
            *(added.content for added in tokenizer.added_tokens_decoder.values()
              if added.special)])
        # The Rust tokenizer refuses ("Already borrowed") concurrent use from two threads.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, source: str) -> TokenCounter:
        """A hub id or a folder with tokenizer files; any failure is one line with a fix."""
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, KeyError, ImportError) as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = (lines[0] if lines else type(error).__name__)[:MAX_REASON_CHARS]
            where = "folder" if Path(source).expanduser().exists() else "hub id or folder"
            raise TokenizerLoadError(
                f"could not load the tokenizer from {where} {source!r} ({reason.rstrip('. ')}); "
                "set TOKENIZER to a folder with the model's tokenizer files (tokenizer.json, "
                "tokenizer_config.json) or to its Hugging Face id") from error
        return cls(source, tokenizer)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the server receives it: with its special-token text kept
        as text."""
        plain = self.special_text.plain(text)
        with self._lock:
            return len(self._tokenizer(plain, add_special_tokens=False)["input_ids"])
