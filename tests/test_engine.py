"""The engine with a real (tiny, random) GPT-NeoX: loading, tokens, batching, stops, penalty."""

from __future__ import annotations

import threading
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pygbot.engine import (
    Engine,
    EngineLoadError,
    GenerationParams,
    GenerationRequest,
    group_by_params,
    penalty_starts,
    resolve_device,
    resolve_dtype,
    sampling_kwargs,
)

PERSONA = "Aria's Persona: Aria is a cheerful ship's navigator who loves stars and maps.\n<START>\n"
CHAT = "You: Hello there! How are you today?\nAria:"
PROMPT = PERSONA + CHAT
GREEDY = GenerationParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
NEVER = "\nZebra-that-never-appears:"
# A "penalty" below 1 rewards the window's tokens so strongly that a random model picks from
# them: it makes the window visible in what the model says.
MAGNET = 0.02
MAGNET_ONE = GenerationParams(max_new_tokens=1, temperature=0.0, repetition_penalty=MAGNET)


def greedy(prompt: str, stops: tuple[str, ...] = (), params: GenerationParams = GREEDY,
           penalty_from: int = 0) -> GenerationRequest:
    return GenerationRequest(prompt, stops, params, penalty_from)


# --- loading -------------------------------------------------------------------------------------

def test_loads_a_local_model_folder(tiny_model_dir: Path) -> None:
    engine = Engine.load(str(tiny_model_dir), device="cpu", dtype="float32")
    assert (engine.model_name, engine.device, engine.dtype) == (str(tiny_model_dir), "cpu",
                                                                "float32")
    assert engine.context_tokens == 2048


def test_auto_device_is_cuda_only_when_torch_sees_a_gpu() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_one_line_load_error() -> None:
    with pytest.raises(EngineLoadError) as error:
        resolve_device("cuda")
    assert "\n" not in str(error.value)
    assert "DEVICE=cpu" in str(error.value)


def test_auto_dtype_is_half_on_gpu_and_bf16_or_float32_on_cpu() -> None:
    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("auto", "cpu") in ("bfloat16", "float32")
    assert resolve_dtype("float32", "cuda") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_unknown_device_or_dtype_is_a_load_error() -> None:
    with pytest.raises(EngineLoadError, match="DTYPE"):
        resolve_dtype("int4", "cpu")
    with pytest.raises(EngineLoadError, match="DEVICE"):
        resolve_device("tpu")


