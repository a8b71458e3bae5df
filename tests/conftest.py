"""Shared test fixtures. Tests build their own tiny data; real NIH files come from ../shared when present."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Two cores in CI: keep each test process to one BLAS/OpenMP thread so xdist workers do not oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Helpers shared by several test folders (trainkit: tiny runs; eval_synth: synthetic evaluation inputs).
sys.path.insert(0, str(Path(__file__).resolve().parent / "kit"))
SHARED_NIH = (REPO_ROOT.parent / "shared" / "data" / "nih").resolve()


@pytest.fixture(scope="session")
def nih_shared() -> Path:
    """The real NIH metadata and 225 images in ../shared/data/nih (read-only); skip with a reason if absent."""
    if not (SHARED_NIH / "Data_Entry_2017_v2020.csv.gz").is_file():
        pytest.skip(f"real NIH files not found at {SHARED_NIH} (../shared/data/nih next to the checkout)")
    return SHARED_NIH


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
