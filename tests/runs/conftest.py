"""Fixtures for the run-folder tests: a tiny NIH folder, its cache and one short finished run (built once)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainkit import tiny_config, write_tiny_nih

SHORT = ("train.epochs=1", "train.max_steps=2")  # the settings of `short_run`


@pytest.fixture(scope="session")
def tiny_nih(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_nih(tmp_path_factory.mktemp("runs_nih"))


@pytest.fixture(scope="session")
def other_nih(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same layout and names, other labels (another seed): a different dataset to a fingerprint."""
    return write_tiny_nih(tmp_path_factory.mktemp("runs_other"), seed=1)


@pytest.fixture(scope="module")
def short_run(tiny_nih: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run whose cache is the default one (next to the run), as `cxrmtl train` makes it."""
    from cxrmtl.train.loop import train

    out = tmp_path_factory.mktemp("runs_short") / "run"
    train(tiny_config(*SHORT), data_root=tiny_nih, out=out, device="cpu")
    return out
