"""Text rules of Discord's that the bot follows, as plain functions over `str`.

Kept free of discord.py objects so they are trivial to test and reuse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

DISCORD_MESSAGE_LIMIT = 2000  # characters in one message's content
STREAM_EDIT_INTERVAL_S = 1.0  # a streamed reply's edits; Discord allows ~5 per 5 s per channel
STREAMING_MARK = " ▌"  # ends a reply still being written; a stored (stripped) text never does
_BREAKS = ("\n\n", "\n", ". ", "! ", "? ", "… ", "; ", ", ", " ")
_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CHANNEL_MENTION = re.compile(r"<#(\d+)>")


def split_message(text: str, limit: int = DISCORD_MESSAGE_LIMIT) -> list[str]:
    """Split `text` into pieces of at most `limit` characters, preferring paragraph, line,
    sentence, then word boundaries; a single unbroken run is cut hard as a last resort."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = _best_cut(rest, limit)
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def in_progress(text: str, limit: int = DISCORD_MESSAGE_LIMIT) -> str:
    """A reply still being generated as message content: its first message's worth (of
    `limit` characters) and the cursor that says more is coming."""
    pieces = split_message(text, limit - len(STREAMING_MARK))
    return (pieces[0] if pieces else "") + STREAMING_MARK


def is_unfinished(content: str) -> bool:
    """Whether a message of the bot's shows a reply that was still being generated (and
    never became a finished one: a crash, or a lost connection)."""
    return content.endswith(STREAMING_MARK)


def _best_cut(text: str, limit: int) -> int:
    for separator in _BREAKS:
        position = text.rfind(separator, 0, limit - len(separator) + 1)
        if position > limit // 4:  # a cut far from the limit would leave a stub message
            return position + len(separator.rstrip(" ") or separator)
    return limit


def render_mentions(
    content: str,
    *,
    bot_user_id: int,
    character_name: str,
    user_names: Mapping[int, str],
    role_names: Mapping[int, str],
    channel_names: Mapping[int, str],
) -> str:
    """A member's message as the character should read it: the bot's mention becomes the
    character's name, other mentions become the names people see."""

    def user(match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        if user_id == bot_user_id:
            return character_name
        return user_names.get(user_id, "someone")

    text = _USER_MENTION.sub(user, content)
    text = _ROLE_MENTION.sub(lambda m: "@" + role_names.get(int(m.group(1)), "role"), text)
    text = _CHANNEL_MENTION.sub(lambda m: "#" + channel_names.get(int(m.group(1)), "channel"),
                                text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


# Webhook messages cannot be native replies, so a character posting through a webhook starts
# its reply with this small line instead: whom it answers (a mention, pinging only them) and a
# link to the message it answers, which also lets a restarted bot see what was answered.
ANSWER_HEADER_PREFIX = "-# ↪ "
_JUMP_LINK = re.compile(r"/channels/(?:\d+|@me)/\d+/(\d+)")


def answer_header(member_id: int | None, guild_id: int, channel_id: int, message_id: int) -> str:
    """The first line of a webhook reply to message `message_id`, newline included."""
    link = f"[message](<https://discord.com/channels/{guild_id}/{channel_id}/{message_id}>)"
    who = f"<@{member_id}> · " if member_id is not None else ""
    return f"{ANSWER_HEADER_PREFIX}{who}{link}\n"


def split_header(content: str) -> tuple[str, str]:
    """(`answer_header` line with its newline or "", the rest) of a message's content."""
    if not content.startswith(ANSWER_HEADER_PREFIX):
        return "", content
    first, newline, rest = content.partition("\n")
    return first + newline, rest


def answered_message_id(content: str) -> int | None:
    """The id of the message a webhook reply answers, from its header; None without one."""
    header, _ = split_header(content)
    match = _JUMP_LINK.search(header)
    return int(match.group(1)) if match else None
