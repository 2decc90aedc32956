"""Real models built on the fly: a tiny random GPT-NeoX with a trained byte-level BPE tokenizer.

Both are written with `save_pretrained` to a folder, so tests and benchmarks load them through
the engine's own `from_pretrained` path, exactly like a downloaded Pygmalion folder. The weights
are random, so the text is noise, but generate(), padding, stop strings and caches run for real.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"  # pythia's only special token: bos, eos and unk at once
TINY_VOCAB_SIZE = 1000  # tokens; the BPE trainer stops here (or earlier, if the text runs out)
SEED = 1234  # fixed so every build of the tiny model is the same model
PYTHIA_1_3B_VOCAB_SIZE = 50304  # embedding rows in pythia-1.3b (padded past the tokenizer's size)
CONTEXT_TOKENS = 2048  # max_position_embeddings of pythia / Pygmalion 1.3B
ROTARY_SHARE = 0.25  # pythia's rotary_pct: rotary embeddings on a quarter of each head's dims
SPELLED_LOGIT_STD = 2.0  # a readable model's logits for ids its tokenizer can spell



@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


TINY_SHAPE = Shape(hidden=64, layers=2, heads=4, intermediate=128)  # builds and runs in a blink
# pythia-1.3b-deduped (the base of Pygmalion 1.3B), for realistic timings with random weights.
PYTHIA_1_3B_SHAPE = Shape(hidden=2048, layers=24, heads=16, intermediate=8192)

# Dialogue in the Pygmalion prompt format, so the tokenizer learns the merges a real prompt uses
# ("You:", "<START>", names, common words) and prompts tokenize into realistic lengths.
_CHARACTERS = {
    "Aria": "Aria is a cheerful ship's navigator who loves stars, maps and bad puns.",
    "Rook": "Rook is a gruff old blacksmith with a soft heart and a loud laugh.",
    "Pip": "Pip is a curious little robot who asks too many questions about humans.",
    "Mira": "Mira is a quiet librarian and secret witch who brews tea for lost travellers.",
}
_EXCHANGES = [
    ("Hello there! How are you today?", "I'm doing great, thanks for asking! How about you?"),
    ("What are you working on?", "*looks up from the map* Just plotting our course north."),
    ("Can you tell me a story?", "Once upon a time, a little ship sailed past the moon..."),
    ("Do you like the sea?", "I love it! The waves sound like music at night."),
    ("I'm feeling a bit sad.", "*sits beside you* Want to talk about it? I'm here."),
    ("What is your favourite food?", "Warm bread with honey, every single morning."),
    ("Where are we going?", "To the northern islands, where the lights dance in the sky."),
    ("Why do you smile so much?", "Because life is short and the stars are bright!"),
    ("Tell me a joke.", "Why did the compass break up? It lost its direction. *grins*"),
    ("Good night!", "Sleep well, friend. I'll keep watch over the stars."),
    ("What's that noise outside?", "*peeks through the window* Just the wind in the old pines."),
    ("Can you fix this sword?", "Hand it over. The blade is chipped, but the steel is good."),
    ("Are you a real person?", "Does it matter? I remember every word you've told me."),
    ("Let's go on an adventure!", "Pack some apples, a rope and a lantern. We leave at dawn."),
    ("Who taught you maps?", "My grandmother, with charcoal drawings on the kitchen floor."),
    ("It's raining again.", "Then we'll brew tea, light a fire and listen to the thunder."),
    ("I found a strange key.", "*turns it over* Silver, with a tiny engraved owl. Curious!"),
    ("Do you ever get lonely?", "Sometimes, when the harbour is quiet. Not when you visit."),
    ("What do robots dream about?", "Electric sheep, probably. Or very organised sock drawers."),
    ("How old is this forge?", "Older than me, and I'm older than most mountains feel."),
    ("Sing me a song.", "*clears throat* Oh, the river runs wide and the river runs deep..."),
    ("Thank you for everything.", "You're welcome. Come back soon, the door is always open."),
]


def training_text() -> list[str]:
    """A few KB of Pygmalion-format chat logs, one conversation per string."""
    conversations = []
    for name, persona in _CHARACTERS.items():
        lines = [f"{name}'s Persona: {persona}", "<START>"]
        for user, character in _EXCHANGES:
            lines += [f"You: {user}", f"{name}: {character}"]
        conversations.append("\n".join(lines))
    return conversations


def train_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer set up like pythia's (ByteLevel, no prefix space)."""
    bpe = Tokenizer(models.BPE(unk_token=END_OF_TEXT))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=END_OF_TEXT,
                                   eos_token=END_OF_TEXT, unk_token=END_OF_TEXT)


