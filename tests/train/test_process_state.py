"""Training gives the caller's process back as it found it: random states, determinism flags, thread count; and
library code reports through logging, never print."""

from __future__ import annotations

import ast
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from trainkit import REPO, tiny_config

from cxrmtl.errors import ConfigError
from cxrmtl.runs.checkpoint import load_checkpoint
from cxrmtl.train.loop import train
from cxrmtl.train.process import seeded_rng, training_process_state


def _snapshot() -> dict[str, object]:
    return {
        "torch_rng": torch.get_rng_state().clone(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "threads": torch.get_num_threads(),
    }


def _same(a: dict[str, object], b: dict[str, object]) -> None:
    assert torch.equal(a["torch_rng"], b["torch_rng"]), "torch's global RNG state changed"
    assert np.array_equal(a["numpy_rng"], b["numpy_rng"]), "numpy's global RNG state changed"
    for key in ("python_rng", "deterministic", "benchmark", "cudnn_deterministic", "threads"):
        assert a[key] == b[key], key


@pytest.fixture
def caller_state() -> Iterator[None]:
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(), torch.get_rng_state())
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(12345)
    np.random.seed(6789)
    random.seed(42)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.set_num_threads(before[1])
    torch.set_rng_state(before[2])


def test_train_restores_rng_flags_and_threads(caller_state: None, tiny_nih: Path, tiny_cache: Path,
                                              tmp_path: Path) -> None:
    before = _snapshot()
    cfg = tiny_config("train.epochs=1", "train.max_steps=3", "train.deterministic=true", "train.cpu_threads=2",
                      "model.drop_rate=0.2")
    train(cfg, data_root=tiny_nih, out=tmp_path / "a", cache_dir=tiny_cache, device="cpu")
    _same(before, _snapshot())
    # The caller's stream continues where it was: training drew nothing from it.
    expected = torch.rand(3, generator=torch.Generator().manual_seed(12345))
    assert torch.equal(torch.rand(3), expected)


def test_training_does_not_depend_on_the_caller_s_random_state(caller_state: None, tiny_nih: Path,
                                                               tiny_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_config("train.epochs=1", "train.max_steps=3", "model.drop_rate=0.3")
    torch.manual_seed(1)
    train(cfg, data_root=tiny_nih, out=tmp_path / "a", cache_dir=tiny_cache, device="cpu")
    torch.manual_seed(2)
    np.random.seed(2)
    train(cfg, data_root=tiny_nih, out=tmp_path / "b", cache_dir=tiny_cache, device="cpu")
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_state_is_restored_when_training_fails(caller_state: None, tiny_nih: Path, tiny_cache: Path,
                                               tmp_path: Path) -> None:
    before = _snapshot()
    cfg = tiny_config("train.max_steps=1", "train.select_metric=val/ghost/auroc_mean", "train.cpu_threads=2")
    with pytest.raises(ConfigError):
        train(cfg, data_root=tiny_nih, out=tmp_path / "y", cache_dir=tiny_cache, device="cpu")
    _same(before, _snapshot())


def test_seeded_rng_is_a_fork(caller_state: None) -> None:
    with seeded_rng(7):
        inside = torch.rand(4)
    with seeded_rng(7):
        assert torch.equal(torch.rand(4), inside), "same seed, same draws"
    assert torch.equal(torch.rand(2), torch.rand(2, generator=torch.Generator().manual_seed(12345)))


def test_process_state_applies_the_config_inside(caller_state: None) -> None:
    with training_process_state(tiny_config("train.deterministic=true", "train.cpu_threads=2").train):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 2
    with training_process_state(tiny_config("train.deterministic=false").train):
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.benchmark


LIBRARY = ("train", "runs", "data", "eval", "tasks", "models", "infer", "localize", "report")


@pytest.mark.parametrize("package", LIBRARY)
def test_library_code_never_prints(package: str) -> None:
    """Library packages report through logging; only cli/ writes to the terminal (the demo takes a log callable)."""
    offenders = []
    for path in sorted((REPO / "src" / "cxrmtl" / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name) and node.id == "print":
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
