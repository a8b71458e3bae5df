"""Process-wide state around training: applied on the way in, given back on the way out.

Training wants deterministic kernels (exact resume), a chosen CPU thread count and seeded randomness; a caller
(a notebook, the ablation running many trainings, a test) wants its own settings and random streams back afterwards.
``training_process_state`` applies ``train.deterministic`` / ``train.cpu_threads`` and restores every flag, the
thread count and all global random states (python, numpy, torch CPU and CUDA) when training ends, however it ends.

Randomness inside training never reseeds the global generators behind the caller's back: augmentation, PCGrad and the
loader draw from explicit ``torch.Generator`` / numpy generators seeded by (seed, step, rank). Modules that can only
draw from torch's default generator (dropout, drop-path) run inside ``seeded_rng``, which forks the default
generators (``torch.random.fork_rng``), seeds the fork and restores the caller's state on exit.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cxrmtl.config import TrainConfig

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
# cuBLAS needs a fixed workspace to be deterministic (PyTorch "Reproducibility" notes; CUDA >= 10.2).
CUBLAS_DETERMINISTIC = ":4096:8"


@dataclass(frozen=True)
class ProcessState:
    """What training may change, as the caller had it."""

    deterministic: bool
    warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    threads: int
    cublas_env: str | None
    python_rng: Any
    numpy_rng: Any
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None


def capture() -> ProcessState:
    """The current process-wide settings and random states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return ProcessState(
        deterministic=torch.are_deterministic_algorithms_enabled(),
        warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn_benchmark=torch.backends.cudnn.benchmark, cudnn_deterministic=torch.backends.cudnn.deterministic,
        threads=torch.get_num_threads(), cublas_env=os.environ.get(CUBLAS_ENV), python_rng=random.getstate(),
        numpy_rng=np.random.get_state(), torch_rng=torch.get_rng_state(), cuda_rng=cuda,
    )


def restore(state: ProcessState) -> None:
    """Put back what ``capture`` saw."""
    torch.use_deterministic_algorithms(state.deterministic, warn_only=state.warn_only)
    torch.backends.cudnn.benchmark = state.cudnn_benchmark
    torch.backends.cudnn.deterministic = state.cudnn_deterministic
    if torch.get_num_threads() != state.threads:
        torch.set_num_threads(state.threads)
    if state.cublas_env is None:
        os.environ.pop(CUBLAS_ENV, None)
    else:
        os.environ[CUBLAS_ENV] = state.cublas_env
    random.setstate(state.python_rng)
    np.random.set_state(state.numpy_rng)
    torch.set_rng_state(state.torch_rng)
    if state.cuda_rng is not None:
        torch.cuda.set_rng_state_all(state.cuda_rng)


def apply(cfg: TrainConfig) -> None:
    """The settings training runs under: ``train.deterministic`` and ``train.cpu_threads`` (0 = leave as is)."""
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    if cfg.deterministic:
        os.environ.setdefault(CUBLAS_ENV, CUBLAS_DETERMINISTIC)
        # warn_only: an op without a deterministic kernel warns instead of stopping a run (measured cost on CPU:
        # docs/training.md, bench/bench_determinism.py).
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True  # autotuned convolutions: fastest, not bit-reproducible


@contextlib.contextmanager
def training_process_state(cfg: TrainConfig) -> Iterator[None]:
    """Apply ``cfg``'s process settings for the block; restore the caller's settings and random states after it."""
    saved = capture()
    try:
        apply(cfg)
        yield
    finally:
        restore(saved)


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the block on a fork of torch's default generators (CPU, and ``device`` when CUDA) seeded with ``seed``.

    For draws that cannot take an explicit generator (``nn.Dropout``, timm's drop-path, weight init): the block's
    randomness depends on ``seed`` only, and the caller's generators continue afterwards as if it never ran.
    """
    cuda = device is not None and device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
