"""What each server family is sent: the knobs it really accepts, spelled its way."""

from __future__ import annotations

import json

import pytest

from pygbot.config import Settings
from pygbot.engine import GenerationParams, GenerationRequest
from pygbot.remote import RemoteConfig, _swipe_groups
from pygbot.remote_api import (
    Sampling,
    ServerReplyError,
    StreamAccumulator,
    choices_of,
    completion_body,
    unsupported_settings,
)

PARAMS = GenerationParams(max_new_tokens=80, temperature=0.7, top_p=0.9, top_k=40,
                          repetition_penalty=1.1, min_p=0.05, dry_multiplier=0.8,
                          dry_base=1.75, dry_allowed_length=2, seed=7)
REQUEST = GenerationRequest("You: hi\nAria:", ("\nYou:", "\nAria:"), PARAMS,
                            dry_sequence_breakers=("\n", ":", "You", "Aria"))


def body(flavor: str, **options: object) -> dict[str, object]:
    sampling = Sampling(model="pyg", flavor=flavor, window_tokens=512, xtc_probability=0.5,
                        xtc_threshold=0.1)
    return completion_body(REQUEST, sampling, **options)  # type: ignore[arg-type]


def test_every_server_gets_the_common_fields() -> None:
    for flavor in ("vllm", "sglang", "aphrodite", "llamacpp", "koboldcpp", "transformers"):
        sent = body(flavor)
        assert sent["prompt"] == REQUEST.prompt and sent["model"] == "pyg"
        assert sent["max_tokens"] == 80 and sent["stop"] == ["\nYou:", "\nAria:"]
        assert sent["temperature"] == 0.7 and sent["top_p"] == 0.9 and sent["seed"] == 7


def test_vllm_gets_its_top_level_knobs_and_no_dry() -> None:
    sent = body("vllm", n=3)
    assert (sent["top_k"], sent["min_p"], sent["repetition_penalty"], sent["n"]) == \
        (40, 0.05, 1.1, 3)
    assert not any(key.startswith(("dry_", "xtc_")) for key in sent)


def test_aphrodite_gets_dry_with_its_range_and_xtc() -> None:
    sent = body("aphrodite")
    assert sent["dry_multiplier"] == 0.8 and sent["dry_range"] == 512
    assert sent["dry_sequence_breakers"] == ["\n", ":", "You", "Aria"]
    assert sent["xtc_probability"] == 0.5 and sent["repetition_penalty"] == 1.1


def test_llamacpp_spells_the_penalty_its_way_and_refuses_n() -> None:
    sent = body("llamacpp")
    assert sent["repeat_penalty"] == 1.1 and sent["repeat_last_n"] == 512
    assert sent["dry_penalty_last_n"] == 512 and "repetition_penalty" not in sent
    with pytest.raises(ValueError, match="does not return several choices"):
        body("llamacpp", n=2)


def test_koboldcpp_gets_every_knob_even_when_off() -> None:
    off = GenerationRequest("x", params=GenerationParams(top_k=0, min_p=0.0,
                                                         repetition_penalty=1.0))
    sent = completion_body(off, Sampling(model="", flavor="koboldcpp", window_tokens=256))
    assert sent["top_k"] == 0 and sent["min_p"] == 0.0  # its defaults are 100 and 0.0
    assert sent["rep_pen"] == 1.0 and sent["rep_pen_range"] == 256 and "model" not in sent


def test_transformers_serve_gets_knobs_inside_generation_config_only() -> None:
    sent = body("transformers", stream=True)
    allowed = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed",
               "stream", "stream_options", "generation_config"}
    assert set(sent) <= allowed
    assert json.loads(str(sent["generation_config"])) == {
        "do_sample": True, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}


def test_swipes_share_one_request_only_where_n_is_honoured() -> None:
    swipes = [GenerationRequest("p", params=GenerationParams(seed=seed)) for seed in (1, 2)]
    other = GenerationRequest("q")
    assert _swipe_groups([*swipes, other], use_n=True) == [[0, 1], [2]]
    assert _swipe_groups([*swipes, other], use_n=False) == [[0], [1], [2]]


def test_a_stream_gathers_choices_and_an_error_event_raises() -> None:
    stream = StreamAccumulator(2)
    events = [
        'data: {"choices": [{"index": 0, "text": "Hel"}]}', "",
        'data: {"choices": [{"index": 1, "text": "Yo"}, {"index": 0, "text": "lo"}]}',
        'data: {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}',
        "data: [DONE]",
    ]
    grown = [stream.feed(line) for line in events]
    assert grown[:3] == [[0], [], [1, 0]] and stream.done
    assert [c.text for c in stream.choices] == ["Hello", "Yo"]
    assert stream.choices[0].finish_reason == "stop"
    with pytest.raises(ServerReplyError, match="failed mid-reply"):
        StreamAccumulator(1).feed('data: {"error": "CUDA out of memory"}')


def test_a_non_streamed_reply_and_garbage() -> None:
    [choice] = choices_of({"choices": [{"index": 0, "text": " hi", "finish_reason": "length"}],
                           "usage": {"completion_tokens": 80}}, 1)
    assert (choice.text, choice.finish_reason, choice.completion_tokens) == \
        (" hi", "length", 80)
    with pytest.raises(ServerReplyError):
        choices_of({"detail": "nope"}, 1)


def test_settings_a_server_cannot_honour_are_named() -> None:
    settings = Settings(engine="remote", engine_url="http://x:1", engine_flavor="vllm",
                        dry_multiplier=0.8, repetition_penalty=1.1)
    lines = unsupported_settings(settings)
    assert any("DRY_MULTIPLIER=0.8 does not reach vllm" in line for line in lines)
    assert any("counts the whole prompt" in line for line in lines)
    llama = Settings(engine="remote", engine_url="http://x:1", engine_flavor="llamacpp",
                     dry_multiplier=0.8, repetition_penalty=1.1)
    assert unsupported_settings(llama) == []


def test_remote_defaults_are_the_settings_defaults() -> None:
    url = "http://127.0.0.1:8000"
    assert RemoteConfig(url=url) == RemoteConfig.from_settings(Settings(engine_url=url))
    default = RemoteConfig(url=url)
    assert Sampling(model="", flavor=default.flavor) == Sampling(
        model="", flavor=default.flavor, window_tokens=default.window_tokens,
        xtc_probability=default.xtc_probability, xtc_threshold=default.xtc_threshold)
