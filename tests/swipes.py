"""What a member sees when one 🔄 brings several alternatives (SWIPE_CANDIDATES > 1): the
first new one at once, the others behind ▶ without any new generation. Shared by the local
engine's and the remote engine's Discord tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pygbot.cogs.reply_view import NEXT_ID, POSITION_ID, PREVIOUS_ID, REGENERATE_ID
from pygbot.store import Store, StoredTurn
from tests.discord_harness import Server, eventually

JSON = dict[str, Any]
WAIT_S = 60.0  # a remote server on a busy machine


def buttons(message: JSON) -> dict[str, JSON]:
    return {button["custom_id"]: button
            for row in message.get("components", []) for button in row["components"]}


@dataclass(frozen=True)
class Reroll:
    turn: StoredTurn  # the reply as stored once the 🔄 is done
    labels: list[str]  # the position label after 🔄, after ▶ and after ◀
    shown: list[str]  # the message's text at those moments
    generations: int  # generations asked for while browsing with ▶ ◀ (must be 0)


async def reroll_and_browse(server: Server, store: Store, reply: JSON,
                            generations: Callable[[], int]) -> Reroll:
    """Click 🔄 on `reply` (once its buttons are live), then ▶ and ◀; `generations()` counts
    the model requests so far (the worker's, or the server's)."""
    discord = server.discord

    async def recorded() -> bool:
        latest = (await store.history(server.roleplay.id))[-1]
        return latest.message_id == int(reply["id"]) and bool(buttons(discord.message(reply)))

    await eventually(recorded, timeout=WAIT_S)
    first = discord.message(reply)["content"]
    await discord.click_button(discord.message(reply), REGENERATE_ID, server.member)
    await discord.wait_for(lambda: discord.message(reply)["content"] != first
                           and bool(buttons(discord.message(reply))), timeout=WAIT_S)
    labels, shown = [], []

    def look() -> None:
        message = discord.message(reply)
        labels.append(buttons(message)[POSITION_ID]["label"])
        shown.append(message["content"])

    look()
    before = generations()
    def moved_from(label: str) -> Callable[[], bool]:
        return lambda: buttons(discord.message(reply))[POSITION_ID]["label"] != label

    for button in (NEXT_ID, PREVIOUS_ID):
        click = await discord.click_button(discord.message(reply), button, server.member)
        await click.response()
        await discord.wait_for(moved_from(labels[-1]), timeout=WAIT_S)
        look()
    turn = (await store.history(server.roleplay.id))[-1]
    return Reroll(turn, labels, shown, generations() - before)


def check_reroll(reroll: Reroll, candidates: int) -> None:
    """What the member must see after `reroll_and_browse` with SWIPE_CANDIDATES=candidates."""
    alternatives = reroll.turn.alternatives
    count = len(alternatives)
    # The reply before, plus every candidate kept (the guard may drop an empty or repeated
    # one; this test needs at least two, so ▶ has somewhere to go).
    assert 3 <= count <= 1 + candidates
    assert len(set(alternatives)) == count  # distinct alternatives, none repeated
    assert reroll.labels == [f"2/{count}", f"3/{count}", f"2/{count}"]
    assert reroll.shown == [alternatives[1], alternatives[2], alternatives[1]]
    assert reroll.generations == 0  # browsing stored alternatives generates nothing
    assert reroll.turn.chosen == 1 and reroll.turn.text == alternatives[1]  # remembered
