"""How torch runs the model: thread count (container CPU limits respected) and attention."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pygbot.app import load_engine
from pygbot.config import Settings
from pygbot.engine import (
    Engine,
    GenerationParams,
    GenerationRequest,
    cgroup_cpu_limit,
    configure_cpu_threads,
    usable_cpus,
)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def limit_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


def test_a_container_cpu_limit_is_read_from_cgroup_v2(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(limit_file(tmp_path, "200000 100000\n")) == 2.0
    assert cgroup_cpu_limit(limit_file(tmp_path, "150000 100000\n")) == 1.5
    assert cgroup_cpu_limit(limit_file(tmp_path, "max 100000\n")) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None
    assert cgroup_cpu_limit(limit_file(tmp_path, "garbage")) is None


def test_threads_follow_the_cpu_limit_rounded_up_never_above_the_cpus_we_may_use(
    tmp_path: Path, restore_threads: None,
) -> None:
    allowed = len(os.sched_getaffinity(0))
    assert usable_cpus(limit_file(tmp_path, "max 100000")) == allowed
    assert usable_cpus(limit_file(tmp_path, "50000 100000")) == 1  # half a CPU: one thread
    assert usable_cpus(limit_file(tmp_path, f"{(allowed + 5) * 100000} 100000")) == allowed
    assert configure_cpu_threads(0, limit_file(tmp_path, "50000 100000")) == 1
    assert torch.get_num_threads() == 1


def test_cpu_threads_setting_wins(tmp_path: Path, restore_threads: None) -> None:
    assert configure_cpu_threads(3, limit_file(tmp_path, "100000 100000")) == 3
    assert torch.get_num_threads() == 3


def test_the_model_runs_with_torch_fused_attention(tiny_engine: Engine) -> None:
    assert tiny_engine._model.config._attn_implementation == "sdpa"


# TORCH_COMPILE is meant for GPUs; here the code path runs, on the tiny model: compiled decode
# steps over the static cache. Dynamo's "eager" backend captures the same graphs as inductor
# does, without inductor's C++ code generation (minutes on a shared 2-core CPU).
GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0, dry_multiplier=0.8)
ROWS = [
    GenerationRequest("Aria's Persona: a navigator.\n<START>\nYou: Hello there!\nAria:",
                      ("\nYou:",), GREEDY, cache_key="a"),
    GenerationRequest("You: Tell me a joke.\nAria:", (), replace(GREEDY, max_new_tokens=3)),
    GenerationRequest("Rook's Persona: gruff.\n<START>\nYou: Can you fix this sword? What is "
                      "your favourite food?\nRook:", (), GREEDY, cache_key="b"),
]


async def test_torch_compile_is_off_by_default_and_the_setting_reaches_the_engine(
    tiny_model_dir: Path,
) -> None:
    settings = Settings(model=str(tiny_model_dir), device="cpu", dtype="float32")
    assert not settings.torch_compile
    assert not (await load_engine(settings)).compiled
    assert (await load_engine(replace(settings, torch_compile=True))).compiled


def test_compiled_decode_over_a_static_cache_writes_what_eager_decode_writes(
    tiny_model_dir: Path,
) -> None:
    eager = Engine.load(str(tiny_model_dir), "cpu", "float32", prefix_cache_mb=64)
    compiled = Engine.load(str(tiny_model_dir), "cpu", "float32", prefix_cache_mb=64,
                           torch_compile=True, compile_backend="eager")
    expected = [result.text for result in eager.generate(ROWS)]
    # A row that finishes early leaves the batch (the batch shrinks mid-run): still the same.
    assert [result.text for result in compiled.generate(ROWS)] == expected
    assert [r.new_tokens for r in compiled.generate(ROWS[1:2])] == [3]
    # The next turn, from the prefix cache, with the graphs already compiled.
    follow = [replace(row, prompt=row.prompt + text + "\nYou: And then?\nAria:")
              for row, text in zip(ROWS, expected, strict=True)]
    assert ([result.text for result in compiled.generate(follow)]
            == [result.text for result in eager.generate(follow)])
    assert compiled.generate(follow[:1])[0].reused_tokens > 0
