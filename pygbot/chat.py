"""The conversation service, free of Discord: the terminal and the Discord cogs both use it.

One reply is: load the channel's memory, render the prompt within the token budget, ask the
worker, cut the continuation to the character's line, guard against repetition, and store the
member's turn and the reply together. Then, if the next turn's prompt will start differently
(history leaving), the worker is asked to prefill that start while idle (pygbot.lookahead).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

from pygbot.config import Settings
from pygbot.engine import GenerationParams, GenerationRequest
from pygbot.identity import uses_other_name
from pygbot.library import PersonaLibrary
from pygbot.lookahead import expected_message_tokens, next_prompt_start
from pygbot.persona import Persona
from pygbot.prompt import (
    YOU,
    PromptCost,
    RenderedPrompt,
    Turn,
    build_prompt,
    measure_persona,
    speaker_label,
)
from pygbot.repetition import RECENT_REPLIES, max_similarity
from pygbot.reply_text import final_reply, has_no_words, visible_reply
from pygbot.roster import ChannelRoster, Roster
from pygbot.store import NewTurn, Store, StoredTurn
from pygbot.streaming import PartialListener, TextRelay
from pygbot.worker import Worker

log = logging.getLogger(__name__)

# More rows than any 2048-token prompt can hold (a line costs at least 4 tokens), so the
# budget, not this window, decides what is dropped: a window that slides by a row per turn
# would change the prompt's start on every turn and defeat the engine's prefix cache.
HISTORY_ROWS = 1024
SEED_RANGE = 2**31
_DEFAULTS = Settings()
# A resample at the same temperature tends to return the same words (at 0.3, three identical
# replies were measured); each retry samples a little hotter instead.
RETRY_TEMPERATURE_STEP = 0.3
MAX_RETRY_TEMPERATURE = 1.5
# DRY sequence breakers besides the speakers' names: line breaks, the label colon, quotes and
# the asterisks of actions are the turn structure, never a repeat.
STRUCTURE_BREAKERS = ("\n", ":", "\"", "*")


class EmptyReplyError(RuntimeError):
    """The model produced nothing usable; nothing was stored."""


class RejectedReplyError(EmptyReplyError):
    """Every sample repeated a recent reply, had the character use another name or had no
    words; none was posted or stored (the member sees the same notice as for an empty reply)."""


class NothingToRegenerateError(LookupError):
    """There is no reply of the character's to regenerate in this channel."""


class GreedyRegenerateError(NothingToRegenerateError):
    """With TEMPERATURE=0 every generation of a prompt is the same text: a regenerate could
    only repeat the reply already shown."""


@dataclass(frozen=True)
class Author:
    id: int
    display_name: str


@dataclass(frozen=True)
class Said:
    """One message a member addressed to the character."""

    author: Author
    text: str
    message_id: int | None = None


@dataclass(frozen=True)
class ChatConfig:
    # Defaults are the settings' own, stated once in pygbot.config.
    context_tokens: int = _DEFAULTS.context_tokens
    params: GenerationParams = field(default_factory=GenerationParams)
    speaker_labels: str = _DEFAULTS.speaker_labels  # "you" or "names"
    repetition_guard: bool = _DEFAULTS.repetition_guard
    repetition_retries: int = _DEFAULTS.repetition_retries
    near_duplicate_threshold: float = _DEFAULTS.near_duplicate_threshold
    repetition_window_tokens: int = _DEFAULTS.repetition_window_tokens
    max_characters_per_channel: int = _DEFAULTS.max_characters_per_channel
    swipe_candidates: int = _DEFAULTS.swipe_candidates

    @classmethod
    def from_settings(
        cls, settings: Settings, model_context_tokens: int | None = None
    ) -> ChatConfig:
        context = settings.context_tokens
        if model_context_tokens:
            context = min(context, model_context_tokens)
        return cls(
            context_tokens=context,
            params=GenerationParams(
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=settings.top_k,
                repetition_penalty=settings.repetition_penalty,
                min_p=settings.min_p,
                dry_multiplier=settings.dry_multiplier,
                dry_base=settings.dry_base,
                dry_allowed_length=settings.dry_allowed_length,
            ),
            speaker_labels=settings.speaker_labels,
            repetition_guard=settings.repetition_guard,
            repetition_retries=settings.repetition_retries,
            near_duplicate_threshold=settings.near_duplicate_threshold,
            repetition_window_tokens=settings.repetition_window_tokens,
            max_characters_per_channel=settings.max_characters_per_channel,
            swipe_candidates=settings.swipe_candidates,
        )

    @property
    def prompt_budget(self) -> int:
        return self.context_tokens - self.params.max_new_tokens


