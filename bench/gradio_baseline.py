"""The baseline: the PygmalionAI gradio-ui method, re-implemented from its documented behaviour.

- Prompt: `NAME's Persona: ...`, `Scenario: ...`, `<START>`, then the last 8 lines of example
  dialogue and history together (the greeting is the first history line), the member's
  message as `You: ...`, and `NAME:`.
- Sampling: temperature 0.5, top_p 0.9, top_k 0, Hugging Face's repetition penalty 1.05 over
  the whole sequence (prompt included), 196 new tokens; stop at `\\nYou:`.
- Reply: the continuation up to the first line that starts with `You:` or `NAME:`.

It generates through pygbot's engine only to share the model and the sampler: a penalty
window starting at the prompt's first character, no DRY, no min-p and no structure
exemption is the Hugging Face repetition penalty.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from pygbot.engine import GenerationParams, GenerationRequest
from pygbot.persona import Persona

YOU = "You"
HISTORY_LINES = 8
PARAMS = GenerationParams(max_new_tokens=196, temperature=0.5, top_p=0.9, top_k=0,
                          repetition_penalty=1.05, min_p=0.0, dry_multiplier=0.0)
STOP = f"\n{YOU}:"


def example_lines(persona: Persona) -> list[str]:
    """The example dialogue as `You: ...` / `NAME: ...` lines, `<START>` markers dropped."""
    lines = [line.strip() for line in persona.example_dialogue.split("\n")]
    return [line for line in lines if line and line.upper() != "<START>"]


def build_prompt(persona: Persona, history: Sequence[str], message: str) -> str:
    """`history`: earlier lines as rendered (`You: ...`, `NAME: ...`), oldest first."""
    recent = [*example_lines(persona), *history][-HISTORY_LINES:]
    lines = [f"{persona.name}'s Persona: {persona.persona}"]
    if persona.scenario:
        lines.append(f"Scenario: {persona.scenario}")
    lines += ["<START>", *recent, f"{YOU}: {message}", f"{persona.name}:"]
    return "\n".join(lines)


def request(persona: Persona, history: Sequence[str], message: str, seed: int) -> \
        GenerationRequest:
    return GenerationRequest(build_prompt(persona, history, message), (STOP,),
                             replace(PARAMS, seed=seed), penalty_from=0)


def parse_reply(generated: str, name: str) -> str:
    """The continuation up to the first line opening a `You:` or `NAME:` turn."""
    label = re.compile(rf"^\s*(?:{YOU}|{re.escape(name)})\s*:")
    kept = []
    for line in generated.split("\n"):
        if label.match(line):
            break
        kept.append(line)
    return "\n".join(kept).strip()
