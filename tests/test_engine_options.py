"""How torch runs the model: thread count (container CPU limits respected) and attention."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pygbot.engine import Engine, cgroup_cpu_limit, configure_cpu_threads, usable_cpus


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