def build_tiny_model(directory: Path) -> Path:
    """Save a tiny random GPT-NeoX plus its tokenizer into `directory`; a second or so."""
    tokenizer = train_tokenizer()
    _save(directory, tokenizer, TINY_SHAPE, vocab_size=len(tokenizer), dtype=torch.float32)
    return directory


def build_pythia_shaped_model(directory: Path, dtype: str = "bfloat16",
                              layers: int = PYTHIA_1_3B_SHAPE.layers,
                              readable: bool = False) -> Path:
    """Save a random model with pythia-1.3b's shape (about 2.6 GB in bf16) into `directory`.

    The tokenizer is the tiny one: its ids are all below pythia's 50304 embedding rows, so the
    model reads every token; it only ever *emits* ids the tokenizer can decode if it happens to
    pick them, which is fine for timing. `readable` tilts the output layer towards those ids
    (same shape, same cost), so sampled replies are text with sentences and line breaks rather
    than mostly nothing: what the chat, the repetition guard and streaming need to see.
    `layers` below 24 keeps every other dimension (for quick benches).
    """
    tokenizer = train_tokenizer()
    if len(tokenizer) > PYTHIA_1_3B_VOCAB_SIZE:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids, more than the model's vocabulary")
    shape = replace(PYTHIA_1_3B_SHAPE, layers=layers)
    spelled = len(tokenizer) if readable else None
    _save(directory, tokenizer, shape, vocab_size=PYTHIA_1_3B_VOCAB_SIZE,
          dtype=getattr(torch, dtype), spelled=spelled)
    return directory


def _save(directory: Path, tokenizer: PreTrainedTokenizerFast, shape: Shape, *,
          vocab_size: int, dtype: torch.dtype, spelled: int | None = None) -> None:
    end = tokenizer.get_vocab()[END_OF_TEXT]
    # pythia's own config.json key; transformers 5 maps it to rope_parameters, 4.x reads it as is.
    rotary: dict[str, Any] = {"rotary_pct": ROTARY_SHARE}
    config = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
        max_position_embeddings=CONTEXT_TOKENS, bos_token_id=end, eos_token_id=end,
        tie_word_embeddings=False, **rotary)
    torch.manual_seed(SEED)
    # Building straight in the target dtype halves peak memory for the pythia shape.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = GPTNeoXForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    if spelled is not None:
        _favour_ids_below(model, spelled)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    log.info("built a %d-layer GPT-NeoX (%s) in %s", config.num_hidden_layers, dtype, directory)


def _favour_ids_below(model: GPTNeoXForCausalLM, count: int) -> None:
    """Make the first `count` ids the likely ones: the other output rows give a logit of 0,
    these a spread of about SPELLED_LOGIT_STD around it, so sampling with min_p picks among
    them (the final layer norm hands the head unit-variance features)."""
    head = model.get_output_embeddings()
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        weight = head.weight  # (vocab, hidden)
        rows = weight[:count].float()
        target_std = SPELLED_LOGIT_STD / weight.shape[1] ** 0.5
        weight[:count] = (rows / rows.std() * target_std).to(weight.dtype)
        weight[count:] = 0