@dataclass(frozen=True)
class ChatReply:
    persona: Persona
    turn: StoredTurn  # the character's reply, as stored
    user_turn: StoredTurn  # the message it answers (the latest, when several were answered)
    greeting: StoredTurn | None  # stored just now because the conversation was new
    user_turns: tuple[StoredTurn, ...] = ()  # every member message it answers, in order


class ChatService:
    def __init__(
        self,
        store: Store,
        worker: Worker,
        library: PersonaLibrary,
        count_tokens: Callable[[str], int],
        config: ChatConfig,
        *,
        seed: int | None = None,
    ) -> None:
        self._store = store
        self._worker = worker
        self._library = library
        self._count_tokens = count_tokens
        self._config = config
        self._rng = random.Random(seed)
        self._roster = ChannelRoster(store, library, config.max_characters_per_channel)
        # One reply at a time per channel keeps turns in order; channels run side by side.
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def library(self) -> PersonaLibrary:
        return self._library

    @property
    def roster(self) -> ChannelRoster:
        """The characters each channel holds (several where the character posts through a
        webhook; see pygbot.roster)."""
        return self._roster

    def prompt_cost(self, persona: Persona) -> PromptCost:
        """What `persona` costs in every prompt, against this model's context."""
        config = self._config
        return measure_persona(persona, config.context_tokens, config.params.max_new_tokens,
                               self._count_tokens)

    async def start_conversation(self, channel_id: int, guild_id: int,
                                 member_name: str | None = None) -> StoredTurn | None:
        """Store the active character's greeting if the channel's conversation is new;
        `{{user}}` in it is `member_name` (the member who opened it), if known."""
        async with self._locks[channel_id]:
            roster = await self._roster.roster(guild_id, channel_id)
            return await self._greet_if_new(channel_id, roster, member_name)

    async def reply(
        self, channel_id: int, guild_id: int, author: Author, text: str,
        message_id: int | None = None, *, on_partial: PartialListener | None = None,
    ) -> ChatReply:
        """The character's answer to `text`; both turns are stored in one transaction.

        `on_partial`, if given, is called on the event loop with the reply as a member may
        already see it while it is generated: whole sentences that begin the final text. A
        resample after a repeated reply starts over (its text replaces the earlier one). The
        stored turn is the final word: it may go on past the last partial, never back.
        """
        return await self.answer(channel_id, guild_id, [Said(author, text, message_id)],
                                 on_partial=on_partial)

    async def answer(self, channel_id: int, guild_id: int, said: Sequence[Said], *,
                     on_partial: PartialListener | None = None,
                     character: str | None = None) -> ChatReply:
        """One reply to messages that arrived together: all of them go into memory in order,
        and the reply answers the latest. They and the reply are stored in one transaction.
        `on_partial` streams it as in `reply`. `character` is the one of the channel's
        characters that answers (None, or one no longer here: the main one)."""
        if not said:
            raise ValueError("answer() needs at least one message")
        async with self._locks[channel_id]:
            roster = await self._roster.roster(guild_id, channel_id)
            persona = roster.get(character) or roster.main
            member = said[-1].author.display_name
            greeting = await self._greet_if_new(channel_id, roster, member)
            history = await self._conversation(channel_id, roster.names)
            turns = [*self._turns(history, persona),
                     *(self._turn(m.author.display_name, m.text, persona) for m in said)]
            speaking_to = _for_member(persona, member)
            [reply_text], prompt = await self._generate(channel_id, speaking_to, turns,
                                                        _character_texts(history), on_partial,
                                                        others=_others(roster, persona))
            *user_turns, turn = await self._store.add_turns(channel_id, [
                *(NewTurn("user", m.author.display_name, m.text, m.author.id, m.message_id)
                  for m in said),
                NewTurn("character", persona.name, reply_text),
            ])
            self._prefill_next_turn(channel_id, speaking_to, turns=turns, prompt=prompt,
                                    reply=reply_text, member=member,
                                    answered=[m.text for m in said])
            return ChatReply(persona, turn, user_turns[-1], greeting, tuple(user_turns))

    async def regenerate(self, channel_id: int, guild_id: int,
                         on_partial: PartialListener | None = None) -> StoredTurn:
        """New alternatives for the character's latest reply (up to SWIPE_CANDIDATES, sampled
        together); the first becomes the one remembered, the others wait behind ▶.
        `on_partial` streams the first candidate as in `reply`."""
        async with self._locks[channel_id]:
            roster = await self._roster.roster(guild_id, channel_id)
            history = await self._conversation(channel_id, roster.names)
            if len(history) < 2 or history[-1].role != "character" or history[-2].role != "user":
                raise NothingToRegenerateError("there is no reply to regenerate here")
            persona = roster.get(history[-1].name) or roster.main
            if self._greedy:
                raise GreedyRegenerateError(
                    "TEMPERATURE=0 is greedy decoding, which writes the same reply every time; "
                    "set TEMPERATURE above 0 (e.g. 0.65) to get different alternatives")
            latest = history[-1]
            earlier = history[:-1]
            avoid = [*_character_texts(earlier), *latest.alternatives]
            member = history[-2].name
            speaking_to = _for_member(persona, member)
            turns = self._turns(earlier, persona)
            texts, prompt = await self._generate(channel_id, speaking_to, turns, avoid,
                                                 on_partial,
                                                 candidates=self._config.swipe_candidates,
                                                 others=_others(roster, persona))
            stored = await self._store.add_alternatives(latest.id, texts)
            self._prefill_next_turn(channel_id, speaking_to, turns=turns, prompt=prompt,
                                    reply=stored.text, member=member,
                                    answered=[history[-2].text])
            return stored

    async def choose_alternative(self, turn_id: int, index: int) -> StoredTurn:
        return await self._store.choose_alternative(turn_id, index)

    async def is_character_message(self, message_id: int) -> bool:
        """Whether `message_id` shows one of the character's turns (a reply-to-bot check that
        works even when Discord did not send the referenced message)."""
        turn = await self.shown_turn(message_id)
        return turn is not None and turn.role == "character"

    async def shown_turn(self, message_id: int) -> StoredTurn | None:
        """The turn that Discord message `message_id` shows, if any."""
        return await self._store.turn_by_message(message_id)

    async def latest_reply(self, channel_id: int) -> StoredTurn | None:
        """The character's newest turn if it has buttons: a reply to a member, or a
        greeting with alternatives to swipe through; None otherwise."""
        last_two = await self._store.history(channel_id, 2)
        if len(last_two) == 2 and [t.role for t in last_two] == ["user", "character"]:
            return last_two[-1]
        if last_two and is_swipeable_greeting(last_two[-1], last_two[:-1]):
            return last_two[-1]
        return None

    async def is_greeting(self, turn: StoredTurn) -> bool:
        """Whether `turn` is its channel's newest turn and a greeting with alternatives."""
        last_two = await self._store.history(turn.channel_id, 2)
        return bool(last_two) and last_two[-1].id == turn.id and \
            is_swipeable_greeting(last_two[-1], last_two[:-1])

    async def reset(self, channel_id: int, guild_id: int,
                    member_name: str | None = None) -> StoredTurn | None:
        """Forget the channel's conversation and open a new one with the greeting."""
        async with self._locks[channel_id]:
            removed = await self._store.clear_channel(channel_id)
            log.info("reset channel %s: %d turns forgotten", channel_id, removed)
            roster = await self._roster.roster(guild_id, channel_id)
            return await self._greet_if_new(channel_id, roster, member_name)

    async def attach_message(self, turn_id: int, message_id: int) -> None:
        """Remember which Discord message shows a turn, so edits and deletes can follow it."""
        await self._store.set_message_id(turn_id, message_id)

    async def edit_message(self, message_id: int, text: str) -> StoredTurn | None:
        return await self._store.edit_turn_by_message(message_id, text)

    async def forget_message(self, message_id: int) -> bool:
        return await self._store.delete_turn_by_message(message_id)

    # --- internals -----------------------------------------------------------------------------

    async def _greet_if_new(self, channel_id: int, roster: Roster,
                            member_name: str | None) -> StoredTurn | None:
        """The main character's greeting, with a card's alternate greetings as its swipes."""
        persona = roster.main
        if await self._conversation(channel_id, roster.names) or not persona.greeting:
            return None
        first, *others = _for_member(persona, member_name).greetings
        [greeting] = await self._store.add_turns(
            channel_id, [NewTurn("character", persona.name, first,
                                 more_alternatives=tuple(others))])
        return greeting

    async def _conversation(self, channel_id: int, names: Collection[str]) -> list[StoredTurn]:
        """The channel's turns since its characters (`names`) took over: a switch starts a
        new conversation."""
        history = await self._store.history(channel_id, HISTORY_ROWS)
        for index in range(len(history) - 1, -1, -1):
            turn = history[index]
            if turn.role == "character" and turn.name not in names:
                return history[index + 1:]
        return history

    def _turns(self, history: Sequence[StoredTurn], persona: Persona) -> list[Turn]:
        """The conversation as `persona` sees it: its own lines, the other characters' under
        their names, the members' as `You` or their names."""
        return [Turn(persona.name, turn.text, is_character=True)
                if turn.role == "character" and turn.name == persona.name
                else Turn(turn.name, turn.text) if turn.role == "character"
                else self._turn(turn.name, turn.text, persona) for turn in history]

    def _turn(self, display_name: str, text: str, persona: Persona) -> Turn:
        if self._config.speaker_labels == "names":
            return Turn(speaker_label(display_name, persona.name), text)
        return Turn(YOU, text)

    def _prefill_next_turn(self, channel_id: int, persona: Persona, *, turns: Sequence[Turn],
                           prompt: RenderedPrompt, reply: str, member: str,
                           answered: Sequence[str]) -> None:
        """Ask the worker to prefill, while idle, the start of this channel's next prompt if
        a message like the ones just `answered` would move it (pygbot.lookahead). The
        prompt is rendered then, in the worker's thread, not now."""
        conversation = [*turns, Turn(persona.name, reply, is_character=True)]
        count_tokens = self._count_tokens
        budget = self._config.prompt_budget
        speaker = self._turn(member, "", persona).speaker

        def prompt_start() -> str | None:
            return next_prompt_start(
                persona, conversation, budget, count_tokens, answered_prompt=prompt.text,
                speaker=speaker, message_tokens=expected_message_tokens(answered, count_tokens))

        self._worker.prefill_when_idle(cache_key(channel_id), prompt_start)

    async def _generate(
        self, channel_id: int, persona: Persona, turns: Sequence[Turn], recent: Sequence[str],
        on_partial: PartialListener | None = None, *, candidates: int = 1,
        others: Sequence[str] = (),
    ) -> tuple[list[str], RenderedPrompt]:
        """Sample `candidates` replies together and keep, in order, those that may be posted
        (at least one), with the prompt they answer: a reply that has the character use
        another name or has no words is dropped and, with the guard on, loops are trimmed
        and near-duplicates (of recent replies or of a kept candidate) dropped. When none is
        left the next try samples again; a reply that fails every try is not posted.
        `others`: the channel's other characters, whose turns end the reply too (even before
        they have spoken)."""
        config = self._config
        prompt = _with_speakers(build_prompt(persona, turns, config.prompt_budget,
                                             self._count_tokens,
                                             config.repetition_window_tokens), others)
        # A greedy resample is the same text again: one try is all there is.
        attempts = 1 if self._greedy else 1 + config.repetition_retries
        rejected = False
        for attempt in range(attempts):
            kept: list[str] = []
            for text in await self._sample(channel_id, persona, prompt, attempt, on_partial,
                                           candidates=candidates):
                problem = self._problem(text, persona, [*recent, *kept]) if text else "is empty"
                if problem is None:
                    kept.append(text)
                    continue
                log.info("reply %d of %d %s", attempt + 1, attempts, problem)
                rejected = rejected or bool(text)
            if kept:
                return kept, prompt
        if rejected:
            raise RejectedReplyError(
                "every sample repeated a recent reply, used another name or had no words")
        raise EmptyReplyError("the model produced an empty reply")

    @property
    def _greedy(self) -> bool:
        return self._config.params.temperature <= 0

    def _problem(self, text: str, persona: Persona, recent: Sequence[str]) -> str | None:
        """Why `text` must not be posted, or None when it may."""
        if uses_other_name(text, persona.name):
            return "has the character use another name"
        if has_no_words(text):
            return "has no words"
        if self._config.repetition_guard:
            score = max_similarity(text, recent[-RECENT_REPLIES:])
            if score >= self._config.near_duplicate_threshold:
                return f"repeats a recent one (similarity {score:.2f})"
        return None

    async def _sample(self, channel_id: int, persona: Persona, prompt: RenderedPrompt,
                      attempt: int, on_partial: PartialListener | None = None, *,
                      candidates: int = 1) -> list[str]:
        """`candidates` replies to `prompt`, each with its own seed, as one worker job (one
        batch locally, one request with `n` where a server honours it); only the first
        streams."""
        params = self._config.params
        if attempt and params.temperature > 0:
            hotter = params.temperature + RETRY_TEMPERATURE_STEP * attempt
            params = replace(params, temperature=min(hotter, MAX_RETRY_TEMPERATURE))
        guard = self._config.repetition_guard
        # Without the guard the penalty covers the whole prompt, as transformers' own
        # repetition_penalty does: the persona's name and facts are punished too.
        penalty_from = prompt.penalty_from if guard else 0
        relay = self._relay(persona, prompt, on_partial)
        requests = [GenerationRequest(
            prompt.text, prompt.stop_strings,
            replace(params, seed=self._rng.randrange(SEED_RANGE)), penalty_from,
            dry_sequence_breakers=(*STRUCTURE_BREAKERS, *prompt.speakers),
            # The engine keeps the channel's KV states for its next turn's prompt.
            cache_key=cache_key(channel_id),
            on_text=relay.on_text if relay and index == 0 else None)
            for index in range(candidates)]
        try:
            results = await self._worker.submit_together(requests)
        finally:
            if relay is not None:
                relay.close()
        return [final_reply(result.text, persona.name, prompt.speakers,
                            hit_token_limit=result.new_tokens >= params.max_new_tokens,
                            trim_loops=guard) for result in results]

    def _relay(self, persona: Persona, prompt: RenderedPrompt,
               on_partial: PartialListener | None) -> TextRelay | None:
        if on_partial is None:
            return None
        guard = self._config.repetition_guard

        def visible(generated: str) -> str:
            return visible_reply(generated, persona.name, prompt.speakers, trim_loops=guard)

        return TextRelay(asyncio.get_running_loop(), visible, on_partial)


