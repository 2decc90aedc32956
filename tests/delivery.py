"""What members see, counted: was every mention answered once, in order?

A reply answers the message it references and every earlier mention in the channel that no
reply covered yet (the bot answers messages that arrived together with one reply). Used by
the delivery tests and by bench/load.py.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JSON = Mapping[str, Any]


@dataclass(frozen=True)
class Delivery:
    answered: int = 0  # mentions some reply covered
    lost: int = 0  # mentions no reply and no notice covered
    duplicates: int = 0  # replies to a mention that was already answered
    order_violations: int = 0  # replies to a mention older than one already answered
    notices: int = 0  # notices (busy, failure) in reply to a mention

    def __add__(self, other: Delivery) -> Delivery:
        return Delivery(*(a + b for a, b in zip(self.fields(), other.fields(), strict=True)))

    def fields(self) -> tuple[int, ...]:
        return (self.answered, self.lost, self.duplicates, self.order_violations, self.notices)


def account(messages: Iterable[JSON], bot_id: int, mention_ids: Collection[int],
            notice_texts: Collection[str] = ()) -> Delivery:
    """Count one channel's outcome; `messages` is the channel's history, oldest first."""
    mentions = sorted(mention_ids)
    covered: set[int] = set()
    noticed: set[int] = set()
    duplicates = order_violations = notices = 0
    latest = 0
    for message in messages:
        reference = message.get("message_reference")
        if int(message["author"]["id"]) != bot_id or not reference:
            continue
        target = int(reference["message_id"])
        if target not in mention_ids:
            continue
        if message["content"] in notice_texts:
            notices += 1
            noticed.add(target)
            continue
        if target in covered:
            duplicates += 1
            continue
        if target < latest:
            order_violations += 1
        latest = max(latest, target)
        covered.update(m for m in mentions if m <= target)
    lost = len([m for m in mentions if m not in covered and m not in noticed])
    return Delivery(len(covered & set(mentions)), lost, duplicates, order_violations, notices)


def covering_replies(messages: Iterable[JSON], bot_id: int, mention_ids: Collection[int],
                     notice_texts: Collection[str] = ()) -> dict[int, int]:
    """For each answered mention, the id of the reply that first covered it (as `account`
    counts: a reply covers its message and every earlier mention not covered yet)."""
    mentions = sorted(mention_ids)
    covering: dict[int, int] = {}
    for message in messages:
        reference = message.get("message_reference")
        if int(message["author"]["id"]) != bot_id or not reference:
            continue
        target = int(reference["message_id"])
        if target not in mention_ids or message["content"] in notice_texts:
            continue
        for mention in mentions:
            if mention <= target and mention not in covering:
                covering[mention] = int(message["id"])
    return covering


def replies_to(messages: Sequence[JSON], bot_id: int) -> list[tuple[int, str]]:
    """(referenced message id, content) of the bot's replies, in the order they were posted."""
    return [(int(m["message_reference"]["message_id"]), m["content"]) for m in messages
            if int(m["author"]["id"]) == bot_id and m.get("message_reference")]
