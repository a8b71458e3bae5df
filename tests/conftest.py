"""Shared test fixtures. Tests build their own tiny data; real NIH files come from $CXRMTL_NIH_ROOT when present.

``CXRMTL_NIH_ROOT`` names an NIH ChestX-ray14 folder (Data_Entry_2017_v2020.csv[.gz], the split lists, images): a
user with the real release points it there to run the tests that need real files. Without it they look in
``../shared/data/nih`` next to the checkout, and skip, saying where they looked, when nothing is there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# Two cores in CI: keep each test process to one BLAS/OpenMP thread so xdist workers do not oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Helpers shared by several test folders (trainkit: tiny runs; eval_synth: synthetic evaluation inputs).
sys.path.insert(0, str(Path(__file__).resolve().parent / "kit"))
NIH_ROOT_ENV = "CXRMTL_NIH_ROOT"
DEFAULT_NIH_ROOT = REPO_ROOT.parent / "shared" / "data" / "nih"
METADATA_NAMES = ("Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")


def nih_root() -> Path:
    """$CXRMTL_NIH_ROOT, else ../shared/data/nih next to the checkout."""
    return Path(os.environ.get(NIH_ROOT_ENV) or DEFAULT_NIH_ROOT).expanduser().resolve()


SHARED_NIH = nih_root()


@pytest.fixture(scope="session")
def nih_shared() -> Path:
    """Real NIH files (read-only) from $CXRMTL_NIH_ROOT or ../shared/data/nih; skip with a reason if absent."""
    root = nih_root()
    if not any((root / name).is_file() for name in METADATA_NAMES):
        source = f"${NIH_ROOT_ENV}" if os.environ.get(NIH_ROOT_ENV) else f"default; set ${NIH_ROOT_ENV} to change it"
        pytest.skip(f"real NIH files not found at {root} ({source}): no {' / '.join(METADATA_NAMES)}")
    return root


@pytest.fixture(scope="session")
def nih_file(nih_shared: Path) -> Callable[[str], Path]:
    """``nih_file("BBox_List_2017.csv")``: that file of the real NIH folder, plain or ``.gz``; skip when absent
    (a user's copy of the release may hold either form, or lack an optional file such as the expert labels)."""

    def find(name: str) -> Path:
        for candidate in (name, name + ".gz", name.removesuffix(".gz")):
            if (nih_shared / candidate).is_file():
                return nih_shared / candidate
        pytest.skip(f"{name} (or .gz) not found in {nih_shared}")

    return find


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