def cache_key(channel_id: int) -> str:
    """The engine's prefix cache key for a channel's conversation."""
    return f"channel:{channel_id}"


def is_swipeable_greeting(turn: StoredTurn, before: Sequence[StoredTurn]) -> bool:
    """A greeting (a character turn nobody asked for) with alternatives to browse."""
    opens = not before or before[-1].role == "character"
    return turn.role == "character" and opens and len(turn.alternatives) > 1


def _for_member(persona: Persona, display_name: str | None) -> Persona:
    """The persona with `{{user}}` as the member's prompt label (made label-safe, so a
    display name can never open a turn of its own)."""
    label = speaker_label(display_name, persona.name) if display_name else YOU
    return persona.for_member(label)


def _others(roster: Roster, persona: Persona) -> list[str]:
    return [name for name in roster.names if name != persona.name]


def _with_speakers(prompt: RenderedPrompt, names: Sequence[str]) -> RenderedPrompt:
    """`prompt` whose reply also ends where any of `names` would start a turn."""
    new = [name for name in names if name not in prompt.speakers]
    if not new:
        return prompt
    return replace(prompt, speakers=(*prompt.speakers, *new),
                   stop_strings=(*prompt.stop_strings, *(f"\n{name}:" for name in new)))


def _character_texts(history: Sequence[StoredTurn]) -> list[str]:
    return [turn.text for turn in history if turn.role == "character"]