def test_a_missing_folder_is_a_one_line_error_that_says_to_set_model(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(EngineLoadError) as error:
        Engine.load(str(missing), device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert str(missing) in message
    assert "set MODEL to a local folder" in message
    assert "Traceback" not in message


def test_a_folder_without_config_json_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
    with pytest.raises(EngineLoadError, match=r"no config\.json.*set MODEL"):
        Engine.load(str(tmp_path), device="cpu")


def test_an_uncached_hub_id_offline_is_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; this makes sure the hub is not asked.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EngineLoadError) as error:
        Engine.load("PygmalionAI/no-such-model-for-tests", device="cpu")
    assert "\n" not in str(error.value)
    assert "Hugging Face hub" in str(error.value)
    assert "set MODEL to a local folder" in str(error.value)


# --- tokens --------------------------------------------------------------------------------------

def test_count_tokens_matches_the_model_tokenizer(tiny_engine: Engine,
                                                  tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in (PROMPT, "", "héllo wörld ✨", "<|endoftext|>"):
        # Special-token text in a prompt is counted (and fed) as the characters it is.
        expected = len(tokenizer(text, add_special_tokens=False,
                                 split_special_tokens=True)["input_ids"])
        assert tiny_engine.count_tokens(text) == expected
    assert tiny_engine.count_tokens("") == 0


def test_count_tokens_is_safe_while_another_thread_generates(tiny_engine: Engine) -> None:
    # The worker generates in a thread while the event loop counts tokens for the next prompt.
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            tiny_engine.generate([greedy(PROMPT), greedy("You: hi\nAria:")] * 2)
        except BaseException as error:  # reported by the assert below
            errors.append(error)

    thread = threading.Thread(target=generate)
    thread.start()
    while thread.is_alive():
        assert tiny_engine.count_tokens(PROMPT) > 0
    thread.join()
    assert errors == []


# --- generation ----------------------------------------------------------------------------------

def test_generate_returns_only_the_new_text(tiny_engine: Engine, tiny_model_dir: Path) -> None:
    [result] = tiny_engine.generate([greedy(PROMPT)])
    # The reference: plain transformers on the same folder, decoding just the new tokens.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.eos_token_id)
    new_ids = output[0, inputs["input_ids"].shape[1]:]
    assert result.text == tokenizer.decode(new_ids, skip_special_tokens=True)
    assert "Persona" not in result.text
    assert 0 < result.new_tokens <= GREEDY.max_new_tokens
    assert result.seconds > 0


def test_generate_never_exceeds_max_new_tokens(tiny_engine: Engine) -> None:
    for limit in (1, 5):
        params = GenerationParams(max_new_tokens=limit, temperature=0.9, seed=3)
        results = tiny_engine.generate([greedy(PROMPT, params=params)] * 3)
        assert all(0 < result.new_tokens <= limit for result in results)


def test_the_same_seed_gives_the_same_text(tiny_engine: Engine) -> None:
    def sample(seed: int) -> str:
        params = GenerationParams(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=seed)
        return tiny_engine.generate([greedy(PROMPT, params=params)])[0].text

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_a_batch_gives_each_row_the_text_it_gets_alone(tiny_engine: Engine) -> None:
    prompts = ["You: hi\nAria:", PROMPT, PERSONA * 3 + "You: Tell me a story.\nAria:"]
    alone = [tiny_engine.generate([greedy(prompt)])[0] for prompt in prompts]
    together = tiny_engine.generate([greedy(prompt) for prompt in prompts])
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.new_tokens for r in together] == [r.new_tokens for r in alone]


def test_requests_with_different_params_come_back_in_order(tiny_engine: Engine) -> None:
    short = GenerationParams(max_new_tokens=3, temperature=0.0, repetition_penalty=1.0)
    requests = [greedy(PROMPT), greedy("You: hi\nAria:", params=short), greedy("You: yo\nAria:")]
    results = tiny_engine.generate(requests)
    assert [r.text for r in results] == [tiny_engine.generate([r])[0].text for r in requests]
    assert results[1].new_tokens <= 3
    assert tiny_engine.generate([]) == []


def test_a_stop_string_stops_only_its_own_row(tiny_engine: Engine) -> None:
    other = "You: What is your favourite food?\nAria:"
    free = tiny_engine.generate([greedy(PROMPT), greedy(other)])
    stop = _stop_string_from(free[0].text)

    stopped, continued = tiny_engine.generate([greedy(PROMPT, (NEVER, stop)), greedy(other)])

    assert stop in stopped.text
    assert free[0].text.startswith(stopped.text)
    assert stopped.new_tokens < free[0].new_tokens
    assert (continued.text, continued.new_tokens) == (free[1].text, free[1].new_tokens)
    # It stopped at the first step that completed the stop string, not later.
    one_less = GenerationParams(max_new_tokens=stopped.new_tokens - 1, temperature=0.0,
                                repetition_penalty=1.0)
    before = tiny_engine.generate([greedy(PROMPT, params=one_less), greedy(other, params=one_less)])
    assert stop not in before[0].text


def _stop_string_from(text: str) -> str:
    """Three printable ASCII characters from the second half of `text`, first seen there."""
    for start in range(len(text) // 2, len(text) - 2):
        candidate = text[start:start + 3]
        if candidate.isascii() and candidate.isprintable() and text.find(candidate) == start:
            return candidate
    pytest.fail(f"no usable stop string in {text!r}")


# --- streaming ---------------------------------------------------------------------------------

def test_on_text_hears_each_row_grow_and_ends_with_its_result(tiny_engine: Engine) -> None:
    heard: dict[str, list[str]] = {"first": [], "second": []}
    free = tiny_engine.generate([greedy(PROMPT), greedy("You: hi\nAria:")])
    stop = _stop_string_from(free[0].text)
    requests = [replace(greedy(PROMPT, (NEVER, stop)), on_text=heard["first"].append),
                replace(greedy("You: hi\nAria:"), on_text=heard["second"].append)]

    stopped, continued = tiny_engine.generate(requests)

    assert heard["first"][-1] == stopped.text  # up to the step that hit the stop string
    assert heard["second"][-1] == continued.text
    assert len(heard["second"]) > 1  # it grew step by step, not once at the end
    assert all(later != earlier for earlier, later in pairwise(heard["second"]))
    # A row that stopped early hears nothing more while the other row goes on.
    assert len(heard["first"]) <= stopped.new_tokens < continued.new_tokens


def test_streaming_changes_no_text(tiny_engine: Engine) -> None:
    plain = tiny_engine.generate([greedy(PROMPT)])
    streamed = tiny_engine.generate([replace(greedy(PROMPT), on_text=lambda text: None)])
    assert [(r.text, r.new_tokens) for r in streamed] == [(r.text, r.new_tokens) for r in plain]


def test_a_failing_listener_costs_no_reply(tiny_engine: Engine) -> None:
    def broken(text: str) -> None:
        raise RuntimeError("listener bug")

    expected = tiny_engine.generate([greedy(PROMPT)])[0].text
    [result] = tiny_engine.generate([replace(greedy(PROMPT), on_text=broken)])
    assert result.text == expected


# --- the windowed repetition penalty -------------------------------------------------------------

def test_penalty_starts_map_characters_to_left_padded_token_positions(
    tiny_model_dir: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    prompts = [PROMPT, "You: hi\nAria:"]
    offsets = [PROMPT.index("You:"), 0]
    batch = tokenizer(prompts, padding=True, return_offsets_mapping=True, return_tensors="pt")

    starts = penalty_starts(batch["offset_mapping"], offsets)

    for row, (prompt, offset) in enumerate(zip(prompts, offsets, strict=True)):
        window = batch["input_ids"][row, starts[row]:]
        assert tokenizer.decode(window) == prompt[offset:]
    past_end = penalty_starts(batch["offset_mapping"], [len(PROMPT), len(PROMPT)])
    assert past_end.tolist() == [batch["input_ids"].shape[1]] * 2


def test_a_window_past_the_prompt_counts_nothing_at_the_first_step(tiny_engine: Engine) -> None:
    one = GenerationParams(max_new_tokens=1, temperature=0.0, repetition_penalty=1.0)
    plain = tiny_engine.generate([greedy(PROMPT, params=one)])[0].text
    reply_only = tiny_engine.generate([greedy(PROMPT, params=MAGNET_ONE,
                                              penalty_from=len(PROMPT))])[0].text
    assert reply_only == plain


@pytest.mark.parametrize("penalty_from", [0, len(PERSONA)])
def test_the_first_token_is_drawn_from_the_window_only(tiny_engine: Engine, tiny_model_dir: Path,
                                                       penalty_from: int) -> None:
    [result] = tiny_engine.generate([greedy(PROMPT, params=MAGNET_ONE,
                                            penalty_from=penalty_from)])
    assert result.text in prompt_tokens(tiny_model_dir, PROMPT, since=penalty_from)
    if penalty_from:
        persona_only = (prompt_tokens(tiny_model_dir, PROMPT, since=0)
                        - prompt_tokens(tiny_model_dir, PROMPT, since=penalty_from))
        assert result.text not in persona_only


def test_the_penalty_acts_before_top_k_picks_the_candidates(tiny_engine: Engine) -> None:
    # top_k=1 keeps only the single most likely token. Were the penalty applied after top-k it
    # could not change that pick, and sampling would give the unpenalised greedy text.
    magnet = GenerationParams(max_new_tokens=8, temperature=0.0, repetition_penalty=MAGNET)
    top_1 = GenerationParams(max_new_tokens=8, temperature=1.0, top_k=1,
                             repetition_penalty=MAGNET, seed=1)
    plain = GenerationParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0)
    window = len(PERSONA)
    penalised = tiny_engine.generate([greedy(PROMPT, params=magnet, penalty_from=window)])[0]
    sampled = tiny_engine.generate([greedy(PROMPT, params=top_1, penalty_from=window)])[0]
    assert sampled.text == penalised.text
    assert penalised.text != tiny_engine.generate([greedy(PROMPT, params=plain)])[0].text


def prompt_tokens(model_dir: Path, prompt: str, since: int) -> set[str]:
    """The decoded tokens of `prompt` that end after character `since`."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    return {str(tokenizer.decode([token])) for token, (_, end)
            in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True) if end > since}


def _longest_repeat(ids: list[int]) -> int:
    """Length of the longest token sequence that occurs twice in `ids`."""
    length = 0
    while len(set(grams := [tuple(ids[i:i + length + 1])
                            for i in range(len(ids) - length)])) < len(grams):
        length += 1
    return length


def test_dry_stops_the_greedy_loop_of_the_model(tiny_engine: Engine) -> None:
    def longest_repeat(multiplier: float) -> int:
        params = replace(GREEDY, max_new_tokens=48, dry_multiplier=multiplier)
        [result] = tiny_engine.generate([GenerationRequest(
            PROMPT, params=params, dry_sequence_breakers=("\n", ":"))])
        return _longest_repeat(tiny_engine._tokenizer(result.text)["input_ids"])

    assert longest_repeat(0.0) >= 8  # the random model loops when nothing stops it
    assert longest_repeat(100.0) <= 4


def test_min_p_is_passed_to_generate_only_when_on() -> None:
    assert "min_p" not in sampling_kwargs(GenerationParams(min_p=0.0))
    assert sampling_kwargs(GenerationParams(min_p=0.1))["min_p"] == 0.1
    assert "min_p" not in sampling_kwargs(GenerationParams(temperature=0.0, min_p=0.1))


def test_an_empty_prompt_is_refused(tiny_engine: Engine) -> None:
    with pytest.raises(ValueError, match="empty prompt"):
        tiny_engine.generate([greedy(PROMPT), greedy("")])


def test_requests_that_differ_only_in_seed_share_one_batch() -> None:
    prompts = [GenerationRequest(prompt=f"hi {i}", params=GenerationParams(seed=i))
               for i in range(3)]
    other = GenerationRequest(prompt="x", params=GenerationParams(temperature=0.1, seed=9))
    groups = group_by_params([*prompts, other])
    assert list(groups.values()) == [[0, 1, 2], [3]]
    assert [key.seed for key in groups] == [0, 9]  # seeded by the batch's first request
