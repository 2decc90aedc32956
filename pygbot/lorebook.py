"""A character's lorebook (`character_book` of a character card): facts the prompt carries
only while the conversation mentions them.

Pure values and functions, like `pygbot.prompt`: which entries the recent messages switch on,
and which of those fit a token budget. The prompt decides where they go (after the persona)
and what they may never push out (the persona and the message being answered).

Rules, from the Character Card V2/V3 specs:
- an entry takes part only when `enabled`, with non-empty `content`;
- `constant` entries are always on; others when one of their `keys` appears in the last
  `scan_depth` messages (whole words, case-insensitive unless `case_sensitive`), and, when
  `selective`, one of their `secondary_keys` as well;
- over the budget, the lowest `priority` goes first (`insertion_order` stands in for an entry
  without one); what is kept is inserted in `insertion_order`, lowest first.
Not supported: `use_regex` entries never match (a hostile pattern could stall the bot, and
Python's `re` has no time limit), and V3 `@@decorators` are removed from the content, not
obeyed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

# SillyTavern's default world-info scan depth: the message being answered and the one before.
DEFAULT_SCAN_DEPTH = 2
# A book that names no budget may use at most this share of the prompt budget.
DEFAULT_BUDGET_SHARE = 4
_DECORATOR_LINE = re.compile(r"^@@[^\n]*(?:\n|$)")


@dataclass(frozen=True)
class LoreEntry:
    keys: tuple[str, ...]
    content: str
    enabled: bool = True
    insertion_order: float = 0
    case_sensitive: bool = False
    constant: bool = False
    selective: bool = False
    secondary_keys: tuple[str, ...] = ()
    priority: float | None = None
    use_regex: bool = False

    @property
    def importance(self) -> float:
        """Higher is kept first when the budget is short."""
        return self.priority if self.priority is not None else self.insertion_order

    def matches(self, scanned: str) -> bool:
        if not self.enabled or not self.content or self.use_regex:
            return False
        if self.constant:
            return True
        if not _any_key_in(self.keys, scanned, self.case_sensitive):
            return False
        return not self.selective or not self.secondary_keys or \
            _any_key_in(self.secondary_keys, scanned, self.case_sensitive)

    def with_text(self, fill: Callable[[str], str]) -> LoreEntry:
        return replace(self, content=fill(self.content))

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "content": self.content, "enabled": self.enabled,
                "insertion_order": self.insertion_order, "case_sensitive": self.case_sensitive,
                "constant": self.constant, "selective": self.selective,
                "secondary_keys": list(self.secondary_keys), "priority": self.priority,
                "use_regex": self.use_regex}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoreEntry:
        """From a card's entry (already type-checked by `pygbot.cards`) or our own `to_dict`."""
        priority = data.get("priority")
        return cls(
            keys=tuple(data.get("keys") or ()),
            content=strip_decorators(str(data.get("content", ""))),
            enabled=bool(data.get("enabled", True)),
            insertion_order=float(data.get("insertion_order") or 0),
            case_sensitive=bool(data.get("case_sensitive") or False),
            constant=bool(data.get("constant") or False),
            selective=bool(data.get("selective") or False),
            secondary_keys=tuple(data.get("secondary_keys") or ()),
            priority=None if priority is None else float(priority),
            use_regex=bool(data.get("use_regex") or False),
        )


@dataclass(frozen=True)
class Lorebook:
    entries: tuple[LoreEntry, ...]
    scan_depth: int | None = None
    token_budget: int | None = None

    def budget(self, prompt_budget: int) -> int:
        """Tokens the book may use in a prompt of `prompt_budget` tokens."""
        default = prompt_budget // DEFAULT_BUDGET_SHARE
        return min(self.token_budget, prompt_budget) if self.token_budget is not None \
            else default

    def active(self, recent: Sequence[str]) -> list[LoreEntry]:
        """Entries the newest messages (oldest first, the last is the newest) switch on."""
        depth = self.scan_depth if self.scan_depth is not None else DEFAULT_SCAN_DEPTH
        scanned = "\n".join(recent[-depth:]) if depth > 0 else ""
        return [entry for entry in self.entries if entry.matches(scanned)]

    def with_text(self, fill: Callable[[str], str]) -> Lorebook:
        return replace(self, entries=tuple(entry.with_text(fill) for entry in self.entries))

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [entry.to_dict() for entry in self.entries],
                "scan_depth": self.scan_depth, "token_budget": self.token_budget}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lorebook:
        scan_depth = data.get("scan_depth")
        budget = data.get("token_budget")
        return cls(
            entries=tuple(LoreEntry.from_dict(entry) for entry in data.get("entries") or ()),
            scan_depth=None if scan_depth is None else max(int(scan_depth), 0),
            token_budget=None if budget is None else max(int(budget), 0),
        )


def fit_entries(entries: Sequence[LoreEntry], budget_tokens: int,
                cost: Callable[[LoreEntry], int]) -> list[LoreEntry]:
    """The most important entries whose costs fit `budget_tokens` together, in insertion
    order. Constant entries are considered first ("always on", but within the budget, as the
    V2 spec says), then the rest by priority."""
    kept: list[LoreEntry] = []
    for entry in sorted(entries, key=lambda e: (not e.constant, -e.importance)):
        spent = cost(entry)
        if spent <= budget_tokens:
            budget_tokens -= spent
            kept.append(entry)
    return sorted(kept, key=lambda e: e.insertion_order)


def strip_decorators(content: str) -> str:
    """V3 `@@decorator` lines open an entry's content; they are instructions, not lore."""
    text = content.lstrip("\n")
    while (line := _DECORATOR_LINE.match(text)) is not None:
        text = text[line.end():]
    return text.strip()


def _any_key_in(keys: Sequence[str], scanned: str, case_sensitive: bool) -> bool:
    flags = 0 if case_sensitive else re.IGNORECASE
    return any(key.strip() and re.search(_key_pattern(key.strip()), scanned, flags)
               for key in keys)


def _key_pattern(key: str) -> str:
    """A key as a whole word ("cat" is not found in "concatenate"); a key that starts or
    ends with punctuation is matched as written at that end."""
    start = r"(?<!\w)" if re.match(r"\w", key) else ""
    end = r"(?!\w)" if re.search(r"\w$", key) else ""
    return f"{start}{re.escape(key)}{end}"
